"""Value baselines for policy-gradient inner loops."""

from __future__ import annotations

import torch


def steps_since_episode_start(done: torch.Tensor) -> torch.Tensor:
    """``(T, N)`` index of each step within its episode, for a rollout that starts at episode starts."""
    num_steps = done.shape[0]
    time = torch.arange(num_steps, device=done.device).unsqueeze(1).expand_as(done)
    starts = torch.zeros_like(done)
    starts[1:] = done[:-1]
    starts[0] = True
    last_start = torch.cummax(torch.where(starts, time, 0), dim=0).values
    return time - last_start


class LinearFeatureBaseline:
    """Per-task ridge regression of returns on ``[obs, obs², t, t², t³, 1]`` (Duan et al. 2016, rllab).

    The baseline of MAML-RL: refitted on every batch, for every task of the
    batch at once (one batched linear solve), in float64 for conditioning.
    """

    def __init__(self, reg_coeff: float = 1e-5, time_scale: float = 100.0) -> None:
        if reg_coeff <= 0:
            raise ValueError(f"reg_coeff must be positive, got {reg_coeff}")
        self.reg_coeff = reg_coeff
        self.time_scale = time_scale

    def features(self, obs: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        t = (steps_since_episode_start(done).to(torch.float64) / self.time_scale).unsqueeze(-1)
        obs = obs.to(torch.float64).clamp(-10, 10)
        return torch.cat([obs, obs.square(), t, t.square(), t.pow(3), torch.ones_like(t)], dim=-1)

    def fit_predict(
        self, obs: torch.Tensor, done: torch.Tensor, returns: torch.Tensor, num_tasks: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fit one regression per task on ``(T, N)`` data (N = tasks x envs, task-major) and predict values.

        ``mask`` (``(T, N)``, 1 where a sample counts) leaves the other samples out of the fit.
        """
        num_steps, num_envs = returns.shape
        per_task = num_envs // num_tasks
        x = self.features(obs, done)  # (T, N, F)
        x = x.reshape(num_steps, num_tasks, per_task, -1).transpose(0, 1).reshape(num_tasks, num_steps * per_task, -1)
        y = returns.to(torch.float64).reshape(num_steps, num_tasks, per_task).transpose(0, 1).reshape(num_tasks, -1, 1)
        fit_x = x
        if mask is not None:
            keep = mask.to(torch.float64).reshape(num_steps, num_tasks, per_task).transpose(0, 1).reshape(num_tasks, -1, 1)
            fit_x, y = x * keep, y * keep
        gram = fit_x.mT @ fit_x
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        weights = torch.linalg.solve(gram + self.reg_coeff * eye, fit_x.mT @ y)
        values = (x @ weights).reshape(num_tasks, num_steps, per_task).transpose(0, 1).reshape(num_steps, num_envs)
        return values.to(returns.dtype)
