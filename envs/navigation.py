"""Navigation2D: the point robot of the MAML paper (Finn et al. 2017, section 5.3)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from gymnasium import spaces

from metarl.env import TaskFamily, Transition
from metarl.registry import register
from metarl.structs import TensorStruct
from metarl.tasks import BoxTaskSpace, ParamRange, Tasks


@dataclasses.dataclass(frozen=True)
class NavigationTasks(Tasks):
    goal: torch.Tensor  # (n, 2)


@dataclasses.dataclass(frozen=True)
class NavigationState(TensorStruct):
    position: torch.Tensor  # (n, 2)


class Navigation2D(TaskFamily[NavigationTasks, NavigationState]):
    """A point robot that must find a goal it cannot see.

    **Description.** The robot starts at the origin of the plane and moves by
    its action each step. Each task is a goal position; the policy only sees
    its own position, so it must infer the goal from rewards.

    **Observation.** ``Box(-inf, inf, (2,), float32)``: the robot's position.

    **Action.** ``Box(-0.1, 0.1, (2,), float32)``: the displacement; larger
    actions are clipped to the box, as in the paper.

    **Reward.** Minus the Euclidean distance to the goal after the move.

    **Task distribution.** ``goal ~ U[-0.5, 0.5]^2`` (``goal_low``/``goal_high`` change the
    square); default task: goal (0.25, 0.25).

    **Held-out split.** The goal square is cut into 10 x 10 cells; the 20 of
    them whose index hash is 0 mod 5 (a checkerboard-like pattern, see
    :mod:`metarl.tasks`) hold the test goals, the other 80 the train goals.

    **Episode end.** Terminated when within 0.01 of the goal on both axes;
    truncated after 100 steps.

    **Version history.** v0: initial version.
    """

    max_episode_steps = 100
    observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = spaces.Box(-0.1, 0.1, (2,), np.float32)

    def __init__(self, goal_low: float = -0.5, goal_high: float = 0.5) -> None:
        default = goal_low + 0.75 * (goal_high - goal_low)  # (0.25, 0.25) for the paper's square
        goal = ParamRange((goal_low,) * 2, (goal_high,) * 2, (default,) * 2)
        self.task_space = BoxTaskSpace(NavigationTasks, goal=goal)

    def reset(self, tasks: NavigationTasks, generator: torch.Generator) -> tuple[NavigationState, torch.Tensor]:
        position = torch.zeros_like(tasks.goal)
        return NavigationState(position), position

    def step(
        self, state: NavigationState, action: torch.Tensor, tasks: NavigationTasks, generator: torch.Generator
    ) -> Transition[NavigationState]:
        position = state.position + action
        offset = position - tasks.goal
        reward = -torch.linalg.vector_norm(offset, dim=-1)
        terminated = (offset.abs() < 0.01).all(dim=-1)
        return Transition(NavigationState(position), position, reward, terminated)

    def oracle_action(self, obs: torch.Tensor, tasks: NavigationTasks) -> torch.Tensor:
        """Straight toward the known goal: ``goal - position``, which the env clips to the action box."""
        return tasks.goal - obs


register("metarl/Navigation2D-v0", Navigation2D)
