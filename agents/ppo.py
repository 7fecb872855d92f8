"""The PPO update shared by the agents (Schulman et al. 2017), feed-forward or recurrent.

Recurrent policies are trained on chunks of ``bptt_length`` consecutive steps
that start from the hidden state stored during the rollout (truncated
backpropagation through time); inside a chunk the memory is reset exactly
where the rollout reset it. Chunks are independent given their stored start
state, so all of them run side by side as extra batch columns: one Python loop
over ``bptt_length`` steps, none over envs or chunks.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from agents.losses import ppo_clip_loss
from metarl.rollout import Params, Trajectories, policy_forward, task_batch_size
from metarl.validation import check_positive_int


@dataclasses.dataclass
class PPOSettings:
    """PPO update hyperparameters."""

    epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per pass (split over envs: whole sequences stay together)."""
    clip: float = 0.2
    """Ratio clip."""
    lr: float = 3e-4
    """Adam step size."""
    vf_coef: float = 0.5
    """Value-loss weight."""
    ent_coef: float = 0.01
    """Entropy-bonus weight."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    bptt_length: int | None = None
    """Recurrent policies: steps per truncated-BPTT chunk (None: the whole rollout)."""
    target_kl: float | None = None
    """Stop the update's remaining minibatches once one's approximate KL from the rollout policy exceeds
    1.5 x this, before its step (Stable-Baselines3's rule); None: always run every epoch. Not for stacked
    per-task parameters (Reptile), whose tasks would need to stop at different minibatches."""
    desired_kl: float | None = None
    """Adapt the step size to keep each update near this approximate KL from the rollout policy: before every minibatch's
    step but the update's first (whose KL is 0), divide it by 1.5 where that minibatch's KL exceeds twice this,
    multiply it by 1.5 where the KL is under half of it, within :data:`ADAPTIVE_LR_BOUNDS` (rsl_rl's adaptive
    schedule, Rudin et al. 2022, "Learning to Walk in Minutes"). The step size carries over from update to update in
    the optimizer (and its checkpoints); ``lr`` is where it starts. A fixed step size moves a Gaussian's mean by
    about the same amount every update, which costs ever more KL as the standard deviation shrinks; this holds the
    KL instead. None: the step size is left alone. Not for stacked per-task parameters (as ``target_kl``)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "num_minibatches"):
            check_positive_int(name, getattr(self, name))
        for name in ("clip", "lr", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("vf_coef", "ent_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)!r}")
        if self.bptt_length is not None and self.bptt_length < 1:
            raise ValueError(f"bptt_length must be a positive int or None, got {self.bptt_length!r}")
        for name in ("target_kl", "desired_kl"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive or None, got {getattr(self, name)!r}")


ADAPTIVE_LR_BOUNDS = (1e-5, 1e-2)
"""The range :attr:`PPOSettings.desired_kl` keeps the step size in (rsl_rl's)."""


def adapt_lr(optimizer: torch.optim.Optimizer, kl: float, desired_kl: float) -> None:
    """:attr:`PPOSettings.desired_kl`'s rule: shrink every group's step size by 1.5 when ``kl`` exceeds twice
    ``desired_kl``, grow it by 1.5 when ``kl`` is under half of it, within :data:`ADAPTIVE_LR_BOUNDS`."""
    low, high = ADAPTIVE_LR_BOUNDS
    for group in optimizer.param_groups:
        if kl > 2 * desired_kl:
            group["lr"] = max(group["lr"] / 1.5, low)
        elif kl < desired_kl / 2:
            group["lr"] = min(group["lr"] * 1.5, high)


def replay_sequence(
    policy: nn.Module,
    obs: torch.Tensor,
    hidden: torch.Tensor,
    reset_memory: torch.Tensor,
    params: Params | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a recurrent policy over ``(L, B, ...)`` observations from start states ``hidden`` (B, H).

    The memory is zeroed after every step where ``reset_memory`` is set, as in
    the rollout. ``params``: as in :func:`metarl.rollout.policy_forward`
    (default: the policy's own). Returns distribution parameters ``(L, B, P)`` and values ``(L, B)``.

    A policy with a ``forward_sequence`` (:class:`metarl.policies.GRUPolicy`)
    runs the whole sequence in one fused call when its parameters are plain
    and no reset falls inside the sequence (RL²'s rollouts are one trial, so
    its memory is reset only after the last step); otherwise one step at a time.
    """
    params = dict(policy.named_parameters()) if params is None else params
    fused = getattr(policy, "forward_sequence", None)
    if fused is not None and task_batch_size(policy, params) is None and not bool(reset_memory[:-1].any()):
        out = fused(params, obs, hidden)
        return out.dist_params, out.value
    dist, values = [], []
    for t in range(obs.shape[0]):
        out = policy_forward(policy, params, obs[t], hidden)
        dist.append(out.dist_params)
        values.append(out.value)
        hidden = torch.where(reset_memory[t].unsqueeze(-1), torch.zeros_like(out.hidden), out.hidden)
    return torch.stack(dist), torch.stack(values)


def _task_columns(x: torch.Tensor, length: int, num_tasks: int) -> torch.Tensor:
    """``(T, M*E, ...)`` -> ``(length, M, C, ...)``: each task's chunks (C = E * T // length) in its own row."""
    steps, envs = x.shape[:2]
    x = x.reshape(steps // length, length, num_tasks, envs // num_tasks, *x.shape[2:])
    x = x.permute(1, 2, 0, 3, *range(4, x.dim()))  # (length, M, chunks, E, ...)
    return x.reshape(length, num_tasks, -1, *x.shape[4:])


def clip_grad_norm_per_task(params: Params, max_norm: float) -> torch.Tensor:
    """Clip each task's gradient (row ``i`` of every ``(M, ...)`` param) to global norm ``max_norm``.

    The per-task version of ``nn.utils.clip_grad_norm_`` (same scaling rule),
    so M stacked tasks are clipped exactly as M separate models would be. Returns the norms ``(M,)``.
    """
    grads = [p.grad for p in params.values() if p.grad is not None]
    norms = torch.stack([g.flatten(1).square().sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.reshape(-1, *([1] * (g.dim() - 1))))
    return norms


def ppo_update(
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    traj: Trajectories,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    settings: PPOSettings,
    generator: torch.Generator,
    params: Params | None = None,
) -> dict[str, float]:
    """Several epochs of clipped-PPO minibatch updates on one rollout; returns mean losses.

    ``params`` default to the policy's own parameters (``optimizer`` steps
    them). Stacked per-task parameters ``(M, ...)`` (leaf tensors that
    ``optimizer`` steps) run M independent PPO learners as one computation:
    env ``i`` belongs to task ``i // (N // M)``, every minibatch takes the
    same sequence indices within each task, and advantages, losses and
    gradient clipping are per task. Since Adam is elementwise, each task's
    parameters follow exactly the path of a PPO run of its own.
    """
    dist = policy.action_dist
    stacked_tasks = None if params is None else task_batch_size(policy, params)
    params = dict(policy.named_parameters()) if params is None else params
    num_tasks = stacked_tasks or 1
    if stacked_tasks is not None:
        for name in ("target_kl", "desired_kl"):
            if getattr(settings, name) is not None:
                raise ValueError(
                    f"{name}={getattr(settings, name)} needs one learner; these parameters stack {stacked_tasks} tasks"
                )
    recurrent = traj.hidden is not None
    steps = traj.num_steps
    length = (settings.bptt_length or steps) if recurrent else 1
    if steps % length:
        raise ValueError(f"bptt_length {length} must divide the rollout length {steps}")
    fields = {
        "obs": traj.obs,
        "actions": traj.actions,
        "log_probs": traj.log_probs,
        "advantages": advantages,
        "returns": returns,
        "reset": traj.reset_memory,
    }
    if recurrent:
        fields["hidden"] = traj.hidden
    columns = {k: _task_columns(v, length, num_tasks) for k, v in fields.items()}
    if recurrent:
        columns["hidden"] = columns["hidden"][0]  # each chunk starts from its stored memory
    num_columns = columns["obs"].shape[2]
    if num_columns < settings.num_minibatches:
        raise ValueError(f"{num_columns} sequences per task cannot fill {settings.num_minibatches} minibatches")
    totals = torch.zeros(6, device=traj.obs.device)  # the stats named after the loop
    updates = 0
    stopped = False
    for _ in range(settings.epochs):
        if stopped:
            break
        order = torch.randperm(num_columns, generator=generator, device="cpu").to(traj.obs.device)
        for batch in order.chunk(settings.num_minibatches):
            # (length, M * B, ...): task-major, the layout policy_forward splits by task.
            mb = {k: v[:, :, batch].flatten(1, 2) if k != "hidden" else v[:, batch].flatten(0, 1) for k, v in columns.items()}
            if recurrent:
                dist_params, values = replay_sequence(policy, mb["obs"], mb["hidden"], mb["reset"], params)
            else:
                out = policy_forward(policy, params, mb["obs"][0])
                dist_params, values = out.dist_params.unsqueeze(0), out.value.unsqueeze(0)

            def per_task(x: torch.Tensor) -> torch.Tensor:  # (length, M * B) -> (M, length * B)
                return x.reshape(length, num_tasks, -1).transpose(0, 1).flatten(1)

            log_probs = per_task(dist.log_prob(dist_params, mb["actions"]))
            old_log_probs = per_task(mb["log_probs"])
            with torch.no_grad():  # before the step: both the early stop and the stats read them
                log_ratio = log_probs - old_log_probs
                approx_kl = approx_kl_from_log_ratio(log_ratio)
            # After the first step (an update always steps once); one host sync per minibatch, only when asked for.
            if settings.target_kl is not None and updates > 0 and approx_kl.item() > 1.5 * settings.target_kl:
                stopped = True
                break
            if settings.desired_kl is not None and updates > 0:  # the first minibatch's KL is 0 by construction
                adapt_lr(optimizer, approx_kl.item(), settings.desired_kl)
            adv = per_task(mb["advantages"])
            adv = (adv - adv.mean(1, keepdim=True)) / (adv.std(1, keepdim=True) + 1e-8)
            policy_loss = ppo_clip_loss(log_probs, old_log_probs, adv, settings.clip)
            value_loss = 0.5 * (per_task(values) - per_task(mb["returns"])).square().mean(1)
            entropy = per_task(dist.entropy(dist_params)).mean(1)
            # Summed over tasks: each task's parameters get the gradient of its own mean loss.
            loss = (policy_loss + settings.vf_coef * value_loss - settings.ent_coef * entropy).sum()
            optimizer.zero_grad()
            loss.backward()
            if stacked_tasks is not None:
                grad_norm = clip_grad_norm_per_task(params, settings.max_grad_norm).mean()
            else:
                grad_norm = nn.utils.clip_grad_norm_(list(params.values()), settings.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                clip_fraction = ((log_ratio.exp() - 1).abs() > settings.clip).float().mean()
                totals += torch.stack(
                    [policy_loss.mean(), value_loss.mean(), entropy.mean(), approx_kl, clip_fraction, grad_norm.detach()]
                )
            updates += 1
    # grad_norm: the global gradient norm before clipping (per task, averaged, for stacked parameters).
    names = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm")
    stats = dict(zip(names, (totals / updates).tolist(), strict=True))
    if settings.target_kl is not None:
        stats["minibatch_updates"] = float(updates)  # fewer than epochs x num_minibatches when the KL stop fired
    return stats


def approx_kl_from_log_ratio(log_ratio: torch.Tensor) -> torch.Tensor:
    """Mean of ``(r - 1) - log r`` with ``r`` the probability ratio: an unbiased, non-negative estimate of
    KL(old || new) from samples of the old policy (Schulman's "k3" estimator, also SB3's and CleanRL's)."""
    return ((log_ratio.exp() - 1) - log_ratio).mean()
