"""The shared meta-training loop's validation: the best iterate is kept, and validating never changes training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import envs  # noqa: F401
from agents.ppo import PPOSettings
from agents.rl2 import RL2, RL2Config
from metarl.checkpoint import best_checkpoint_path, load_checkpoint
from metarl.logging import RunLogger
from metarl.tasks import Tasks
from metarl.training import VALIDATION_METRIC, Validation, keep_if_best, meta_train

TINY_RL2 = RL2Config(
    env_kwargs={"num_arms": 2, "num_pulls": 4}, num_envs=8, hidden_size=8, ppo=PPOSettings(num_minibatches=2, epochs=1)
)


class ScriptedScore:
    """A learner whose every adaptation curve ends at the next of ``scores``; its state is its call count."""

    def __init__(self, scores: list[float]) -> None:
        self.scores, self.calls = scores, 0

    def adaptation_curve(self, tasks: Tasks, num_steps: int, generator: torch.Generator) -> torch.Tensor:
        score = self.scores[self.calls]
        self.calls += 1
        return torch.full((num_steps + 1, len(tasks)), score)

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}


def bandit_tasks(agent: RL2, n: int = 6) -> Tasks:
    return agent.family.task_space.sample(n, generator=torch.Generator().manual_seed(7), split="train")


def test_keep_if_best_saves_only_an_improvement(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    learner = ScriptedScore([1.0, 0.5, float("nan"), 2.0, 2.0])
    validation = Validation(bandit_tasks(RL2(TINY_RL2)), num_steps=0, every=1)
    kept = []
    for iteration in range(1, 6):
        score = keep_if_best(learner, validation, iteration, path)  # type: ignore[arg-type]
        state = load_checkpoint(path)
        kept.append((iteration, score, state["iteration"]))
    # 0.5 is worse, NaN is never kept, 2.0 improves, an equal 2.0 does not replace the earlier iterate.
    assert [k[2] for k in kept] == [1, 1, 1, 4, 4]
    assert load_checkpoint(path) == {"agent": {"calls": 4}, "iteration": 4, "validation_score": 2.0}
    assert kept[2][1] != kept[2][1]  # the NaN score is still returned, for the log


def test_validation_refuses_bad_settings() -> None:
    tasks = bandit_tasks(RL2(TINY_RL2))
    with pytest.raises(ValueError, match="every must be a positive int, got 0"):
        Validation(tasks, num_steps=0, every=0)
    with pytest.raises(ValueError, match="num_steps must be a non-negative int, got -1"):
        Validation(tasks, num_steps=-1, every=1)


def test_meta_train_keeps_the_best_validated_iterate_and_trains_as_without_validation(tmp_path: Path) -> None:
    plain, validated = RL2(TINY_RL2), RL2(TINY_RL2)
    validation = Validation(bandit_tasks(validated), num_steps=0, every=2)
    with RunLogger(tmp_path / "plain", {}, comet="off") as logger:
        meta_train(plain, logger, 5, progress=False, checkpoint=False)
    with RunLogger(tmp_path / "validated", {}, comet="off") as logger:
        meta_train(validated, logger, 5, progress=False, checkpoint=False, validation=validation)
    # Validation rolls out with its own generators: training is exactly as without it.
    for name, value in plain.state_dict()["policy"].items():
        torch.testing.assert_close(validated.state_dict()["policy"][name], value, rtol=0, atol=0)
    rows = [json.loads(line) for line in (tmp_path / "validated" / "metrics.jsonl").read_text().splitlines()]
    scores = {row["step"]: row[VALIDATION_METRIC] for row in rows if VALIDATION_METRIC in row}
    assert sorted(scores) == [2, 4, 5]  # every 2 iterations and at the end
    best = load_checkpoint(best_checkpoint_path(tmp_path / "validated"))
    assert best["iteration"] == max(scores, key=lambda step: (scores[step], -step))
    assert best["validation_score"] == scores[best["iteration"]]
    # The kept state is that iterate's: it scores the same again.
    again = RL2(TINY_RL2)
    again.load_state_dict(best["agent"])
    assert again.iteration == best["iteration"] and validation.score(again) == best["validation_score"]
