"""Evaluate a saved run's checkpoint on held-out tasks.

    python scripts/evaluate.py runs/<run>                          # latest checkpoint, standard protocol
    python scripts/evaluate.py runs/<run> --eval.num-tasks 100 --baselines
    python scripts/evaluate.py runs/<run> --checkpoint runs/<run>/checkpoints/iter_000050.pt
    python scripts/evaluate.py runs/<run> --tasks runs/<run>/evaluation/tasks.json   # exactly those tasks

Results go to ``<run>/evaluation/`` and the run's Comet experiment.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import tyro

import envs  # noqa: F401  (registers the built-in task families)
from agents.experiment import evaluate_run
from metarl.evaluation import EvalConfig
from metarl.tasks import load_manifest


@dataclasses.dataclass
class EvaluateConfig:
    run_dir: Annotated[Path, tyro.conf.Positional]
    """The run directory to evaluate."""
    checkpoint: Path | None = None
    """Checkpoint to load (default: the run's latest)."""
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    """Evaluation protocol (default: the standard one, 40 held-out tasks x 3 seeds)."""
    baselines: bool = False
    """Also evaluate the random-init and pretrained baselines (trains the pretrained one)."""
    tasks: Path | None = None
    """A task manifest (e.g. a run's evaluation/tasks.json) to evaluate on exactly these tasks."""


def main(argv: list[str] | None = None) -> None:
    config = tyro.cli(EvaluateConfig, args=argv, description=__doc__)
    tasks = load_manifest(config.tasks) if config.tasks is not None else None
    if tasks is not None:
        config.eval = dataclasses.replace(config.eval, num_tasks=len(tasks))
    result = evaluate_run(config.run_dir, config.eval, config.checkpoint, config.baselines, tasks)
    print(result.table())
    print(f"\nWritten to {config.run_dir / 'evaluation'}")


if __name__ == "__main__":
    main()
