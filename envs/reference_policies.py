"""Reference policies for Bernoulli bandits and random tabular MDPs: the baselines of RL²'s Table 1.

These are hand-designed (or exactly computed) policies that adapt to an
unknown task from their own statistics, with nothing learned across tasks.
They are the yardsticks a meta-learner on :class:`~envs.bandits.BernoulliBandit`
and :class:`~envs.bandits.TabularMDP` is compared with (Duan et al. 2016,
"RL²: Fast Reinforcement Learning via Slow Reinforcement Learning", section 4).

Bandits (``k`` arms, ``n`` pulls, arm means ``~ U[0, 1]``, i.e. a Beta(1, 1) prior)
    Every policy acts from per-env posterior counts, ``successes`` and
    ``failures`` per arm (:class:`BanditBelief`), batched over ``N`` envs:
    :class:`RandomArms`, :class:`Greedy` (highest posterior mean),
    :class:`EpsilonGreedy`, :class:`UCB1` (Auer, Cesa-Bianchi and Fischer
    2002), :class:`ThompsonSampling` (Thompson 1933), :class:`GittinsIndex`
    (the finite-horizon Gittins index, :func:`gittins_table`) and
    :class:`BayesOptimal` (backward induction over the joint posterior of all
    arms, feasible for small ``k`` and ``n`` only, :func:`bandit_dp`).
    :func:`run_bandit_policy` plays them on a batch of arm means.

Tabular MDPs
    :class:`RandomActions` and :class:`PSRL` (posterior-sampling RL, Osband,
    Russo and Van Roy 2013); :func:`run_mdp_policy` plays them.

Both simulations drive the real families through :class:`~metarl.env.TensorEnv`
(one implementation of the dynamics). :class:`ReferenceLearner` presents any
of these policies as a :class:`~metarl.agent.MetaLearner`, so
:func:`metarl.evaluation.evaluate` draws it beside the agent: its adaptation
curve is the return of episode ``0..k`` of a trial whose posterior persists
across the trial's episodes, as an RL² agent's memory does.

Randomness
----------
Every random draw (exploration, tie-breaking, posterior samples) comes from
an explicit ``torch.Generator``. ``torch.distributions`` and
``torch._standard_gamma`` take no generator, so Gamma variates come from
:func:`sample_gamma` (Marsaglia and Tsang 2000, an exact rejection sampler
built on ``torch.randn`` / ``torch.rand``), and Beta and Dirichlet variates
are normalised Gammas (:func:`sample_beta`, :func:`sample_dirichlet`).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from envs.bandits import BernoulliBandit, BernoulliBanditTasks, TabularMDP, TabularMDPTasks
from metarl.env import TensorEnv
from metarl.tasks import Tasks

_TIE_TOLERANCE = 1e-12  # scores this close to the best count as tied (broken uniformly at random)


def _check_positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _child_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """A fresh generator on ``device``, seeded by one draw from ``generator`` (which may live elsewhere)."""
    child = torch.Generator(device=device)
    child.manual_seed(int(torch.randint(2**62, (), generator=generator, device=generator.device)))
    return child


# --- generator-aware samplers ------------------------------------------------------------


def _seeded_env(family: BernoulliBandit | TabularMDP, tasks: Tasks, generator: torch.Generator) -> TensorEnv:
    """The family's TensorEnv running ``tasks`` (one per env), its noise seeded from ``generator``."""
    seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
    return TensorEnv(family, len(tasks), device=tasks.device, tasks=tasks, seed=seed, validate_actions=False)


def sample_gamma(concentration: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One ``Gamma(concentration, 1)`` draw per element, from ``generator`` only (float64).

    Marsaglia and Tsang (2000), "A simple method for generating gamma
    variables", ACM TOMS 26(3): for ``alpha >= 1`` let ``d = alpha - 1/3``,
    ``c = 1 / sqrt(9 d)``; draw ``x ~ N(0, 1)``, ``u ~ U(0, 1)``, set
    ``v = (1 + c x)^3`` and accept ``d v`` when ``v > 0`` and
    ``log u < x²/2 + d - d v + d log v``. This is an exact rejection sampler
    (acceptance above 95% for every ``alpha >= 1``); rejected elements are
    redrawn, batched, until none is left. For ``alpha < 1`` it returns
    ``Gamma(alpha + 1) · U^(1/alpha)`` (section 6 of the paper), also exact.
    """
    alpha = concentration.to(torch.float64)
    if not bool((alpha > 0).all()):
        raise ValueError("gamma concentrations must be positive")
    device = alpha.device
    boosted = alpha < 1
    shape = torch.where(boosted, alpha + 1.0, alpha).flatten()
    d = shape - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    out = torch.empty_like(d)
    pending = torch.arange(d.numel(), device=device)
    while pending.numel() > 0:
        dp, cp = d[pending], c[pending]
        x = torch.randn(pending.numel(), generator=generator, device=device, dtype=torch.float64)
        u = torch.rand(pending.numel(), generator=generator, device=device, dtype=torch.float64)
        v = (1.0 + cp * x) ** 3
        log_v = torch.log(v.clamp(min=torch.finfo(torch.float64).tiny))
        accept = (v > 0) & (torch.log(u) < 0.5 * x * x + dp - dp * v + dp * log_v)
        out[pending[accept]] = (dp * v)[accept]
        pending = pending[~accept]
    out = out.reshape(alpha.shape)
    if bool(boosted.any()):
        u = torch.rand(alpha.shape, generator=generator, device=device, dtype=torch.float64)
        out = torch.where(boosted, out * u ** (1.0 / alpha), out)
    return out


def sample_beta(a: torch.Tensor, b: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``Beta(a, b)`` draws (broadcast shapes, float64): ``X / (X + Y)`` with ``X ~ Gamma(a)``, ``Y ~ Gamma(b)``."""
    a, b = torch.broadcast_tensors(a.to(torch.float64), b.to(torch.float64))
    g = sample_gamma(torch.stack([a, b]), generator)
    return g[0] / (g[0] + g[1])


def sample_dirichlet(concentration: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``Dirichlet(concentration)`` draws over the last dimension (float64): independent Gammas, normalised."""
    g = sample_gamma(concentration, generator)
    return g / g.sum(dim=-1, keepdim=True)


def argmax_random_ties(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Index of the largest score along the last dimension, ties (within 1e-12) broken uniformly at random."""
    best = scores.max(dim=-1, keepdim=True).values
    tied = scores >= best - _TIE_TOLERANCE
    u = torch.rand(scores.shape, generator=generator, device=scores.device)
    return torch.where(tied, u, -1.0).argmax(dim=-1)


def _uniform_over_ties(scores: torch.Tensor) -> torch.Tensor:
    """The action distribution of :func:`argmax_random_ties`: uniform over the tied best scores."""
    tied = (scores >= scores.max(dim=-1, keepdim=True).values - _TIE_TOLERANCE).to(torch.float64)
    return tied / tied.sum(dim=-1, keepdim=True)


# --- bandit policies -----------------------------------------------------------------------


class BanditBelief(NamedTuple):
    """What a bandit policy acts on: the posterior counts of ``N`` envs, ``k`` arms each, and the clock.

    With the Beta(1, 1) prior of the task distribution, arm ``i``'s posterior
    is ``Beta(1 + successes[:, i], 1 + failures[:, i])``.
    """

    successes: torch.Tensor
    """(N, k) float64, rewards of 1 seen per arm"""
    failures: torch.Tensor
    """(N, k) float64, rewards of 0 seen per arm"""
    pulls_left: int
    """pulls left in the trial, the coming one included (1..horizon)"""
    horizon: int
    """pulls per trial"""

    @property
    def pulls_made(self) -> int:
        return self.horizon - self.pulls_left

    def posterior_mean(self) -> torch.Tensor:
        return (self.successes + 1.0) / (self.successes + self.failures + 2.0)


class BanditPolicy(ABC):
    """A bandit policy: maps a :class:`BanditBelief` to one arm per env."""

    name: str

    @abstractmethod
    def act(self, belief: BanditBelief, generator: torch.Generator) -> torch.Tensor:
        """The arms to pull, ``(N,)`` long."""

    def action_probs(self, belief: BanditBelief) -> torch.Tensor:
        """The distribution ``(N, k)`` that :meth:`act` samples from, where it has a closed form (used by :func:`bandit_dp`)."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form action distribution")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class IndexPolicy(BanditPolicy):
    """Pull the arm with the highest score, ties broken uniformly at random."""

    @abstractmethod
    def scores(self, belief: BanditBelief) -> torch.Tensor:
        """One score per arm, ``(N, k)`` float64."""

    def act(self, belief: BanditBelief, generator: torch.Generator) -> torch.Tensor:
        return argmax_random_ties(self.scores(belief), generator)

    def action_probs(self, belief: BanditBelief) -> torch.Tensor:
        return _uniform_over_ties(self.scores(belief))


class RandomArms(IndexPolicy):
    """Every arm with probability ``1/k`` (all scores tie). Expected total reward: ``n`` times the mean arm mean."""

    name = "random"

    def scores(self, belief: BanditBelief) -> torch.Tensor:
        return torch.zeros_like(belief.successes)


class Greedy(IndexPolicy):
    """The arm with the highest posterior mean ``(1 + s) / (2 + s + f)`` (Beta(1, 1) prior)."""

    name = "greedy"

    def scores(self, belief: BanditBelief) -> torch.Tensor:
        return belief.posterior_mean()


class EpsilonGreedy(BanditPolicy):
    """With probability ``epsilon`` a uniformly random arm, otherwise :class:`Greedy`'s choice."""

    def __init__(self, epsilon: float = 0.1) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon!r}")
        self.epsilon = float(epsilon)
        self.name = f"epsilon-greedy({self.epsilon:g})"
        self._greedy = Greedy()

    def act(self, belief: BanditBelief, generator: torch.Generator) -> torch.Tensor:
        n, k = belief.successes.shape
        device = belief.successes.device
        greedy = self._greedy.act(belief, generator)
        explore = torch.rand(n, generator=generator, device=device) < self.epsilon
        random_arm = torch.randint(k, (n,), generator=generator, device=device)
        return torch.where(explore, random_arm, greedy)

    def action_probs(self, belief: BanditBelief) -> torch.Tensor:
        k = belief.successes.shape[1]
        return (1.0 - self.epsilon) * self._greedy.action_probs(belief) + self.epsilon / k

    def __repr__(self) -> str:
        return f"EpsilonGreedy(epsilon={self.epsilon:g})"


class UCB1(IndexPolicy):
    """UCB1 (Auer, Cesa-Bianchi and Fischer 2002, "Finite-time analysis of the multiarmed bandit problem").

    Pull every arm once (in random order), then the arm maximising
    ``x̄_i + sqrt(2 ln t / n_i)``: the empirical mean ``x̄_i = s_i / n_i`` of
    arm ``i``'s ``n_i`` pulls plus an exploration bonus, ``t`` being the
    pulls made so far. Frequentist: the prior plays no part.

    Args:
        exploration: ``c``, a factor on the bonus (1: UCB1 as published; smaller explores less).
    """

    def __init__(self, exploration: float = 1.0) -> None:
        if not exploration >= 0.0:
            raise ValueError(f"exploration must be non-negative, got {exploration!r}")
        self.exploration = float(exploration)
        self.name = "UCB1" if self.exploration == 1.0 else f"UCB1(c={self.exploration:g})"

    def scores(self, belief: BanditBelief) -> torch.Tensor:
        pulls = belief.successes + belief.failures
        bonus = self.exploration * math.sqrt(2.0 * math.log(max(belief.pulls_made, 1))) / pulls.clamp(min=1).sqrt()
        score = belief.successes / pulls.clamp(min=1) + bonus
        return torch.where(pulls == 0, math.inf, score)

    def __repr__(self) -> str:
        return f"UCB1(exploration={self.exploration:g})"


class ThompsonSampling(BanditPolicy):
    """Thompson sampling (Thompson 1933): draw each arm's mean from its Beta posterior, pull the best draw.

    The draws are exact Beta variates from the caller's generator (:func:`sample_beta`).
    Its action distribution has no closed form here, so :func:`bandit_dp` cannot evaluate it.
    """

    name = "Thompson"

    def act(self, belief: BanditBelief, generator: torch.Generator) -> torch.Tensor:
        theta = sample_beta(belief.successes + 1.0, belief.failures + 1.0, generator)
        return argmax_random_ties(theta, generator)


class GittinsIndex(IndexPolicy):
    """Pull the arm with the largest finite-horizon Gittins index (:func:`gittins_table`) for the pulls left.

    This is the FH-Gittins policy of Kaufmann (2018): each arm is scored on
    its own, as if it were the only unknown arm, with the remaining horizon.
    Gittins' theorem (infinite horizon, geometric discounting) makes index
    policies optimal; with ``k >= 2`` arms and a finite horizon it does not
    apply, so this policy is near-optimal, not exactly Bayes-optimal
    (:class:`BayesOptimal` is; the tests compare the two).

    Args:
        discount: ``gamma`` of the index (1: undiscounted, the trial's total reward).
    """

    name = "Gittins"

    def __init__(self, discount: float = 1.0) -> None:
        self.discount = float(discount)

    def scores(self, belief: BanditBelief) -> torch.Tensor:
        table = gittins_table(belief.horizon, self.discount).to(belief.successes.device)
        return table[belief.pulls_left, belief.successes.long(), belief.failures.long()]

    def __repr__(self) -> str:
        return f"GittinsIndex(discount={self.discount:g})"


class BayesOptimal(IndexPolicy):
    """The Bayes-optimal policy for arm means ``~ U[0, 1]``: the arm with the largest optimal Q-value.

    Q-values come from backward induction over the joint posterior of all
    arms (:func:`bandit_dp`), so this is exact but only feasible for small
    problems (about ``C(n + 2k, 2k)`` states: 185k for ``k = 5, n = 10``).
    """

    name = "Bayes-optimal"

    def scores(self, belief: BanditBelief) -> torch.Tensor:
        k = belief.successes.shape[1]
        levels = _joint_states(k, belief.horizon)
        q_tables = _bayes_optimal_q(k, belief.horizon)
        t = belief.pulls_made
        counts = torch.stack([belief.successes, belief.failures], dim=-1).reshape(len(belief.successes), 2 * k).long()
        codes = _encode(counts.cpu(), belief.horizon)
        row = torch.searchsorted(levels[t], codes).clamp(max=len(levels[t]) - 1)
        if not bool((levels[t][row] == codes).all()):
            raise ValueError(f"posterior counts do not match {t} pulls made")
        return q_tables[t][row].to(belief.successes.device)


# --- the finite-horizon Gittins index ------------------------------------------------------


def _discounted_steps(steps: int, discount: float) -> float:
    """``1 + gamma + ... + gamma^(steps - 1)``: the weight of ``steps`` retirement rewards."""
    return float(steps) if discount == 1.0 else (1.0 - discount**steps) / (1.0 - discount)


def _calibration_gap(
    a: torch.Tensor, b: torch.Tensor, lam: torch.Tensor, horizon: int, discount: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``f(λ) = C(λ) - S_h λ`` and ``f'(λ)`` for one-armed bandits with ``Beta(a, b)`` arms, ``horizon`` pulls left.

    ``C(λ)`` is the value of pulling the arm now and then acting optimally
    in the retirement problem (each later step: pull again, or retire for
    good and earn ``λ`` per remaining step); ``S_h λ`` is the value of
    retiring now. Backward induction over the posterior tree: at depth ``d``
    the nodes are ``i = 0..d`` successes in ``d`` pulls, with posterior mean
    ``(a + i) / (a + b + d)``. ``f'`` is ``-`` the expected discounted
    number of pulls (the first included) under the policy found, a
    subgradient of the convex function ``f``. All targets in parallel.
    """
    value = torch.zeros(len(a), horizon + 1, dtype=torch.float64, device=a.device)
    slope = torch.zeros_like(value)
    for d in range(horizon - 1, -1, -1):
        i = torch.arange(d + 1, dtype=torch.float64, device=a.device)
        p = (a[:, None] + i) / (a + b + d)[:, None]
        cont = p * (1.0 + discount * value[:, 1 : d + 2]) + (1.0 - p) * discount * value[:, : d + 1]
        cont_slope = discount * (p * slope[:, 1 : d + 2] + (1.0 - p) * slope[:, : d + 1])
        if d == 0:
            s_h = _discounted_steps(horizon, discount)
            return cont[:, 0] - s_h * lam, cont_slope[:, 0] - s_h
        s_r = _discounted_steps(horizon - d, discount)
        retire = s_r * lam[:, None]
        stop = retire >= cont
        value = torch.where(stop, retire, cont)
        slope = torch.where(stop, s_r, cont_slope)
    raise AssertionError("unreachable")  # pragma: no cover  (horizon >= 1)


@functools.lru_cache(maxsize=8)
def _gittins_table(horizon: int, discount: float) -> torch.Tensor:
    table = torch.full((horizon + 1, horizon + 1, horizon + 1), math.nan, dtype=torch.float64)
    s, f = torch.meshgrid(torch.arange(horizon + 1), torch.arange(horizon + 1), indexing="ij")
    table[0] = (s + 1).double() / (s + f + 2).double()  # no pull left: the index is moot; the posterior mean by convention
    for h in range(1, horizon + 1):
        reachable = (s + f <= horizon - h).flatten()  # at most n - h pulls made before h are left
        ss, ff = s.flatten()[reachable], f.flatten()[reachable]
        a, b = (ss + 1).double(), (ff + 1).double()
        lam = table[h - 1, ss, ff].clone()  # the index grows with h, so the last level's is a lower bound
        active = torch.arange(len(ss))
        for _ in range(200):
            gap, slope = _calibration_gap(a[active], b[active], lam[active], h, discount)
            step = -gap / slope  # slope <= -1
            lam[active] += step
            active = active[step.abs() > 1e-13]
            if active.numel() == 0:
                break
        else:  # pragma: no cover
            raise RuntimeError(f"Gittins index: Newton's method did not converge at h = {h}")
        table[h, ss, ff] = lam
    return table


def gittins_table(horizon: int, discount: float = 1.0) -> torch.Tensor:
    """Finite-horizon Gittins indices of the Beta(1, 1)-Bernoulli arm, ``(horizon + 1,) * 3`` float64 ``[h, s, f]``.

    ``table[h, s, f]`` is the index of an arm seen to succeed ``s`` and fail
    ``f`` times (posterior ``Beta(1 + s, 1 + f)``) with ``h`` pulls left, for
    every state reachable in a trial of ``horizon`` pulls (``s + f <= horizon
    - h``; NaN elsewhere; ``h = 0`` holds the posterior mean).

    **Definition** (Whittle's calibration, 1980; Gittins, Glazebrook and
    Weber 2011, "Multi-armed Bandit Allocation Indices", chapter 2; the
    finite-horizon index of Kaufmann 2018, "On Bayesian index policies for
    sequential resource allocation", Ann. Statist. 46(2)): the index is the
    retirement reward ``λ`` at which a one-armed bandit that can retire for
    good, earning ``λ`` per remaining step, is indifferent between retiring
    now and pulling the arm (then continuing optimally). It lies in
    ``[posterior mean, 1]``, equals the posterior mean when ``h = 1`` and is
    nondecreasing in ``h`` (towards 1 undiscounted, towards the
    infinite-horizon Gittins index when ``discount < 1``).

    **Computation.** ``f(λ) = C(λ) - S_h λ`` (:func:`_calibration_gap`) is
    convex, piecewise linear and strictly decreasing (slope ``<= -1``), and
    the index is its root. Instead of bisection, Newton's method on ``f``,
    with the slope from the same backward pass (minus the expected number of
    pulls), converges from any start in finitely many steps to the exact
    root: each iterate after the first lies left of the root, and the
    iterates stop once they reach the root's linear piece. It starts from the
    index with ``h - 1`` pulls left (a lower bound), so 2 to 4 passes per
    ``h`` suffice (the tests check the result against plain bisection). All
    reachable ``(s, f)`` at one ``h`` go through a pass together, about
    ``(n - h)² h² / 4`` node updates, ``n⁵ / 120`` over the table: about 4 s
    for ``horizon = 100`` on one CPU thread, 2 minutes for 200. Cached per
    ``(horizon, discount)``: do not modify the returned tensor.

    Args:
        horizon: ``n``, the pulls per trial.
        discount: ``gamma`` in ``(0, 1]`` (1: total reward, the bandit benchmark).
    """
    _check_positive_int("horizon", horizon)
    if not 0.0 < discount <= 1.0:
        raise ValueError(f"discount must lie in (0, 1], got {discount!r}")
    return _gittins_table(horizon, float(discount))


# --- exact Bayesian dynamic programming over the joint posterior ---------------------------

_MAX_JOINT_STATES = 5_000_000


def _encode(counts: torch.Tensor, horizon: int) -> torch.Tensor:
    """Mixed-radix code of ``(M, 2k)`` count vectors ``[s_0, f_0, s_1, f_1, ...]`` (digits ``0..horizon``)."""
    weights = (horizon + 1) ** torch.arange(counts.shape[-1], dtype=torch.long)
    return (counts.long() * weights).sum(dim=-1)


def _decode(codes: torch.Tensor, num_digits: int, horizon: int) -> torch.Tensor:
    digits = []
    for _ in range(num_digits):
        digits.append(codes % (horizon + 1))
        codes = codes // (horizon + 1)
    return torch.stack(digits, dim=-1)


def joint_state_count(num_arms: int, horizon: int) -> int:
    """States of the joint posterior of ``num_arms`` arms over a trial of ``horizon`` pulls: ``C(horizon + 2k, 2k)``."""
    return math.comb(horizon + 2 * num_arms, 2 * num_arms)


@functools.lru_cache(maxsize=8)
def _joint_states(num_arms: int, horizon: int) -> list[torch.Tensor]:
    """Sorted codes of every joint count vector with ``t`` pulls made, for ``t = 0..horizon``."""
    _check_positive_int("num_arms", num_arms)
    _check_positive_int("horizon", horizon)
    states = joint_state_count(num_arms, horizon)
    if states > _MAX_JOINT_STATES or (horizon + 1) ** (2 * num_arms) >= 2**62:
        raise ValueError(
            f"the joint posterior of {num_arms} arms over {horizon} pulls has {states:,} states; "
            f"exact dynamic programming is limited to {_MAX_JOINT_STATES:,}"
        )
    steps = (horizon + 1) ** torch.arange(2 * num_arms, dtype=torch.long)  # code increment of each count
    levels = [torch.zeros(1, dtype=torch.long)]
    for _ in range(horizon):
        levels.append(torch.unique(levels[-1][:, None] + steps).sort().values)
    return levels


def bandit_dp(num_arms: int, horizon: int, policy: BanditPolicy | None = None) -> tuple[float, list[torch.Tensor]]:
    """Exact Bayesian expected total reward of a ``num_arms``-armed Bernoulli bandit trial with means ``~ U[0, 1]``.

    Backward induction over the joint posterior (all arms' counts): with
    ``t`` pulls made, pulling arm ``i`` in state ``x`` is worth
    ``Q_t(x, i) = p_i (1 + V_{t+1}(x + success_i)) + (1 - p_i) V_{t+1}(x + failure_i)``,
    ``p_i`` the posterior mean. With ``policy=None``, ``V_t = max_i Q_t``:
    the Bayes-optimal value (Bellman 1956; Gittins et al. 2011, section
    1.3); otherwise ``V_t = sum_i pi(i | x) Q_t(x, i)`` with ``pi`` from
    ``policy.action_probs``: that policy's exact expected reward. Only
    feasible for small problems (:func:`joint_state_count` states).

    Returns:
        ``V_0`` at the prior (the expected total reward of one trial) and
        ``Q_t`` for ``t = 0..horizon - 1``, each ``(states_t, num_arms)``,
        rows in the order of the sorted state codes.
    """
    levels = _joint_states(num_arms, horizon)
    steps = (horizon + 1) ** torch.arange(2 * num_arms, dtype=torch.long)
    value = torch.zeros(len(levels[horizon]), dtype=torch.float64)
    q_tables: list[torch.Tensor] = [torch.empty(0)] * horizon
    for t in range(horizon - 1, -1, -1):
        codes, nxt = levels[t], levels[t + 1]
        counts = _decode(codes, 2 * num_arms, horizon).to(torch.float64)
        s, f = counts[:, 0::2], counts[:, 1::2]
        p = (s + 1.0) / (s + f + 2.0)
        v_success = value[torch.searchsorted(nxt, codes[:, None] + steps[0::2])]
        v_failure = value[torch.searchsorted(nxt, codes[:, None] + steps[1::2])]
        q = p * (1.0 + v_success) + (1.0 - p) * v_failure
        q_tables[t] = q
        if policy is None:
            value = q.max(dim=1).values
        else:
            probs = policy.action_probs(BanditBelief(s, f, horizon - t, horizon))
            value = (probs * q).sum(dim=1)
    return float(value[0]), q_tables


@functools.lru_cache(maxsize=8)
def _bayes_optimal_q(num_arms: int, horizon: int) -> list[torch.Tensor]:
    return bandit_dp(num_arms, horizon)[1]


def bayes_optimal_value(num_arms: int, horizon: int) -> float:
    """The Bayes-optimal expected total reward of a trial (arm means ``~ U[0, 1]``); see :func:`bandit_dp`."""
    return bandit_dp(num_arms, horizon)[0]


def expected_total_reward(policy: BanditPolicy, num_arms: int, horizon: int) -> float:
    """``policy``'s exact expected total reward of a trial with arm means ``~ U[0, 1]`` (:func:`bandit_dp`)."""
    return bandit_dp(num_arms, horizon, policy)[0]


# --- playing bandits -----------------------------------------------------------------------


def play_bandit(
    policy: BanditPolicy,
    tasks: BernoulliBanditTasks,
    num_pulls: int,
    generator: torch.Generator,
    num_episodes: int = 1,
) -> torch.Tensor:
    """Play one trial of ``num_episodes`` episodes of ``num_pulls`` pulls in every env; returns ``(num_episodes, N)``.

    Env ``i`` plays task ``i`` of a :class:`~envs.bandits.BernoulliBandit`
    run by a :class:`~metarl.env.TensorEnv` on ``tasks.device``. The policy's
    counts persist across the episodes of the trial (its horizon is
    ``num_episodes * num_pulls``). ``generator`` seeds both the env and the
    policy's own randomness.
    """
    _check_positive_int("num_pulls", num_pulls)
    _check_positive_int("num_episodes", num_episodes)
    num_envs, num_arms = tasks.means.shape
    device = tasks.device
    env = _seeded_env(BernoulliBandit(num_arms=num_arms, num_pulls=num_pulls), tasks, generator)
    policy_generator = _child_generator(generator, device)
    env.reset()
    rows = torch.arange(num_envs, device=device)
    successes = torch.zeros(num_envs, num_arms, dtype=torch.float64, device=device)
    failures = torch.zeros_like(successes)
    returns = torch.zeros(num_episodes, num_envs, dtype=torch.float64, device=device)
    horizon = num_episodes * num_pulls
    for t in range(horizon):
        arm = policy.act(BanditBelief(successes, failures, horizon - t, horizon), policy_generator)
        reward = env.step(arm).reward.to(torch.float64)
        successes = successes.index_put((rows, arm), reward, accumulate=True)
        failures = failures.index_put((rows, arm), 1.0 - reward, accumulate=True)
        returns[t // num_pulls] += reward
    return returns


def run_bandit_policy(policy: BanditPolicy, means: torch.Tensor, num_pulls: int, generator: torch.Generator) -> torch.Tensor:
    """Total reward ``(N,)`` of one trial of ``num_pulls`` pulls on each row of arm means ``(N, k)``."""
    return play_bandit(policy, BernoulliBanditTasks(means.to(torch.float32)), num_pulls, generator)[0]


# --- tabular MDPs --------------------------------------------------------------------------


class MDPCounts(NamedTuple):
    """Sufficient statistics of ``N`` envs' experience in an ``S``-state, ``A``-action MDP."""

    transitions: torch.Tensor
    """(N, S, A, S) float64, times ``s'`` followed ``(s, a)``"""
    visits: torch.Tensor
    """(N, S, A) float64, times ``a`` was taken in ``s``"""
    reward_sums: torch.Tensor
    """(N, S, A) float64, sum of the rewards of those steps"""

    @classmethod
    def zeros(cls, num_envs: int, num_states: int, num_actions: int, device: torch.device | str = "cpu") -> MDPCounts:
        transitions = torch.zeros(num_envs, num_states, num_actions, num_states, dtype=torch.float64, device=device)
        return cls(transitions, transitions.sum(-1), transitions.sum(-1))

    def record(self, state: torch.Tensor, action: torch.Tensor, reward: torch.Tensor, next_state: torch.Tensor) -> MDPCounts:
        """The counts after one step ``(state, action, reward, next_state)`` in every env."""
        rows = torch.arange(len(state), device=state.device)
        ones = torch.ones(len(state), dtype=torch.float64, device=state.device)
        return MDPCounts(
            self.transitions.index_put((rows, state, action, next_state), ones, accumulate=True),
            self.visits.index_put((rows, state, action), ones, accumulate=True),
            self.reward_sums.index_put((rows, state, action), reward.to(torch.float64), accumulate=True),
        )


def value_iteration(transitions: torch.Tensor, rewards: torch.Tensor, horizon: int) -> torch.Tensor:
    """Optimal finite-horizon Q-values of a batch of MDPs, ``(horizon, N, S, A)``.

    ``Q[j]`` is for step ``j`` of an episode of ``horizon`` steps, so
    ``horizon - j`` steps remain: ``Q[j] = r + P V_{j+1}`` with
    ``V_j(s) = max_a Q[j](s, a)`` and ``V_horizon = 0`` (undiscounted backward
    induction; Puterman 1994, section 4.5).

    Args:
        transitions: ``(N, S, A, S)``, ``P(s' | s, a)``.
        rewards: ``(N, S, A)`` mean rewards.
        horizon: steps per episode.
    """
    _check_positive_int("horizon", horizon)
    q = torch.empty((horizon, *rewards.shape), dtype=rewards.dtype, device=rewards.device)
    value = torch.zeros(rewards.shape[:2], dtype=rewards.dtype, device=rewards.device)  # (N, S)
    for j in range(horizon - 1, -1, -1):
        q[j] = rewards + (transitions @ value[:, None, :, None]).squeeze(-1)
        value = q[j].max(dim=-1).values
    return q


def optimal_episode_value(tasks: TabularMDPTasks, episode_length: int) -> torch.Tensor:
    """Expected return ``(N,)`` of one episode from state 0 of a policy that knows the MDP (the oracle)."""
    q = value_iteration(tasks.transitions.to(torch.float64), tasks.reward_means.to(torch.float64), episode_length)
    return q[0, :, 0].max(dim=-1).values


class MDPPolicy(ABC):
    """A tabular MDP policy: plans once per episode from its counts, then acts greedily on the plan."""

    name: str

    @abstractmethod
    def plan(self, counts: MDPCounts, episode_length: int, generator: torch.Generator) -> torch.Tensor:
        """Action scores ``(episode_length, N, S, A)`` for the coming episode; step ``j`` takes the best (random ties)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomActions(MDPPolicy):
    """A uniformly random action at every step (all scores tie)."""

    name = "random"

    def plan(self, counts: MDPCounts, episode_length: int, generator: torch.Generator) -> torch.Tensor:
        num_envs, num_states, num_actions = counts.visits.shape
        return torch.zeros((), dtype=torch.float64, device=counts.visits.device).expand(
            episode_length, num_envs, num_states, num_actions
        )


class PSRL(MDPPolicy):
    """Posterior-sampling RL (Osband, Russo and Van Roy 2013, "(More) efficient reinforcement learning via posterior sampling").

    At the start of every episode, sample one MDP from the posterior, solve
    it exactly for the episode's horizon (:func:`value_iteration`) and follow
    its optimal policy for the whole episode. The posterior, with the priors
    of the task distribution:

    * ``P(. | s, a) ~ Dirichlet(prior + transition counts)`` (conjugate to the
      categorical next state; prior 1 = the uniform Dirichlet of the tasks);
    * ``mu(s, a) ~ N(m, v)``, from the prior ``N(prior_mean, prior_var)`` and
      rewards with known noise variance ``noise_var``: ``1/v = 1/prior_var +
      n/noise_var``, ``m = v (prior_mean/prior_var + sum r / noise_var)``.

    Dirichlet draws are normalised Gammas from :func:`sample_gamma`, so the
    caller's generator is the only source of randomness.
    """

    name = "PSRL"

    def __init__(
        self, dirichlet_prior: float = 1.0, prior_mean: float = 1.0, prior_var: float = 1.0, noise_var: float = 1.0
    ) -> None:
        if min(dirichlet_prior, prior_var, noise_var) <= 0:
            raise ValueError("dirichlet_prior, prior_var and noise_var must be positive")
        self.dirichlet_prior = dirichlet_prior
        self.prior_mean = prior_mean
        self.prior_var = prior_var
        self.noise_var = noise_var

    def sample_mdp(self, counts: MDPCounts, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One posterior draw per env: transitions ``(N, S, A, S)`` and mean rewards ``(N, S, A)``."""
        transitions = sample_dirichlet(self.dirichlet_prior + counts.transitions, generator)
        precision = 1.0 / self.prior_var + counts.visits / self.noise_var
        mean = (self.prior_mean / self.prior_var + counts.reward_sums / self.noise_var) / precision
        noise = torch.randn(mean.shape, generator=generator, dtype=torch.float64, device=mean.device)
        return transitions, mean + noise / precision.sqrt()

    def plan(self, counts: MDPCounts, episode_length: int, generator: torch.Generator) -> torch.Tensor:
        return value_iteration(*self.sample_mdp(counts, generator), episode_length)

    def __repr__(self) -> str:
        return (
            f"PSRL(dirichlet_prior={self.dirichlet_prior:g}, prior_mean={self.prior_mean:g}, "
            f"prior_var={self.prior_var:g}, noise_var={self.noise_var:g})"
        )


def play_mdp(
    policy: MDPPolicy,
    tasks: TabularMDPTasks,
    episode_length: int,
    generator: torch.Generator,
    num_episodes: int = 1,
) -> torch.Tensor:
    """Play one trial of ``num_episodes`` episodes in every env; returns each episode's return, ``(num_episodes, N)``.

    Env ``i`` plays task ``i`` of a :class:`~envs.bandits.TabularMDP` (start
    state 0, episodes of ``episode_length`` steps) run by a
    :class:`~metarl.env.TensorEnv` on ``tasks.device``. The policy's counts
    persist across the trial's episodes. ``generator`` seeds both the env and the policy.
    """
    _check_positive_int("episode_length", episode_length)
    _check_positive_int("num_episodes", num_episodes)
    num_envs, num_states, num_actions = tasks.reward_means.shape
    device = tasks.device
    env = _seeded_env(TabularMDP(num_states, num_actions, episode_length), tasks, generator)
    policy_generator = _child_generator(generator, device)
    obs = env.reset()
    rows = torch.arange(num_envs, device=device)
    counts = MDPCounts.zeros(num_envs, num_states, num_actions, device)
    returns = torch.zeros(num_episodes, num_envs, dtype=torch.float64, device=device)
    for episode in range(num_episodes):
        plan = policy.plan(counts, episode_length, policy_generator)
        for j in range(episode_length):
            state = obs.argmax(dim=-1)
            action = argmax_random_ties(plan[j][rows, state], policy_generator)
            out = env.step(action)
            counts = counts.record(state, action, out.reward, out.final_obs.argmax(dim=-1))
            returns[episode] += out.reward
            obs = out.obs
    return returns


def run_mdp_policy(
    policy: MDPPolicy, tasks: TabularMDPTasks, num_episodes: int, episode_length: int, generator: torch.Generator
) -> torch.Tensor:
    """Total reward ``(N,)`` of one trial of ``num_episodes`` episodes of ``episode_length`` steps per task."""
    return play_mdp(policy, tasks, episode_length, generator, num_episodes).sum(dim=0)


# --- the evaluator's view ------------------------------------------------------------------


class ReferenceLearner:
    """A reference policy as a :class:`~metarl.agent.MetaLearner`, for :func:`metarl.evaluation.evaluate`'s baselines.

    Nothing is meta-learned: :meth:`meta_train_step` does nothing. Its
    :meth:`adaptation_curve` is RL²'s: the mean return of episode ``0..k`` of
    a trial of ``k + 1`` episodes per task, the policy's posterior kept
    across the trial (for a bandit, one episode of ``n`` pulls is the usual trial;
    :class:`GittinsIndex` over a trial of ``k + 1`` episodes needs the index
    table for ``(k + 1) n`` pulls, whose cost grows as its fifth power).

    Args:
        family: a :class:`~envs.bandits.BernoulliBandit` or :class:`~envs.bandits.TabularMDP`.
        policy: a :class:`BanditPolicy` for the first, an :class:`MDPPolicy` for the second.
        trials_per_task: independent trials averaged per task.
        device: where the envs run.
    """

    def __init__(
        self,
        family: BernoulliBandit | TabularMDP,
        policy: BanditPolicy | MDPPolicy,
        trials_per_task: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        bandit = isinstance(family, BernoulliBandit) and isinstance(policy, BanditPolicy)
        mdp = isinstance(family, TabularMDP) and isinstance(policy, MDPPolicy)
        if not (bandit or mdp):
            raise TypeError(f"{policy!r} does not play {family!r}")
        self.family = family
        self.policy = policy
        self.trials_per_task = _check_positive_int("trials_per_task", trials_per_task)
        self.device = torch.device(device)

    @property
    def name(self) -> str:
        return self.policy.name

    def episode_returns(self, tasks: Tasks, num_episodes: int, generator: torch.Generator) -> torch.Tensor:
        """Mean return ``(num_episodes, M)`` of each episode of a trial, per task (over ``trials_per_task`` trials)."""
        repeated = tasks.repeat_interleave(self.trials_per_task).to(self.device)
        if isinstance(self.family, BernoulliBandit):
            assert isinstance(self.policy, BanditPolicy) and isinstance(repeated, BernoulliBanditTasks)
            returns = play_bandit(self.policy, repeated, self.family.num_pulls, generator, num_episodes)
        else:
            assert isinstance(self.policy, MDPPolicy) and isinstance(repeated, TabularMDPTasks)
            returns = play_mdp(self.policy, repeated, self.family.episode_length, generator, num_episodes)
        return returns.reshape(num_episodes, len(tasks), self.trials_per_task).mean(dim=-1).cpu()

    def trial_returns(self, tasks: Tasks, num_episodes: int, generator: torch.Generator) -> torch.Tensor:
        """Mean total reward per trial ``(M,)`` per task."""
        return self.episode_returns(tasks, num_episodes, generator).sum(dim=0)

    def adaptation_curve(self, tasks: Tasks, num_steps: int, generator: torch.Generator) -> torch.Tensor:
        """Mean return of episode ``0..num_steps`` of a trial, ``(num_steps + 1, M)``."""
        return self.episode_returns(tasks, num_steps + 1, generator)

    def meta_train_step(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"ReferenceLearner({self.family!r}, {self.policy!r}, trials_per_task={self.trials_per_task})"


def bandit_policies(epsilon: float = 0.1) -> list[BanditPolicy]:
    """The bandit reference set: random, greedy, epsilon-greedy, UCB1, Thompson sampling, Gittins."""
    return [RandomArms(), Greedy(), EpsilonGreedy(epsilon), UCB1(), ThompsonSampling(), GittinsIndex()]


def mdp_policies() -> list[MDPPolicy]:
    """The tabular-MDP reference set: random and PSRL."""
    return [RandomActions(), PSRL()]


def reference_learners(
    family: BernoulliBandit | TabularMDP, trials_per_task: int = 1, device: torch.device | str = "cpu"
) -> dict[str, ReferenceLearner]:
    """Name -> :class:`ReferenceLearner` for every reference policy of ``family``'s kind (evaluator baselines).

    Empty for families without reference policies (only bandits and tabular MDPs have them).
    """
    if not isinstance(family, BernoulliBandit | TabularMDP):
        return {}
    policies: Sequence[BanditPolicy | MDPPolicy] = bandit_policies() if isinstance(family, BernoulliBandit) else mdp_policies()
    return {p.name: ReferenceLearner(family, p, trials_per_task, device) for p in policies}
