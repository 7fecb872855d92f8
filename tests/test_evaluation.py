"""The evaluator: statistics, files, table and logging on fake learners with known curves; the Navigation2D oracle."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import envs  # noqa: F401
import metarl
from envs.navigation import Navigation2D, NavigationTasks
from metarl import evaluation
from metarl.evaluation import EvalConfig, EvalResult, evaluate, held_out_tasks, mean_ci, oracle_returns, t_critical

TRUE_CURVE = [-10.0, -6.0, -4.0, -3.5]  # the fake agent's expected return after 0..3 steps


class NoisyLearner:
    """``adaptation_curve`` = a known curve plus unit Gaussian noise drawn from the evaluator's generator."""

    def __init__(self, curve: list[float], noise: float = 1.0) -> None:
        self.curve = torch.tensor(curve, dtype=torch.float64)
        self.noise = noise

    def adaptation_curve(self, tasks: metarl.Tasks, num_steps: int, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(num_steps + 1, len(tasks), generator=generator, dtype=torch.float64)
        return self.curve[: num_steps + 1, None] + self.noise * noise


class FixedLearner:
    """Returns whatever ``fn(seed_draw, num_steps, num_tasks)`` gives; records the generators it was handed."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.draws: list[int] = []

    def adaptation_curve(self, tasks: metarl.Tasks, num_steps: int, generator: torch.Generator) -> Any:
        self.draws.append(int(torch.randint(0, 2**31, (), generator=generator)))
        return self.fn(num_steps, len(tasks))


class RecordingLogger:
    """A duck-typed run logger that records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def log_json(self, name: str, obj: Any) -> None:
        self.calls.append(("log_json", (name, obj)))

    def log_figure(self, path: Path, name: str) -> None:
        self.calls.append(("log_figure", (path, name)))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.calls.append(("log_metrics", (metrics, step)))


def nav_tasks(n: int = 10) -> NavigationTasks:
    return held_out_tasks(Navigation2D(), EvalConfig(num_tasks=n))  # type: ignore[return-value]


def learners() -> dict[str, Any]:
    return {
        "MAML": NoisyLearner(TRUE_CURVE),
        "random init + adaptation": NoisyLearner([-20.0, -19.0, -18.0, -17.0]),
        "pretrained + adaptation": NoisyLearner([-12.0, -11.0, -10.5, -10.0]),
    }


# --- statistics ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("confidence", "df", "expected"),
    [  # scipy.stats.t.ppf((1 + confidence) / 2, df)
        (0.95, 1, 12.706204736),
        (0.95, 2, 4.302652730),
        (0.95, 3, 3.182446305),
        (0.95, 5, 2.570581836),
        (0.95, 10, 2.228138852),
        (0.95, 30, 2.042272456),
        (0.95, 119, 1.980099876),
        (0.95, 1000, 1.962339081),
        (0.99, 10, 3.169272673),
        (0.90, 4, 2.131846786),
    ],
)
def test_t_critical_matches_the_tables(confidence: float, df: int, expected: float) -> None:
    assert t_critical(confidence, df) == pytest.approx(expected, abs=2e-7)


@pytest.mark.parametrize("df", [1001, 5000, 20000])
def test_t_critical_expansion_for_large_df_matches_the_exact_quantile(df: int, monkeypatch: pytest.MonkeyPatch) -> None:
    approx = t_critical(0.95, df)
    monkeypatch.setattr(evaluation, "_EXACT_T_MAX_DF", 10**6)
    assert approx == pytest.approx(t_critical(0.95, df), abs=1e-8)
    assert t_critical(0.95, df) < t_critical(0.95, 1000)


def test_mean_ci_by_hand() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, low, high = mean_ci(values, 0.95)
    half = 3.182446305 * math.sqrt(5 / 3) / 2  # t(0.975, 3) * s / sqrt(n), s² = 5/3
    assert mean == 2.5
    assert (low, high) == pytest.approx((2.5 - half, 2.5 + half))


# --- evaluate ------------------------------------------------------------------------


def test_means_are_over_seeds_and_tasks_and_each_seed_gets_its_own_generator() -> None:
    config = EvalConfig(num_tasks=5, num_steps=2, seeds=(0, 1, 2))
    tasks = nav_tasks(5)
    seed_index = iter(range(100))

    def curve(num_steps: int, num_tasks: int) -> torch.Tensor:
        s = next(seed_index)  # 0, 1, 2: the seed's position
        return 100 * s + 10 * torch.arange(num_steps + 1.0)[:, None] + torch.arange(num_tasks)[None, :]

    learner = FixedLearner(curve)
    result = evaluate({"fixed": learner}, tasks, config)
    curve_result = result.curves["fixed"]
    assert curve_result.steps == [0, 1, 2]
    assert curve_result.mean == pytest.approx([100 + 10 * j + 2 for j in range(3)])  # mean seed pos 1, mean task 2
    assert torch.tensor(curve_result.values).shape == (3, 3, 5)  # [seed][step][task]
    assert curve_result.values[2][1][4] == 200 + 10 + 4
    expected_draws = [int(torch.randint(0, 2**31, (), generator=torch.Generator().manual_seed(s))) for s in (0, 1, 2)]
    assert learner.draws == expected_draws


def test_ci_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    tasks = nav_tasks(10)
    hits = total = 0
    for rep in range(250):
        config = EvalConfig(num_tasks=10, seeds=(3 * rep, 3 * rep + 1, 3 * rep + 2))
        curve = evaluate({"agent": NoisyLearner(TRUE_CURVE)}, tasks, config).curves["agent"]
        for j, truth in enumerate(TRUE_CURVE):
            hits += curve.ci_low[j] <= truth <= curve.ci_high[j]
            total += 1
    assert 0.93 <= hits / total <= 0.97  # 1000 intervals: the binomial sd of the rate is 0.007


def test_ci_shrinks_with_more_seeds() -> None:
    tasks = nav_tasks(10)
    few = evaluate({"agent": NoisyLearner(TRUE_CURVE)}, tasks, EvalConfig(num_tasks=10, seeds=(0, 1, 2)))
    many = evaluate({"agent": NoisyLearner(TRUE_CURVE)}, tasks, EvalConfig(num_tasks=10, seeds=tuple(range(12))))
    for j in range(4):
        # 4x the samples: about half the width (sqrt(4)), allowing for the noise in s and t.
        assert many.curves["agent"].half_width(j) < 0.7 * few.curves["agent"].half_width(j)


def test_run_dir_gets_json_png_and_the_task_manifest(tmp_path: Path) -> None:
    tasks = nav_tasks(8)
    config = EvalConfig(num_tasks=8, num_steps=3, seeds=(0, 1))
    oracle = functools.partial(oracle_returns, Navigation2D())
    result = evaluate(learners(), tasks, config, oracle=oracle, run_dir=tmp_path, title="Navigation2D")
    out = tmp_path / "evaluation"

    saved = json.loads((out / "adaptation.json").read_text())
    assert saved == result.to_json()
    assert saved["agent"] == "MAML"
    assert list(saved["learners"]) == ["MAML", "random init + adaptation", "pretrained + adaptation"]
    assert saved["num_tasks"] == 8 and saved["num_seeds"] == 2
    assert saved["config"]["seeds"] == [0, 1] and saved["x_label"] == "gradient steps"
    maml = saved["learners"]["MAML"]
    assert maml["steps"] == [0, 1, 2, 3]
    assert all(lo < m < hi for lo, m, hi in zip(maml["ci_low"], maml["mean"], maml["ci_high"], strict=True))
    assert torch.tensor(maml["values"]).shape == (2, 4, 8)
    assert torch.tensor(saved["oracle"]["values"]).shape == (2, 8)
    assert EvalResult.from_json(saved) == result
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporaries

    with Image.open(out / "adaptation.png") as image:
        image.verify()
        assert image.format == "PNG" and min(image.size) > 100

    assert metarl.load_manifest(out / "tasks.json").equal(tasks)


def test_table_lists_every_learner_and_the_oracle() -> None:
    tasks = nav_tasks(6)
    config = EvalConfig(num_tasks=6, num_steps=2, seeds=(0, 1))
    result = evaluate(learners(), tasks, config, oracle=functools.partial(oracle_returns, Navigation2D()))
    table = result.table()
    title, header, *rows = table.splitlines()
    assert "6 test tasks x 2 seeds" in title and "95%" in title
    assert header.split() == ["0", "steps", "1", "step", "2", "steps"]
    assert [r.split("  ")[0].strip() for r in rows] == [*learners(), "oracle (knows the task)"]
    assert len({len(line) for line in [header, *rows]}) == 1  # fixed width
    maml = result.curves["MAML"]
    assert f"{maml.mean[1]:.3f} ± {maml.half_width(1):.3f}" in rows[0]
    # Columns that are not gradient steps are named by the x label (RL²: episodes of a trial).
    header = evaluate(learners(), tasks, config, x_label="episode in trial").table().splitlines()[1]
    assert [cell.strip() for cell in header.split("  ") if cell.strip()] == [f"episode in trial {j}" for j in range(3)]


def test_logger_receives_json_figure_and_metrics(tmp_path: Path) -> None:
    tasks = nav_tasks(4)
    config = EvalConfig(num_tasks=4, num_steps=1, seeds=(0, 1))
    logger = RecordingLogger()
    result = evaluate(
        learners(),
        tasks,
        config,
        oracle=functools.partial(oracle_returns, Navigation2D()),
        run_dir=tmp_path,
        logger=logger,
        step=7,
        x_label="episode in trial",
    )
    calls = dict(logger.calls)
    assert [name for name, _ in logger.calls] == ["log_json", "log_figure", "log_metrics"]
    assert calls["log_json"][0] == "evaluation/adaptation.json"
    assert calls["log_json"][1] == result.to_json() and calls["log_json"][1]["x_label"] == "episode in trial"
    assert Path(calls["log_figure"][0]) == tmp_path / "evaluation" / "adaptation.png"
    metrics, step = calls["log_metrics"]
    assert step == 7
    assert metrics["eval/MAML/step_1"] == result.curves["MAML"].mean[1]
    assert metrics["eval/oracle"] == result.oracle.mean  # type: ignore[union-attr]
    assert set(metrics) == {f"eval/{n}/step_{j}" for n in learners() for j in (0, 1)} | {"eval/oracle"}


def test_without_run_dir_nothing_is_written_and_no_figure_is_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    logger = RecordingLogger()
    evaluate(learners(), nav_tasks(4), EvalConfig(num_tasks=4, seeds=(0, 1)), logger=logger)
    assert [name for name, _ in logger.calls] == ["log_json", "log_metrics"]
    assert logger.calls[-1][1][1] == 0  # the default step
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_tasks": 0}, "num_tasks.*0"),
        ({"num_tasks": 2.5}, "num_tasks.*2.5"),
        ({"num_steps": -1}, "num_steps.*-1"),
        ({"seeds": ()}, r"seeds.*\(\)"),
        ({"seeds": (0, -3)}, r"seeds.*-3"),
        ({"seeds": (1, 1)}, r"distinct.*\(1, 1\)"),
        ({"split": "validation"}, "split.*validation"),
        ({"confidence": 1.0}, "confidence.*1.0"),
        ({"confidence": 0}, "confidence.*0"),
        ({"task_seed": -1}, "task_seed.*-1"),
        ({"num_tasks": 1, "seeds": (0,)}, "at least 2"),
    ],
)
def test_bad_config_values_raise(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EvalConfig(**kwargs)


def test_seeds_may_come_as_a_list() -> None:
    assert EvalConfig(seeds=[4, 5]).seeds == (4, 5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fn", "match"),
    [
        (lambda k, m: torch.zeros(k, m), r"'broken'.*\(3, 6\).*expected.*\(4, 6\)"),
        (lambda k, m: torch.zeros(k + 1), r"'broken'.*\(4,\).*expected.*\(4, 6\)"),
        (lambda k, m: [[0.0] * m] * (k + 1), r"'broken'.*list.*expected"),
        (lambda k, m: torch.full((k + 1, m), float("nan")), r"'broken'.*non-finite"),
    ],
)
def test_a_learner_returning_the_wrong_thing_is_named(fn: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate({"ok": NoisyLearner(TRUE_CURVE), "broken": FixedLearner(fn)}, nav_tasks(6), EvalConfig(num_tasks=6))


def test_evaluate_needs_learners_and_enough_samples() -> None:
    with pytest.raises(ValueError, match="at least one learner"):
        evaluate({}, nav_tasks(4), EvalConfig())
    with pytest.raises(ValueError, match="1 task.*1 seed"):
        evaluate({"a": NoisyLearner(TRUE_CURVE)}, nav_tasks(1), EvalConfig(seeds=(0,)))


# --- held-out tasks ------------------------------------------------------------------


def test_held_out_tasks_are_reproducible_test_tasks() -> None:
    family = Navigation2D()
    config = EvalConfig(num_tasks=12)
    tasks = held_out_tasks(family, config)
    assert len(tasks) == 12 and bool(family.task_space.held_out(tasks).all())
    assert held_out_tasks(family, config).equal(tasks)
    assert not held_out_tasks(family, dataclasses.replace(config, task_seed=7)).equal(tasks)
    train = held_out_tasks(family, dataclasses.replace(config, split="train"))
    assert not bool(family.task_space.held_out(train).any())


# --- oracle --------------------------------------------------------------------------


def test_navigation_oracle_return_by_hand() -> None:
    # Goal (0.3, 0.4) from the origin, actions clipped to [-0.1, 0.1]²: the robot moves to
    # (0.1, 0.1), (0.2, 0.2), (0.3, 0.3), then (0.3, 0.4) where it terminates (within 0.01 on both axes).
    # Reward = -distance after each move: sqrt(0.2² + 0.3²), sqrt(0.1² + 0.2²), 0.1, 0.
    expected = -(math.hypot(0.2, 0.3) + math.hypot(0.1, 0.2) + 0.1 + 0.0)
    tasks = NavigationTasks(torch.tensor([[0.3, 0.4], [0.3, 0.4]]))
    returns = oracle_returns(Navigation2D(), tasks, torch.Generator().manual_seed(0), num_envs_per_task=3)
    assert returns is not None and returns.shape == (2,)
    assert returns.tolist() == pytest.approx([expected, expected], abs=1e-5)


class StandStill(Navigation2D):
    def oracle_action(self, obs: torch.Tensor, tasks: NavigationTasks) -> torch.Tensor:
        return torch.zeros_like(obs)


def test_navigation_oracle_beats_standing_still() -> None:
    tasks = nav_tasks(20)
    gen = torch.Generator().manual_seed(0)
    oracle = oracle_returns(Navigation2D(), tasks, gen)
    still = oracle_returns(StandStill(), tasks, gen)
    assert oracle is not None and still is not None
    # Standing at the origin for 100 steps earns -100 |goal|.
    assert torch.allclose(still, -100 * tasks.goal.norm(dim=1), rtol=1e-5)
    assert bool((oracle > still).all())
    assert bool((oracle > -1.5).all())  # worst goal, a corner: -(0.4 + 0.3 + 0.2 + 0.1) * sqrt(2) = -1.41


def test_families_without_an_oracle_give_none_and_no_oracle_line() -> None:
    family = metarl.make_family("metarl/CartPole-v0")
    tasks = held_out_tasks(family, EvalConfig(num_tasks=3))
    oracle = functools.partial(oracle_returns, family)
    assert oracle(tasks, torch.Generator().manual_seed(0)) is None
    result = evaluate({"a": NoisyLearner(TRUE_CURVE)}, tasks, EvalConfig(num_tasks=3), oracle=oracle)
    assert result.oracle is None and "oracle" not in result.table()


def test_oracle_wrong_shape_is_reported() -> None:
    with pytest.raises(ValueError, match=r"oracle returned \(3,\), expected.*\(4,\)"):
        evaluate({"a": NoisyLearner(TRUE_CURVE)}, nav_tasks(4), EvalConfig(num_tasks=4), oracle=lambda t, g: torch.zeros(3))
