"""Atomic checkpoints and the ``checkpoints/`` folder of a run directory.

A checkpoint is a dict (tensors, nested dicts and lists, numbers, strings,
``torch.Generator.get_state()`` byte tensors) written with :func:`torch.save`.
Every write goes to a temporary file in the destination folder, is fsynced and
then renamed over the destination (:func:`atomic_write`), so a crash at any
moment leaves either the old file or the new one, never half of one.

Run directories keep their checkpoints in ``run_dir/checkpoints/``::

    iter_000100.pt  iter_000110.pt  iter_000120.pt  last.pt  best.pt

:func:`save_run_checkpoint` writes ``iter_<step>.pt``, points ``last.pt`` at it
(a hard link where the filesystem allows, else a copy) and deletes all but the
newest ``keep`` iteration files. :func:`latest_checkpoint` trusts only the
``iter_*`` names (``last.pt`` is a convenience for people and evaluation
scripts), so a crash between those steps never makes a run resume from a stale
file. ``best.pt``, written only when meta-training validates
(:class:`metarl.training.Validation`), holds the iterate that scored best on
the validation tasks so far.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from metarl.files import _TMP_SUFFIX, atomic_write

CHECKPOINT_DIR = "checkpoints"
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
_ITER_RE = re.compile(r"^iter_(\d+)\.pt$")


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` with :func:`torch.save`, atomically; returns the path."""
    if not isinstance(state, dict):
        raise TypeError(f"a checkpoint is a dict, got {type(state).__name__}")
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu", *, weights_only: bool = True
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``weights_only=True`` (torch's safe loader) reads tensors, containers and
    plain Python values, which is all a metarl checkpoint holds; pass ``False``
    only for trusted files that pickle other objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=weights_only)
    if not isinstance(state, dict):
        raise TypeError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def check_saved_options(saved_config: dict[str, Any], config: object, options: Iterable[tuple[str, Any]], command: str) -> None:
    """Refuse a checkpoint whose ``saved_config`` differs from ``config`` in one of ``options``.

    ``options`` are ``(name, absent)`` pairs: the config fields that shape the
    network or what its actions mean, each with the value that checkpoints
    saved before the field existed had. The error names the option, both
    values and the ``command`` flag that makes the agent match the checkpoint.
    """
    for name, absent in options:
        saved, ours = saved_config.get(name, absent), getattr(config, name)
        if saved != ours:
            flag = name.replace("_", "-")
            hint = f"--{'' if saved else 'no-'}{flag}" if isinstance(saved, bool) else f"--{flag} {saved}"
            raise ValueError(
                f"the checkpoint's policy was trained with {name}={saved}, this agent has {name}={ours} (pass {command} {hint})"
            )


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    """``run_dir/checkpoints``."""
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_path(run_dir: str | os.PathLike[str], step: int) -> Path:
    """``run_dir/checkpoints/iter_<step>.pt`` with the step zero-padded to 6 digits."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    return checkpoint_dir(run_dir) / f"iter_{step:06d}.pt"


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``iter_*.pt`` in ``run_dir/checkpoints``, oldest step first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _ITER_RE.match(p.name)) and p.is_file()]
    return sorted(found)


def best_checkpoint_path(run_dir: str | os.PathLike[str]) -> Path:
    """``run_dir/checkpoints/best.pt``: the best-validated iterate (it may not exist)."""
    return checkpoint_dir(run_dir) / BEST_NAME


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The ``iter_*.pt`` with the highest step in ``run_dir/checkpoints``, or ``None`` if there is none."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_run_checkpoint(run_dir: str | os.PathLike[str], step: int, state: dict[str, Any], *, keep: int = 3) -> Path:
    """Save ``state`` as ``run_dir/checkpoints/iter_<step>.pt``, update ``last.pt``, keep the newest ``keep``.

    Returns the path of the iteration file. Leftover temporary files of an
    earlier killed save are removed too (one process writes a run's checkpoints).
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be a positive int, got {keep!r}")
    path = save_checkpoint(checkpoint_path(run_dir, step), state)
    _point_last_at(path)
    found = list_checkpoints(run_dir)
    for _, old in found[: max(len(found) - keep, 0)]:
        old.unlink(missing_ok=True)
    for stale in path.parent.glob(f".*{_TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
    return path


def _point_last_at(target: Path) -> None:
    """Atomically make ``last.pt`` a hard link to ``target`` (a copy where links are not supported)."""
    last = target.parent / LAST_NAME
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{LAST_NAME}.", suffix=_TMP_SUFFIX)
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(target, tmp)
        except OSError:
            shutil.copyfile(target, tmp)
        os.replace(tmp, last)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
