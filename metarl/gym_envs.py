"""Gymnasium views of a :class:`~metarl.env.TensorEnv`: one env, or a batched ``VectorEnv``.

Both views run the family's batched dynamics; the single env is the same code
at ``num_envs=1`` on the CPU with numpy in and out.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from metarl.env import TaskFamily, TensorEnv, TensorEnvView
from metarl.tasks import Split, Tasks


class TaskEnv(gymnasium.Env[np.ndarray, Any]):
    """A single Gymnasium env of a task family, with ``sample_tasks``/``set_task``/``get_task``.

    The task stays fixed across ``reset`` calls until ``set_task`` changes it
    (then call ``reset``). ``reset(seed=...)`` seeds the initial-state and
    dynamics noise and the generator :meth:`sample_tasks` uses by default.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, family: TaskFamily, family_id: str | None = None, seed: int | None = None) -> None:
        self.family = family
        self.family_id = family_id
        self._env = TensorEnv(family, num_envs=1, device="cpu", seed=seed)
        self.observation_space = family.observation_space
        self.action_space = family.action_space
        self._task_generator = torch.Generator()
        self._seeded = False
        if seed is not None:
            self._seed_generators(seed)

    def _seed_generators(self, seed: int | None) -> None:
        super().reset(seed=seed)
        self._env.generator.manual_seed(int(self.np_random.integers(2**62)))
        self._task_generator.manual_seed(int(self.np_random.integers(2**62)))
        self._seeded = True

    # --- tasks -------------------------------------------------------------------
    def sample_tasks(self, n: int, *, split: Split = "train", generator: torch.Generator | None = None) -> Tasks:
        """``n`` tasks of ``split`` as one batch; ``tasks[i]`` is a task for :meth:`set_task`."""
        return self.family.task_space.sample(n, generator=generator or self._task_generator, split=split)

    def set_task(self, task: Tasks) -> None:
        """Run ``task`` (a batch of one, e.g. ``tasks[i]``) from the next ``reset`` on."""
        self._env.set_tasks(task)

    def get_task(self) -> Tasks:
        return self._env.tasks

    # --- Gymnasium API --------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None or not self._seeded:
            self._seed_generators(seed)
        obs = self._env.reset()
        return obs[0].numpy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = torch.as_tensor(np.asarray(action)).reshape(1, *self._env.action_shape)
        info = {k: v[0].tolist() for k, v in self._env.step_info().items()}
        out = self._env.step(action)
        # The TensorEnv has already autoreset; a single env reports the episode's last observation.
        return out.final_obs[0].numpy(), float(out.reward[0]), bool(out.terminated[0]), bool(out.truncated[0]), info

    def __repr__(self) -> str:
        return f"TaskEnv<{self.family_id or self.family!r}>"


class TaskVectorEnv(TensorEnvView, gymnasium.vector.VectorEnv):
    """``num_envs`` envs of a task family as a Gymnasium ``VectorEnv`` of torch tensors.

    Autoreset mode is ``SAME_STEP``: where an episode ends, the returned
    observation already starts the next episode of the same task, and
    ``info["final_obs"]`` (valid where ``info["_final_obs"]``) holds the last
    one. ``info["episode_return"]``/``info["episode_length"]`` give the
    finished episode's totals on the same mask. What the family reveals
    about the step (its ``step_info``, e.g. Omniglot's ``label``) is in ``info`` too.
    """

    def __init__(self, env: TensorEnv, family_id: str | None = None) -> None:
        self.env = env
        self.family_id = family_id
        self.num_envs = env.num_envs
        self.device = env.device
        self.single_observation_space = env.single_observation_space
        self.single_action_space = env.single_action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.autoreset_mode = AutoresetMode.SAME_STEP
        self.metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f"seed must be an int (one generator drives the whole batch), got {type(seed).__name__}")
        return self.env.reset(seed=seed), {}

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
        revealed = self.env.step_info()
        out = self.env.step(actions)
        done = out.done
        info = {
            **revealed,
            "final_obs": out.final_obs,
            "_final_obs": done,
            "episode_return": out.episode_return,
            "episode_length": out.episode_length,
            "_episode_return": done,
            "_episode_length": done,
        }
        return out.obs, out.reward, out.terminated, out.truncated, info

    def __repr__(self) -> str:
        return f"TaskVectorEnv<{self.family_id or self.env.family!r}, num_envs={self.num_envs}, device={self.device}>"
