"""The run directory and its Comet experiment: what every trainer logs through.

A run directory holds::

    config.json             the effective config (written once, at the start of a run)
    params.json             everything passed to RunLogger.log_params, merged
    metrics.jsonl           one JSON object per log_metrics call: {"step": ..., <metrics>, "time": ...}
    comet_experiment.json   the Comet experiment key, project and mode (for resuming)
    comet/                  offline Comet archives (<key>.zip, then <key>-<suffix>.zip per resumed session)
    checkpoints/            see metarl.checkpoint

``metrics.jsonl`` is the record of truth: it is written (and flushed) before
anything is handed to Comet, so no Comet failure can lose a metric.

Comet modes
-----------
``"auto"`` is online when an API key is configured (``COMET_API_KEY`` or any
place comet_ml's own config lookup reads: ``.comet.config``, ``.env``,
``COMET_CONFIG``) and offline otherwise. ``"online"`` creates the experiment
in a daemon thread and waits at most ``connect_timeout_s``; on a timeout, an
exception or an experiment that comet_ml could not bring alive (no network:
comet_ml itself retries for ~30 s and then returns a dead experiment), the run
falls back to an offline experiment with a :class:`CometWarning` saying why
and where the archive will be. ``"off"`` never imports comet_ml.

Any exception raised by a Comet call after start-up becomes one
:class:`CometWarning`; Comet is then off for the rest of the run and the local
files keep being written.

Resuming
--------
``resume=True`` reopens an existing run directory (its ``config.json`` must
exist) and continues the same Comet experiment key: online through
``comet_ml.ExistingExperiment``, offline through
``comet_ml.ExistingOfflineExperiment``, which writes a second archive
``<key>-<suffix>.zip`` next to the first. Upload the archives in order
(``comet upload run_dir/comet/<key>.zip`` first) and Comet appends them into one
experiment. An online resume that cannot reach Comet falls back to an
``ExistingOfflineExperiment`` of the same key. Call :meth:`RunLogger.truncate_metrics`
with the checkpoint's step to drop metrics logged after it, so the resumed run
re-logs them without duplicates. (Comet itself keeps the points the killed
session had already sent; the resumed session logs the same steps again.)

comet_ml quirks handled here
----------------------------
* Importing comet_ml takes about a second, replaces ``sys.excepthook``, installs
  an import hook that monkey-patches ML libraries imported later, and (in half
  of all processes, at random) sets up Sentry error reporting to comet.com.
  Before the first import this module sets ``COMET_DISABLE_AUTO_LOGGING=1`` and
  ``COMET_ERROR_TRACKING_ENABLE=false`` unless they are already set.
* Only one comet_ml experiment is alive per process: creating another ends the
  previous one. Close one ``RunLogger`` before opening the next; a logger whose
  experiment was ended behind its back warns once and turns Comet off.
* Experiments are created with every auto-logging feature off (code, git,
  environment, stdout capture, CLI args, graph, auto metrics/params, CO2) and
  no end-of-run summary, so creation is fast and needs no network when offline.
* The experiment classes are used directly rather than ``comet_ml.start``, which
  reuses or ends whatever experiment is already running in the process.
* Closing an offline experiment takes about a second (comet_ml's writer polls
  once a second). Closing an online one waits for its uploads, bounded only by
  comet_ml's own timeouts; after a Comet error mid-run an online experiment is
  not ended by this logger but left to comet_ml's exit hook.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import numbers
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import torch

from metarl.files import atomic_write, write_json

if TYPE_CHECKING:
    import comet_ml

CometMode = Literal["auto", "online", "offline", "off"]
COMET_MODES: tuple[str, ...] = ("auto", "online", "offline", "off")

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.json"
METRICS_FILE = "metrics.jsonl"
COMET_FILE = "comet_experiment.json"
COMET_DIR = "comet"

_RESERVED_METRIC_KEYS = ("step", "time")

# Everything comet_ml would otherwise collect on its own; the same for every experiment class.
_QUIET = dict(
    log_code=False,
    log_graph=False,
    auto_param_logging=False,
    auto_metric_logging=False,
    parse_args=False,
    auto_output_logging=False,
    log_env_details=False,
    log_git_metadata=False,
    log_git_patch=False,
    log_env_gpu=False,
    log_env_host=False,
    log_env_cpu=False,
    log_env_disk=False,
    display_summary_level=0,
)
# Accepted by Experiment / ExistingExperiment / OfflineExperiment, not by ExistingOfflineExperiment.
_QUIET_EXTRA = dict(log_env_network=False, auto_log_co2=False)


class CometWarning(UserWarning):
    """Comet could not do what was asked; the run goes on with local files (and maybe an offline archive)."""


def import_comet_ml() -> Any:
    """``import comet_ml``, first defaulting its import-time settings to quiet ones (module docstring)."""
    os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
    os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
    import comet_ml

    return comet_ml


def comet_api_key_configured() -> bool:
    """Whether comet_ml finds an API key (environment, ``.comet.config``, ``.env``, ``COMET_CONFIG``)."""
    if os.environ.get("COMET_API_KEY"):
        return True
    comet_ml = import_comet_ml()
    return bool(comet_ml.get_config().get_string(None, "comet.api_key"))


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON values: dataclasses and mappings become dicts, Paths strings,
    tuples/lists/sets lists, tensors and arrays (nested) lists, enums their values,
    dtypes/devices/types their names; anything else its ``repr``."""
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, torch.dtype | torch.device):
        return str(obj)
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted((to_jsonable(v) for v in obj), key=repr)
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays and scalars
        return to_jsonable(obj.tolist())
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    return repr(obj)


def _scalar(name: str, value: Any) -> float | int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {name!r} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.item()
    if not isinstance(value, numbers.Number) and hasattr(value, "item") and getattr(value, "size", 0) == 1:
        value = value.item()  # numpy arrays of one element
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"metric {name!r} must be a number or a one-element tensor, got {type(value).__name__}")


def _write_json(path: Path, obj: Any) -> Path:
    return write_json(path, obj, indent=2, allow_nan=True)


def _read_metrics_lines(path: Path) -> list[dict[str, Any]]:
    """Parse ``metrics.jsonl``; an unparsable *last* line (a write cut by a kill) is dropped."""
    rows: list[dict[str, Any]] = []
    lines = path.read_text().splitlines() if path.exists() else []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(f"dropping a truncated last line of {path}: {line[:80]!r}", stacklevel=3)
                continue
            raise ValueError(f"{path}, line {i + 1}, is not JSON: {line[:80]!r}") from None
    return rows


def _write_metrics_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    atomic_write(path, lambda f: f.write(text.encode()))


def _repair_metrics_tail(path: Path) -> None:
    """A kill in the middle of a write can leave a last line without its newline: drop it if it is
    not JSON, else finish it, so the next appended row starts on a line of its own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
    _write_metrics_lines(path, _read_metrics_lines(path))


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All rows of ``run_dir/metrics.jsonl``, in order."""
    return _read_metrics_lines(Path(run_dir) / METRICS_FILE)


def _call_with_timeout(factory: Callable[[], Any], timeout_s: float, on_abandoned: Callable[[Any], None]) -> Any:
    """Run ``factory()`` in a daemon thread; raise :class:`TimeoutError` if it takes longer than ``timeout_s``.

    A result that arrives after the timeout is handed to ``on_abandoned`` (in that thread).
    """
    lock = threading.Lock()
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["result"] = factory()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = e
        with lock:
            done.set()
            late = box.get("abandoned", False)
        if late and "result" in box:
            on_abandoned(box["result"])

    threading.Thread(target=target, name="metarl-comet-connect", daemon=True).start()
    done.wait(timeout_s)
    with lock:
        if not done.is_set():
            box["abandoned"] = True
            raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def _end_quietly(experiment: Any) -> None:
    try:
        experiment.end()
    except Exception:  # noqa: BLE001 - an experiment nobody uses any more
        pass


class RunLogger:
    """A run directory plus its Comet experiment (see the module docstring).

    Use as a context manager, or call :meth:`close`; every method keeps
    writing the local files even when Comet is off or has failed.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        config: Mapping[str, Any] | Any,
        *,
        project: str = "metarl",
        name: str | None = None,
        comet: CometMode = "auto",
        resume: bool = False,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if comet not in COMET_MODES:
            raise ValueError(f"comet must be one of {COMET_MODES}, got {comet!r}")
        if not connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be positive, got {connect_timeout_s!r}")
        self.run_dir = Path(run_dir)
        self.project = project
        self.name = name if name is not None else self.run_dir.resolve().name
        self.resume = resume
        self.connect_timeout_s = float(connect_timeout_s)
        self.config: dict[str, Any] = to_jsonable(config)
        if not isinstance(self.config, dict):
            raise TypeError(f"config must be a mapping or a dataclass, got {type(config).__name__}")

        config_path = self.run_dir / CONFIG_FILE
        if resume:
            if not config_path.is_file():
                raise FileNotFoundError(f"cannot resume: no {CONFIG_FILE} in {self.run_dir}")
            stored = json.loads(config_path.read_text())
            changed = sorted(k for k in stored.keys() | self.config.keys() if stored.get(k) != self.config.get(k))
            if changed:
                warnings.warn(f"resuming {self.run_dir} with a config that differs from {config_path} in {changed}", stacklevel=2)
        else:
            if config_path.exists():
                raise FileExistsError(
                    f"{self.run_dir} already holds a run ({config_path}); pass resume=True or use a new directory"
                )
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_json(config_path, self.config)

        _repair_metrics_tail(self.run_dir / METRICS_FILE)
        self._metrics_file = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._closed = False
        self._experiment: comet_ml.CometExperiment | None = None
        self._mode: Literal["online", "offline", "off"] = "off"
        self._zips_before: set[str] = set()
        self._comet_info: dict[str, Any] = {}
        self._archive: Path | None = None
        if comet != "off":
            try:
                self._start_comet(comet)
            except Exception as e:  # noqa: BLE001 - Comet must not stop a run
                if self._experiment is not None:
                    _end_quietly(self._experiment)
                self._experiment, self._mode = None, "off"
                warnings.warn(f"Comet is off for this run: could not start an experiment ({e!r})", CometWarning, stacklevel=2)

    # ------------------------------------------------------------------ Comet start-up

    @property
    def comet_dir(self) -> Path:
        """Where offline archives go: ``run_dir/comet``."""
        return self.run_dir / COMET_DIR

    @property
    def comet_mode(self) -> Literal["online", "offline", "off"]:
        """The live experiment's mode; ``"off"`` when Comet is disabled, failed, or the logger is closed."""
        return self._mode

    @property
    def offline_archive(self) -> Path | None:
        """The offline archive this session wrote, once :meth:`close` has run; else ``None``."""
        return self._archive

    @property
    def experiment(self) -> comet_ml.CometExperiment | None:
        """The comet_ml experiment (``None`` when off), for logging this class does not wrap."""
        return self._experiment

    def _start_comet(self, comet: CometMode) -> None:
        comet_ml = import_comet_ml()
        stored = self._stored_comet() if self.resume else None
        key = stored.get("experiment_key") if stored else None
        online = comet == "online" or (comet == "auto" and comet_api_key_configured())
        self.comet_dir.mkdir(parents=True, exist_ok=True)
        self._zips_before = {p.name for p in self.comet_dir.glob("*.zip")}
        experiment = None
        if online:
            try:
                experiment = self._start_online(comet_ml, key)
            except Exception as e:  # noqa: BLE001 - any failure means: go offline
                reason = "timed out" if isinstance(e, TimeoutError) else "failed"
                warnings.warn(
                    f"Comet online experiment {reason} ({e}); logging offline to {self.comet_dir} instead "
                    f"(upload later with `comet upload {self.comet_dir}/<archive>.zip`)",
                    CometWarning,
                    stacklevel=4,
                )
        if experiment is None:
            experiment = self._start_offline(comet_ml, key)
            self._mode = "offline"
        else:
            self._mode = "online"
        self._experiment = experiment
        self._comet_info = {
            "experiment_key": experiment.get_key(),
            "project_name": self.project,
            "mode": self._mode,
            "archives": list(stored.get("archives", [])) if stored else [],
        }
        if self._mode == "online":
            self._comet_info["url"] = getattr(experiment, "url", None)
        _write_json(self.run_dir / COMET_FILE, self._comet_info)
        self._comet_call("set_name", self.name)
        if key is None:
            self._comet_call("log_parameters", self.config)

    def _common_kwargs(self) -> dict[str, Any]:
        return dict(project_name=self.project, offline_directory=str(self.comet_dir), **_QUIET)

    def _start_online(self, comet_ml: Any, key: str | None) -> Any:
        kwargs = {**self._common_kwargs(), **_QUIET_EXTRA}

        def create() -> Any:
            if key is None:
                return comet_ml.Experiment(**kwargs)
            return comet_ml.ExistingExperiment(experiment_key=key, **kwargs)

        experiment = _call_with_timeout(create, self.connect_timeout_s, _end_quietly)
        if not getattr(experiment, "alive", False):
            _end_quietly(experiment)
            what = "the new experiment" if key is None else f"experiment {key} (upload earlier offline archives first)"
            raise ConnectionError(f"comet_ml could not start {what}: no connection, or the API key was refused")
        return experiment

    def _start_offline(self, comet_ml: Any, key: str | None) -> Any:
        if key is None:
            return comet_ml.OfflineExperiment(**self._common_kwargs(), **_QUIET_EXTRA)
        # auto_weight_logging=None: its default False sets off a deprecation warning in comet_ml.
        # (This class takes no auto_log_co2; CO2 tracking needs the codecarbon package anyway.)
        return comet_ml.ExistingOfflineExperiment(experiment_key=key, auto_weight_logging=None, **self._common_kwargs())

    def _stored_comet(self) -> dict[str, Any] | None:
        path = self.run_dir / COMET_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    # ------------------------------------------------------------------ guarded Comet calls

    def _comet_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``experiment.<method>``; any failure is one warning and turns Comet off."""
        experiment = self._experiment
        if experiment is None:
            return None
        if getattr(experiment, "alive", True) is False or getattr(experiment, "ended", False) is True:
            self._disable_comet(
                f"the experiment was ended outside this logger (before {method}); comet_ml keeps one experiment per process"
            )
            return None
        try:
            return getattr(experiment, method)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - Comet must not stop a run
            self._disable_comet(f"{method} raised {e!r}")
            return None

    def _disable_comet(self, why: str) -> None:
        warnings.warn(
            f"Comet logging is off for the rest of this run: {why}. Local files in {self.run_dir} are still written.",
            CometWarning,
            stacklevel=4,
        )
        experiment, mode = self._experiment, self._mode
        self._experiment, self._mode = None, "off"
        if experiment is not None and mode == "offline":
            _end_quietly(experiment)  # writes what was logged so far into the archive; fast
        # An online experiment is left to comet_ml's exit hook: its end() may wait a long time for uploads.

    # ------------------------------------------------------------------ logging

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Merge ``params`` into ``params.json`` and log them to Comet (nested dicts flatten as ``a|b``)."""
        self._check_open()
        params = to_jsonable(params)
        path = self.run_dir / PARAMS_FILE
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged.update(params)
        _write_json(path, merged)
        self._comet_call("log_parameters", params)

    def log_metrics(self, metrics: Mapping[str, float | int | torch.Tensor], step: int) -> None:
        """Append ``{"step": step, **metrics, "time": <unix seconds>}`` to ``metrics.jsonl`` (flushed), then log to Comet.

        Values are numbers or one-element tensors (converted with ``.item()``).
        """
        self._check_open()
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"step must be an int, got {step!r}")
        values: dict[str, float | int] = {}
        for key, value in metrics.items():
            if key in _RESERVED_METRIC_KEYS:
                raise ValueError(f"metric name {key!r} is reserved in {METRICS_FILE}")
            values[str(key)] = _scalar(key, value)
        row = {"step": int(step), **values, "time": time.time()}
        self._metrics_file.write(json.dumps(row) + "\n")
        self._metrics_file.flush()
        self._comet_call("log_metrics", values, step=int(step))

    def log_figure(self, path: str | os.PathLike[str], name: str | None = None, *, step: int | None = None) -> None:
        """Log an image file (PNG, JPEG, SVG...) to Comet's Graphics tab under ``name``."""
        self._check_open()
        path = self._existing(path)
        self._comet_call("log_image", str(path), name=name or path.stem, step=step)

    def log_asset(self, path: str | os.PathLike[str], name: str | None = None, *, step: int | None = None) -> None:
        """Log a file (a checkpoint, a manifest) as a Comet asset named ``name`` (default: its file name).

        Offline, the file is copied into the archive: mind the size of what you log.
        """
        self._check_open()
        path = self._existing(path)
        self._comet_call("log_asset", str(path), file_name=name or path.name, step=step)

    def log_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as JSON to ``run_dir/name`` atomically, log it as an asset, return the path."""
        self._check_open()
        path = self._inside(name)
        _write_json(path, to_jsonable(obj))
        self._comet_call("log_asset", str(path), file_name=path.relative_to(self.run_dir.resolve()).as_posix())
        return path

    def log_text(self, text: str, *, step: int | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        """Log a text sample to Comet (also appended to ``run_dir/text.log``)."""
        self._check_open()
        with open(self.run_dir / "text.log", "a", encoding="utf-8") as f:
            f.write(f"[step {step}] {text}\n" if step is not None else f"{text}\n")
        self._comet_call("log_text", text, step=step, metadata=dict(metadata) if metadata else None)

    def truncate_metrics(self, after_step: int, drop_prefixes: tuple[str, ...] = ()) -> int:
        """Drop the rows of ``metrics.jsonl`` whose step is greater than ``after_step``; returns how many.

        Call it when resuming from a checkpoint taken at ``after_step``: the
        steps after it are about to be logged again. Rows holding a metric
        whose name starts with one of ``drop_prefixes`` go too, whatever their
        step: those of a phase that a resumed run redoes from its start (e.g.
        the evaluation after training). The file is rewritten atomically, and a
        truncated last line left by a kill is dropped too.
        """
        self._check_open()
        path = self.run_dir / METRICS_FILE
        self._metrics_file.close()
        try:
            rows = _read_metrics_lines(path)
            kept = [row for row in rows if row["step"] <= after_step and not any(k.startswith(drop_prefixes) for k in row)]
            _write_metrics_lines(path, kept)
        finally:
            self._metrics_file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        return len(rows) - len(kept)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Flush and close ``metrics.jsonl`` and end the Comet experiment (writing the offline archive). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._metrics_file.close()
        if self._experiment is not None:
            self._comet_call("end")
            self._experiment, self._mode = None, "off"
        if self._comet_info.get("mode") == "offline":  # also when Comet failed mid-run: that ended it early
            key = self._comet_info["experiment_key"]
            new = [p for p in self.comet_dir.glob(f"{key}*.zip") if p.name not in self._zips_before]
            if new:
                self._archive = max(new, key=lambda p: p.stat().st_mtime)
                self._comet_info["archives"].append(self._archive.name)
                _write_json(self.run_dir / COMET_FILE, self._comet_info)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the RunLogger of {self.run_dir} is closed")

    def _existing(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no file at {path}")
        return path

    def _inside(self, name: str) -> Path:
        path = (self.run_dir / name).resolve()
        if not path.is_relative_to(self.run_dir.resolve()) or path == self.run_dir.resolve():
            raise ValueError(f"{name!r} is not a file name inside {self.run_dir}")
        return path
