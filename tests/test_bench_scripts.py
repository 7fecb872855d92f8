"""The benchmark scripts run end to end on tiny budgets and refuse bad flags before training.

Their figures are not checked here (they are measurements, kept in BENCHMARKS.md); what is checked is
that a run completes, reports every learner it promises, and writes its JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch


@pytest.fixture
def bench_rl2(load_script: Callable[[str], ModuleType]) -> ModuleType:
    return load_script("bench_rl2")


TINY_RL2_BENCH = dict(
    minutes=1e-4,  # one meta-iteration: the loop always runs at least one
    num_envs=8,
    hidden_size=8,
    num_tasks=6,
    trials_per_task=1,
    threads=1,
)


def test_bench_rl2_scores_every_reference_policy_and_writes_json(bench_rl2: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "rl2.json"
    config = bench_rl2.BenchConfig(
        settings=("bandit-k5-n10", "mdp-10x5"), **TINY_RL2_BENCH, json_out=out, save_dir=tmp_path / "agents"
    )
    report = bench_rl2.main(config)
    assert json.loads(out.read_text())["settings"].keys() == {"bandit-k5-n10", "mdp-10x5"}
    bandit, mdp = report["settings"]["bandit-k5-n10"], report["settings"]["mdp-10x5"]
    assert bandit["iterations"] == mdp["iterations"] == 1
    assert {"RL2", "RL2 (mode)", "random", "UCB1", "Thompson", "Gittins"} <= bandit["results"].keys()
    assert {"RL2", "RL2 (mode)", "random", "PSRL"} <= mdp["results"].keys()
    # The saved agents are scored again without training, to the same figures.
    rescored = bench_rl2.main(dataclasses.replace(config, json_out=None, save_dir=None, load_dir=tmp_path / "agents"))
    for name in config.settings:
        assert rescored["settings"][name]["iterations"] == 1
        assert rescored["settings"][name]["results"] == report["settings"][name]["results"]
    for row in [*bandit["results"].values(), *mdp["results"].values()]:
        assert math.isfinite(row["mean"]) and row["ci_half_width"] >= 0
    # A 10-pull trial pays 0 or 1 per pull.
    assert all(0 <= row["mean"] <= 10 for row in bandit["results"].values())
    assert bandit["median_seconds_sampling"] > 0 and bandit["median_seconds_update"] > 0


def test_bench_rl2_validates_and_scores_the_best_iterate_beside_the_last(bench_rl2: ModuleType, tmp_path: Path) -> None:
    config = bench_rl2.BenchConfig(
        settings=("bandit-k5-n10",),
        **TINY_RL2_BENCH,
        encoder_size=4,  # the saved agents carry the extra layers back through --load-dir
        head_size=4,
        save_dir=tmp_path / "agents",
        validate_every=1,
        validation_tasks=5,
    )
    report = bench_rl2.main(config)["settings"]["bandit-k5-n10"]
    logged = [json.loads(line) for line in (tmp_path / "agents" / "bandit-k5-n10-metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in logged] == [1]  # one line per meta-iteration
    assert {"trial_return", "value_loss", "approx_kl", "grad_norm"} <= logged[0].keys()
    assert [step for step, _ in report["validation_scores"]] == [1]
    assert report["best_iteration"] == 1 and report["best_validation_score"] == report["validation_scores"][0][1]
    assert {"RL2", "RL2 (mode)", "RL2 (best iterate)", "RL2 (best iterate) (mode)", "Gittins"} <= report["results"].keys()
    # After one iteration the best iterate is the last one.
    assert report["results"]["RL2 (best iterate)"] == report["results"]["RL2"]
    rescored = bench_rl2.main(dataclasses.replace(config, save_dir=None, validate_every=None, load_dir=tmp_path / "agents"))
    assert rescored["settings"]["bandit-k5-n10"]["results"] == report["results"]


def test_bench_rl2_layer_sizes_come_from_the_setting_unless_given(bench_rl2: ModuleType) -> None:
    """100-pull bandits get the input layer and MLP heads by default; a size given on the command line wins, 0 removes
    the layer."""
    long_trials, short_trials = bench_rl2.SETTINGS["bandit-k10-n100"], bench_rl2.SETTINGS["bandit-k5-n10"]
    policy = bench_rl2.make_agent(long_trials, bench_rl2.BenchConfig(**TINY_RL2_BENCH), seed=0).policy
    assert policy.encoder.out_features == 64 and policy.actor.layers[0].out_features == 64
    policy = bench_rl2.make_agent(long_trials, bench_rl2.BenchConfig(**TINY_RL2_BENCH, encoder_size=0, head_size=3), 0).policy
    assert policy.encoder is None and policy.critic.layers[0].out_features == 3
    assert bench_rl2.make_agent(short_trials, bench_rl2.BenchConfig(**TINY_RL2_BENCH), seed=0).policy.encoder is None


def test_straight_path_distance_follows_each_episode_of_a_trial(bench_rl2: ModuleType) -> None:
    """A policy that always steps (+0.1, +0.1): for goals on that diagonal it goes straight (distance 0 after the
    straight path's steps, in both episodes), for the others it ends a known distance away."""
    from agents.rl2 import RL2, RL2Config
    from envs.navigation import NavigationTasks

    agent = RL2(RL2Config(env_id="metarl/Navigation2D-v0", episodes_per_trial=2, num_envs=4, hidden_size=4))
    with torch.no_grad():
        for parameter in agent.policy.parameters():
            parameter.zero_()
        agent.policy.actor.bias.fill_(1.0)  # a full step (0.1) in the policy's [-1, 1] units
    goals = torch.tensor([[0.3, 0.3], [0.2, 0.2], [0.3, 0.0], [-0.2, 0.45]])
    measured = bench_rl2.distance_after_straight_path(agent, NavigationTasks(goal=goals), 2, deterministic=True, seed=0)
    # Straight steps 3, 2, 3, 5: positions (0.3, 0.3), (0.2, 0.2), (0.3, 0.3), (0.5, 0.5); two trials per task.
    expected = torch.tensor([0.0, 0.0, 0.3, (0.7**2 + 0.05**2) ** 0.5]).repeat_interleave(2)
    torch.testing.assert_close(measured.distance, expected.expand(2, -1), atol=1e-5, rtol=0)
    # The diagonal goals end the episode on arrival; the others never reach the goal's box (the 100-step limit).
    steps = torch.tensor([3, 2, 100, 100]).repeat_interleave(2)
    torch.testing.assert_close(measured.steps, steps.expand(2, -1))
    torch.testing.assert_close(measured.straight_steps, torch.tensor([3.0, 2.0, 3.0, 5.0]).repeat_interleave(2).expand(2, -1))
    row = bench_rl2.straight_path_rows({"diagonal": (agent, True)}, NavigationTasks(goal=goals))["diagonal"]
    assert row["fraction_straight"] == row["fraction_at_goal"] == row["fraction_within_2_steps"] == [0.5, 0.5]
    assert row["median_steps"] == [3.0, 3.0]  # torch's median: the lower middle of 2, 2, 3, 3, 100, 100, 100, 100


def test_navigation_trials_record_each_episodes_path_and_plot_it(bench_rl2: ModuleType, tmp_path: Path) -> None:
    """The (+0.1, +0.1) policy again: on the goal (0.2, 0.2) each episode is the two steps (0.1, 0.1), (0.2, 0.2)
    from the origin; on (0.3, 0) the first episode walks the diagonal until its 100-step limit."""
    from PIL import Image

    from agents.rl2 import RL2, RL2Config
    from envs.navigation import NavigationTasks

    agent = RL2(RL2Config(env_id="metarl/Navigation2D-v0", episodes_per_trial=2, num_envs=4, hidden_size=4))
    with torch.no_grad():
        for parameter in agent.policy.parameters():
            parameter.zero_()
        agent.policy.actor.bias.fill_(1.0)
    tasks = NavigationTasks(goal=torch.tensor([[0.2, 0.2], [0.3, 0.0]]))
    played = bench_rl2.play_navigation_trials(agent, tasks, trials_per_task=1, deterministic=True, seed=0)
    diagonal = torch.tensor([[0.1, 0.1], [0.2, 0.2]])
    torch.testing.assert_close(played.position[:4, 0], torch.cat([diagonal, diagonal]))
    assert played.episode[:5, 0].tolist() == [0, 0, 1, 1, 2]  # the fifth step begins the next trial
    assert played.ended[:4, 0].tolist() == [False, True, False, True]
    assert played.step_in_episode[:4, 0].tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(played.position[99, 1], torch.tensor([10.0, 10.0]))
    assert bool(played.ended[99, 1]) and int(played.episode[99, 1]) == 0 and int(played.episode[100, 1]) == 1
    png = bench_rl2.plot_navigation_paths(agent, tasks, tmp_path / "paths.png", deterministic=True)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > image.height > 0  # two panels side by side


def test_bench_gpu_refuses_an_unknown_part_before_running_anything(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu.sh"
    done = subprocess.run(["bash", str(script), str(tmp_path), "tests", "rl2-k5n10x"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown part: rl2-k5n10x" in done.stderr
    assert not (tmp_path / "status.txt").exists()


def test_bench_rl2_flags_override_the_settings_own_hyperparameters(bench_rl2: ModuleType) -> None:
    setting = bench_rl2.SETTINGS["navigation2d"]
    used = bench_rl2.hyperparameters(setting, bench_rl2.BenchConfig(lr=1e-2))
    assert used["lr"] == 1e-2
    assert used["reward_scale"] == setting.hyperparameters["reward_scale"] == 0.1  # not given: the setting's own
    assert bench_rl2.make_agent(setting, bench_rl2.BenchConfig(**TINY_RL2_BENCH), seed=0).rescales_actions
    env_units = bench_rl2.BenchConfig(**TINY_RL2_BENCH, rescale_actions=False)
    assert not bench_rl2.make_agent(setting, env_units, seed=0).rescales_actions
    assert bench_rl2.make_agent(setting, bench_rl2.BenchConfig(**TINY_RL2_BENCH), seed=0).config.ppo.target_kl is None
    early_stop = bench_rl2.BenchConfig(**TINY_RL2_BENCH, target_kl=0.02)
    assert bench_rl2.make_agent(setting, early_stop, seed=0).config.ppo.target_kl == 0.02
    assert bench_rl2.make_agent(setting, bench_rl2.BenchConfig(**TINY_RL2_BENCH), seed=0).config.ppo.desired_kl == 0.01
    fixed = bench_rl2.BenchConfig(**TINY_RL2_BENCH, desired_kl=0, anneal_lr=True)  # a fixed step size may be annealed
    assert bench_rl2.make_agent(setting, fixed, seed=0).config.ppo.desired_kl is None
    pendulum = bench_rl2.BenchConfig(**TINY_RL2_BENCH, desired_kl=0.02)
    assert bench_rl2.make_agent(bench_rl2.SETTINGS["pendulum"], pendulum, seed=0).config.ppo.desired_kl == 0.02
    bandits = bench_rl2.make_agent(bench_rl2.SETTINGS["bandit-k5-n10"], bench_rl2.BenchConfig(**TINY_RL2_BENCH), seed=0)
    assert bandits.config.ppo.desired_kl is None  # measured on the control families only


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"minutes": 0.0}, "minutes"),
        ({"num_tasks": 0}, "num_tasks"),
        ({"trials_per_task": -1}, "trials_per_task"),
        ({"settings": ("bandit-k3-n7",)}, "bandit-k3-n7"),
        ({"anneal_lr_start": 1.0}, "anneal_lr_start"),
        ({"anneal_lr_start": -0.1}, "anneal_lr_start"),
        ({"anneal_lr_start": 0.5}, "has no effect without --anneal-lr"),
        ({"load_dir": Path("no-such-dir")}, r"no saved agent for \['bandit-k5-n10'"),
        ({"validate_every": 5}, "validate_every=5 needs --save-dir"),
        ({"validate_every": 0, "save_dir": Path("agents")}, "validate_every must be a positive int, got 0"),
        ({"snapshot_every": 10}, "snapshot_every=10 needs --save-dir"),
        ({"validation_tasks": 0}, "validation_tasks must be a positive int, got 0"),
        ({"encoder_size": -1}, r"encoder_size must be a non-negative int \(0: no such layer\), got -1"),
        ({"head_size": -3}, "head_size must be a non-negative int"),
        ({"target_kl": -0.01}, r"target_kl must be non-negative \(0: no early stop\), got -0.01"),
        ({"desired_kl": -0.01}, r"desired_kl must be non-negative \(0: a fixed step size\), got -0.01"),
        (
            {"settings": ("bandit-k5-n10", "navigation2d"), "anneal_lr": True},  # Navigation2D adapts its step size
            r"--anneal-lr and desired_kl both set the step size of \['navigation2d'\]",
        ),
    ],
)
def test_bench_rl2_refuses_bad_flags_before_training(bench_rl2: ModuleType, flags: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        bench_rl2.BenchConfig(**flags)


@pytest.mark.parametrize(
    ("start", "elapsed", "expected"),
    [
        (0.0, 0.0, 1e-3),  # decays from the start: CleanRL's schedule over the budget
        (0.0, 50.0, 5e-4),
        (0.6, 30.0, 1e-3),  # held for the first 60 of 100 seconds
        (0.6, 60.0, 1e-3),
        (0.6, 80.0, 5e-4),  # half way through the remaining 40
        (0.6, 100.0, 0.0),
        (0.6, 130.0, 0.0),  # the last iteration may end past the budget
    ],
)
def test_bench_rl2_step_size_is_held_then_decays_to_zero_over_the_budget(
    bench_rl2: ModuleType, start: float, elapsed: float, expected: float
) -> None:
    assert bench_rl2.annealed_lr(1e-3, elapsed, 100.0, start) == pytest.approx(expected)


def test_bench_maml_refuses_a_non_positive_second_evaluation_size(load_script: Callable[[str], ModuleType]) -> None:
    bench_maml = load_script("bench_maml")
    with pytest.raises(ValueError, match="also_eval_episodes_per_task must be a positive int, got 0"):
        bench_maml.BenchConfig(also_eval_episodes_per_task=0)
    assert bench_maml.BenchConfig(also_eval_episodes_per_task=None).also_eval_episodes_per_task is None
