"""RunLogger: run directory files, offline Comet archives, resume, and Comet failures that must not stop a run.

No test reaches the network: every COMET_* variable is cleared, HOME and the working directory point into
tmp_path (so no user ``.comet.config`` or ``.env`` is read), and online experiment creation is faked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from metarl.logging import COMET_FILE, CometWarning, RunLogger, import_comet_ml, read_metrics

# Through metarl, so comet_ml's auto-logging import hook and its Sentry error reporting (network!) stay off.
comet_ml = import_comet_ml()


@pytest.fixture(autouse=True)
def isolated_comet(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("COMET_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("COMET_DISABLE_AUTO_LOGGING", "1")
    monkeypatch.setenv("COMET_ERROR_TRACKING_ENABLE", "false")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)


@dataclasses.dataclass(frozen=True)
class _Inner:
    hidden: tuple[int, ...] = (64, 64)
    out: Path = Path("runs/x")


def _config() -> dict:
    return {"lr": 0.1, "family": "metarl/Navigation2D-v0", "inner": _Inner(), "seeds": (1, 2)}


def _archive_messages(archive: Path) -> tuple[zipfile.ZipFile, list[dict]]:
    z = zipfile.ZipFile(archive)
    return z, [json.loads(line) for line in z.read("messages.json").decode().splitlines() if line.strip()]


def _metric_points(messages: list[dict]) -> dict[tuple[str, int], float]:
    return {
        (m["payload"]["metric"]["metricName"], m["payload"]["metric"]["step"]): m["payload"]["metric"]["metricValue"]
        for m in messages
        if m["type"] == "metric_msg"
    }


def _params(messages: list[dict]) -> dict[str, object]:
    """Manually logged parameters; comet_ml stores scalars under "param" and lists under "params"."""
    found = {}
    for m in messages:
        if m["type"] == "parameter_msg":
            param = m["payload"].get("param") or m["payload"]["params"]
            if param["source"] == "manual":
                found[param["paramName"]] = param["paramValue"]
    return found


def _png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1, 2], [0, 1, 4])
    fig.savefig(path)
    plt.close(fig)
    return path


def test_offline_archive_holds_params_metrics_figure_and_assets(tmp_path):
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("error", CometWarning)  # no key configured: offline is the plan, not a fallback
        logger = RunLogger(run, _config(), name="nav-maml", comet="auto")
    assert logger.comet_mode == "offline"
    config = json.loads((run / "config.json").read_text())
    assert config == {
        "lr": 0.1,
        "family": "metarl/Navigation2D-v0",
        "inner": {"hidden": [64, 64], "out": "runs/x"},
        "seeds": [1, 2],
    }

    logger.log_params({"num_parameters": 1234})
    logged = {0: {"loss": 1.0, "return": -3.5}, 1: {"loss": 0.5, "return": -2.0}, 2: {"loss": 0.25, "return": -1.25}}
    for step, values in logged.items():
        logger.log_metrics({"loss": torch.tensor(values["loss"]), "return": values["return"]}, step=step)
    logger.log_figure(_png(tmp_path / "curve.png"), "adaptation_curve")
    asset = tmp_path / "weights.bin"
    asset.write_bytes(b"\x00\x01weights")
    logger.log_asset(asset, "iter_000002.pt")
    json_path = logger.log_json("eval/test_returns.json", {"mean": -1.25, "per_task": torch.tensor([-1.0, -1.5])})
    assert json.loads(json_path.read_text()) == {"mean": -1.25, "per_task": [-1.0, -1.5]}
    assert logger.offline_archive is None
    logger.close()
    logger.close()  # idempotent

    archive = logger.offline_archive
    assert archive is not None and archive.parent == run / "comet" and archive.suffix == ".zip"
    assert sorted(p.name for p in (run / "comet").iterdir()) == [archive.name]
    z, messages = _archive_messages(archive)
    assert {"experiment.json", "messages.json"} <= set(z.namelist())
    key = json.loads((run / COMET_FILE).read_text())["experiment_key"]
    assert json.loads(z.read("experiment.json"))["offline_id"] == key == archive.stem
    assert json.loads((run / COMET_FILE).read_text())["archives"] == [archive.name]

    points = _metric_points(messages)
    for step, values in logged.items():
        for name, value in values.items():
            assert points[(name, step)] == pytest.approx(value)
    params = _params(messages)
    assert params["num_parameters"] == 1234
    assert params["lr"] == 0.1 and params["family"] == "metarl/Navigation2D-v0"
    assert params["inner|hidden"] == [64, 64]  # comet flattens nested config dicts with "|"
    others = {m["payload"]["key"]: m["payload"]["value"] for m in messages if m["type"] == "log_other"}
    assert others["Name"] == "nav-maml"

    uploads = [m["payload"] for m in messages if m["type"] == "file_upload"]
    figures = [u for u in uploads if u["upload_type"] == "visualization"]
    assert [u["additional_params"]["figName"] for u in figures] == ["adaptation_curve"]
    assert z.read(figures[0]["file_path"])[:8] == b"\x89PNG\r\n\x1a\n"
    assets = {u["additional_params"]["fileName"]: u for u in uploads if u["upload_type"] == "asset"}
    assert z.read(assets["iter_000002.pt"]["file_path"]) == b"\x00\x01weights"
    assert json.loads(z.read(assets["eval/test_returns.json"]["file_path"]))["mean"] == -1.25


def test_metrics_jsonl_rows_and_resume_truncation(tmp_path):
    run = tmp_path / "run"
    with RunLogger(run, _config(), comet="off") as logger:
        assert logger.comet_mode == "off"
        for step in range(10):
            logger.log_metrics({"loss": torch.tensor(float(step)), "episodes": step * 2}, step=step)
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(10))
    assert [r["loss"] for r in rows] == [float(s) for s in range(10)]
    assert [r["episodes"] for r in rows] == [2 * s for s in range(10)]
    assert all(list(r) == ["step", "loss", "episodes", "time"] for r in rows)
    assert all(isinstance(r["time"], float) for r in rows)
    assert not (run / "comet").exists()

    with RunLogger(run, _config(), comet="off", resume=True) as logger:
        assert logger.truncate_metrics(after_step=5) == 4
        for step in range(6, 10):
            logger.log_metrics({"loss": -float(step), "episodes": 0}, step=step)
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(10))  # nothing lost, nothing twice
    assert [r["loss"] for r in rows] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, -6.0, -7.0, -8.0, -9.0]


def test_resume_drops_the_rows_of_a_phase_it_redoes(tmp_path):
    """Rows of the evaluation phase (by metric-name prefix) go whatever their step; training rows stay."""
    run = tmp_path / "run"
    with RunLogger(run, {}, comet="off") as logger:
        for step in range(3):
            logger.log_metrics({"loss": float(step)}, step=step)
        logger.log_metrics({"pretrained/loss": 9.0}, step=1)
        logger.log_metrics({"eval/MAML/step_0": -40.0}, step=2)
    with RunLogger(run, {}, comet="off", resume=True) as logger:
        assert logger.truncate_metrics(after_step=2, drop_prefixes=("pretrained/", "eval/")) == 2
    assert [(r["step"], r["loss"]) for r in read_metrics(run)] == [(0, 0.0), (1, 1.0), (2, 2.0)]


def test_resume_repairs_a_line_cut_by_a_kill(tmp_path):
    run = tmp_path / "run"
    with RunLogger(run, {}, comet="off") as logger:
        logger.log_metrics({"loss": 1.0}, step=0)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 1, "lo')  # a write cut mid-line
    with pytest.warns(UserWarning, match="truncated last line"):
        logger = RunLogger(run, {}, comet="off", resume=True)
    logger.log_metrics({"loss": 0.5}, step=1)
    logger.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(run)] == [(0, 1.0), (1, 0.5)]


def test_new_run_refuses_an_existing_run_and_resume_needs_one(tmp_path):
    RunLogger(tmp_path / "run", {"a": 1}, comet="off").close()
    with pytest.raises(FileExistsError, match="resume=True"):
        RunLogger(tmp_path / "run", {"a": 1}, comet="off")
    with pytest.raises(FileNotFoundError, match="config.json"):
        RunLogger(tmp_path / "other", {"a": 1}, comet="off", resume=True)
    with pytest.warns(UserWarning, match=r"differs .* \['a'\]"):
        RunLogger(tmp_path / "run", {"a": 2}, comet="off", resume=True).close()
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"a": 1}  # the original stays


def test_offline_resume_continues_the_same_experiment_key(tmp_path):
    run = tmp_path / "run"
    with RunLogger(run, _config(), comet="offline") as first:
        first.log_metrics({"loss": 1.0}, step=0)
        first.log_metrics({"loss": 0.9}, step=1)
    with RunLogger(run, _config(), comet="offline", resume=True) as second:
        assert type(second.experiment).__name__ == "ExistingOfflineExperiment"
        second.truncate_metrics(0)
        second.log_metrics({"loss": 0.8}, step=1)
    info = json.loads((run / COMET_FILE).read_text())
    assert info["archives"] == [first.offline_archive.name, second.offline_archive.name]
    key = info["experiment_key"]
    assert first.offline_archive.name == f"{key}.zip" and second.offline_archive.name.startswith(f"{key}-")
    z, messages = _archive_messages(second.offline_archive)
    meta = json.loads(z.read("experiment.json"))
    assert meta["offline_id"] == key and meta["resume_strategy"] == "get"  # appends to the first on upload
    assert _metric_points(messages) == {("loss", 1): 0.8}
    assert "lr" not in _params(messages)  # the config went with the first archive


class _HangingExperiment:
    """Stands in for comet_ml.Experiment on a network that never answers."""

    release = threading.Event()
    instances: list[_HangingExperiment] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.ended = False
        type(self).instances.append(self)
        type(self).release.wait(timeout=30)
        self.alive = True

    def end(self):
        self.ended = True


class _DeadExperiment:
    """What comet_ml.Experiment returns after ~30 s of retries without a network: an experiment never alive."""

    def __init__(self, **kwargs):
        self.alive = False

    def end(self):
        pass


def _refused(**kwargs):
    raise ConnectionRefusedError("comet.com refused")


@pytest.mark.parametrize(
    ("factory", "reason"),
    [(_HangingExperiment, "timed out"), (_DeadExperiment, "could not start"), (_refused, "refused")],
    ids=["hangs", "never-alive", "raises"],
)
def test_key_set_but_comet_unreachable_falls_back_offline_within_the_timeout(tmp_path, monkeypatch, factory, reason):
    monkeypatch.setenv("COMET_API_KEY", "0" * 25)
    monkeypatch.setattr(comet_ml, "Experiment", factory)
    _HangingExperiment.release.clear()
    _HangingExperiment.instances.clear()
    timeout = 1.0
    try:
        start = time.perf_counter()
        with pytest.warns(CometWarning, match=rf"{reason}.*logging offline to .*run.comet") as record:
            logger = RunLogger(tmp_path / "run", _config(), comet="auto", connect_timeout_s=timeout)
        elapsed = time.perf_counter() - start
        assert len(record) == 1
        assert elapsed < timeout + 2.0
        assert logger.comet_mode == "offline"
        for step in range(3):
            logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        logger.close()
        assert [r["step"] for r in read_metrics(tmp_path / "run")] == [0, 1, 2]
        _, messages = _archive_messages(logger.offline_archive)
        assert _metric_points(messages) == {("loss", 0): 1.0, ("loss", 1): 0.5, ("loss", 2): pytest.approx(1 / 3)}
    finally:
        _HangingExperiment.release.set()
    if factory is _HangingExperiment:
        (late,) = _HangingExperiment.instances
        assert late.kwargs["offline_directory"] == str(tmp_path / "run" / "comet")
        assert late.kwargs["log_code"] is False and late.kwargs["auto_output_logging"] is False
        for thread in threading.enumerate():
            if thread.name == "metarl-comet-connect":
                thread.join(timeout=5)
        assert late.ended  # an online experiment that shows up after the timeout is ended, not leaked


def test_a_comet_error_while_logging_is_one_warning_and_metrics_stay_complete(tmp_path, monkeypatch):
    logger = RunLogger(tmp_path / "run", _config(), comet="offline")
    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("comet internals broke")

    monkeypatch.setattr(logger.experiment, "log_metrics", broken)
    with pytest.warns(CometWarning, match="log_metrics raised .*comet internals broke") as record:
        for step in range(5):
            logger.log_metrics({"loss": float(step)}, step=step)
        logger.log_params({"x": 1})
        logger.log_asset(__file__)
    assert len([w for w in record if issubclass(w.category, CometWarning)]) == 1
    assert len(calls) == 1 and logger.comet_mode == "off" and logger.experiment is None
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [0, 1, 2, 3, 4]
    assert json.loads((tmp_path / "run" / "params.json").read_text()) == {"x": 1}
    logger.close()
    assert logger.offline_archive is not None  # what reached Comet before the error is archived


def test_a_second_logger_ending_the_first_experiment_is_one_warning(tmp_path):
    first = RunLogger(tmp_path / "a", {}, comet="offline")
    second = RunLogger(tmp_path / "b", {}, comet="offline")  # comet_ml ends the first experiment here
    with pytest.warns(CometWarning, match="ended outside this logger") as record:
        first.log_metrics({"loss": 1.0}, step=0)
        first.log_metrics({"loss": 0.5}, step=1)
    assert len(record) == 1 and first.comet_mode == "off"
    assert [r["loss"] for r in read_metrics(tmp_path / "a")] == [1.0, 0.5]
    second.log_metrics({"loss": 2.0}, step=0)
    first.close()
    second.close()
    assert _metric_points(_archive_messages(second.offline_archive)[1]) == {("loss", 0): 2.0}


def test_comet_that_cannot_start_at_all_leaves_the_run_running(tmp_path, monkeypatch):
    def broken(**kwargs):
        raise OSError("read-only file system")

    monkeypatch.setattr(comet_ml, "OfflineExperiment", broken)
    with pytest.warns(CometWarning, match="Comet is off for this run.*read-only"):
        logger = RunLogger(tmp_path / "run", {}, comet="offline")
    assert logger.comet_mode == "off"
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.close()
    assert read_metrics(tmp_path / "run")[0]["loss"] == 1.0


def test_log_metrics_checks_its_inputs_and_the_logger_state(tmp_path):
    logger = RunLogger(tmp_path / "run", {}, comet="off")
    with pytest.raises(ValueError, match="scalar"):
        logger.log_metrics({"loss": torch.ones(2)}, step=0)
    with pytest.raises(ValueError, match="reserved"):
        logger.log_metrics({"time": 1.0}, step=0)
    with pytest.raises(TypeError, match="step"):
        logger.log_metrics({"loss": 1.0}, step=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inside"):
        logger.log_json("../escape.json", {})
    with pytest.raises(FileNotFoundError, match="missing.png"):
        logger.log_figure(tmp_path / "missing.png", "f")
    logger.close()
    with pytest.raises(RuntimeError, match="closed"):
        logger.log_metrics({"loss": 1.0}, step=0)
    assert read_metrics(tmp_path / "run") == []


def test_comet_mode_is_validated(tmp_path):
    with pytest.raises(ValueError, match="comet must be one of"):
        RunLogger(tmp_path / "run", {}, comet="cloud")  # type: ignore[arg-type]
