"""The batched env contract: a family's pure dynamics and the :class:`TensorEnv` that runs them.

A :class:`TaskFamily` is the gymnax-style definition of a task distribution:
its task space, spaces, and pure batched functions ``reset(tasks, generator)``
and ``step(state, action, tasks, generator)``. The physics is written once, for
a batch; ``num_envs=1`` is the single env.

:class:`TensorEnv` holds the buffers around it (state, tasks, episode clocks
and returns) for ``num_envs`` envs on one device, and adds what every family
would otherwise repeat: clipping continuous actions to the action space,
time-limit truncation, autoreset that keeps each env's task, episode statistics,
and input validation. It never moves data to the host.
"""

from __future__ import annotations

import types
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import numpy as np
import torch
from gymnasium import spaces

from metarl.structs import TensorStruct
from metarl.tasks import Split, Tasks, TaskSpace, check_split
from metarl.validation import check_positive_int

StateT = TypeVar("StateT", bound=TensorStruct)
TasksT = TypeVar("TasksT", bound=Tasks)


class Transition(NamedTuple, Generic[StateT]):
    """What a family's pure ``step`` returns (truncation is the env's business)."""

    state: StateT
    obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor


class StepOutput(NamedTuple):
    """One batched env step. Every tensor has leading dimension ``num_envs``.

    ``obs`` is already the first observation of the next episode where
    ``done``; the last observation of the finished episode is ``final_obs``
    (equal to ``obs`` elsewhere). ``episode_return``/``episode_length`` hold
    the finished episode's totals where ``done`` and are zero elsewhere.
    ``reset_memory`` says where a recurrent policy must forget: episode ends
    here, trial ends under a trial wrapper (RL²).
    """

    obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor
    episode_return: torch.Tensor
    episode_length: torch.Tensor
    reset_memory: torch.Tensor

    @property
    def done(self) -> torch.Tensor:
        return self.terminated | self.truncated


class TaskFamily(ABC, Generic[TasksT, StateT]):
    """A parameterized task distribution with batched, pure dynamics.

    Subclasses set ``task_space``, ``observation_space`` and ``action_space``
    (for one env; ``Box`` observations, ``Box`` or ``Discrete`` actions) and
    ``max_episode_steps`` (``None``: the family ends episodes itself).
    Continuous actions reach :meth:`step` already clipped to ``action_space``.
    """

    task_space: TaskSpace[TasksT]
    observation_space: spaces.Box
    action_space: spaces.Box | spaces.Discrete
    max_episode_steps: int | None
    metadata: ClassVar[dict[str, Any]] = {}

    @abstractmethod
    def reset(self, tasks: TasksT, generator: torch.Generator) -> tuple[StateT, torch.Tensor]:
        """Initial states and observations for a batch of tasks (on ``tasks.device``)."""

    @abstractmethod
    def step(self, state: StateT, action: torch.Tensor, tasks: TasksT, generator: torch.Generator) -> Transition[StateT]:
        """Advance every env one step."""

    def step_info(self, state: StateT, tasks: TasksT) -> dict[str, torch.Tensor]:
        """What a step from ``state`` reveals beyond the reward, batched (Gymnasium views put it in ``info``).

        E.g. the true label of the image shown (Omniglot: full-information feedback). Default: nothing.
        """
        return {}

    def oracle_action(self, obs: torch.Tensor, tasks: TasksT) -> torch.Tensor | None:
        """The action of a policy that knows the task, if the family defines one (used as the evaluator's oracle baseline).

        Batched like :meth:`step`: ``obs`` is ``(n, *obs_shape)`` and ``tasks`` a batch of ``n``.
        Continuous actions may exceed the action box; the env clips them.
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _compiled_method(owner: object, function: Any) -> Any:
    """``torch.compile`` of ``function`` bound to ``owner``, with a compile cache of its own.

    Dynamo caches compiled graphs per code object and silently falls back to
    eager after a few recompiles. Every env would share ``_advance_pure``'s
    code (and recompile for each family, size and layout), so each env gets a
    copy of the code object, hence its own cache, compiled for its fixed size.
    """
    code_copy = function.__code__.replace()
    fresh = types.FunctionType(code_copy, function.__globals__, function.__name__, function.__defaults__, function.__closure__)
    return torch.compile(types.MethodType(fresh, owner), dynamic=False)


def _action_dtype(space: spaces.Space) -> torch.dtype:
    return torch.long if isinstance(space, spaces.Discrete) else torch.float32


class TensorEnv(Generic[TasksT, StateT]):
    """``num_envs`` envs of one family on one device, env ``i`` running task ``i``.

    Args:
        family: the task family.
        num_envs: how many envs step together.
        device: where every buffer lives.
        tasks: initial tasks (``num_envs`` of them); default: the family's
            reference task in every env.
        seed: seed of the env's own generator (initial states, stochastic dynamics).
        validate_actions: check action values (finite; in range for discrete
            actions). This reads one flag back from the device per step, so the
            rollout engine, whose actions come from a policy over the same
            space, turns it off.
        compile: run the step through ``torch.compile`` (opt-in: it pays a
            compilation on first use; ``scripts/bench_rollout.py`` measures
            whether it helps on a given machine).
    """

    def __init__(
        self,
        family: TaskFamily[TasksT, StateT],
        num_envs: int,
        device: torch.device | str = "cpu",
        tasks: TasksT | None = None,
        seed: int | None = None,
        validate_actions: bool = True,
        compile: bool = False,
    ) -> None:
        check_positive_int("num_envs", num_envs)
        self.family = family
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.validate_actions = validate_actions
        self.single_observation_space = family.observation_space
        self.single_action_space = family.action_space
        if not isinstance(self.single_action_space, (spaces.Box, spaces.Discrete)):
            raise TypeError(f"{family!r}: action_space must be Box or Discrete, got {self.single_action_space}")
        self.action_shape: tuple[int, ...] = tuple(self.single_action_space.shape or ())
        self.action_dtype = _action_dtype(self.single_action_space)
        if isinstance(self.single_action_space, spaces.Box):
            self._action_low = torch.as_tensor(self.single_action_space.low, device=self.device)
            self._action_high = torch.as_tensor(self.single_action_space.high, device=self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed if seed is not None else int(torch.seed() % 2**62))
        self._tasks: TasksT = self._checked_tasks(
            tasks if tasks is not None else family.task_space.default().repeat_interleave(num_envs)
        )
        self._advance = _compiled_method(self, TensorEnv._advance_pure) if compile else self._advance_pure
        self._state: StateT | None = None
        self._obs: torch.Tensor | None = None
        self._episode_return = torch.zeros(num_envs, device=self.device)
        self._episode_length = torch.zeros(num_envs, dtype=torch.long, device=self.device)

    # --- tasks -----------------------------------------------------------------
    @property
    def tasks(self) -> TasksT:
        return self._tasks

    def _checked_tasks(self, tasks: TasksT) -> TasksT:
        expected = self.family.task_space.tasks_type
        if not isinstance(tasks, expected):
            raise TypeError(f"{self.family!r} takes {expected.__name__}, got {type(tasks).__name__}")
        if len(tasks) != self.num_envs:
            raise ValueError(
                f"got {len(tasks)} tasks for {self.num_envs} envs; give one task per env "
                f"(M tasks x E envs each: tasks.repeat_interleave(E))"
            )
        return tasks.to(self.device)

    def set_tasks(self, tasks: TasksT) -> None:
        """Give env ``i`` task ``i``. The next call must be :meth:`reset`: episodes never mix tasks."""
        self._tasks = self._checked_tasks(tasks)
        self._state = None

    def sample_tasks(self, n: int, *, generator: torch.Generator, split: Split = "train") -> TasksT:
        check_split(split)
        return self.family.task_space.sample(n, generator=generator, split=split)

    # --- episodes ----------------------------------------------------------------
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Start a new episode in every env (same tasks); returns observations."""
        if seed is not None:
            self.generator.manual_seed(seed)
        self._state, obs = self.family.reset(self._tasks, self.generator)
        self._obs = obs
        self._episode_return = torch.zeros_like(self._episode_return)
        self._episode_length = torch.zeros_like(self._episode_length)
        return obs

    def check_action(self, action: torch.Tensor) -> torch.Tensor:
        """``action`` as a tensor of the right shape, dtype and device, or a clear error."""
        if not isinstance(action, torch.Tensor):
            action = torch.as_tensor(np.asarray(action), device=self.device)
        expected = (self.num_envs, *self.action_shape)
        if tuple(action.shape) != expected:
            raise ValueError(
                f"action has shape {tuple(action.shape)}, expected {expected} ({self.num_envs} envs x {self.single_action_space})"
            )
        if self.action_dtype == torch.long:
            if action.dtype.is_floating_point or action.dtype == torch.bool or action.is_complex():
                raise TypeError(f"discrete actions must be integers, got dtype {action.dtype}")
        elif not action.dtype.is_floating_point:
            action = action.float()
        action = action.to(self.device, self.action_dtype)
        if self.validate_actions:
            if self.action_dtype == torch.long:
                n = int(self.single_action_space.n)  # type: ignore[union-attr]
                bad = (action < 0) | (action >= n)
                if bool(bad.any()):
                    raise ValueError(f"actions must be in [0, {n}); got {action[bad][:8].tolist()} (first bad values)")
            else:
                bad = ~torch.isfinite(action)
                if bool(bad.any()):
                    raise ValueError(f"actions must be finite; got {action[bad][:8].tolist()} (first bad values)")
        return action

    def step(self, action: torch.Tensor) -> StepOutput:
        """Step every env; finished episodes restart on the same task (same-step autoreset)."""
        if self._state is None:
            raise RuntimeError("call reset() before step() (and after set_tasks())")
        action = self.check_action(action)
        # Fresh episode starts for every env, kept below only where an episode ends: a
        # branch-free autoreset (no `if done.any()`, which would read a flag back from the device).
        # Drawn outside the pure step so that deterministic dynamics compile into one graph.
        fresh = self.family.reset(self._tasks, self.generator)
        self._state, self._episode_return, self._episode_length, out = self._advance(
            self._state, action, self._tasks, self._episode_return, self._episode_length, fresh, self.generator
        )
        return out

    def step_info(self) -> dict[str, torch.Tensor]:
        """What the next :meth:`step` will reveal beyond the reward (the family's ``step_info``), ``(num_envs, ...)`` each."""
        if self._state is None:
            raise RuntimeError("call reset() before step_info() (and after set_tasks())")
        return self.family.step_info(self._state, self._tasks)

    def _advance_pure(
        self,
        state: StateT,
        action: torch.Tensor,
        tasks: TasksT,
        episode_return: torch.Tensor,
        episode_length: torch.Tensor,
        fresh: tuple[StateT, torch.Tensor],
        generator: torch.Generator,
    ) -> tuple[StateT, torch.Tensor, torch.Tensor, StepOutput]:
        """One step as a pure function of explicit tensors (what ``compile=True`` compiles)."""
        family = self.family
        if self.action_dtype != torch.long:
            action = torch.clamp(action, self._action_low, self._action_high)
        state, obs, reward, terminated = family.step(state, action, tasks, generator)
        episode_return = episode_return + reward
        episode_length = episode_length + 1
        if family.max_episode_steps is None:
            truncated = torch.zeros_like(terminated)
        else:
            truncated = (episode_length >= family.max_episode_steps) & ~terminated
        done = terminated | truncated
        fresh_state, fresh_obs = fresh
        next_state = fresh_state.where(done, state)
        next_obs = torch.where(done.unsqueeze(-1), fresh_obs, obs)
        running = ~done
        out = StepOutput(next_obs, reward, terminated, truncated, obs, episode_return * done, episode_length * done, done)
        return next_state, episode_return * running, episode_length * running, out

    def __repr__(self) -> str:
        return f"TensorEnv({self.family!r}, num_envs={self.num_envs}, device={self.device})"


class TensorEnvView:
    """Task access for wrappers that present a :class:`TensorEnv` (``self.env``) through another API."""

    env: TensorEnv

    @property
    def tasks(self) -> Tasks:
        return self.env.tasks

    def set_tasks(self, tasks: Tasks) -> None:
        """Give env ``i`` task ``i`` (``len(tasks) == num_envs``); then call ``reset``."""
        self.env.set_tasks(tasks)

    def sample_tasks(self, n: int, *, generator: torch.Generator, split: Split = "train") -> Tasks:
        return self.env.sample_tasks(n, generator=generator, split=split)


class RescaledActions(TensorEnvView):
    """``env`` with its Box actions taken in ``[-1, 1]`` per dimension and mapped affinely onto the box.

    The batched counterpart of Gymnasium's ``RescaleAction`` wrapper (and of
    rllab's ``normalize``, which the MAML paper's code wraps its point robot
    in): a Gaussian policy's unit noise then spans the whole action range,
    whatever its size (Navigation2D's box is ``[-0.1, 0.1]``). Actions beyond
    ``[-1, 1]`` map beyond the box, where the env clips them as usual.
    """

    def __init__(self, env: TensorEnv) -> None:
        box = env.single_action_space
        if not isinstance(box, spaces.Box) or not (np.all(np.isfinite(box.low)) and np.all(np.isfinite(box.high))):
            raise TypeError(f"RescaledActions needs a bounded Box action space, got {box}")
        self.env = env
        self.family = env.family
        self.num_envs = env.num_envs
        self.device = env.device
        self.single_observation_space = env.single_observation_space
        self.single_action_space = spaces.Box(-1.0, 1.0, box.shape, np.float32)
        self._low = torch.as_tensor(box.low, dtype=torch.float32, device=env.device)
        self._half_range = torch.as_tensor((box.high - box.low) / 2, dtype=torch.float32, device=env.device)

    @property
    def generator(self) -> torch.Generator:
        return self.env.generator

    def to_env_action(self, action: torch.Tensor) -> torch.Tensor:
        """The wrapped env's action for ``action`` in ``[-1, 1]`` units."""
        return self._low + (action + 1) * self._half_range

    def reset(self, seed: int | None = None) -> torch.Tensor:
        return self.env.reset(seed=seed)

    def step(self, action: torch.Tensor) -> StepOutput:
        return self.env.step(self.to_env_action(action))

    def __repr__(self) -> str:
        return f"RescaledActions({self.env!r})"
