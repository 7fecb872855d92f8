"""Bandits and random tabular MDPs: the small-scale tasks of RL² (Duan et al. 2016, sections 4.1-4.2)."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np
import torch
from gymnasium import spaces

from metarl.env import TaskFamily, Transition
from metarl.registry import register
from metarl.structs import TensorStruct
from metarl.tasks import BoxTaskSpace, ParamRange, Tasks, TaskSpace


def _check_int(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``, else a ValueError naming it."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


# --- Bernoulli bandit -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BernoulliBanditTasks(Tasks):
    means: torch.Tensor  # (n, num_arms) success probability of each arm


@dataclasses.dataclass(frozen=True)
class BernoulliBanditState(TensorStruct):
    pulls: torch.Tensor  # (n,) long, pulls made so far in this episode


class BernoulliBandit(TaskFamily[BernoulliBanditTasks, BernoulliBanditState]):
    """A ``k``-armed Bernoulli bandit played for ``n`` pulls.

    **Description.** Each task is a vector of arm success probabilities. Every
    step the agent pulls one arm and wins 1 with that arm's probability. The
    agent never sees the probabilities, so it must balance exploring the arms
    against exploiting the best one found so far within the ``n`` pulls.

    **Observation.** ``Box(0, 1, (1,), float32)``, always the zero vector: a
    bandit has no state. Recurrent agents (RL²) see the previous action and
    reward through a wrapper, not through this observation.

    **Action.** ``Discrete(num_arms)``: the arm to pull.

    **Reward.** 1 with probability ``means[action]``, else 0 (a Bernoulli draw
    from the env's generator).

    **Task distribution.** ``means ~ U[0, 1]^num_arms``, independently per arm.
    Default task: evenly spaced means ``(i + 0.5) / num_arms`` (for 5 arms:
    0.1, 0.3, 0.5, 0.7, 0.9).

    **Held-out split.** The means cube ``[0, 1]^num_arms`` is cut into cells of
    width 0.1 per axis; the cells whose index hash is 0 mod 5 (a
    checkerboard-like 20% of the cube, see :mod:`metarl.tasks`) hold the test
    tasks, the rest the train tasks.

    **Episode end.** Terminated on the ``num_pulls``-th pull: the horizon is
    part of the problem (one episode is one trial of ``n`` pulls), so it ends
    by termination, never by truncation (``max_episode_steps = num_pulls`` only
    states the bound). The task is kept across the autoreset.

    **Version history.** v0: initial version.

    Args:
        num_arms: ``k``, the number of arms (at least 2).
        num_pulls: ``n``, the pulls per episode (at least 1).
    """

    def __init__(self, num_arms: int = 5, num_pulls: int = 10) -> None:
        self.num_arms = _check_int("num_arms", num_arms, 2)
        self.num_pulls = _check_int("num_pulls", num_pulls, 1)
        self.max_episode_steps = self.num_pulls  # the family terminates first; truncation never fires
        k = self.num_arms
        default = tuple((i + 0.5) / k for i in range(k))
        self.task_space = BoxTaskSpace(BernoulliBanditTasks, means=ParamRange((0.0,) * k, (1.0,) * k, default))
        self.observation_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Discrete(k)

    def reset(self, tasks: BernoulliBanditTasks, generator: torch.Generator) -> tuple[BernoulliBanditState, torch.Tensor]:
        n, device = len(tasks), tasks.device
        pulls = torch.zeros(n, dtype=torch.long, device=device)
        return BernoulliBanditState(pulls), torch.zeros(n, 1, device=device)

    def step(
        self, state: BernoulliBanditState, action: torch.Tensor, tasks: BernoulliBanditTasks, generator: torch.Generator
    ) -> Transition[BernoulliBanditState]:
        n, device = len(tasks), tasks.device
        p = tasks.means.gather(1, action.unsqueeze(1)).squeeze(1)
        reward = (torch.rand(n, generator=generator, device=device) < p).float()
        pulls = state.pulls + 1
        terminated = pulls >= self.num_pulls
        return Transition(BernoulliBanditState(pulls), torch.zeros(n, 1, device=device), reward, terminated)

    def __repr__(self) -> str:
        return f"BernoulliBandit(num_arms={self.num_arms}, num_pulls={self.num_pulls})"


# --- Tabular MDP --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TabularMDPTasks(Tasks):
    transitions: torch.Tensor  # (n, S, A, S): P(s' | s, a), each (s, a) row sums to 1
    reward_means: torch.Tensor  # (n, S, A): mean reward of taking a in s


@dataclasses.dataclass(frozen=True)
class TabularMDPState(TensorStruct):
    state: torch.Tensor  # (n,) long, the current state index


class TabularMDPTaskSpace(TaskSpace[TabularMDPTasks]):
    """Random MDPs of RL²: ``P(. | s, a) ~ Dirichlet(1)`` and ``mu(s, a) ~ N(1, 1)``, all independent.

    **Sampling.** A Dirichlet(1, ..., 1) row is a vector of Exp(1) draws
    divided by its sum; the Exp(1) draws are ``-log(1 - U)`` with ``U`` from
    ``torch.rand`` (``torch.distributions`` takes no generator). Everything is
    drawn in float64 on the CPU and stored as float32.

    **Split coordinates.** The split uses two reward means, ``mu(0, 0)`` and
    ``mu(0, 1)``: those of the first two actions in state 0, where every
    episode starts, so they shape every episode. Each is standardized and
    mapped to ``[0, 1]`` by the standard normal CDF, ``Phi(mu - 1)``, which
    makes the coordinate exactly uniform under the task distribution. So the
    held-out cells of :meth:`TaskSpace.held_out` hold 20% of the tasks, and
    train and test tasks differ in how rewarding the start state's first two
    actions are. The transitions do not enter the split.

    **Default task.** ``draw(1, torch.Generator().manual_seed(0))``, the same
    MDP on every machine for given ``num_states`` and ``num_actions``.
    """

    tasks_type: ClassVar[type[Tasks]] = TabularMDPTasks

    def __init__(self, num_states: int, num_actions: int) -> None:
        self.num_states = _check_int("num_states", num_states, 2)
        self.num_actions = _check_int("num_actions", num_actions, 2)

    def draw(self, n: int, generator: torch.Generator) -> TabularMDPTasks:
        s, a = self.num_states, self.num_actions
        u = torch.rand((n, s, a, s), generator=generator, dtype=torch.float64)
        exp = -torch.log1p(-u)  # Exp(1); finite since u < 1
        transitions = exp / exp.sum(dim=-1, keepdim=True)
        reward_means = 1.0 + torch.randn((n, s, a), generator=generator, dtype=torch.float64)
        return TabularMDPTasks(transitions.to(torch.float32), reward_means.to(torch.float32))

    def split_coordinates(self, tasks: TabularMDPTasks) -> torch.Tensor:
        mu = tasks.reward_means[:, 0, :2].cpu().to(torch.float64)
        return (0.5 * (1.0 + torch.erf((mu - 1.0) / math.sqrt(2.0)))).to(torch.float32)

    def default(self) -> TabularMDPTasks:
        return self.draw(1, torch.Generator().manual_seed(0))

    def __repr__(self) -> str:
        return f"TabularMDPTaskSpace(num_states={self.num_states}, num_actions={self.num_actions})"


class TabularMDP(TaskFamily[TabularMDPTasks, TabularMDPState]):
    """A random finite MDP, as in RL² (Duan et al. 2016, section 4.2).

    **Description.** Each task is an MDP with ``num_states`` states and
    ``num_actions`` actions: a transition distribution and a mean reward for
    every state-action pair. The agent sees which state it is in but not the
    MDP, so over the episodes of a trial it must learn the dynamics and
    rewards well enough to collect high reward.

    **Observation.** ``Box(0, 1, (num_states,), float32)``: the one-hot vector
    of the current state.

    **Action.** ``Discrete(num_actions)``.

    **Reward.** Taking ``a`` in ``s`` pays ``mu(s, a) + N(0, 1)`` noise (from the
    env's generator); the next state is drawn from ``P(. | s, a)``.

    **Task distribution.** ``P(. | s, a) ~ Dirichlet(1, ..., 1)`` (uniform on
    the simplex) and ``mu(s, a) ~ N(1, 1)``, independently for every pair (see
    :class:`TabularMDPTaskSpace`). Default task: the MDP drawn from
    ``torch.Generator().manual_seed(0)``.

    **Start state.** Every episode starts in state 0. Section 4.2 of the paper
    does not say how the start state is chosen; a fixed state 0 is our choice,
    the one common reimplementations (pytorch-maml-rl's ``TabularMDPEnv``,
    lucaslingle/rl2's ``MDPEnv``) also make.

    **Held-out split.** By the reward means of state 0's first two actions,
    mapped to the unit square by the normal CDF and cut into the 20%
    checkerboard of :mod:`metarl.tasks` (see :class:`TabularMDPTaskSpace`).

    **Episode end.** Never terminated; truncated after ``episode_length``
    steps (10 in the paper). The task is kept across the autoreset.

    **Version history.** v0: initial version.

    Args:
        num_states: ``S`` (at least 2; the paper uses 10).
        num_actions: ``A`` (at least 2; the paper uses 5).
        episode_length: steps per episode (at least 1; the paper uses 10).
    """

    def __init__(self, num_states: int = 10, num_actions: int = 5, episode_length: int = 10) -> None:
        self.num_states = _check_int("num_states", num_states, 2)
        self.num_actions = _check_int("num_actions", num_actions, 2)
        self.episode_length = _check_int("episode_length", episode_length, 1)
        self.max_episode_steps = self.episode_length
        self.task_space = TabularMDPTaskSpace(self.num_states, self.num_actions)
        self.observation_space = spaces.Box(0.0, 1.0, (self.num_states,), np.float32)
        self.action_space = spaces.Discrete(self.num_actions)

    def _observe(self, state: torch.Tensor) -> torch.Tensor:
        # One-hot by comparison: F.one_hot range-checks its input with .item() on the CPU.
        states = torch.arange(self.num_states, device=state.device)
        return (state.unsqueeze(-1) == states).to(torch.float32)

    def reset(self, tasks: TabularMDPTasks, generator: torch.Generator) -> tuple[TabularMDPState, torch.Tensor]:
        state = torch.zeros(len(tasks), dtype=torch.long, device=tasks.device)
        return TabularMDPState(state), self._observe(state)

    def step(
        self, state: TabularMDPState, action: torch.Tensor, tasks: TabularMDPTasks, generator: torch.Generator
    ) -> Transition[TabularMDPState]:
        n, device = len(tasks), tasks.device
        rows = torch.arange(n, device=device)
        s = state.state
        reward = tasks.reward_means[rows, s, action] + torch.randn(n, generator=generator, device=device)
        # Inverse-CDF sampling of s' ~ P(. | s, a): the first index whose cumulative probability exceeds u.
        cdf = tasks.transitions[rows, s, action].cumsum(dim=-1)
        u = torch.rand(n, 1, generator=generator, device=device) * cdf[:, -1:]
        next_state = (cdf <= u).sum(dim=-1).clamp_(max=self.num_states - 1)
        terminated = torch.zeros(n, dtype=torch.bool, device=device)
        return Transition(TabularMDPState(next_state), self._observe(next_state), reward, terminated)

    def __repr__(self) -> str:
        return f"TabularMDP(num_states={self.num_states}, num_actions={self.num_actions}, episode_length={self.episode_length})"


register("metarl/BernoulliBandit-v0", BernoulliBandit)
register("metarl/TabularMDP-v0", TabularMDP)
