"""Adapters between metarl's batched env interface and the outside world.

* :class:`SB3VecEnv` shows a :class:`~metarl.env.TensorEnv` to Stable-Baselines3
  as a ``VecEnv``, so SB3's algorithms train on any metarl family unchanged.
* :class:`GymTaskVectorEnv` brings Gymnasium envs that are not torch-batched but
  have a ``set_task(task)`` method (MuJoCo, Meta-World, user envs) into the
  engine, behind the same interface as a ``TensorEnv``.

Both cross the torch/numpy border once per step for the whole batch; the
per-env Python work they do (SB3's info dicts, sub-env stepping) is the price of
the libraries on the other side, not something the engine's hot path pays.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from metarl.env import StepOutput, TensorEnv, TensorEnvView
from metarl.tasks import Tasks

__all__ = ["GymTaskVectorEnv", "SB3VecEnv", "TaskSlot"]


# --- Stable-Baselines3 -----------------------------------------------------------------------


class SB3VecEnv(TensorEnvView, VecEnv):
    """A :class:`~metarl.env.TensorEnv` as a Stable-Baselines3 ``VecEnv`` (numpy in, numpy out).

    ``PPO("MlpPolicy", SB3VecEnv(metarl.make_env(id, num_envs=8)))`` trains on
    any family. Env ``i`` runs task ``i`` of the wrapped env; :meth:`set_tasks`
    changes them (then reset: SB3's ``learn`` does, unless
    ``reset_num_timesteps=False``).

    Per step the whole batch crosses to the host in one transfer; info dicts
    are built only for envs whose episode ended, with SB3's keys:
    ``terminal_observation``, ``TimeLimit.truncated`` (time-limit bootstrapping)
    and Monitor-style ``episode = {"r", "l", "t"}``, so ``ep_info_buffer``
    and ``rollout/ep_rew_mean`` work without a ``Monitor``. The episode totals
    come from the env itself; nothing wraps it, so :meth:`env_is_wrapped` is
    ``False`` and ``evaluate_policy`` counts episodes itself (pass
    ``warn=False`` to silence its Monitor warning).

    One batched env stands behind all ``num_envs`` indices: :meth:`get_attr`
    reads the attribute of the ``TensorEnv`` (or of its family), and
    :meth:`set_attr` / :meth:`env_method` act on the whole batch only.
    Any env with the ``TensorEnv`` interface works, e.g. :class:`GymTaskVectorEnv`.
    """

    def __init__(self, env: TensorEnv) -> None:
        self.env = env
        self._actions: torch.Tensor | None = None
        self._next_seed: int | None = None
        self._start_time = time.time()
        obs_space = env.single_observation_space
        if not isinstance(obs_space, spaces.Box):
            raise TypeError(f"SB3VecEnv needs a Box observation space, got {obs_space}")
        self._obs_size = int(np.prod(obs_space.shape, dtype=np.int64))
        super().__init__(env.num_envs, obs_space, env.single_action_space)

    # --- VecEnv API ----------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        if any(self._options):
            raise ValueError(f"metarl envs take no reset options (got {self._options}); change tasks with set_tasks()")
        obs = self.env.reset(seed=self._next_seed)
        self._next_seed = None
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs.detach().to("cpu", torch.float32, copy=True).numpy()

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seed the next :meth:`reset`. One generator drives the whole batch, so every env reports ``seed``.

        ``None`` leaves the generator as it is (no global RNG is consulted).
        """
        self._next_seed = seed
        return [seed] * self.num_envs

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions)
        shape = (self.num_envs, *self.env.action_shape)
        if actions.shape != shape and actions.size == int(np.prod(shape)):
            actions = actions.reshape(shape)  # e.g. Discrete actions as (n, 1)
        self._actions = torch.as_tensor(actions, device=self.env.device)

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without a pending step_async()")
        out = self.env.step(self._actions)
        self._actions = None
        n, k = self.num_envs, self._obs_size
        # Everything SB3 needs in one float32 block: one host transfer (and one sync on a GPU) per step.
        # Episode lengths as float32 are exact up to 2**24 steps.
        scalars = [out.reward, out.terminated, out.truncated, out.episode_return, out.episode_length]
        block = torch.cat(
            [out.obs.reshape(n, k).float(), out.final_obs.reshape(n, k).float(), torch.stack([s.float() for s in scalars], 1)],
            dim=1,
        )
        host = block.cpu().numpy()
        obs_shape = self.observation_space.shape
        obs = host[:, :k].reshape(n, *obs_shape)
        final_obs = host[:, k : 2 * k].reshape(n, *obs_shape)
        reward, terminated, truncated, episode_return, episode_length = host[:, 2 * k :].T
        terminated, truncated = terminated.astype(bool), truncated.astype(bool)
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(n)]
        if dones.any():
            elapsed = round(time.time() - self._start_time, 6)
            for i in np.flatnonzero(dones):
                infos[i] = {
                    "terminal_observation": final_obs[i].copy(),
                    "TimeLimit.truncated": bool(truncated[i] and not terminated[i]),
                    "episode": {"r": float(episode_return[i]), "l": int(episode_length[i]), "t": elapsed},
                }
        return obs, reward.copy(), dones, infos

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if callable(close):
            close()

    def _lookup(self, name: str) -> Any:
        for owner in (self.env, getattr(self.env, "family", None)):
            if owner is not None and hasattr(owner, name):
                return getattr(owner, name)
        if name == "render_mode":
            return None  # metarl families do not render
        raise AttributeError(f"neither {self.env!r} nor its family has an attribute {name!r}")

    def _whole_batch(self, indices: VecEnvIndices, what: str) -> int:
        chosen = sorted(set(self._get_indices(indices)))
        if chosen != list(range(self.num_envs)):
            raise ValueError(
                f"{what} acts on the whole batched env (all {self.num_envs} indices), got indices {chosen}; "
                "to give envs different tasks use set_tasks()"
            )
        return len(chosen)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The batched env's attribute ``attr_name``, once per index (every index sees the same object)."""
        value = self._lookup(attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the batched env (``indices`` must select every env)."""
        self._whole_batch(indices, "set_attr")
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        """Call a method of the batched env once; its result is repeated for every index."""
        count = self._whole_batch(indices, "env_method")
        result = self._lookup(method_name)(*method_args, **method_kwargs)
        return [result] * count

    def env_is_wrapped(self, wrapper_class: type[gymnasium.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Always ``False``: a batched metarl env has no Gymnasium wrappers."""
        return [False for _ in self._get_indices(indices)]

    def __repr__(self) -> str:
        return f"SB3VecEnv({self.env!r})"


# --- Gymnasium envs with set_task -------------------------------------------------------------

TASK_ATTR = "metarl_task"


def _env_name(env: gymnasium.Env) -> str:
    name = type(env.unwrapped).__name__
    return f"{name} ({env.spec.id})" if env.spec is not None else name


class TaskSlot(gymnasium.Wrapper):
    """Makes a sub-env's ``set_task`` reachable as the settable attribute ``metarl_task``.

    ``VectorEnv.set_attr(name, values)`` sends value ``i`` to env ``i`` in Sync
    and Async vector envs alike, but only sets attributes; this property turns
    the assignment into ``env.set_task(task)``. Reading it gives the last task
    set, or before that the env's ``get_task()`` when it has one.
    """

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self.metarl_has_set_task = env.has_wrapper_attr("set_task") and callable(env.get_wrapper_attr("set_task"))
        self.metarl_env_name = _env_name(env)
        self._task: Any = None

    @property
    def metarl_task(self) -> Any:
        if self._task is None and self.env.has_wrapper_attr("get_task"):
            return self.env.get_wrapper_attr("get_task")()
        return self._task

    @metarl_task.setter
    def metarl_task(self, task: Any) -> None:
        self.env.get_wrapper_attr("set_task")(task)
        self._task = task


def _make_slotted(env_fn: Callable[[], gymnasium.Env]) -> TaskSlot:
    return TaskSlot(env_fn())


def _gather(tasks: Sequence[Any]) -> Any:
    """Tasks reported per env as one batch when they are metarl ``Tasks`` of one type, else as a list."""
    items = list(tasks)
    if items and all(isinstance(t, Tasks) for t in items) and len({type(t) for t in items}) == 1:
        return type(items[0]).cat(items)
    if all(t is None for t in items):
        return None
    return items


class GymTaskVectorEnv:
    """Gymnasium envs with ``set_task(task)`` behind the :class:`~metarl.env.TensorEnv` interface.

    The way in for task envs that are not torch-batched (MuJoCo, Meta-World,
    user envs). The sub-envs run in Gymnasium's ``SyncVectorEnv`` (this
    process) or ``AsyncVectorEnv`` (one process each, ``asynchronous=True``)
    with same-step autoreset, and this class speaks the engine's language:
    ``reset(seed) -> obs`` and ``step(action) -> StepOutput`` with CPU torch
    tensors, ``set_tasks`` giving env ``i`` task ``i``, episode statistics.

    It is CPU only, and per-env Python work is inherent here: every sub-env
    steps through its own Python code, and the batch crosses between numpy and
    torch each step. For families with batched torch dynamics use
    :func:`metarl.make_env` instead.

    Args:
        env_fns: a list of factories, one per env, each returning a new
            Gymnasium env with a ``set_task`` method; or a Gymnasium id, made
            ``num_envs`` times with ``gymnasium.make(id, **make_kwargs)``.
        num_envs: how many envs when ``env_fns`` is an id (must match the list otherwise).
        asynchronous: ``AsyncVectorEnv`` (subprocesses) instead of ``SyncVectorEnv``.
            Close the env (or use it as a context manager) to stop the processes.
        context: multiprocessing start method for ``asynchronous`` (``None``: the platform's default).

    Continuous actions are clipped to the action space, as ``TensorEnv`` does.
    Observations are returned as float32 whatever the sub-envs' dtype.
    """

    device = torch.device("cpu")

    def __init__(
        self,
        env_fns: str | Sequence[Callable[[], gymnasium.Env]],
        num_envs: int | None = None,
        *,
        asynchronous: bool = False,
        context: str | None = None,
        **make_kwargs: Any,
    ) -> None:
        if isinstance(env_fns, str):
            if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
                raise ValueError(f"num_envs must be a positive int when building from the id {env_fns!r}, got {num_envs!r}")
            env_fns = [functools.partial(gymnasium.make, env_fns, **make_kwargs)] * num_envs
        else:
            if make_kwargs:
                raise TypeError(f"keyword arguments {sorted(make_kwargs)} are for gymnasium.make and need an env id")
            env_fns = list(env_fns)
            if not env_fns:
                raise ValueError("env_fns is empty: give one factory per env")
            if num_envs is not None and num_envs != len(env_fns):
                raise ValueError(f"num_envs={num_envs} but {len(env_fns)} env factories were given")
        fns = [functools.partial(_make_slotted, fn) for fn in env_fns]
        if asynchronous:
            self._vec: gymnasium.vector.VectorEnv = AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP, context=context)
        else:
            self._vec = SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
        self.asynchronous = asynchronous
        try:
            self._check_sub_envs()
        except BaseException:
            self._vec.close()
            raise
        self.num_envs = self._vec.num_envs
        self._name = self._vec.get_attr("metarl_env_name")[0]
        self.single_observation_space: spaces.Box = self._vec.single_observation_space
        self.single_action_space: spaces.Box | spaces.Discrete = self._vec.single_action_space
        self.action_shape: tuple[int, ...] = tuple(self.single_action_space.shape or ())
        self.action_dtype = torch.long if isinstance(self.single_action_space, spaces.Discrete) else torch.float32
        self._tasks: Any = _gather(self._vec.get_attr(TASK_ATTR))
        self._needs_reset = True
        self._episode_return = np.zeros(self.num_envs, dtype=np.float32)
        self._episode_length = np.zeros(self.num_envs, dtype=np.int64)

    def _check_sub_envs(self) -> None:
        has_set_task = self._vec.get_attr("metarl_has_set_task")
        if not all(has_set_task):
            names = self._vec.get_attr("metarl_env_name")
            missing = sorted({names[i] for i, ok in enumerate(has_set_task) if not ok})
            raise TypeError(
                f"GymTaskVectorEnv needs envs with a set_task(task) method; {', '.join(missing)} has none "
                f"(sub-envs {[i for i, ok in enumerate(has_set_task) if not ok]}). Add set_task to the env, "
                "or, for a torch-batched metarl family, use metarl.make_env."
            )
        obs_space, act_space = self._vec.single_observation_space, self._vec.single_action_space
        if not isinstance(obs_space, spaces.Box):
            raise TypeError(f"GymTaskVectorEnv needs a Box observation space, got {obs_space}")
        if not isinstance(act_space, (spaces.Box, spaces.Discrete)):
            raise TypeError(f"GymTaskVectorEnv needs a Box or Discrete action space, got {act_space}")

    # --- tasks -----------------------------------------------------------------------------
    @property
    def tasks(self) -> Any:
        """The tasks last given to :meth:`set_tasks` (before that, what the sub-envs' ``get_task()`` report, or ``None``)."""
        return self._tasks

    def set_tasks(self, tasks: Sequence[Any]) -> None:
        """Give env ``i`` task ``i`` through its ``set_task``; call :meth:`reset` before the next step.

        ``tasks`` is a metarl ``Tasks`` batch (env ``i`` gets ``tasks[i]``, a
        batch of one) or any sequence of whatever the sub-envs' ``set_task`` takes.
        """
        items = list(tasks)
        if len(items) != self.num_envs:
            raise ValueError(f"got {len(items)} tasks for {self.num_envs} envs; give one task per env")
        self._vec.set_attr(TASK_ATTR, items)
        self._tasks = tasks if isinstance(tasks, Tasks) else items
        self._needs_reset = True

    # --- episodes ----------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Start a new episode in every env (same tasks); env ``i`` is seeded with ``seed + i``."""
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        obs, _ = self._vec.reset(seed=seed)
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0
        self._needs_reset = False
        return torch.as_tensor(np.asarray(obs, dtype=np.float32))

    def step(self, action: torch.Tensor) -> StepOutput:
        """Step every env; finished episodes restart on the same task (same-step autoreset)."""
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (and after set_tasks())")
        action = torch.as_tensor(action)
        expected = (self.num_envs, *self.action_shape)
        if tuple(action.shape) != expected:
            raise ValueError(
                f"action has shape {tuple(action.shape)}, expected {expected} ({self.num_envs} envs x {self.single_action_space})"
            )
        space = self.single_action_space
        if isinstance(space, spaces.Discrete):
            if action.dtype.is_floating_point or action.dtype == torch.bool:
                raise TypeError(f"discrete actions must be integers, got dtype {action.dtype}")
            np_action = action.detach().cpu().numpy().astype(np.int64, copy=False)
        else:
            np_action = np.clip(action.detach().cpu().numpy(), space.low, space.high).astype(space.dtype, copy=False)
        obs, reward, terminated, truncated, info = self._vec.step(np_action)
        obs = np.asarray(obs, dtype=np.float32)
        reward = np.asarray(reward, dtype=np.float32)
        terminated, truncated = np.asarray(terminated, dtype=bool), np.asarray(truncated, dtype=bool)
        done = terminated | truncated
        self._episode_return += reward
        self._episode_length += 1
        final_obs = obs.copy()
        for i in np.flatnonzero(done):
            final_obs[i] = info["final_obs"][i]
        episode_return = np.where(done, self._episode_return, 0.0).astype(np.float32)
        episode_length = np.where(done, self._episode_length, 0)
        self._episode_return[done] = 0.0
        self._episode_length[done] = 0
        done_t = torch.from_numpy(done)
        return StepOutput(
            obs=torch.from_numpy(obs),
            reward=torch.from_numpy(reward),
            terminated=torch.from_numpy(terminated),
            truncated=torch.from_numpy(truncated),
            final_obs=torch.from_numpy(final_obs),
            episode_return=torch.from_numpy(episode_return),
            episode_length=torch.from_numpy(episode_length),
            reset_memory=done_t,
        )

    def close(self) -> None:
        """Close the sub-envs (and stop their processes when asynchronous). Safe to call twice."""
        self._vec.close()

    def __enter__(self) -> GymTaskVectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "Async" if self.asynchronous else "Sync"
        return f"GymTaskVectorEnv<{kind}, {self._name}, num_envs={self.num_envs}>"
