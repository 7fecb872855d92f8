"""The protocol every meta-learner follows, so one trainer and one evaluator serve them all."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from metarl.tasks import Tasks


@runtime_checkable
class MetaLearner(Protocol):
    """A meta-learner over one task family.

    ``adaptation_curve`` is what the evaluator plots: for gradient-based
    learners, the mean return per task after 0..k adaptation steps; for
    memory-based learners (RL²), the return of episode 0..k of a trial.
    """

    def meta_train_step(self) -> dict[str, float]:
        """One meta-iteration on freshly sampled training tasks; returns scalar metrics."""
        ...

    def adaptation_curve(self, tasks: Tasks, num_steps: int, generator: torch.Generator) -> torch.Tensor:
        """Mean episode return per task, shape ``(num_steps + 1, len(tasks))``, after 0..num_steps adaptation steps."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume meta-training exactly (parameters, optimizer, generators, counters)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
