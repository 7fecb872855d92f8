"""Policies and action distributions against torch.distributions and nn.GRUCell."""

from __future__ import annotations

import pytest
import torch
from gymnasium import spaces

from metarl.policies import Categorical, DiagGaussian, GRUPolicy, MLPPolicy, distribution_for


def test_gaussian_matches_torch() -> None:
    dist = DiagGaussian(3)
    p, q = torch.randn(5, 6), torch.randn(5, 6)
    action = torch.randn(5, 3)
    ref_p = torch.distributions.Normal(p[:, :3], p[:, 3:].exp())
    ref_q = torch.distributions.Normal(q[:, :3], q[:, 3:].exp())
    torch.testing.assert_close(dist.log_prob(p, action), ref_p.log_prob(action).sum(-1))
    torch.testing.assert_close(dist.entropy(p), ref_p.entropy().sum(-1))
    torch.testing.assert_close(dist.kl(p, q), torch.distributions.kl_divergence(ref_p, ref_q).sum(-1))


def test_categorical_matches_torch_and_samples_its_probabilities() -> None:
    dist = Categorical(4)
    p, q = torch.randn(5, 4), torch.randn(5, 4)
    ref_p, ref_q = torch.distributions.Categorical(logits=p), torch.distributions.Categorical(logits=q)
    action = torch.tensor([0, 1, 2, 3, 1])
    torch.testing.assert_close(dist.log_prob(p, action), ref_p.log_prob(action))
    torch.testing.assert_close(dist.entropy(p), ref_p.entropy())
    torch.testing.assert_close(dist.kl(p, q), torch.distributions.kl_divergence(ref_p, ref_q))
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).expand(40000, 4)
    draws = dist.sample(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / 40000
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.01, rtol=0)
    again = dist.sample(logits, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)


def test_distribution_for_rejects_unsupported_spaces() -> None:
    with pytest.raises(TypeError, match="no action distribution for"):
        distribution_for(spaces.MultiBinary(3))


def test_mlp_policy_outputs() -> None:
    policy = MLPPolicy(4, spaces.Box(-1, 1, (2,)), value_head=True, init_log_std=-0.5)
    out = policy(torch.randn(7, 4))
    assert out.dist_params.shape == (7, 4) and out.value.shape == (7,) and out.hidden is None
    assert torch.all(out.dist_params[:, 2:] == -0.5)
    assert MLPPolicy(4, spaces.Discrete(3))(torch.randn(7, 4)).value is None
    with pytest.raises(ValueError, match="activation must be one of"):
        MLPPolicy(4, spaces.Discrete(3), activation="gelu")


def test_mlp_policy_forward_with_matches_its_layers_shared_and_per_task() -> None:
    """``forward_with`` (the rollout's path, no ``functional_call``) is the layers' own computation."""
    policy = MLPPolicy(3, spaces.Box(-1, 1, (2,)), hidden_sizes=(5, 4), value_head=True, init_log_std=-0.3)
    layers, critic = policy.actor.layers, policy.critic.layers

    def reference(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = layers[2](torch.tanh(layers[1](torch.tanh(layers[0](obs)))))
        value = critic[2](torch.tanh(critic[1](torch.tanh(critic[0](obs))))).squeeze(-1)
        return torch.cat([mean, policy.log_std.expand_as(mean)], dim=-1), value

    obs = torch.randn(2, 6, 3)
    params = {k: v.detach() for k, v in policy.named_parameters()}
    out = policy.forward_with(params, obs[0])
    with torch.no_grad():
        expected = reference(obs[0])
    torch.testing.assert_close(out.dist_params, expected[0])
    torch.testing.assert_close(out.value, expected[1])
    per_task = {k: torch.stack([v, v + 0.1]) for k, v in params.items()}  # task 1: every parameter shifted
    batched = policy.forward_with(per_task, obs)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1)
        torch.testing.assert_close(batched.dist_params[1], reference(obs[1])[0])
        torch.testing.assert_close(batched.value[1], reference(obs[1])[1])
    torch.testing.assert_close(batched.dist_params[0], expected[0])


def test_gru_cell_matches_torch() -> None:
    policy = GRUPolicy(5, spaces.Discrete(3), hidden_size=8)
    reference = torch.nn.GRUCell(5, 8)
    with torch.no_grad():
        reference.weight_ih.copy_(policy.input_gates.weight)
        reference.bias_ih.copy_(policy.input_gates.bias)
        reference.weight_hh.copy_(policy.hidden_gates.weight)
        reference.bias_hh.copy_(policy.hidden_gates.bias)
    x, h = torch.randn(6, 5), torch.randn(6, 8)
    torch.testing.assert_close(policy(x, h).hidden, reference(x, h))


# The optional input encoder and MLP heads go through the same code paths as the GRU itself.
LAYERS = [{}, {"encoder_size": 5, "head_size": 4}]
LAYER_IDS = ["plain", "encoder+heads"]


@pytest.mark.parametrize("layers", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("separate_critic", [False, True])
def test_gru_policy_forward_with_per_task_parameters(separate_critic: bool, layers: dict) -> None:
    policy = GRUPolicy(3, spaces.Box(-1, 1, (2,)), hidden_size=6, separate_critic=separate_critic, **layers)
    params = {k: v.detach() for k, v in policy.named_parameters()}
    per_task = {k: torch.stack([v, v + 0.1]) for k, v in params.items()}
    obs, hidden = torch.randn(2, 4, 3), torch.randn(2, 4, policy.hidden_size)
    batched = policy.forward_with(per_task, obs, hidden)
    with torch.no_grad():
        expected = [policy(obs[0], hidden[0])]
        for p in policy.parameters():
            p.add_(0.1)
        expected.append(policy(obs[1], hidden[1]))
    for task in (0, 1):
        for got, want in zip(batched, expected[task], strict=True):
            torch.testing.assert_close(got[task], want)


def _step_by_step(policy: GRUPolicy, params: dict, obs: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
    outs = []
    for t in range(obs.shape[0]):
        out = policy.forward_with(params, obs[t], hidden)
        outs.append(out)
        hidden = out.hidden
    return torch.stack([o.dist_params for o in outs]), torch.stack([o.value for o in outs]), hidden


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("action_space", [spaces.Discrete(3), spaces.Box(-1, 1, (2,))], ids=["discrete", "box"])
@pytest.mark.parametrize("layers", LAYERS, ids=LAYER_IDS)
@pytest.mark.parametrize("separate_critic", [False, True])
def test_gru_forward_sequence_matches_the_cell_step_by_step(
    separate_critic: bool, action_space: spaces.Space, device: str, layers: dict
) -> None:
    """The fused sequence (nn.GRU's kernel, cuDNN on CUDA) gives the cell's outputs, last state and gradients.

    cuDNN may run recurrent layers in TF32 (PyTorch's default on Ampere and later: 1e-4 differences on an
    H100), so the equations are compared in full float32.
    """
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        _check_forward_sequence(separate_critic, action_space, device, layers)


def _check_forward_sequence(separate_critic: bool, action_space: spaces.Space, device: str, layers: dict) -> None:
    torch.manual_seed(0)
    policy = GRUPolicy(5, action_space, hidden_size=8, separate_critic=separate_critic, **layers).to(device)
    params = dict(policy.named_parameters())
    obs, hidden = torch.randn(7, 4, 5, device=device), torch.randn(4, policy.hidden_size, device=device)
    fused = policy.forward_sequence(params, obs, hidden)
    stepped = _step_by_step(policy, params, obs, hidden)
    for got, want in zip(fused, stepped, strict=True):
        torch.testing.assert_close(got, want)
    weights = torch.randn_like(stepped[0])
    fused_grads = torch.autograd.grad((fused.dist_params * weights).sum() + fused.value.sum(), list(params.values()))
    stepped_grads = torch.autograd.grad((stepped[0] * weights).sum() + stepped[1].sum(), list(params.values()))
    for name, got, want in zip(params, fused_grads, stepped_grads, strict=True):
        torch.testing.assert_close(got, want, msg=lambda m, name=name: f"{name}: {m}")
    assert fused.hidden.device.type == device


def test_gru_encoder_and_heads() -> None:
    """The GRU reads ReLU features of the input; each head is hidden -> tanh layer -> output; without the
    options the parameter names are those of older checkpoints."""
    torch.manual_seed(0)
    policy = GRUPolicy(5, spaces.Discrete(3), hidden_size=8, encoder_size=6, head_size=4)
    bare = GRUPolicy(6, spaces.Discrete(3), hidden_size=8)
    with torch.no_grad():
        for name in ("input_gates", "hidden_gates"):
            getattr(bare, name).load_state_dict(getattr(policy, name).state_dict())
    x, h = torch.randn(7, 5), torch.randn(7, 8)
    out = policy(x, h)
    features = torch.relu(policy.encoder(x))
    torch.testing.assert_close(out.hidden, bare(features, h).hidden)
    actor, critic = policy.actor.layers, policy.critic.layers
    torch.testing.assert_close(out.dist_params, actor[1](torch.tanh(actor[0](out.hidden))))
    torch.testing.assert_close(out.value, critic[1](torch.tanh(critic[0](out.hidden))).squeeze(-1))
    assert {"actor.weight", "critic.weight"} <= set(bare.state_dict()) and "encoder.weight" not in bare.state_dict()
    for name, size in (("hidden_size", 0), ("encoder_size", 0), ("head_size", -2)):
        with pytest.raises(ValueError, match=f"{name} must be positive, got {size}"):
            GRUPolicy(5, spaces.Discrete(3), **{"hidden_size": 8, name: size})


def test_gru_forward_sequence_refuses_per_task_parameters() -> None:
    policy = GRUPolicy(3, spaces.Discrete(2), hidden_size=4)
    per_task = {k: torch.stack([v, v]) for k, v in policy.named_parameters()}
    with pytest.raises(ValueError, match="plain parameters"):
        policy.forward_sequence(per_task, torch.randn(2, 4, 3), torch.zeros(4, 4))


def test_separate_critic_has_its_own_memory() -> None:
    """The value head reads a second GRU: the actor's outputs and memory are those of a shared-memory policy with
    the same actor weights, whatever the critic's weights; the value is the critic GRU's, and only it moves the value."""
    torch.manual_seed(0)
    separate = GRUPolicy(5, spaces.Discrete(3), hidden_size=8, separate_critic=True)
    shared = GRUPolicy(5, spaces.Discrete(3), hidden_size=8)
    assert separate.hidden_size == 16 and separate.cell_size == 8 and separate.initial_hidden(2, "cpu").shape == (2, 16)
    with torch.no_grad():
        for name in ("input_gates", "hidden_gates", "actor"):
            getattr(shared, name).load_state_dict(getattr(separate, name).state_dict())
        shared.critic.load_state_dict(separate.critic.state_dict())
    x, h = torch.randn(6, 5), torch.randn(6, 16)
    out, ref = separate(x, h), shared(x, h[:, :8])
    torch.testing.assert_close(out.dist_params, ref.dist_params)
    torch.testing.assert_close(out.hidden[:, :8], ref.hidden)
    with torch.no_grad():  # the critic GRU given the actor's gates and memory gives the shared policy's value
        separate.critic_input_gates.load_state_dict(separate.input_gates.state_dict())
        separate.critic_hidden_gates.load_state_dict(separate.hidden_gates.state_dict())
    torch.testing.assert_close(separate(x, torch.cat([h[:, :8], h[:, :8]], 1)).value, ref.value)
    assert not torch.allclose(separate(x, h).value, ref.value)  # ... and its own memory gives another
    dist_grad = torch.autograd.grad(separate(x, h).dist_params.sum(), separate.critic_input_gates.weight, allow_unused=True)[0]
    assert dist_grad is None  # the policy's output does not depend on the critic's GRU
    assert len(separate.gate_layers()) == 4
    with pytest.raises(ValueError, match="separate_critic=True needs value_head=True"):
        GRUPolicy(5, spaces.Discrete(3), value_head=False, separate_critic=True)
