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
from metarl.rollout import Trajectories
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


def replay_sequence(
    policy: nn.Module, obs: torch.Tensor, hidden: torch.Tensor, reset_memory: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a recurrent policy over ``(L, B, ...)`` observations from start states ``hidden`` (B, H).

    The memory is zeroed after every step where ``reset_memory`` is set, as in
    the rollout. Returns distribution parameters ``(L, B, P)`` and values ``(L, B)``.
    """
    dist, values = [], []
    for t in range(obs.shape[0]):
        out = policy(obs[t], hidden)
        dist.append(out.dist_params)
        values.append(out.value)
        hidden = torch.where(reset_memory[t].unsqueeze(-1), torch.zeros_like(out.hidden), out.hidden)
    return torch.stack(dist), torch.stack(values)


def _chunks(x: torch.Tensor, length: int) -> torch.Tensor:
    """``(T, N, ...)`` -> ``(length, N * T // length, ...)``: consecutive chunks side by side."""
    steps, envs = x.shape[:2]
    x = x.reshape(steps // length, length, envs, *x.shape[2:]).transpose(0, 1)
    return x.reshape(length, (steps // length) * envs, *x.shape[3:])


def ppo_update(
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    traj: Trajectories,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    settings: PPOSettings,
    generator: torch.Generator,
) -> dict[str, float]:
    """Several epochs of clipped-PPO minibatch updates on one rollout; returns mean losses."""
    dist = policy.action_dist
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
    columns = {k: _chunks(v, length) for k, v in fields.items()}
    if recurrent:
        columns["hidden"] = columns["hidden"][0]  # each chunk starts from its stored memory
    num_columns = columns["obs"].shape[1]
    if num_columns < settings.num_minibatches:
        raise ValueError(f"{num_columns} sequences cannot fill {settings.num_minibatches} minibatches")
    totals = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0}
    updates = 0
    for _ in range(settings.epochs):
        order = torch.randperm(num_columns, generator=generator, device="cpu").to(columns["obs"].device)
        for batch in order.chunk(settings.num_minibatches):
            mb = {k: v[:, batch] if k != "hidden" else v[batch] for k, v in columns.items()}
            if recurrent:
                dist_params, values = replay_sequence(policy, mb["obs"], mb["hidden"], mb["reset"])
            else:
                out = policy(mb["obs"])
                dist_params, values = out.dist_params, out.value
            log_probs = dist.log_prob(dist_params, mb["actions"])
            adv = mb["advantages"]
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            policy_loss = ppo_clip_loss(log_probs.flatten(), mb["log_probs"].flatten(), adv.flatten(), settings.clip)
            value_loss = 0.5 * (values - mb["returns"]).square().mean()
            entropy = dist.entropy(dist_params).mean()
            loss = policy_loss + settings.vf_coef * value_loss - settings.ent_coef * entropy
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), settings.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                log_ratio = log_probs - mb["log_probs"]
                totals["approx_kl"] += float(((log_ratio.exp() - 1) - log_ratio).mean())
                totals["clip_fraction"] += float(((log_ratio.exp() - 1).abs() > settings.clip).float().mean())
            totals["policy_loss"] += float(policy_loss.detach())
            totals["value_loss"] += float(value_loss.detach())
            totals["entropy"] += float(entropy.detach())
            updates += 1
    return {k: v / updates for k, v in totals.items()}
