"""The meta-training loop every agent shares: iterate, log, checkpoint, validate, resume."""

from __future__ import annotations

import dataclasses
import math
import time
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from metarl.agent import MetaLearner
from metarl.checkpoint import best_checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint, save_run_checkpoint
from metarl.logging import RunLogger
from metarl.tasks import Tasks
from metarl.validation import check_positive_int, is_int

T = TypeVar("T")

_SHOWN = ("return_before_adaptation", "return_after_adaptation", "kl")  # progress-bar metrics, when present
VALIDATION_METRIC = "validation/return"
"""The metric :func:`meta_train` logs each validation's score under."""


@dataclasses.dataclass(frozen=True)
class Validation:
    """Score the agent on fixed tasks every ``every`` meta-iterations, to keep its best iterate.

    The score is the mean return after the whole adaptation budget (the last
    point of ``adaptation_curve(tasks, num_steps, ...)``), under the same
    rollout seed every time, so that the scores of two iterates differ only by
    the agent. Draw ``tasks`` from the training split, so that choosing an
    iterate never looks at held-out tasks. Long runs can get worse late (e.g.
    RL² on Navigation2D, BENCHMARKS.md); the best iterate guards against that.
    """

    tasks: Tasks
    num_steps: int
    every: int
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int("every", self.every)
        if not is_int(self.num_steps) or self.num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative int, got {self.num_steps!r}")

    def score(self, agent: MetaLearner) -> float:
        """The agent's mean return after ``num_steps`` adaptation steps on the validation tasks."""
        curve = agent.adaptation_curve(self.tasks, self.num_steps, torch.Generator().manual_seed(self.seed))
        return float(curve[-1].mean())


def keep_if_best(agent: MetaLearner, validation: Validation, iteration: int, path: Path) -> float:
    """Score ``agent`` on ``validation``; save it to ``path`` (with ``iteration`` and the score) if no checkpoint is
    there yet or the score beats the one saved there. Returns the score.

    The best score lives in the file, so a resumed run competes with its earlier iterates.
    """
    score = validation.score(agent)
    best = float(load_checkpoint(path)["validation_score"]) if path.is_file() else None
    if math.isfinite(score) and (best is None or score > best):  # a diverged (NaN) iterate is never kept
        save_checkpoint(path, {"agent": agent.state_dict(), "iteration": iteration, "validation_score": score})
    return score


def meta_train(
    agent: MetaLearner,
    logger: RunLogger,
    iterations: int,
    *,
    start_iteration: int = 0,
    checkpoint_every: int = 10,
    progress: bool = True,
    description: str = "meta-training",
    metric_prefix: str = "",
    checkpoint: bool = True,
    validation: Validation | None = None,
) -> None:
    """Run ``agent.meta_train_step`` from ``start_iteration`` to ``iterations``.

    Every iteration's metrics (plus its wall-clock seconds) go to ``logger``
    at step = iterations done; every ``checkpoint_every`` iterations and at the
    end, the agent's state is checkpointed atomically into the run directory.
    With ``validation``, every ``validation.every`` iterations and at the end
    the agent is scored (logged as ``validation/return``), and an iterate that
    beats every earlier score, a resumed run's included, is saved as
    ``checkpoints/best.pt`` with its iteration and score (:func:`keep_if_best`).
    """
    if iterations < 0 or start_iteration < 0:
        raise ValueError(f"iterations and start_iteration must be non-negative, got {iterations}, {start_iteration}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be positive, got {checkpoint_every}")
    bar = tqdm(total=iterations, initial=start_iteration, desc=description, disable=not progress, dynamic_ncols=True)
    with bar:
        for iteration in range(start_iteration + 1, iterations + 1):
            began = time.perf_counter()
            metrics = dict(agent.meta_train_step())
            metrics["seconds_per_iteration"] = time.perf_counter() - began
            if validation is not None and (iteration % validation.every == 0 or iteration == iterations):
                metrics[VALIDATION_METRIC] = keep_if_best(agent, validation, iteration, best_checkpoint_path(logger.run_dir))
            logger.log_metrics({f"{metric_prefix}{k}": v for k, v in metrics.items()}, step=iteration)
            bar.set_postfix({k: f"{metrics[k]:.3g}" for k in _SHOWN if k in metrics}, refresh=False)
            bar.update()
            if checkpoint and (iteration % checkpoint_every == 0 or iteration == iterations):
                save_run_checkpoint(logger.run_dir, iteration, {"agent": agent.state_dict(), "iteration": iteration})


def resume_agent(agent: MetaLearner, run_dir: Path) -> int:
    """Load the run's latest checkpoint into ``agent``; returns the iterations it had done (0 if none)."""
    path = latest_checkpoint(run_dir)
    if path is None:
        return 0
    state = load_checkpoint(path)
    agent.load_state_dict(state["agent"])
    return int(state["iteration"])


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Rebuild a (nested) config dataclass from its JSON form, e.g. a run's ``config.json``.

    Unknown keys are an error naming them, so a stale or mistyped file is not silently ignored.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}")
    return cls(**{k: _convert(hints[k], v) for k, v in data.items()})


def _convert(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return from_dict(hint, value)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if isinstance(value, Mapping):  # a union of configs: the one whose fields cover the keys
            for option in options:
                if dataclasses.is_dataclass(option) and set(value) <= {f.name for f in dataclasses.fields(option)}:
                    return from_dict(option, value)
            raise ValueError(f"no config among {[o.__name__ for o in options]} has all of the keys {sorted(value)}")
        return _convert(options[0], value) if len(options) == 1 else value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    return value
