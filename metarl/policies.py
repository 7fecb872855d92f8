"""Policy modules (MLP and GRU) and the action distributions they parameterize.

A policy maps ``(obs, hidden)`` to a :class:`PolicyOutput`: one tensor of
distribution parameters (Gaussian: mean and log-std concatenated; categorical:
logits), an optional value, and the next hidden state. A single tensor keeps
``torch.func.vmap`` over per-task parameters and rollout storage simple. The
matching :class:`ActionDistribution` samples with an explicit generator and
computes log-probabilities, entropies and KL divergences from those parameters.
"""

from __future__ import annotations

import functools
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from gymnasium import spaces
from torch import nn


class PolicyOutput(NamedTuple):
    dist_params: torch.Tensor
    value: torch.Tensor | None
    hidden: torch.Tensor | None


class ActionDistribution(ABC):
    """Operations on a batch of distribution parameters ``(..., param_dim)``."""

    @abstractmethod
    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...

    @abstractmethod
    def mode(self, params: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def log_prob(self, params: torch.Tensor, action: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def entropy(self, params: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def kl(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """KL(p || q), one value per distribution."""


class DiagGaussian(ActionDistribution):
    """Diagonal Gaussian; params are ``[mean, log_std]`` along the last dimension."""

    def __init__(self, action_dim: int) -> None:
        self.action_dim = action_dim

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return params[..., : self.action_dim], params[..., self.action_dim :]

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, log_std = self._split(params)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + noise * log_std.exp()

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        return self._split(params)[0]

    def log_prob(self, params: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        mean, log_std = self._split(params)
        z = (action - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        _, log_std = self._split(params)
        return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    def kl(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        mp, lp = self._split(p)
        mq, lq = self._split(q)
        return (lq - lp + (torch.exp(2 * lp) + (mp - mq).square()) / (2 * torch.exp(2 * lq)) - 0.5).sum(-1)


class Categorical(ActionDistribution):
    """Categorical over ``n`` actions; params are logits."""

    def __init__(self, n: int) -> None:
        self.n = n

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # Gumbel-max: one batched draw, works with any generator and device.
        u = torch.rand(params.shape, generator=generator, device=params.device, dtype=params.dtype)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
        return torch.argmax(params + gumbel, dim=-1)

    def mode(self, params: torch.Tensor) -> torch.Tensor:
        return torch.argmax(params, dim=-1)

    def log_prob(self, params: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return torch.gather(F.log_softmax(params, dim=-1), -1, action.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, params: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(params, dim=-1)
        return -(logp.exp() * logp).sum(-1)

    def kl(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        logp, logq = F.log_softmax(p, dim=-1), F.log_softmax(q, dim=-1)
        return (logp.exp() * (logp - logq)).sum(-1)


def distribution_for(action_space: spaces.Space) -> tuple[ActionDistribution, int]:
    """The distribution for an action space and its parameter width."""
    if isinstance(action_space, spaces.Discrete):
        return Categorical(int(action_space.n)), int(action_space.n)
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        dim = int(action_space.shape[0])
        return DiagGaussian(dim), 2 * dim
    raise TypeError(f"no action distribution for {action_space}; use Discrete or a 1-D Box")


_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


def task_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A linear layer that also works when its parameters carry a leading task dimension.

    With weight ``(M, out, in)``, bias ``(M, out)`` and ``x`` of shape
    ``(M, E, in)`` every task's envs meet that task's weights in one batched
    matmul; with plain parameters it is an ordinary linear layer.
    """
    return torch.matmul(x, weight.mT) + bias.unsqueeze(-2)


class MLP(nn.Module):
    """Linear layers with an activation between them, task-batchable through :func:`task_linear`."""

    def __init__(self, sizes: Sequence[int], activation: str) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.activation = _ACTIVATIONS[activation]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with(dict(self.named_parameters()), x)

    def forward_with(self, params: Mapping[str, torch.Tensor], x: torch.Tensor, prefix: str = "") -> torch.Tensor:
        """The forward pass under ``params`` (names as in ``named_parameters()``, after ``prefix``)."""
        last = len(self.layers) - 1
        for i in range(last + 1):
            x = task_linear(x, params[f"{prefix}layers.{i}.weight"], params[f"{prefix}layers.{i}.bias"])
            if i < last:
                x = self.activation(x)
        return x


def _with_log_std(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """``[mean, log_std]`` along the last dim; ``log_std`` is ``(A,)`` or per task ``(M, A)``."""
    return torch.cat([mean, log_std.unsqueeze(-2).expand_as(mean)], dim=-1)


class _PolicyBase(nn.Module):
    """What the rollout engine needs from a policy besides ``forward``.

    ``task_batched_forward``: ``forward`` accepts parameters with a leading task
    dimension M and inputs shaped ``(M, E, ...)`` (the engine then calls it
    directly instead of through ``vmap``).

    ``forward_with(params, obs, hidden)`` (both our policies): ``forward``
    under a name -> tensor dict like ``named_parameters()``, in plain tensor
    code. The engine calls it on every step; for a module without it, it falls
    back to ``torch.func.functional_call``, which swaps every tensor into the
    module on each call.
    """

    action_dist: ActionDistribution
    hidden_size: int = 0
    task_batched_forward: bool = True

    @property
    def is_recurrent(self) -> bool:
        return self.hidden_size > 0

    def initial_hidden(self, batch_size: int, device: torch.device | str) -> torch.Tensor | None:
        return torch.zeros(batch_size, self.hidden_size, device=device) if self.is_recurrent else None


class MLPPolicy(_PolicyBase):
    """Feed-forward policy: Gaussian (state-independent log-std) or categorical head, optional value head.

    ``hidden`` is accepted and ignored, so every policy has one signature.
    """

    def __init__(
        self,
        obs_dim: int,
        action_space: spaces.Space,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        value_head: bool = False,
        init_log_std: float = 0.0,
    ) -> None:
        super().__init__()
        self.action_dist, param_dim = distribution_for(action_space)
        self.gaussian = isinstance(self.action_dist, DiagGaussian)
        out_dim = param_dim // 2 if self.gaussian else param_dim
        self.actor = MLP([obs_dim, *hidden_sizes, out_dim], activation)
        if self.gaussian:
            self.log_std = nn.Parameter(torch.full((out_dim,), float(init_log_std)))
        self.critic = MLP([obs_dim, *hidden_sizes, 1], activation) if value_head else None

    def forward(self, obs: torch.Tensor, hidden: torch.Tensor | None = None) -> PolicyOutput:
        return self.forward_with(dict(self.named_parameters()), obs, hidden)

    def forward_with(
        self, params: Mapping[str, torch.Tensor], obs: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> PolicyOutput:
        out = self.actor.forward_with(params, obs, "actor.")
        if self.gaussian:
            out = _with_log_std(out, params["log_std"])
        value = self.critic.forward_with(params, obs, "critic.").squeeze(-1) if self.critic is not None else None
        return PolicyOutput(out, value, None)


def _gru_gates(input_size: int, hidden_size: int) -> tuple[nn.Linear, nn.Linear]:
    """The input and hidden linear layers of one GRU cell, initialised like ``nn.GRUCell``."""
    input_gates, hidden_gates = nn.Linear(input_size, 3 * hidden_size), nn.Linear(hidden_size, 3 * hidden_size)
    bound = 1.0 / math.sqrt(hidden_size)
    for p in (*input_gates.parameters(), *hidden_gates.parameters()):
        nn.init.uniform_(p, -bound, bound)
    return input_gates, hidden_gates


def _gru_cell(x: torch.Tensor, h: torch.Tensor, params: Mapping[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """PyTorch's ``nn.GRUCell`` equations from the gate layers ``{prefix}input_gates`` and
    ``{prefix}hidden_gates`` of ``params``, so they batch over per-task parameters (``nn.GRUCell`` has no
    ``vmap`` rule)."""
    i_r, i_z, i_n = task_linear(x, params[f"{prefix}input_gates.weight"], params[f"{prefix}input_gates.bias"]).chunk(3, -1)
    h_r, h_z, h_n = task_linear(h, params[f"{prefix}hidden_gates.weight"], params[f"{prefix}hidden_gates.bias"]).chunk(3, -1)
    reset = torch.sigmoid(i_r + h_r)
    update = torch.sigmoid(i_z + h_z)
    candidate = torch.tanh(i_n + reset * h_n)
    return (1 - update) * candidate + update * h


@functools.cache
def _gru_shell(input_size: int, hidden_size: int) -> nn.GRU:
    """A weightless ``nn.GRU`` (on the meta device) that :meth:`GRUPolicy.forward_sequence` runs under its own
    gate parameters with ``functional_call``: the fused recurrent kernel (cuDNN on CUDA) without a second copy of
    the weights in the policy's parameters or checkpoints."""
    return nn.GRU(input_size, hidden_size, device="meta")


class GRUPolicy(_PolicyBase):
    """Recurrent policy: a GRU cell over the input, linear policy and value heads on its state.

    With ``separate_critic`` the value head reads a second GRU of its own (as
    sb3-contrib's ``RecurrentPPO`` does by default), so regressing values does
    not shape the policy's memory; the carried state is then both GRUs'
    states side by side, ``hidden_size`` = 2 × ``cell_size``.

    ``encoder_size``: the GRU reads a ReLU layer of this width over the input
    instead of the raw input (shared by both GRUs). One ReLU unit can compute
    an AND of input features exactly, e.g. "arm i was pulled and paid 1" from
    RL²'s one-hot previous action and previous reward, which a GRU's gates,
    linear in the input, can only approximate. ``head_size``: the policy and
    value heads each get a tanh layer of this width on the GRU state, so the
    state need not hold the action preferences linearly. Off by default: the
    RL² paper's policy is a GRU with linear heads.
    """

    def __init__(
        self,
        obs_dim: int,
        action_space: spaces.Space,
        hidden_size: int = 128,
        value_head: bool = True,
        init_log_std: float = 0.0,
        separate_critic: bool = False,
        encoder_size: int | None = None,
        head_size: int | None = None,
    ) -> None:
        super().__init__()
        for name, size in (("hidden_size", hidden_size), ("encoder_size", encoder_size), ("head_size", head_size)):
            if size is not None and size < 1:
                raise ValueError(f"{name} must be positive, got {size}")
        if separate_critic and not value_head:
            raise ValueError("separate_critic=True needs value_head=True (the second GRU feeds the value head)")
        self.cell_size = hidden_size
        self.hidden_size = hidden_size * (2 if separate_critic else 1)
        self.separate_critic = separate_critic
        self.action_dist, param_dim = distribution_for(action_space)
        self.gaussian = isinstance(self.action_dist, DiagGaussian)
        out_dim = param_dim // 2 if self.gaussian else param_dim
        self.encoder = nn.Linear(obs_dim, encoder_size) if encoder_size is not None else None
        self.gru_input_size = encoder_size or obs_dim
        self.input_gates, self.hidden_gates = _gru_gates(self.gru_input_size, hidden_size)
        if separate_critic:
            self.critic_input_gates, self.critic_hidden_gates = _gru_gates(self.gru_input_size, hidden_size)

        def head(size: int) -> nn.Module:  # a plain Linear without head_size keeps older checkpoints' names
            return nn.Linear(hidden_size, size) if head_size is None else MLP([hidden_size, head_size, size], "tanh")

        self.actor = head(out_dim)
        if self.gaussian:
            self.log_std = nn.Parameter(torch.full((out_dim,), float(init_log_std)))
        self.critic = head(1) if value_head else None

    def gate_layers(self) -> tuple[nn.Linear, ...]:
        """The GRU gate layers (initialised with fan ``cell_size``, as ``nn.GRUCell`` does)."""
        if self.separate_critic:
            return self.input_gates, self.hidden_gates, self.critic_input_gates, self.critic_hidden_gates
        return self.input_gates, self.hidden_gates

    def forward(self, obs: torch.Tensor, hidden: torch.Tensor | None = None) -> PolicyOutput:
        return self.forward_with(dict(self.named_parameters()), obs, hidden)

    def forward_with(
        self, params: Mapping[str, torch.Tensor], obs: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> PolicyOutput:
        if hidden is None:
            hidden = obs.new_zeros(*obs.shape[:-1], self.hidden_size)
        x = self._encode(params, obs)
        if not self.separate_critic:
            h = h_critic = _gru_cell(x, hidden, params, "")
        else:
            h_actor, h_critic = hidden.split(self.cell_size, dim=-1)
            h = _gru_cell(x, h_actor, params, "")
            h_critic = _gru_cell(x, h_critic, params, "critic_")
        state = torch.cat([h, h_critic], dim=-1) if self.separate_critic else h
        return PolicyOutput(*self._heads(params, h, h_critic), state)

    def _heads(
        self, params: Mapping[str, torch.Tensor], h: torch.Tensor, h_critic: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Distribution parameters from the actor's states ``h``, values (or None) from the critic's ``h_critic``."""
        out = _head(self.actor, params, "actor.", h)
        if self.gaussian:
            out = _with_log_std(out, params["log_std"])
        value = None if self.critic is None else _head(self.critic, params, "critic.", h_critic).squeeze(-1)
        return out, value

    def _encode(self, params: Mapping[str, torch.Tensor], obs: torch.Tensor) -> torch.Tensor:
        """The GRUs' input: ``obs``, or the encoder's ReLU features of it."""
        if self.encoder is None:
            return obs
        return torch.relu(task_linear(obs, params["encoder.weight"], params["encoder.bias"]))

    def forward_sequence(self, params: Mapping[str, torch.Tensor], obs: torch.Tensor, hidden: torch.Tensor) -> PolicyOutput:
        """:meth:`forward_with` over ``L`` consecutive steps ``(L, B, obs_dim)`` from states ``(B, hidden_size)``,
        with no memory reset inside the sequence.

        Each GRU runs as one fused recurrent kernel (``nn.GRU``'s: cuDNN on
        CUDA) instead of ``L`` cell calls, the same equations: on a GPU, where
        a cell call is a dozen small kernel launches, this is what makes a
        recurrent PPO update fast. On Ampere and later GPUs cuDNN computes it
        in TF32 unless ``torch.backends.cudnn.allow_tf32`` is off (PyTorch's
        default is on): about 1e-4 from the cell's float32 on an H100, noise
        that PPO's ratio clipping absorbs. Plain parameters only (no leading
        task dimension). Returns distribution parameters ``(L, B, P)``, values
        ``(L, B)`` (or None) and the last state ``(B, hidden_size)``.
        """
        if params["input_gates.weight"].dim() != 2:
            raise ValueError("forward_sequence takes plain parameters; per-task stacks go through forward_with step by step")
        shell = _gru_shell(self.gru_input_size, self.cell_size)
        x = self._encode(params, obs)

        def run(h0: torch.Tensor, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
            weights = {
                "weight_ih_l0": params[f"{prefix}input_gates.weight"],
                "weight_hh_l0": params[f"{prefix}hidden_gates.weight"],
                "bias_ih_l0": params[f"{prefix}input_gates.bias"],
                "bias_hh_l0": params[f"{prefix}hidden_gates.bias"],
            }
            with warnings.catch_warnings():
                # cuDNN copies the four weights into one buffer on every call: expected, they live in our own layers.
                warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")
                states, last = torch.func.functional_call(shell, weights, (x, h0.unsqueeze(0).contiguous()))
            return states, last[0]

        if not self.separate_critic:
            states, last = run(hidden, "")
            states_critic = states
        else:
            h_actor, h_critic = hidden.split(self.cell_size, dim=-1)
            states, last_actor = run(h_actor, "")
            states_critic, last_critic = run(h_critic, "critic_")
            last = torch.cat([last_actor, last_critic], dim=-1)
        return PolicyOutput(*self._heads(params, states, states_critic), last)


def _head(module: nn.Module, params: Mapping[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """A :class:`GRUPolicy` head (a Linear, or an :class:`MLP` with ``head_size``) under ``params``."""
    if isinstance(module, MLP):
        return module.forward_with(params, x, prefix)
    return task_linear(x, params[f"{prefix}weight"], params[f"{prefix}bias"])


Policy = MLPPolicy | GRUPolicy


@torch.no_grad()
def init_parameters(policy: nn.Module, generator: torch.Generator, scheme: str = "torch") -> nn.Module:
    """Re-draw every linear layer's parameters from ``generator`` (no global RNG).

    ``"torch"``: PyTorch's defaults: weights and biases ~ U(±1/sqrt(fan_in)) as
    ``nn.Linear`` does, a GRU's gate layers U(±1/sqrt(hidden)) as ``nn.GRUCell``
    does. ``"xavier"``: Glorot-uniform weights and zero biases, the scheme of
    rllab and of the MAML paper's code. Log-std parameters keep their value.
    """
    if scheme not in ("torch", "xavier"):
        raise ValueError(f"scheme must be 'torch' or 'xavier', got {scheme!r}")
    gru_gates = {id(g) for m in policy.modules() if isinstance(m, GRUPolicy) for g in m.gate_layers()}
    for module in policy.modules():
        if not isinstance(module, nn.Linear):
            continue
        if scheme == "xavier":
            bound = math.sqrt(6.0 / (module.in_features + module.out_features))
            module.weight.uniform_(-bound, bound, generator=generator)
            module.bias.zero_()
            continue
        fan = module.out_features // 3 if id(module) in gru_gates else module.in_features
        bound = 1.0 / math.sqrt(fan)
        module.weight.uniform_(-bound, bound, generator=generator)
        module.bias.uniform_(-bound, bound, generator=generator)
    return policy
