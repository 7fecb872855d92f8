"""The rollout engine: T steps of N envs into preallocated ``(T, N, ...)`` tensors on the env's device.

Policies are called functionally, ``policy_forward(policy, params, obs, hidden)``.
``params`` is a name -> tensor dict like ``dict(policy.named_parameters())``;
with a leading task dimension M on every tensor, env ``i`` acts with the
parameters of task ``i // (N // M)`` (M tasks x E envs, the layout of
``tasks.repeat_interleave(E)``), all tasks in one ``torch.func.vmap`` call.

Inside :func:`collect` there is no Python loop over envs or tasks and nothing
is read back to the host: episode statistics are tensors, summarised after.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch
from gymnasium import spaces
from torch import nn
from torch.func import functional_call, vmap

from metarl.env import StepOutput
from metarl.policies import PolicyOutput

Params = dict[str, torch.Tensor]


class BatchedEnv(Protocol):
    """What the engine needs of an env: :class:`metarl.env.TensorEnv` and the adapters provide it."""

    num_envs: int
    device: torch.device
    single_observation_space: spaces.Space
    single_action_space: spaces.Space

    def reset(self, seed: int | None = None) -> torch.Tensor: ...

    def step(self, action: torch.Tensor) -> StepOutput: ...


def task_batch_size(policy: nn.Module, params: Params) -> int | None:
    """M if every tensor of ``params`` carries a leading task dimension, ``None`` if none does."""
    reference = dict(policy.named_parameters())
    if set(params) != set(reference):
        missing, extra = sorted(set(reference) - set(params)), sorted(set(params) - set(reference))
        raise KeyError(f"params do not match the policy: missing {missing}, unexpected {extra}")
    sizes = set()
    for name, value in params.items():
        extra_dims = value.dim() - reference[name].dim()
        if extra_dims not in (0, 1) or value.shape[extra_dims:] != reference[name].shape:
            expected = tuple(reference[name].shape)
            got = tuple(value.shape)
            raise ValueError(f"param {name!r} has shape {got}; policy expects {expected}, optionally after a task dimension")
        sizes.add(value.shape[0] if extra_dims else None)
    if len(sizes) != 1:
        raise ValueError(f"either every param carries a task dimension or none does; got leading sizes {sizes}")
    return sizes.pop()


def _apply(policy: nn.Module, params: Params, obs: torch.Tensor, hidden: torch.Tensor | None) -> PolicyOutput:
    """``policy`` under ``params``: its own ``forward_with`` if it has one (ours do), else ``functional_call``."""
    forward_with = getattr(policy, "forward_with", None)
    if forward_with is not None:
        return forward_with(params, obs, hidden)
    return functional_call(policy, params, (obs, hidden))


def policy_forward(policy: nn.Module, params: Params, obs: torch.Tensor, hidden: torch.Tensor | None = None) -> PolicyOutput:
    """Run ``policy`` with ``params`` on a batch; batches over a leading task dimension of ``params`` if present."""
    num_tasks = task_batch_size(policy, params)
    if num_tasks is None:
        return _apply(policy, params, obs, hidden)
    batch = obs.shape[0]
    if batch % num_tasks:
        raise ValueError(f"{batch} envs cannot be split evenly among {num_tasks} tasks' parameters")
    per_task = batch // num_tasks

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(num_tasks, per_task, *x.shape[1:])

    def merge(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.reshape(batch, *x.shape[2:])

    if getattr(policy, "task_batched_forward", False):
        # The policy broadcasts over the task dimension itself: one call, no vmap.
        out = _apply(policy, params, split(obs), None if hidden is None else split(hidden))
        return PolicyOutput(*(merge(x) for x in out))

    present: list[bool] = []  # which PolicyOutput fields are tensors (vmap cannot return None)

    def one_task(p: Params, o: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        out = _apply(policy, p, o, h)
        present[:] = [x is not None for x in out]
        return tuple(x for x in out if x is not None)

    in_dims = (0, 0, None if hidden is None else 0)
    tensors = iter(vmap(one_task, in_dims=in_dims)(params, split(obs), None if hidden is None else split(hidden)))
    return PolicyOutput(*(merge(next(tensors)) if here else None for here in present))


@dataclasses.dataclass
class RolloutCarry:
    """What one :func:`collect` call hands to the next: the current observations and memory."""

    obs: torch.Tensor
    hidden: torch.Tensor | None


def start(env: BatchedEnv, policy: nn.Module, seed: int | None = None) -> RolloutCarry:
    """Reset ``env`` and return the carry a first :func:`collect` starts from."""
    obs = env.reset(seed=seed)
    return RolloutCarry(obs, policy.initial_hidden(env.num_envs, env.device))


@dataclasses.dataclass(frozen=True)
class Trajectories:
    """``T`` steps of ``N`` envs; every field is ``(T, N, ...)`` on the env's device.

    ``hidden`` is the memory each step's action was taken with (recurrent
    policies). ``final_values`` is the value of ``final_obs`` (computed with the
    memory before its reset) and ``last_value`` the value of the observation
    after the last step: together they bootstrap returns at truncations and at
    the rollout's end. Value fields are ``None`` for policies without a value head.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    dist_params: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    reset_memory: torch.Tensor
    final_obs: torch.Tensor
    episode_return: torch.Tensor
    episode_length: torch.Tensor
    values: torch.Tensor | None
    final_values: torch.Tensor | None
    last_value: torch.Tensor | None
    hidden: torch.Tensor | None

    @property
    def done(self) -> torch.Tensor:
        return self.terminated | self.truncated

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_envs(self) -> int:
        return self.rewards.shape[1]

    def episode_stats(self) -> dict[str, torch.Tensor]:
        """Mean return and length of the episodes that ended in this rollout, and their count (tensors)."""
        done = self.done
        count = done.sum()
        denom = count.clamp_min(1)
        return {
            "episode_return": (self.episode_return * done).sum() / denom,
            "episode_length": (self.episode_length * done).sum() / denom,
            "episodes": count,
        }


def _empty(num_steps: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.empty((num_steps, *like.shape), dtype=dtype or like.dtype, device=like.device)


@torch.no_grad()
def collect(
    env: BatchedEnv,
    policy: nn.Module,
    params: Params,
    num_steps: int,
    carry: RolloutCarry,
    generator: torch.Generator | None = None,
    deterministic: bool = False,
) -> tuple[Trajectories, RolloutCarry]:
    """Collect ``num_steps`` steps from every env of ``env`` with ``policy`` under ``params``.

    Args:
        env: a batched env (actions come from a policy over its space, so build
            it with ``validate_actions=False`` to keep the loop free of host reads).
        policy: an :class:`~metarl.policies.MLPPolicy`/:class:`~metarl.policies.GRUPolicy`.
        params: the policy's parameters, optionally with a leading task dimension.
        num_steps: rollout length ``T``.
        carry: from :func:`start` or the previous call.
        generator: action-sampling generator on the env's device.
        deterministic: take the distribution's mode instead of sampling.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    dist = policy.action_dist
    obs, hidden = carry.obs, carry.hidden
    first = policy_forward(policy, params, obs, hidden)
    has_value = first.value is not None

    # Storage is allocated once, shaped from the first step's tensors.
    num_envs = obs.shape[0]
    flags = torch.empty(num_envs, dtype=torch.bool, device=obs.device)
    scalars = torch.empty(num_envs, device=obs.device)
    action_like = dist.mode(first.dist_params)
    buf_obs, buf_final_obs = _empty(num_steps, obs), _empty(num_steps, obs)
    buf_actions = _empty(num_steps, action_like)
    buf_dist = _empty(num_steps, first.dist_params)
    buf_logp, buf_rew, buf_ret = (_empty(num_steps, scalars) for _ in range(3))
    buf_len = _empty(num_steps, scalars, torch.long)
    buf_term, buf_trunc, buf_reset = (_empty(num_steps, flags) for _ in range(3))
    buf_values = _empty(num_steps, scalars) if has_value else None
    buf_hidden = _empty(num_steps, hidden) if hidden is not None else None
    buf_next_hidden = _empty(num_steps, hidden) if hidden is not None else None
    initial_hidden = torch.zeros_like(hidden) if hidden is not None else None

    out = first
    for t in range(num_steps):
        if t > 0:
            out = policy_forward(policy, params, obs, hidden)
        action = dist.mode(out.dist_params) if deterministic else dist.sample(out.dist_params, generator)
        step = env.step(action)
        buf_obs[t] = obs
        buf_actions[t] = action
        buf_dist[t] = out.dist_params
        buf_logp[t] = dist.log_prob(out.dist_params, action)
        buf_rew[t] = step.reward
        buf_term[t] = step.terminated
        buf_trunc[t] = step.truncated
        buf_reset[t] = step.reset_memory
        buf_final_obs[t] = step.final_obs
        buf_ret[t] = step.episode_return
        buf_len[t] = step.episode_length
        if buf_values is not None:
            buf_values[t] = out.value
        if buf_hidden is not None:
            buf_hidden[t] = hidden
            buf_next_hidden[t] = out.hidden
            hidden = torch.where(step.reset_memory.unsqueeze(-1), initial_hidden, out.hidden)
        obs = step.obs

    final_values = last_value = None
    if has_value:
        # Values of the episodes' last observations, for bootstrapping at truncation: one batched call.
        flat_next_hidden = None if buf_next_hidden is None else buf_next_hidden.flatten(0, 1)
        final_values = _values_over_time(policy, params, buf_final_obs, flat_next_hidden)
        last_value = policy_forward(policy, params, obs, hidden).value
    traj = Trajectories(
        obs=buf_obs,
        actions=buf_actions,
        log_probs=buf_logp,
        dist_params=buf_dist,
        rewards=buf_rew,
        terminated=buf_term,
        truncated=buf_trunc,
        reset_memory=buf_reset,
        final_obs=buf_final_obs,
        episode_return=buf_ret,
        episode_length=buf_len,
        values=buf_values,
        final_values=final_values,
        last_value=last_value,
        hidden=buf_hidden,
    )
    return traj, RolloutCarry(obs, hidden)


def first_episode_mask(done: torch.Tensor) -> torch.Tensor:
    """``(T, N)`` bool: the steps of each env's first episode in a rollout that started from a reset.

    Per-task returns measured on first episodes only are unbiased by the
    policy's speed: an env whose episode ended early has autoreset and begun a
    second episode that the rollout's end would cut off.
    """
    return torch.cumprod(torch.cat([torch.ones_like(done[:1]), ~done[:-1]]), dim=0).bool()


def first_episode_returns(traj: Trajectories, num_tasks: int) -> torch.Tensor:
    """Mean undiscounted return of each env's first episode, per task ``(M,)`` (envs grouped by task)."""
    per_env = (traj.rewards * first_episode_mask(traj.done)).sum(0)
    return per_env.reshape(num_tasks, -1).mean(1)


def to_task_major(x: torch.Tensor, num_tasks: int) -> torch.Tensor:
    """``(T, M*E, ...)`` rollout data as ``(M, T*E, ...)``: each task's samples contiguous."""
    num_steps, num_envs = x.shape[:2]
    if num_envs % num_tasks:
        raise ValueError(f"{num_envs} envs cannot be split evenly among {num_tasks} tasks")
    per_task = num_envs // num_tasks
    x = x.reshape(num_steps, num_tasks, per_task, *x.shape[2:]).transpose(0, 1)
    return x.reshape(num_tasks, num_steps * per_task, *x.shape[3:])


def from_task_major(x: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Inverse of :func:`to_task_major`: ``(M, T*E, ...)`` back to ``(T, M*E, ...)``."""
    num_tasks, samples = x.shape[:2]
    per_task = samples // num_steps
    x = x.reshape(num_tasks, num_steps, per_task, *x.shape[2:]).transpose(0, 1)
    return x.reshape(num_steps, num_tasks * per_task, *x.shape[3:])


def evaluate_actions(
    policy: nn.Module, params: Params, obs: torch.Tensor, actions: torch.Tensor, num_tasks: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities and distribution parameters of stored ``(T, N)`` actions under ``params``.

    Feed-forward policies only. Results are task-major, ``(M, T*E)`` and
    ``(M, T*E, P)``, the layout per-task losses reduce over; ``params`` may
    carry a task dimension of size ``num_tasks`` (differentiable either way).
    """
    obs_tm = to_task_major(obs, num_tasks)
    out = policy_forward(policy, params, obs_tm.flatten(0, 1), None)
    dist_params = out.dist_params.reshape(*obs_tm.shape[:2], -1)
    return policy.action_dist.log_prob(dist_params, to_task_major(actions, num_tasks)), dist_params


def _values_over_time(policy: nn.Module, params: Params, obs: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
    """Values of ``(T, N, ...)`` observations in one call (time folded into the batch per task)."""
    num_steps, num_envs = obs.shape[:2]
    num_tasks = task_batch_size(policy, params) or 1
    hidden_tn = None if hidden is None else to_task_major(hidden.reshape(num_steps, num_envs, -1), num_tasks).flatten(0, 1)
    values = policy_forward(policy, params, to_task_major(obs, num_tasks).flatten(0, 1), hidden_tn).value
    return from_task_major(values.reshape(num_tasks, -1), num_steps)
