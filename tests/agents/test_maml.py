"""MAML-RL: meta-gradients against finite differences, the TRPO bound, learning, refused settings."""

from __future__ import annotations

import pytest
import torch

import envs  # noqa: F401
import metarl
from agents.losses import surrogate_loss
from agents.maml import MAML, MAMLConfig, _Batch
from agents.trpo import conjugate_gradient, fisher_vector_product, flat, trpo_step
from envs.navigation import NavigationTasks
from metarl.evaluation import EvalConfig, held_out_tasks
from metarl.rollout import policy_forward

TINY = dict(meta_batch_size=3, episodes_per_task=2, horizon=6, hidden_sizes=(8,))


def synthetic_batch(agent: MAML, num_tasks: int, samples: int, generator: torch.Generator) -> _Batch:
    """A float64 batch of made-up samples: the meta-gradient checks need data, not an env."""
    obs = torch.randn(num_tasks, samples, 2, generator=generator, dtype=torch.float64)
    actions = torch.randn(num_tasks, samples, 2, generator=generator, dtype=torch.float64) * 0.5
    params = {k: v.detach() for k, v in agent.policy.named_parameters()}
    dist_params = policy_forward(agent.policy, params, obs.flatten(0, 1)).dist_params.reshape(num_tasks, samples, -1)
    log_probs = agent.policy.action_dist.log_prob(dist_params, actions)
    advantages = torch.randn(num_tasks, samples, generator=generator, dtype=torch.float64)
    mask = (torch.rand(num_tasks, samples, generator=generator) > 0.2).double()  # some samples left out
    return _Batch(obs, actions, log_probs, dist_params, advantages * mask, mask, torch.zeros(num_tasks, dtype=torch.float64))


def meta_objective(agent: MAML, inner: list[_Batch], valid: _Batch):
    def objective(outer: dict[str, torch.Tensor]) -> torch.Tensor:
        adapted = agent._replay_adaptation(outer, inner)
        dist = policy_forward(agent.policy, adapted, valid.obs.flatten(0, 1)).dist_params.reshape(*valid.obs.shape[:2], -1)
        log_probs = agent.policy.action_dist.log_prob(dist, valid.actions)
        return surrogate_loss(log_probs, valid.log_probs, valid.advantages, valid.mask).mean()

    return objective


def float64_agent(**overrides) -> MAML:
    agent = MAML(MAMLConfig(**{**TINY, **overrides}))
    agent.policy.double()
    agent.inner_lrs = {k: v.detach().double().requires_grad_(agent.config.learn_inner_lr) for k, v in agent.inner_lrs.items()}
    return agent


@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("learn_inner_lr", [False, True])
@pytest.mark.parametrize("inner_loop", ["batched", "looped"])
def test_second_order_meta_gradient_matches_finite_differences(
    inner_steps: int, learn_inner_lr: bool, inner_loop: str, finite_difference
) -> None:
    gen = torch.Generator().manual_seed(0)
    # The paper's REINFORCE inner loss: its meta-gradient is the exact derivative of the replayed objective
    # (LVC's stop-gradient adds a term that finite differences do not see; tested below).
    agent = float64_agent(learn_inner_lr=learn_inner_lr, inner_loop=inner_loop, inner_lr=0.5, inner_objective="reinforce")
    inner = [synthetic_batch(agent, 3, 7, gen) for _ in range(inner_steps)]
    valid = synthetic_batch(agent, 3, 9, gen)
    objective = meta_objective(agent, inner, valid)
    outer = agent._outer_params()
    grads = torch.autograd.grad(objective(outer), list(outer.values()))
    for _ in range(3):
        direction = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in outer.items()}
        analytic = float(sum((g * direction[k]).sum() for g, k in zip(grads, outer, strict=True)))
        assert analytic == pytest.approx(finite_difference(objective, outer, direction), rel=1e-6, abs=1e-9)


def test_first_order_gradient_is_the_gradient_at_the_adapted_parameters() -> None:
    gen = torch.Generator().manual_seed(1)
    first = float64_agent(first_order=True, inner_lr=0.5)
    second = float64_agent(first_order=False, inner_lr=0.5)
    inner, valid = [synthetic_batch(first, 3, 7, gen)], synthetic_batch(first, 3, 9, gen)
    outer = first._outer_params()
    fo_grads = torch.autograd.grad(meta_objective(first, inner, valid)(outer), list(outer.values()))
    # FOMAML: d/dtheta of L(adapted) with the adaptation's Jacobian taken as the identity,
    # i.e. the sum over tasks of the gradient at each task's adapted parameters.
    adapted = {k: v.detach().requires_grad_() for k, v in first._replay_adaptation(outer, inner).items()}
    dist = policy_forward(first.policy, adapted, valid.obs.flatten(0, 1)).dist_params.reshape(3, 9, -1)
    loss = surrogate_loss(
        first.policy.action_dist.log_prob(dist, valid.actions), valid.log_probs, valid.advantages, valid.mask
    ).mean()
    at_adapted = torch.autograd.grad(loss, list(adapted.values()))
    for g, a in zip(fo_grads, at_adapted, strict=True):
        torch.testing.assert_close(g, a.sum(0))
    so_grads = torch.autograd.grad(
        meta_objective(second, inner, valid)(second._outer_params()), list(second._outer_params().values())
    )
    assert not torch.allclose(flat(list(fo_grads)), flat(list(so_grads)))  # the second-order terms matter here


def test_lvc_inner_objective_adds_the_sampling_curvature_term() -> None:
    """ProMP's LVC inner loss: same adapted parameters; the meta-gradient gains alpha * sum_i E[A g g^T] u_i.

    ``g`` is a sample's score ``grad log pi(a|s)`` at the meta-parameters and ``u_i``
    the outer objective's gradient at task ``i``'s adapted parameters: the
    Hessian of ``-E[pi / stop_grad(pi) * A]`` exceeds that of ``-E[log pi * A]``
    by ``-E[A g g^T]``, and the adaptation's Jacobian is ``I - alpha * Hessian``.
    """
    gen = torch.Generator().manual_seed(4)
    reinforce = float64_agent(inner_lr=0.5, inner_objective="reinforce")
    lvc = float64_agent(inner_lr=0.5, inner_objective="lvc")
    inner, valid = [synthetic_batch(reinforce, 3, 7, gen)], synthetic_batch(reinforce, 3, 9, gen)
    outer = reinforce._outer_params()
    for k, v in reinforce._replay_adaptation(outer, inner).items():
        torch.testing.assert_close(v, lvc._replay_adaptation(lvc._outer_params(), inner)[k], rtol=0, atol=0)
    names = list(outer)
    grad_reinforce = flat(torch.autograd.grad(meta_objective(reinforce, inner, valid)(outer), list(outer.values())))
    lvc_outer = lvc._outer_params()
    grad_lvc = flat(torch.autograd.grad(meta_objective(lvc, inner, valid)(lvc_outer), list(lvc_outer.values())))

    adapted = {k: v.detach().requires_grad_() for k, v in reinforce._replay_adaptation(outer, inner).items()}
    dist = policy_forward(reinforce.policy, adapted, valid.obs.flatten(0, 1)).dist_params.reshape(3, 9, -1)
    loss = surrogate_loss(
        reinforce.policy.action_dist.log_prob(dist, valid.actions), valid.log_probs, valid.advantages, valid.mask
    ).mean()
    u = torch.stack([flat(list(t)) for t in zip(*torch.autograd.grad(loss, [adapted[k] for k in names]), strict=True)])
    batch = inner[0]
    expected = torch.zeros_like(grad_reinforce)
    for i in range(3):
        for s in range(7):
            dist_params = policy_forward(reinforce.policy, outer, batch.obs[i, s : s + 1]).dist_params
            log_prob = reinforce.policy.action_dist.log_prob(dist_params, batch.actions[i, s : s + 1]).sum()
            score = flat(torch.autograd.grad(log_prob, list(outer.values())))
            weight = batch.advantages[i, s] * batch.mask[i, s] / batch.mask[i].sum()
            expected += 0.5 * weight * score * (score @ u[i])
    torch.testing.assert_close(grad_lvc - grad_reinforce, expected)
    assert expected.norm() > 1e-3 * grad_reinforce.norm()  # the extra term is not negligible here


def test_fisher_subsample_picks_every_kth_step_and_keeps_the_adapted_point() -> None:
    agent = MAML(MAMLConfig(**{**TINY, "horizon": 10, "fisher_subsample": 3}))
    inner, valid, adapted = agent._sample_adaptation(agent.env, 3, 1)
    sub = valid.every_kth_step(3, envs_per_task=2)
    # Task-major samples are ordered (time, env): steps 0, 3, 6, 9 of both envs remain.
    expected = valid.obs.reshape(3, 10, 2, 2)[:, ::3].reshape(3, 8, 2)
    torch.testing.assert_close(sub.obs, expected, rtol=0, atol=0)
    assert sub.mask.shape == (3, 8) and torch.equal(sub.returns, valid.returns)
    params = agent._outer_params()
    sub_inner = [b.every_kth_step(3, 2) for b in inner]
    shifted = agent._outputs_fn(sub_inner, sub, exact_at=(params, adapted))(params)
    unshifted = agent._outputs_fn(sub_inner, sub)(params)
    torch.testing.assert_close(shifted, agent._outputs_fn(inner, sub)(params))  # exact at the point
    assert not torch.allclose(unshifted, shifted)  # the subsampled adaptation alone lands elsewhere


@pytest.mark.parametrize("learn_inner_lr", [False, True])
def test_sampled_adaptation_with_graph_equals_its_replay(learn_inner_lr: bool) -> None:
    """TRPO's gradient differentiates the adaptation kept from sampling; it must be the replayed function."""
    agent = MAML(MAMLConfig(**{**TINY, "inner_steps": 2, "learn_inner_lr": learn_inner_lr}))
    agent.env.set_tasks(agent.family.task_space.sample(3, generator=agent.task_generator).repeat_interleave(2))
    inner, _, kept = agent._sample_adaptation(agent.env, 3, 2, differentiable=True)
    outer = agent._outer_params()
    replayed = agent._replay_adaptation(outer, inner)
    weights = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(5)) for k, v in kept.items()}

    def gradient(adapted: dict[str, torch.Tensor]) -> torch.Tensor:
        return flat(torch.autograd.grad(sum((weights[k] * v).sum() for k, v in adapted.items()), list(outer.values())))

    for k in kept:
        torch.testing.assert_close(kept[k], replayed[k], rtol=0, atol=0)
    torch.testing.assert_close(gradient(kept), gradient(replayed))


def test_only_each_envs_first_episode_counts() -> None:
    """An env that terminates early autoresets; MAML's batch must mask out the steps after that."""
    agent = MAML(MAMLConfig(**{**TINY, "horizon": 8}))
    with torch.no_grad():
        for name, p in agent.policy.named_parameters():
            p.fill_(-20.0 if name == "log_std" else 0.0)  # actions ~ 0: the robot stays at the origin
    tasks = NavigationTasks(torch.tensor([[0.005, 0.005], [0.3, 0.3], [0.005, -0.005]]))  # goals 1 and 3: reached at once
    agent.env.set_tasks(tasks.repeat_interleave(2))
    batch = agent._rollout(agent.env, {k: v.detach() for k, v in agent.policy.named_parameters()}, 3)
    per_env = batch.mask.reshape(3, 8, 2).sum(1)  # task-major (M, T*E) -> steps counted per env
    assert per_env.tolist() == [[1, 1], [8, 8], [1, 1]]
    assert bool((batch.advantages[batch.mask == 0] == 0).all())
    torch.testing.assert_close(batch.returns, torch.tensor([-0.005 * 2**0.5, -8 * 0.3 * 2**0.5, -0.005 * 2**0.5]))


@pytest.mark.parametrize("inner_steps", [1, 2])
@pytest.mark.parametrize("learn_inner_lr", [False, True])
def test_fisher_vector_product_is_the_kl_hessian_through_adaptation(inner_steps: int, learn_inner_lr: bool) -> None:
    """At the sampling parameters, J^T H J v equals the exact Hessian-vector product of the KL through the adaptation."""
    gen = torch.Generator().manual_seed(3)
    agent = float64_agent(learn_inner_lr=learn_inner_lr, inner_lr=0.5)
    inner = [synthetic_batch(agent, 3, 7, gen) for _ in range(inner_steps)]
    valid = synthetic_batch(agent, 3, 9, gen)
    outer = {k: v.detach() for k, v in agent._outer_params().items()}
    outputs = agent._outputs_fn(inner, valid)
    valid.dist_params = outputs(outer).detach()  # sampled by the adapted policies, as in a meta-iteration
    kl = agent._kl_fn(valid)
    names = list(outer)

    def kl_of_flat(*tensors: torch.Tensor) -> torch.Tensor:
        return kl(outputs(dict(zip(names, tensors, strict=True))))

    product = fisher_vector_product(outer, outputs, kl, damping=0.0)
    for _ in range(2):
        v = {k: torch.randn(t.shape, generator=gen, dtype=torch.float64) for k, t in outer.items()}
        _, exact = torch.autograd.functional.hvp(kl_of_flat, tuple(outer.values()), tuple(v.values()))
        torch.testing.assert_close(product(flat(v)), flat(list(exact)), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("iters", [3, 8])
def test_conjugate_gradient_solves_and_returns_the_quadratic_form(iters: int) -> None:
    gen = torch.Generator().manual_seed(4)
    root = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    matrix = root @ root.T + 0.5 * torch.eye(8, dtype=torch.float64)
    b = torch.randn(8, generator=gen, dtype=torch.float64)
    x, quadratic = conjugate_gradient(lambda v: matrix @ v, b, iters)
    assert float(quadratic) == pytest.approx(float(x @ matrix @ x), rel=1e-9)
    if iters == 8:  # n iterations solve an n-dimensional system exactly (up to rounding)
        torch.testing.assert_close(x, torch.linalg.solve(matrix, b), rtol=1e-6, atol=1e-8)


def test_trpo_step_respects_the_kl_bound_and_improves() -> None:
    gen = torch.Generator().manual_seed(2)
    mean = torch.zeros(4, requires_grad=True)
    target = torch.randn(500, 4, generator=gen)
    old = torch.zeros(500, 8)  # N(0, 1) in every dimension

    def outputs(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([p["mean"].expand(500, 4), torch.zeros(500, 4)], dim=1)

    dist = metarl.policies.DiagGaussian(4)

    def kl(new: torch.Tensor) -> torch.Tensor:
        return dist.kl(old, new).mean()

    def loss(new: torch.Tensor) -> torch.Tensor:
        return ((new[:, :4] - target - 3.0) ** 2).mean()

    params = {"mean": mean}
    before = float(loss(outputs(params)).detach())
    stats = trpo_step(params, loss, outputs, kl, max_kl=0.01)
    with torch.no_grad():
        assert float(kl(outputs(params))) <= 0.01 + 1e-7
        assert float(loss(outputs(params))) < before and stats["improvement"] > 0
    # The step uses (nearly) the whole trust region: KL(N(0,1) || N(m,1)) = |m|^2 / 2.
    assert 0.5 * float(mean.detach().square().sum()) == pytest.approx(0.01, rel=0.25)


@pytest.mark.parametrize("fisher_subsample", [1, 4])
def test_meta_update_keeps_kl_through_adaptation_within_bound(fisher_subsample: int) -> None:
    agent = MAML(MAMLConfig(**{**TINY, "horizon": 20, "max_kl": 0.005, "fisher_subsample": fisher_subsample}))
    stats = agent.meta_train_step()
    assert 0 < stats["kl"] <= 0.005


def test_kl_bound_halves_every_half_life_and_binds_each_update() -> None:
    agent = MAML(MAMLConfig(**{**TINY, "horizon": 20, "max_kl": 0.008, "max_kl_half_life": 2}))
    bounds = []
    for _ in range(3):
        bound = agent.max_kl()
        stats = agent.meta_train_step()
        assert stats["max_kl"] == bound
        assert 0 < stats["kl"] <= bound
        bounds.append(bound)
    assert bounds == pytest.approx([0.008, 0.008 * 2**-0.5, 0.004])
    assert MAML(MAMLConfig(**TINY)).max_kl() == MAMLConfig.max_kl  # constant without a half-life


def test_ppo_outer_loop_runs_and_moves_parameters() -> None:
    agent = MAML(MAMLConfig(**{**TINY, "outer": "ppo", "learn_inner_lr": True}))
    before = flat({k: v.detach().clone() for k, v in agent._outer_params().items()})
    stats = agent.meta_train_step()
    assert set(stats) >= {"return_before_adaptation", "return_after_adaptation", "kl"}
    assert not torch.equal(before, flat(agent._outer_params()))


@pytest.mark.parametrize("outer", ["trpo", "ppo"])
def test_meta_sgd_without_inner_steps_trains_the_policy_alone(outer: str) -> None:
    """The pretrained baseline of a Meta-SGD run (inner_steps=0) has no step sizes to learn, and must not fail."""
    agent = MAML(MAMLConfig(**{**TINY, "learn_inner_lr": True, "inner_steps": 0, "outer": outer}))
    lrs = {k: v.detach().clone() for k, v in agent.inner_lrs.items()}
    weights = agent.policy.actor.layers[0].weight.detach().clone()
    agent.meta_train_step()
    assert not torch.equal(agent.policy.actor.layers[0].weight.detach(), weights)
    assert all(torch.equal(agent.inner_lrs[k], v) for k, v in lrs.items())


def test_fixed_log_std_is_not_meta_learned() -> None:
    agent = MAML(MAMLConfig(**{**TINY, "learn_log_std": False, "init_log_std": -0.5}))
    weights = agent.policy.actor.layers[0].weight.detach().clone()
    for _ in range(2):
        stats = agent.meta_train_step()
    assert torch.equal(agent.policy.log_std.detach(), torch.full((2,), -0.5))
    assert stats["policy_log_std"] == -0.5
    assert not torch.equal(agent.policy.actor.layers[0].weight.detach(), weights)


def test_same_seed_same_meta_training() -> None:
    runs = []
    for _ in range(2):
        agent = MAML(MAMLConfig(**TINY))
        for _ in range(2):
            agent.meta_train_step()
        runs.append(flat(dict(agent.policy.named_parameters())).detach())
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_state_dict_resumes_exactly() -> None:
    straight = MAML(MAMLConfig(**TINY))
    for _ in range(3):
        straight.meta_train_step()
    first = MAML(MAMLConfig(**TINY))
    first.meta_train_step()
    state = first.state_dict()
    resumed = MAML(MAMLConfig(**TINY))
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.meta_train_step()
    torch.testing.assert_close(
        flat(dict(straight.policy.named_parameters())), flat(dict(resumed.policy.named_parameters())), rtol=0, atol=0
    )
    assert resumed.iteration == 3


def test_rescaled_actions_policy_acts_in_unit_box() -> None:
    """With ``rescale_actions`` the policy's Gaussian lives on [-1, 1]^2, mapped onto Navigation2D's box
    [-0.1, 0.1]^2: a noiseless policy whose mean is 0.5 moves the robot by 0.05 per step (0.1, clipped, without)."""
    agent = MAML(MAMLConfig(**{**TINY, "rescale_actions": True, "init_log_std": -20.0}))
    assert agent.env.single_action_space.low.tolist() == [-1.0, -1.0]
    with torch.no_grad():
        head = agent.policy.actor.layers[-1]
        head.weight.zero_()
        head.bias.fill_(0.5)
    batch = agent._rollout(agent.env, {k: v.detach() for k, v in agent.policy.named_parameters()}, 3)
    torch.testing.assert_close(batch.actions, torch.full_like(batch.actions, 0.5), atol=1e-6, rtol=0)
    positions = batch.obs.unique()  # 0, 0.05, 0.1, ... along the diagonal
    torch.testing.assert_close(positions[:3], torch.tensor([0.0, 0.05, 0.1]))
    agent.meta_train_step()


def test_eval_episodes_per_task_sets_the_adaptation_batch_of_evaluation_only() -> None:
    agent = MAML(MAMLConfig(**{**TINY, "eval_episodes_per_task": 5}))
    tasks = held_out_tasks(agent.family, EvalConfig(num_tasks=4))
    assert agent.adaptation_curve(tasks, 1, torch.Generator().manual_seed(0)).shape == (2, 4)
    assert [env.num_envs for env in agent._eval_envs.values()] == [4 * 5]
    assert agent.env.num_envs == TINY["meta_batch_size"] * TINY["episodes_per_task"]


def test_checkpoint_in_other_action_units_is_refused() -> None:
    state = MAML(MAMLConfig(**{**TINY, "rescale_actions": False})).state_dict()
    with pytest.raises(ValueError, match="trained with rescale_actions=False.*pass maml --no-rescale-actions"):
        MAML(MAMLConfig(**TINY)).load_state_dict(state)
    del state["config"]["rescale_actions"]  # a checkpoint from before the option: the env's own units
    MAML(MAMLConfig(**{**TINY, "rescale_actions": False})).load_state_dict(state)


def test_discrete_actions_are_not_rescaled() -> None:
    agent = MAML(MAMLConfig(**{**TINY, "env_id": "metarl/CartPole-v0"}))
    assert isinstance(agent.env, metarl.TensorEnv)
    agent.meta_train_step()


def test_adaptation_curve_shape_and_no_side_effects() -> None:
    agent = MAML(MAMLConfig(**TINY))
    tasks = held_out_tasks(agent.family, EvalConfig(num_tasks=4))
    state = agent.action_generator.get_state()
    curve = agent.adaptation_curve(tasks, 2, torch.Generator().manual_seed(0))
    assert curve.shape == (3, 4)
    assert torch.equal(agent.action_generator.get_state(), state)
    again = agent.adaptation_curve(tasks, 2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(curve, again)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"inner_lr": 0.0}, "inner_lr must be positive, got 0.0"),
        ({"inner_lr": -0.1}, "inner_lr must be positive, got -0.1"),
        ({"meta_batch_size": 0}, "meta_batch_size must be a positive int, got 0"),
        ({"horizon": 0}, "horizon must be a positive int or None, got 0"),
        ({"max_kl": 0.0}, "max_kl must be positive"),
        ({"max_kl_half_life": 0}, "max_kl_half_life must be positive or None, got 0"),
        ({"gamma": 1.5}, r"gamma must lie in \[0, 1\], got 1.5"),
        ({"inner_steps": -1}, "inner_steps must be a non-negative int, got -1"),
        ({"outer": "sgd"}, "outer must be 'trpo' or 'ppo', got 'sgd'"),
        ({"ls_backtrack": 1.0}, r"ls_backtrack must lie in \(0, 1\)"),
        ({"fisher_subsample": 0}, "fisher_subsample must be a positive int, got 0"),
        ({"eval_episodes_per_task": 0}, "eval_episodes_per_task must be a positive int, got 0"),
        ({"inner_objective": "dice"}, "inner_objective must be 'reinforce' or 'lvc', got 'dice'"),
    ],
)
def test_bad_hyperparameters_are_refused(override: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MAMLConfig(**override)


def test_unknown_env_is_refused_before_any_work() -> None:
    with pytest.raises(metarl.UnknownFamilyError, match="Did you mean 'metarl/Navigation2D-v0'"):
        MAML(MAMLConfig(env_id="metarl/Navigation2d-v0"))


@pytest.mark.slow
def test_maml_learns_to_adapt_on_held_out_goals() -> None:
    torch.set_num_threads(1)
    config = MAMLConfig(meta_batch_size=10, episodes_per_task=10, seed=0)
    agent = MAML(config)
    for _ in range(40):
        agent.meta_train_step()
    tasks = held_out_tasks(agent.family, EvalConfig(num_tasks=20))
    curve = agent.adaptation_curve(tasks, 1, torch.Generator().manual_seed(0)).mean(dim=1)
    before, after = float(curve[0]), float(curve[1])
    assert after > before + 5.0, f"post-adaptation return {after:.1f} should clearly beat pre-adaptation {before:.1f}"
