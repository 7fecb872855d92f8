"""The experiment end to end: train_metarl.py's pipeline, resume after a kill, config files, evaluate.py."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

import envs  # noqa: F401
import metarl
from agents.experiment import TrainConfig, evaluate_run, load_run_config, make_agent, train
from agents.maml import MAMLConfig
from metarl.checkpoint import latest_checkpoint, load_checkpoint
from metarl.evaluation import EvalConfig

ROOT = Path(__file__).resolve().parents[2]
RUN_FLAGS = ["--eval.num-tasks", "3", "--eval.seeds", "0", "--threads", "1"]
AGENT_FLAGS = ["maml", "--meta-batch-size", "3", "--episodes-per-task", "2", "--horizon", "10"]


def tiny_config(run_dir: Path, **overrides) -> TrainConfig:
    agent = MAMLConfig(meta_batch_size=3, episodes_per_task=2, horizon=10)
    fields = dict(
        agent=agent,
        iterations=3,
        eval=EvalConfig(num_tasks=3, seeds=(0,)),
        run_dir=run_dir,
        pretrain_iterations=2,
        progress=False,
        threads=1,
    )
    return TrainConfig(**{**fields, **overrides})


@pytest.fixture(autouse=True)
def no_comet_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMET_API_KEY", raising=False)


def script(name: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("COMET_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def final_params(run_dir: Path) -> torch.Tensor:
    state = load_checkpoint(latest_checkpoint(run_dir))["agent"]["policy"]
    return torch.cat([v.flatten() for v in state.values()])


def test_train_writes_a_complete_run(tmp_path: Path) -> None:
    outcome = train(tiny_config(tmp_path / "run"))
    run = outcome.run_dir
    for relative in (
        "config.json",
        "params.json",
        "metrics.jsonl",
        "evaluation/adaptation.json",
        "evaluation/adaptation.png",
        "evaluation/tasks.json",
    ):
        assert (run / relative).is_file(), relative
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "return_after_adaptation" in r]
    assert steps == [1, 2, 3]
    assert any("pretrained/return_after_adaptation" in r for r in rows)
    assert outcome.result is not None and set(outcome.result.curves) == {
        "MAML",
        "random init + adaptation",
        "pretrained + adaptation",
    }
    assert outcome.result.oracle is not None
    assert load_checkpoint(outcome.checkpoint)["iteration"] == 3
    # The offline Comet archive holds the logged metrics.
    assert outcome.comet_archive is not None and outcome.comet_archive.is_file()
    with zipfile.ZipFile(outcome.comet_archive) as archive:
        text = "\n".join(
            archive.read(n).decode("utf-8", "replace") for n in archive.namelist() if n.endswith((".json", ".jsonl"))
        )
    assert "return_after_adaptation" in text and "eval/MAML/step_1" in text


def test_bad_settings_are_refused_before_a_run_directory_exists(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(metarl.UnknownFamilyError, match="Navigation2D"):
        train(tiny_config(run, agent=MAMLConfig(env_id="metarl/Navigation3D-v0")))
    assert not run.exists()
    with pytest.raises(ValueError, match="iterations must be a non-negative int, got -1"):
        tiny_config(run, iterations=-1)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        train(tiny_config(run, resume=tmp_path / "nothing-here"))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(tmp_path: Path) -> None:
    common = [*RUN_FLAGS, "--iterations", "12", "--checkpoint-every", "1", "--no-baselines", "--no-progress"]
    straight = script("train_metarl.py", *common, "--run-dir", str(tmp_path / "straight"), *AGENT_FLAGS)
    killed_dir = tmp_path / "killed"
    victim = script("train_metarl.py", *common, "--run-dir", str(killed_dir), *AGENT_FLAGS, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = latest_checkpoint(killed_dir) if (killed_dir / "checkpoints").exists() else None
        if found is not None and load_checkpoint(found)["iteration"] >= 4:
            break
        assert victim.poll() is None, victim.communicate()[0]
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    done_before_kill = load_checkpoint(latest_checkpoint(killed_dir))["iteration"]
    assert 4 <= done_before_kill < 12, "the run should have been killed part-way"
    resumed = script("train_metarl.py", "--resume", str(killed_dir), "--no-progress")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    out_straight, _ = straight.communicate(timeout=300)
    assert straight.returncode == 0, out_straight
    torch.testing.assert_close(final_params(killed_dir), final_params(tmp_path / "straight"), rtol=0, atol=0)
    steps = [
        json.loads(line)["step"]
        for line in (killed_dir / "metrics.jsonl").read_text().splitlines()
        if "return_after_adaptation" in line
    ]
    assert steps == list(range(1, 13)), "a resumed run keeps every metric once"


def test_validated_run_evaluates_its_best_iterate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load_script) -> None:
    """--validate-every: the held-out evaluation scores best.pt, here the iterate of step 2 (scripted scores)."""
    from metarl.training import Validation

    scores = iter([1.0, 0.0])  # validations at iterations 2 and 4: the earlier one is best
    monkeypatch.setattr(Validation, "score", lambda self, agent: next(scores))
    run = tmp_path / "run"
    outcome = train(tiny_config(run, iterations=4, validate_every=2, baselines=False))
    assert outcome.best is not None and (outcome.best.iteration, outcome.best.validation_score) == (2, 1.0)
    assert outcome.best.checkpoint == run / "checkpoints" / "best.pt"
    assert load_checkpoint(outcome.checkpoint)["iteration"] == 4  # the last iterate is still there to resume from
    assert "best iterate:" in load_script("train_metarl").report(outcome)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["validation/return"]) for r in rows if "validation/return" in r] == [(2, 1.0), (4, 0.0)]
    assert any(r.get("eval/best_iteration") == 2 for r in rows)
    evaluated = outcome.result.curves["MAML"].mean
    assert evaluate_run(run, checkpoint=run / "checkpoints" / "best.pt").curves["MAML"].mean == evaluated
    assert evaluate_run(run, checkpoint=outcome.checkpoint).curves["MAML"].mean != evaluated
    with pytest.raises(ValueError, match="validate_every must be a positive int, got 0"):
        tiny_config(run, validate_every=0)


def test_config_file_then_flags(tmp_path: Path, load_script) -> None:
    train_script = load_script("train_metarl")
    first = tmp_path / "first"
    train(tiny_config(first, iterations=1, baselines=False))
    config = train_script.parse(
        ["--config", str(first / "config.json"), "--run-dir", str(tmp_path / "second"), "maml", "--inner-lr", "0.05"]
    )
    assert config.agent.inner_lr == 0.05 and config.agent.meta_batch_size == 3 and config.iterations == 1
    assert config.run_dir == tmp_path / "second"
    assert load_run_config(first).agent.horizon == 10


def test_evaluate_script_on_a_saved_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(run, iterations=1, baselines=False))
    proc = script("evaluate.py", str(run), "--eval.num-tasks", "2", "--eval.seeds", "0", "1")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "MAML" in out and "2 test tasks x 2 seeds" in out
    result = json.loads((run / "evaluation" / "adaptation.json").read_text())
    assert result["num_tasks"] == 2


def test_unknown_agent_is_refused_naming_the_known_ones() -> None:
    from agents.experiment import make_agent

    known = r"\['fewshot-maml', 'maml', 'protonet', 'reptile', 'rl2'\]"
    with pytest.raises(TypeError, match=rf"no agent takes a EvalConfig; known agents: {known}"):
        make_agent(EvalConfig())  # type: ignore[arg-type]


def test_cli_rejects_unknown_flags_and_bad_values(load_script, capsys: pytest.CaptureFixture[str]) -> None:
    train_script = load_script("train_metarl")
    with pytest.raises(SystemExit):
        train_script.parse(["rl3"])
    assert "rl3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_script.parse(["maml", "--inner-lr", "-1"])
    assert "inner_lr must be positive, got -1.0" in capsys.readouterr().err


def test_rl2_run_is_evaluated_per_episode_beside_the_reference_policies(tmp_path: Path) -> None:
    from agents.ppo import PPOSettings
    from agents.rl2 import RL2Config

    agent = RL2Config(env_kwargs={"num_arms": 2, "num_pulls": 3}, num_envs=8, hidden_size=8, ppo=PPOSettings(num_minibatches=2))
    outcome = train(tiny_config(tmp_path / "run", agent=agent, iterations=2))
    assert outcome.result is not None
    names = set(outcome.result.curves)
    assert {"RL2", "random init (untrained RL²)", "Gittins", "Thompson", "UCB1"} <= names
    assert outcome.result.curves["RL2"].steps == [0]  # one episode per trial: the trial's total reward
    assert load_checkpoint(outcome.checkpoint)["agent"]["config"]["hidden_size"] == 8


OMNIGLOT = ROOT.parent / "shared" / "data" / "omniglot"


@pytest.mark.skipif(not (OMNIGLOT / "all_runs.zip").is_file(), reason="the minimal Omniglot files are not beside the repository")
def test_protonet_run_on_omniglot_scores_accuracy_and_the_one_shot_runs(tmp_path: Path, load_script) -> None:
    """Through train_metarl.py's CLI: 20-way ProtoNet on the minimal split, ≥ 600 held-out tasks, the 20 official runs."""
    flags = ["--iterations", "2", "--run-dir", str(tmp_path / "run"), "--no-progress", *RUN_FLAGS[2:]]
    kwargs = ["split", "minimal", "num_ways", "20", "root", str(OMNIGLOT), "image_size", "16", "train_rotations", "True"]
    agent = ["protonet", "--env-kwargs", *kwargs]
    outcome = load_script("train_metarl").main([*flags, *agent, "--width", "8"])
    result = json.loads((outcome.run_dir / "evaluation" / "adaptation.json").read_text())
    assert result["num_tasks"] == 600 and result["y_label"] == "query accuracy"
    accuracy = result["learners"]["PROTONET"]["mean"][0]
    assert 0.0 <= accuracy <= 1.0 and "untrained network" in result["learners"]
    assert outcome.one_shot is not None and len(outcome.one_shot.run_errors) == 20
    saved = json.loads((outcome.run_dir / "evaluation" / "one_shot_runs.json").read_text())
    assert saved["mean_error_percent"] == pytest.approx(outcome.one_shot.mean_error_percent)
    config = load_run_config(outcome.run_dir)
    expected = {"split": "minimal", "num_ways": 20, "root": str(OMNIGLOT), "image_size": 16, "train_rotations": True}
    assert config.agent.env_kwargs == expected and config.agent.env_kwargs["train_rotations"] is True
    family = make_agent(config.agent).family  # the saved config rebuilds the rotated family
    assert family.task_space.num_train_classes == 4 * 197  # the minimal split's 197 train characters, each rotated 3 times


@pytest.mark.skipif(not (OMNIGLOT / "all_runs.zip").is_file(), reason="the minimal Omniglot files are not beside the repository")
def test_rl2_answers_the_one_shot_runs_only_with_twenty_ways() -> None:
    from agents.experiment import one_shot_runs_error
    from agents.ppo import PPOSettings
    from agents.rl2 import RL2, RL2Config

    def rl2(ways: int) -> RL2:
        kwargs = {"split": "minimal", "num_ways": ways, "root": str(OMNIGLOT), "image_size": 16}
        ppo = PPOSettings(num_minibatches=2, epochs=1)
        return RL2(RL2Config(env_id="metarl/OmniglotBandit-v0", env_kwargs=kwargs, num_envs=4, hidden_size=16, ppo=ppo))

    score = one_shot_runs_error(rl2(20))
    assert score is not None and len(score.run_errors) == 20
    assert all(0.0 <= e <= 1.0 for e in score.run_errors)  # fractions misclassified
    assert one_shot_runs_error(rl2(5)) is None  # a 5-way policy cannot name 20 classes


def test_reptile_run_is_evaluated_against_ppo_from_scratch(tmp_path: Path) -> None:
    from agents.ppo import PPOSettings
    from agents.reptile import ReptileConfig

    ppo = PPOSettings(num_minibatches=2)
    agent = ReptileConfig(meta_batch_size=2, envs_per_task=2, rollout_steps=20, inner_updates=1, ppo=ppo)
    eval_config = EvalConfig(num_tasks=3, num_steps=1, seeds=(0,))
    outcome = train(tiny_config(tmp_path / "run", agent=agent, iterations=2, eval=eval_config))
    assert outcome.result is not None and set(outcome.result.curves) == {"REPTILE", "PPO from random init"}
    assert outcome.result.x_label == "PPO updates" and outcome.result.curves["REPTILE"].steps == [0, 1]
    metrics = [json.loads(line) for line in (outcome.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "return_before_adaptation" in m] == [1, 2]
    resumed = train(dataclasses.replace(tiny_config(tmp_path / "other"), resume=outcome.run_dir, iterations=3))
    assert load_checkpoint(resumed.checkpoint)["iteration"] == 2  # resume keeps the run's own config (2 iterations)
    metrics = [json.loads(line) for line in (outcome.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(any(k.startswith("eval/") for k in m) for m in metrics) == 1  # evaluated again, logged once
