"""Schedules of a hyperparameter over meta-iterations (or any other count, such as seconds)."""

from __future__ import annotations


def linear_anneal(start: float, end: float, iteration: float, iterations: float) -> float:
    """``start`` at iteration 0, linearly to ``end`` at ``iterations``, then ``end``: Reptile's ε, RL²'s PPO step
    size (``lr_anneal_iterations``), and the RL² benchmark's step size with seconds for iterations."""
    done = min(iteration / iterations, 1.0)
    return (1 - done) * start + done * end
