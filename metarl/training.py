"""The meta-training loop every agent shares: iterate, log, checkpoint, resume."""

from __future__ import annotations

import dataclasses
import time
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from metarl.agent import MetaLearner
from metarl.checkpoint import latest_checkpoint, load_checkpoint, save_run_checkpoint
from metarl.logging import RunLogger

T = TypeVar("T")

_SHOWN = ("return_before_adaptation", "return_after_adaptation", "kl")  # progress-bar metrics, when present


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
) -> None:
    """Run ``agent.meta_train_step`` from ``start_iteration`` to ``iterations``.

    Every iteration's metrics (plus its wall-clock seconds) go to ``logger``
    at step = iterations done; every ``checkpoint_every`` iterations and at the
    end, the agent's state is checkpointed atomically into the run directory.
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
