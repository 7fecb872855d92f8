"""One evaluator for every meta-learner: adaptation curves on held-out tasks, with confidence intervals.

:func:`evaluate` asks each learner for its :meth:`~metarl.agent.MetaLearner.adaptation_curve`
on the same held-out tasks under several evaluation seeds (each seed a fresh
generator for rollouts), and reports, per number of adaptation steps, the mean
return over seeds x tasks with a Student-t confidence interval. The first
learner is the agent, the others its baselines; an optional oracle (a policy
that knows the task, e.g. :func:`oracle_returns`) is drawn as a horizontal line.

Confidence intervals
--------------------
Every (seed, task) value counts as one sample, ``n = seeds x tasks``, and the
interval is ``mean ± t_{(1+c)/2, n-1} · s / sqrt(n)`` with the exact Student-t
quantile (:func:`t_critical`; no scipy). Tasks are the same for every seed, so
this is the spread of returns over (task, rollout-noise) pairs on this fixed
held-out set.

Results go to ``run_dir/"evaluation"/``: ``adaptation.json`` (the numbers,
raw values included), ``adaptation.png`` (the plot) and ``tasks.json`` (the
task manifest, so the evaluation can be repeated exactly).
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from matplotlib.figure import Figure

from metarl.agent import MetaLearner
from metarl.env import TaskFamily, TensorEnv
from metarl.files import atomic_write, write_json
from metarl.tasks import SPLITS, Split, Tasks, save_manifest
from metarl.validation import is_int

RESULT_FORMAT = "metarl.evaluation/1"
_EXACT_T_MAX_DF = 1000  # above this the Cornish-Fisher expansion is within 1e-8 of the exact quantile

Oracle = Callable[[Tasks, torch.Generator], torch.Tensor | None]


class EvalLogger(Protocol):
    """What :func:`evaluate` needs of a logger (``metarl.logging.RunLogger`` provides it)."""

    def log_json(self, name: str, obj: Any) -> None: ...

    def log_figure(self, path: Path, name: str) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


@dataclasses.dataclass
class EvalConfig:
    """How held-out evaluation is done."""

    num_tasks: int = 40
    """number of held-out tasks"""
    num_steps: int = 3
    """adaptation steps (gradient steps, or episodes within an RL² trial) after the unadapted point"""
    seeds: tuple[int, ...] = (0, 1, 2)
    """evaluation seeds: each gives a fresh rollout generator; the tasks are the same for every seed"""
    split: str = "test"
    """task split to evaluate on ("test": held out from meta-training)"""
    confidence: float = 0.95
    """confidence level of the intervals"""
    task_seed: int = 12345
    """seed of the generator that samples the held-out tasks"""

    def __post_init__(self) -> None:
        self.seeds = tuple(self.seeds)
        if not is_int(self.num_tasks) or self.num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {self.num_tasks!r}")
        if not is_int(self.num_steps) or self.num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative int, got {self.num_steps!r}")
        if not self.seeds or not all(is_int(s) and s >= 0 for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty tuple of non-negative ints, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct (a repeated seed repeats the same rollouts), got {self.seeds!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not isinstance(self.confidence, float | int) or not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must lie strictly between 0 and 1, got {self.confidence!r}")
        if not is_int(self.task_seed) or self.task_seed < 0:
            raise ValueError(f"task_seed must be a non-negative int, got {self.task_seed!r}")
        _check_sample_size(self.num_tasks, len(self.seeds))


def _check_sample_size(num_tasks: int, num_seeds: int) -> None:
    if num_tasks * num_seeds < 2:
        raise ValueError(
            f"a confidence interval needs at least 2 (seed, task) values; got {num_tasks} task(s) x {num_seeds} seed(s)"
        )


# --- statistics ----------------------------------------------------------------------


def _t_abs_cdf(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3-4, a finite sum)."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos = math.sin(theta), math.cos(theta)
    cos2 = cos * cos
    if df % 2 == 0:  # sin θ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + ... + cos^(df-2) θ)
        term = total = 1.0
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        return sin * total
    if df == 1:
        return 2.0 * theta / math.pi
    term = total = cos  # 2/π (θ + sin θ (cos θ + 2/3 cos³θ + ... + cos^(df-2) θ))
    for k in range(1, (df - 1) // 2):
        term *= cos2 * (2 * k) / (2 * k + 1)
        total += term
    return 2.0 / math.pi * (theta + sin * total)


def t_critical(confidence: float, df: int) -> float:
    """The two-sided Student-t critical value: ``t`` with ``P(|T| <= t) = confidence`` for ``df`` degrees of freedom.

    Exact (bisection on the closed-form CDF) up to 1000 degrees of freedom;
    beyond, the Cornish-Fisher expansion to ``1/df²``, whose error there is below 1e-8.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    if not is_int(df) or df < 1:
        raise ValueError(f"degrees of freedom must be a positive int, got {df!r}")
    z = statistics.NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    if df > _EXACT_T_MAX_DF:
        g1 = (z**3 + z) / 4
        g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
        return z + g1 / df + g2 / df**2
    low, high = z, 2.0 * z
    while _t_abs_cdf(high, df) < confidence:
        low, high = high, 2.0 * high
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        if _t_abs_cdf(mid, df) < confidence:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def mean_ci(values: torch.Tensor, confidence: float) -> tuple[float, float, float]:
    """Mean of ``values`` (any shape, every element one sample) and its Student-t interval ``(mean, low, high)``."""
    x = values.detach().double().flatten().cpu()
    n = x.numel()
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {n}")
    mean = float(x.mean())
    half = t_critical(confidence, n - 1) * float(x.std(correction=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


# --- results -------------------------------------------------------------------------


@dataclasses.dataclass
class Curve:
    """One learner's adaptation curve: per step, the mean over seeds x tasks and its interval."""

    steps: list[int]
    mean: list[float]
    ci_low: list[float]
    ci_high: list[float]
    values: list[list[list[float]]]
    """raw returns, indexed ``[seed][step][task]``"""

    @classmethod
    def from_values(cls, values: torch.Tensor, confidence: float) -> Curve:
        """From ``(seeds, steps, tasks)`` returns."""
        stats = [mean_ci(values[:, j], confidence) for j in range(values.shape[1])]
        return cls(
            steps=list(range(values.shape[1])),
            mean=[m for m, _, _ in stats],
            ci_low=[lo for _, lo, _ in stats],
            ci_high=[hi for _, _, hi in stats],
            values=values.tolist(),
        )

    def half_width(self, j: int) -> float:
        return (self.ci_high[j] - self.ci_low[j]) / 2


@dataclasses.dataclass
class OracleLine:
    """The oracle's mean return over seeds x tasks and its interval."""

    mean: float
    ci_low: float
    ci_high: float
    values: list[list[float]]
    """raw returns, indexed ``[seed][task]``"""

    @classmethod
    def from_values(cls, values: torch.Tensor, confidence: float) -> OracleLine:
        """From ``(seeds, tasks)`` returns."""
        mean, low, high = mean_ci(values, confidence)
        return cls(mean, low, high, values.tolist())


@dataclasses.dataclass
class EvalResult:
    """Adaptation curves of every learner (the first is the agent) on one set of held-out tasks."""

    curves: dict[str, Curve]
    config: EvalConfig
    num_tasks: int
    oracle: OracleLine | None = None
    title: str = ""
    x_label: str = "gradient steps"
    y_label: str = "mean episode return"

    @property
    def agent(self) -> str:
        """The name of the evaluated agent (the first learner)."""
        return next(iter(self.curves))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only (``json.loads(json.dumps(d)) == d``); :meth:`from_json` reads it back."""
        return {
            "format": RESULT_FORMAT,
            "title": self.title,
            "x_label": self.x_label,
            "y_label": self.y_label,
            "agent": self.agent,
            "num_tasks": self.num_tasks,
            "num_seeds": len(self.config.seeds),
            "ci_method": f"Student t, {self.config.confidence:.0%}, n = seeds x tasks",
            "config": {**dataclasses.asdict(self.config), "seeds": list(self.config.seeds)},
            "learners": {name: dataclasses.asdict(curve) for name, curve in self.curves.items()},
            "oracle": None if self.oracle is None else dataclasses.asdict(self.oracle),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> EvalResult:
        if obj.get("format") != RESULT_FORMAT:
            raise ValueError(f"not an evaluation result: format is {obj.get('format')!r}, expected {RESULT_FORMAT!r}")
        return cls(
            curves={name: Curve(**curve) for name, curve in obj["learners"].items()},
            config=EvalConfig(**obj["config"]),
            num_tasks=obj["num_tasks"],
            oracle=None if obj["oracle"] is None else OracleLine(**obj["oracle"]),
            title=obj["title"],
            x_label=obj["x_label"],
            y_label=obj["y_label"],
        )

    def table(self) -> str:
        """A fixed-width text table: one row per learner (and the oracle), ``mean ± half-width`` per step."""
        steps = next(iter(self.curves.values())).steps
        if self.x_label == "gradient steps":
            header = ["", *(f"{j} step" if j == 1 else f"{j} steps" for j in steps)]
        else:  # e.g. RL²'s "episode in trial 0, 1, ...": its columns are not gradient steps
            header = ["", *(f"{self.x_label} {j}" for j in steps)]
        rows = [[name, *(f"{c.mean[j]:.3f} ± {c.half_width(j):.3f}" for j in steps)] for name, c in self.curves.items()]
        if self.oracle is not None:
            o = self.oracle
            rows.append(["oracle (knows the task)", *([f"{o.mean:.3f} ± {(o.ci_high - o.ci_low) / 2:.3f}"] * len(steps))])
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = [
            f"{self.title or 'evaluation'}: {self.num_tasks} {self.config.split} tasks x {len(self.config.seeds)} seeds, "
            f"mean ± {self.config.confidence:.0%} CI half-width (Student t), x = {self.x_label}"
        ]
        for first, *cells in [header, *rows]:
            lines.append("  ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells, widths[1:], strict=True))]))
        return "\n".join(lines)


# --- the evaluator -------------------------------------------------------------------


def held_out_tasks(family: TaskFamily, config: EvalConfig) -> Tasks:
    """``config.num_tasks`` tasks of ``config.split``, sampled with a generator seeded by ``config.task_seed``.

    Deterministic: the same protocol names the same tasks. :func:`evaluate`
    also writes the tasks it used as a manifest (``evaluation/tasks.json``);
    :func:`metarl.tasks.load_manifest` gives them back to repeat an evaluation exactly.
    """
    split: Split = config.split  # type: ignore[assignment]  # validated by EvalConfig
    return family.task_space.sample(config.num_tasks, generator=torch.Generator().manual_seed(config.task_seed), split=split)


def evaluate(
    learners: Mapping[str, MetaLearner],
    tasks: Tasks,
    config: EvalConfig,
    *,
    oracle: Oracle | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    logger: EvalLogger | None = None,
    title: str = "",
    x_label: str = "gradient steps",
    y_label: str = "mean episode return",
    step: int = 0,
) -> EvalResult:
    """Adaptation curves of every learner on ``tasks``, one rollout generator per seed of ``config``.

    Args:
        learners: name -> learner; the first is the agent, the rest baselines.
            Only ``adaptation_curve`` is called.
        tasks: the held-out tasks (:func:`held_out_tasks`, or a loaded manifest).
        config: steps, seeds and confidence level (``config.num_tasks`` is not
            used here: every task of ``tasks`` is evaluated).
        oracle: ``(tasks, generator) -> (M,)`` mean return of a policy that
            knows the task, or ``None``; an oracle that returns ``None`` is
            treated as absent. E.g. ``functools.partial(oracle_returns, family)``.
        run_dir: where ``evaluation/adaptation.json``, ``adaptation.png`` and
            ``tasks.json`` go; ``None``: nothing is written.
        logger: gets the JSON, the figure (when ``run_dir`` is given) and the
            metrics ``eval/<learner>/step_<j>`` and ``eval/oracle`` at ``step``.
        title, x_label, y_label: plot and table labels (RL² passes
            ``x_label="episode in trial"``).
        step: training step the metrics are logged at.
    """
    if not learners:
        raise ValueError("evaluate needs at least one learner")
    num_tasks = len(tasks)
    _check_sample_size(num_tasks, len(config.seeds))
    expected = (config.num_steps + 1, num_tasks)
    curves: dict[str, Curve] = {}
    for name, learner in learners.items():
        per_seed = []
        for seed in config.seeds:
            curve = learner.adaptation_curve(tasks, config.num_steps, torch.Generator().manual_seed(seed))
            if not isinstance(curve, torch.Tensor) or tuple(curve.shape) != expected:
                got = tuple(curve.shape) if isinstance(curve, torch.Tensor) else type(curve).__name__
                raise ValueError(
                    f"learner {name!r}: adaptation_curve returned {got}, expected a tensor of shape {expected} "
                    f"(num_steps + 1 = {expected[0]} points x {num_tasks} tasks)"
                )
            per_seed.append(_finite(curve, f"learner {name!r} (seed {seed})"))
        curves[name] = Curve.from_values(torch.stack(per_seed), config.confidence)

    oracle_line = None
    if oracle is not None:
        oracle_values = []
        for seed in config.seeds:
            values = oracle(tasks, torch.Generator().manual_seed(seed))
            if values is None:  # the family defines no oracle
                break
            if not isinstance(values, torch.Tensor) or tuple(values.shape) != (num_tasks,):
                got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
                raise ValueError(f"oracle returned {got}, expected a tensor of shape ({num_tasks},)")
            oracle_values.append(_finite(values, f"oracle (seed {seed})"))
        if len(oracle_values) == len(config.seeds):
            oracle_line = OracleLine.from_values(torch.stack(oracle_values), config.confidence)

    result = EvalResult(curves, config, num_tasks, oracle_line, title, x_label, y_label)
    figure = None
    if run_dir is not None:
        out = Path(run_dir) / "evaluation"
        write_json(out / "adaptation.json", result.to_json(), indent=1)
        figure = plot(result, out / "adaptation.png")
        save_manifest(tasks.to("cpu"), out / "tasks.json")
    if logger is not None:
        logger.log_json("evaluation/adaptation.json", result.to_json())  # RunLogger: the same file as above
        if figure is not None:
            logger.log_figure(figure, "evaluation/adaptation")
        logger.log_metrics(metrics(result), step)
    return result


def _finite(values: torch.Tensor, what: str) -> torch.Tensor:
    values = values.detach().double().cpu()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{what} returned non-finite returns: {values[~torch.isfinite(values)][:8].tolist()}")
    return values


def metrics(result: EvalResult) -> dict[str, float]:
    """Flat scalars for a metrics logger: ``eval/<learner>/step_<j>`` means and ``eval/oracle``."""
    out = {f"eval/{name}/step_{j}": m for name, c in result.curves.items() for j, m in zip(c.steps, c.mean, strict=True)}
    if result.oracle is not None:
        out["eval/oracle"] = result.oracle.mean
    return out


def plot(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """Draw the adaptation curves (mean, CI error bars and band; oracle dashed) to a PNG, atomically."""
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")  # no pyplot: no global backend or state
    ax = fig.add_subplot()
    handles = []  # legend in learner order, oracle last
    for name, c in result.curves.items():
        half_widths = [c.half_width(j) for j in c.steps]  # the t interval is symmetric
        handles.append(ax.errorbar(c.steps, c.mean, yerr=half_widths, marker="o", capsize=3, label=name))
        ax.fill_between(c.steps, c.ci_low, c.ci_high, color=handles[-1][0].get_color(), alpha=0.15, linewidth=0)
    if result.oracle is not None:
        o = result.oracle
        handles.append(ax.axhline(o.mean, color="black", linestyle="--", label="oracle (knows the task)"))
        ax.axhspan(o.ci_low, o.ci_high, color="black", alpha=0.08, linewidth=0)
    steps = next(iter(result.curves.values())).steps
    ax.set_xticks(steps)
    ax.set_xlabel(result.x_label)
    ax.set_ylabel(result.y_label)
    config = result.config
    seeds_and_ci = f"{len(config.seeds)} seeds, {config.confidence:.0%} CI"
    ax.set_title(result.title or f"{result.agent} on {result.num_tasks} {config.split} tasks ({seeds_and_ci})")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles)
    path = Path(path)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))


# --- oracle --------------------------------------------------------------------------


def oracle_returns(
    family: TaskFamily,
    tasks: Tasks,
    generator: torch.Generator,
    num_envs_per_task: int = 1,
    *,
    device: torch.device | str = "cpu",
    max_steps: int | None = None,
) -> torch.Tensor | None:
    """Mean return ``(M,)`` of one episode per env under ``family.oracle_action``; ``None`` if the family has none.

    Runs ``M x num_envs_per_task`` envs of a :class:`~metarl.env.TensorEnv`
    together for ``max_steps`` steps (default: ``family.max_episode_steps``),
    counting each env's first episode only. ``generator`` seeds the env (initial
    states, stochastic dynamics).
    """
    if not is_int(num_envs_per_task) or num_envs_per_task < 1:
        raise ValueError(f"num_envs_per_task must be a positive int, got {num_envs_per_task!r}")
    horizon = max_steps if max_steps is not None else family.max_episode_steps
    if horizon is None:
        raise ValueError(f"{family!r} has no max_episode_steps; pass max_steps to bound the oracle's episode")
    num_tasks = len(tasks)
    env = TensorEnv(
        family,
        num_envs=num_tasks * num_envs_per_task,
        device=device,
        tasks=tasks.repeat_interleave(num_envs_per_task),
        seed=int(torch.randint(0, 2**62, (), generator=generator)),
        validate_actions=False,
    )
    obs = env.reset()
    total = torch.zeros(env.num_envs, device=env.device)
    running = torch.ones(env.num_envs, dtype=torch.bool, device=env.device)
    for _ in range(horizon):
        action = family.oracle_action(obs, env.tasks)
        if action is None:
            return None
        out = env.step(action)
        total += out.reward * running
        running &= ~out.done
        obs = out.obs
    return total.reshape(num_tasks, num_envs_per_task).mean(dim=1)
