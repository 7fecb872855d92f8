"""Policy-gradient losses shared by the agents, per task: inputs ``(M, B)``, output ``(M,)``.

``mask`` (same shape, 1 for samples that count, 0 for the rest) restricts each
mean to valid samples, as when only the first episode of each env counts.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the last dimension, of the entries where ``mask`` is 1 (all of them without a mask)."""
    if mask is None:
        return x.mean(dim=-1)
    return (x * mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1)


def reinforce_loss(log_probs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``-E[log pi(a|s) * A]`` per task (the MAML inner loss)."""
    return -masked_mean(log_probs * advantages, mask)


def surrogate_loss(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``-E[pi/pi_old * A]`` per task (TRPO's objective)."""
    return -masked_mean(torch.exp(log_probs - old_log_probs) * advantages, mask)


def ppo_clip_loss(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, clip: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """PPO's clipped surrogate per task (Schulman et al. 2017)."""
    ratio = torch.exp(log_probs - old_log_probs)
    return -masked_mean(torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages), mask)
