"""CartPole and Pendulum with their physics as task parameters.

The dynamics are Gymnasium's CartPole-v1 and Pendulum-v1, written once as
batched torch functions of an explicit state and a batch of tasks, so every env
of a batch can run its own physics. At the default task both reproduce
Gymnasium step for step (``tests/envs/test_classic_control.py``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from gymnasium import spaces

from metarl.env import TaskFamily, Transition
from metarl.registry import register
from metarl.structs import TensorStruct
from metarl.tasks import BoxTaskSpace, ParamRange, Tasks


def _param_range(name: str, bounds: Sequence[float], default: float) -> ParamRange:
    """``bounds`` as a :class:`ParamRange` around Gymnasium's ``default``, or a ValueError naming it."""
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {bounds!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 < low <= default <= high and low < high):
        raise ValueError(
            f"{name} range must satisfy 0 < low <= {default} (Gymnasium's value, the default task) <= high "
            f"with low < high, got {bounds!r}"
        )
    return ParamRange(low, high, default)


# --- CartPole -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CartPoleTasks(Tasks):
    gravity: torch.Tensor  # (n,) m/s^2
    masscart: torch.Tensor  # (n,) kg
    masspole: torch.Tensor  # (n,) kg
    length: torch.Tensor  # (n,) m, half the pole's length
    force_mag: torch.Tensor  # (n,) N, magnitude of each push


@dataclasses.dataclass(frozen=True)
class CartPoleState(TensorStruct):
    x: torch.Tensor  # (n,) cart position
    x_dot: torch.Tensor  # (n,) cart velocity
    theta: torch.Tensor  # (n,) pole angle, 0 = upright
    theta_dot: torch.Tensor  # (n,) pole angular velocity


class CartPole(TaskFamily[CartPoleTasks, CartPoleState]):
    """Balance a pole on a cart whose physics changes from task to task.

    **Description.** Gymnasium's CartPole-v1 (Barto, Sutton and Anderson
    1983): a pole is hinged on a cart that moves along a frictionless track,
    and the agent pushes the cart left or right to keep the pole upright. Each
    task sets the physics: gravity, cart mass, pole mass, pole half-length and
    push force. The policy does not see them and must infer them from how the
    system responds. At the default task the dynamics are Gymnasium's (Euler
    integration, ``tau = 0.02`` s).

    **Observation.** ``Box(-high, high, (4,), float32)`` with
    ``high = (4.8, inf, 0.4189, inf)``, Gymnasium's bounds: cart position,
    cart velocity, pole angle (radians, 0 = upright), pole angular velocity.

    **Action.** ``Discrete(2)``: 0 pushes the cart left, 1 pushes it right,
    with force ``force_mag``.

    **Reward.** +1 for every step, including the terminating one (Gymnasium's
    default reward).

    **Task distribution.** Independent uniform parameters (constructor
    arguments change the ranges):

    ==========  =============  =======  ======================
    parameter   range          default  meaning
    ==========  =============  =======  ======================
    gravity     [4.9, 14.7]    9.8      m/s^2
    masscart    [0.5, 2.0]     1.0      cart mass, kg
    masspole    [0.05, 0.5]    0.1      pole mass, kg
    length      [0.25, 1.0]    0.5      half the pole length, m
    force_mag   [5.0, 15.0]    10.0     push force, N
    ==========  =============  =======  ======================

    The default task is Gymnasium's physics.

    **Held-out split.** Each parameter is rescaled to [0, 1] over its range and
    the resulting 5-D cube is cut into 10 cells per axis; the cells whose index
    hash is 0 mod 5 (a checkerboard-like 20% of the cube, see
    :mod:`metarl.tasks`) hold the test tasks, the others the train tasks.

    **Episode end.** Starts from ``U(-0.05, 0.05)^4``. Terminated when the
    cart leaves ``[-2.4, 2.4]`` or the pole tilts more than 12 degrees;
    truncated after 500 steps.

    **Version history.** v0: initial version (dynamics of Gymnasium CartPole-v1).
    """

    max_episode_steps = 500
    tau = 0.02  # seconds per step
    x_threshold = 2.4
    theta_threshold = 12 * 2 * math.pi / 360
    _obs_high = np.array([2 * x_threshold, np.inf, 2 * theta_threshold, np.inf], dtype=np.float32)  # Gymnasium's
    observation_space = spaces.Box(-_obs_high, _obs_high, dtype=np.float32)
    action_space = spaces.Discrete(2)

    def __init__(
        self,
        gravity: tuple[float, float] = (4.9, 14.7),
        masscart: tuple[float, float] = (0.5, 2.0),
        masspole: tuple[float, float] = (0.05, 0.5),
        length: tuple[float, float] = (0.25, 1.0),
        force_mag: tuple[float, float] = (5.0, 15.0),
    ) -> None:
        self.task_space = BoxTaskSpace(
            CartPoleTasks,
            gravity=_param_range("gravity", gravity, 9.8),
            masscart=_param_range("masscart", masscart, 1.0),
            masspole=_param_range("masspole", masspole, 0.1),
            length=_param_range("length", length, 0.5),
            force_mag=_param_range("force_mag", force_mag, 10.0),
        )

    def reset(self, tasks: CartPoleTasks, generator: torch.Generator) -> tuple[CartPoleState, torch.Tensor]:
        obs = torch.rand((len(tasks), 4), generator=generator, device=tasks.device) * 0.1 - 0.05
        return CartPoleState(*obs.unbind(dim=1)), obs

    def step(
        self, state: CartPoleState, action: torch.Tensor, tasks: CartPoleTasks, generator: torch.Generator
    ) -> Transition[CartPoleState]:
        x, x_dot, theta, theta_dot = state.x, state.x_dot, state.theta, state.theta_dot
        force = torch.where(action == 1, tasks.force_mag, -tasks.force_mag)
        cos, sin = torch.cos(theta), torch.sin(theta)
        total_mass = tasks.masspole + tasks.masscart
        polemass_length = tasks.masspole * tasks.length
        # Equations of https://coneural.org/florian/papers/05_cart_pole.pdf, as in Gymnasium.
        temp = (force + polemass_length * theta_dot.square() * sin) / total_mass
        theta_acc = (tasks.gravity * sin - cos * temp) / (tasks.length * (4.0 / 3.0 - tasks.masspole * cos.square() / total_mass))
        x_acc = temp - polemass_length * theta_acc * cos / total_mass
        tau = self.tau  # explicit Euler: every right-hand side uses the old state
        x, x_dot, theta, theta_dot = x + tau * x_dot, x_dot + tau * x_acc, theta + tau * theta_dot, theta_dot + tau * theta_acc
        terminated = (x.abs() > self.x_threshold) | (theta.abs() > self.theta_threshold)
        obs = torch.stack((x, x_dot, theta, theta_dot), dim=1)
        return Transition(CartPoleState(x, x_dot, theta, theta_dot), obs, torch.ones_like(x), terminated)


# --- Pendulum -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PendulumTasks(Tasks):
    gravity: torch.Tensor  # (n,) m/s^2
    mass: torch.Tensor  # (n,) kg
    length: torch.Tensor  # (n,) m


@dataclasses.dataclass(frozen=True)
class PendulumState(TensorStruct):
    theta: torch.Tensor  # (n,) angle, 0 = upright, not wrapped
    theta_dot: torch.Tensor  # (n,) angular velocity


def angle_normalize(theta: torch.Tensor) -> torch.Tensor:
    """``theta`` wrapped to ``[-pi, pi)`` (Gymnasium's ``angle_normalize``)."""
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


class Pendulum(TaskFamily[PendulumTasks, PendulumState]):
    """Swing up a pendulum whose gravity, mass and length change from task to task.

    **Description.** Gymnasium's Pendulum-v1: a rod hinged at one end starts at
    a random angle, and the agent applies a torque at the hinge to swing it up
    and hold it upright. The torque is too weak to lift the pendulum directly
    (at the default task), so it has to build up momentum. Each task sets the
    gravity, the mass and the length of the rod; the policy does not see them.
    At the default task the dynamics are Gymnasium's (``dt = 0.05`` s, angular
    speed clipped to ``[-8, 8]``).

    **Observation.** ``Box((-1, -1, -8), (1, 1, 8), (3,), float32)``, as in
    Gymnasium: ``cos(theta)``, ``sin(theta)`` and the angular velocity, with
    ``theta = 0`` upright.

    **Action.** ``Box(-2, 2, (1,), float32)``: the torque; larger actions are
    clipped to the box.

    **Reward.** ``-(angle_normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2)``
    for the state before the step and the clipped torque ``u``; 0 is best.

    **Task distribution.** Independent uniform parameters (constructor
    arguments change the ranges):

    ==========  ============  =======  ====================
    parameter   range         default  meaning
    ==========  ============  =======  ====================
    gravity     [5.0, 15.0]   10.0     m/s^2
    mass        [0.5, 2.0]    1.0      kg
    length      [0.5, 2.0]    1.0      rod length, m
    ==========  ============  =======  ====================

    The default task is Gymnasium's physics.

    **Held-out split.** Each parameter is rescaled to [0, 1] over its range and
    the resulting 3-D cube is cut into 10 cells per axis; the cells whose index
    hash is 0 mod 5 (a checkerboard-like 20% of the cube, see
    :mod:`metarl.tasks`) hold the test tasks, the others the train tasks.

    **Episode end.** Starts from ``theta ~ U(-pi, pi)``, ``theta_dot ~ U(-1, 1)``.
    Never terminated; truncated after 200 steps.

    **Version history.** v0: initial version (dynamics of Gymnasium Pendulum-v1).
    """

    max_episode_steps = 200
    dt = 0.05  # seconds per step
    max_speed = 8.0
    _obs_high = np.array([1.0, 1.0, max_speed], dtype=np.float32)  # Gymnasium's
    observation_space = spaces.Box(-_obs_high, _obs_high, dtype=np.float32)
    action_space = spaces.Box(-2.0, 2.0, (1,), np.float32)

    def __init__(
        self,
        gravity: tuple[float, float] = (5.0, 15.0),
        mass: tuple[float, float] = (0.5, 2.0),
        length: tuple[float, float] = (0.5, 2.0),
    ) -> None:
        self.task_space = BoxTaskSpace(
            PendulumTasks,
            gravity=_param_range("gravity", gravity, 10.0),
            mass=_param_range("mass", mass, 1.0),
            length=_param_range("length", length, 1.0),
        )

    @staticmethod
    def _obs(state: PendulumState) -> torch.Tensor:
        return torch.stack((torch.cos(state.theta), torch.sin(state.theta), state.theta_dot), dim=1)

    def reset(self, tasks: PendulumTasks, generator: torch.Generator) -> tuple[PendulumState, torch.Tensor]:
        u = torch.rand((len(tasks), 2), generator=generator, device=tasks.device) * 2 - 1
        state = PendulumState(u[:, 0] * math.pi, u[:, 1])
        return state, self._obs(state)

    def step(
        self, state: PendulumState, action: torch.Tensor, tasks: PendulumTasks, generator: torch.Generator
    ) -> Transition[PendulumState]:
        theta, theta_dot, u = state.theta, state.theta_dot, action[:, 0]  # u already clipped by TensorEnv
        g, m, length = tasks.gravity, tasks.mass, tasks.length
        reward = -(angle_normalize(theta).square() + 0.1 * theta_dot.square() + 0.001 * u.square())
        theta_acc = 3 * g / (2 * length) * torch.sin(theta) + 3.0 / (m * length.square()) * u
        new_theta_dot = torch.clamp(theta_dot + theta_acc * self.dt, -self.max_speed, self.max_speed)
        next_state = PendulumState(theta + new_theta_dot * self.dt, new_theta_dot)
        terminated = torch.zeros_like(theta, dtype=torch.bool)
        return Transition(next_state, self._obs(next_state), reward, terminated)


register("metarl/CartPole-v0", CartPole)
register("metarl/Pendulum-v0", Pendulum)
