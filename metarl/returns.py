"""Batched returns and generalized advantage estimation over ``(T, N)`` tensors.

Terminated and truncated differ: after a termination the future is worth 0;
after a truncation (a time limit) it is worth the value of the final
observation, as in Stable-Baselines3's time-limit bootstrapping (its issue #633).
The only Python loop is the reverse sweep over time.
"""

from __future__ import annotations

import torch


def next_values(
    values: torch.Tensor,
    last_value: torch.Tensor | None,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    final_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """``V(s_{t+1})`` for every step: the next state's value, or the episode end's.

    Args:
        values: ``(T, N)`` values of the observed states.
        last_value: ``(N,)`` value of the state after the last step (``None``: 0).
        terminated, truncated: ``(T, N)`` booleans.
        final_values: ``(T, N)`` values of the episodes' final observations;
            used where ``truncated`` (``None``: truncation is not bootstrapped).
    """
    tail = torch.zeros_like(values[0]) if last_value is None else last_value
    following = torch.cat([values[1:], tail.unsqueeze(0)], dim=0)
    at_end = torch.zeros_like(values) if final_values is None else torch.where(terminated, 0.0, final_values)
    return torch.where(terminated | truncated, at_end, following)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    done: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates (Schulman et al. 2016) and the matching returns.

    ``A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}`` with
    ``delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)``; ``V(s_{t+1})`` comes from
    :func:`next_values`, so truncation and termination are already handled.
    Returns ``(advantages, advantages + values)``.
    """
    if not 0.0 <= gamma <= 1.0 or not 0.0 <= lam <= 1.0:
        raise ValueError(f"gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}")
    deltas = rewards + gamma * next_values - values
    decay = gamma * lam * (~done).to(rewards.dtype)
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + decay[t] * running
        advantages[t] = running
    return advantages, advantages + values


def discounted_returns(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    final_values: torch.Tensor | None = None,
    last_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reward-to-go ``G_t = r_t + gamma * G_{t+1}`` within each episode (GAE with ``V = 0``, ``lam = 1``).

    ``final_values``/``last_value`` bootstrap truncated episodes and the
    rollout's end; without them those tails count as 0.
    """
    zeros = torch.zeros_like(rewards)
    bootstrap = next_values(zeros, last_value, terminated, truncated, final_values)
    returns, _ = gae(rewards, zeros, bootstrap, terminated | truncated, gamma, 1.0)
    return returns


def normalize(x: torch.Tensor, dim: int | tuple[int, ...] | None = None, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` over ``dim`` (all elements by default)."""
    if dim is None:
        return (x - x.mean()) / (x.std() + eps)
    return (x - x.mean(dim=dim, keepdim=True)) / (x.std(dim=dim, keepdim=True) + eps)
