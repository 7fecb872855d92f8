"""Policy-gradient losses shared by the agents, per task: inputs ``(M, B)``, output ``(M,)``."""

from __future__ import annotations

import torch


def reinforce_loss(log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """``-E[log pi(a|s) * A]`` per task (the MAML inner loss)."""
    return -(log_probs * advantages).mean(dim=-1)


def surrogate_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """``-E[pi/pi_old * A]`` per task (TRPO's objective)."""
    return -(torch.exp(log_probs - old_log_probs) * advantages).mean(dim=-1)


def ppo_clip_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO's clipped surrogate per task (Schulman et al. 2017)."""
    ratio = torch.exp(log_probs - old_log_probs)
    return -torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip, 1 + clip) * advantages).mean(dim=-1)
