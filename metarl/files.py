"""Atomic file writes: a crash never leaves half a file behind.

Checkpoints, task manifests, configs and evaluation results all go through
:func:`atomic_write`: write a temporary file next to the destination, fsync
it, rename it over the destination, fsync the folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

_TMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file next to ``path``, fsync it, then rename it to ``path``.

    On any exception (including ``KeyboardInterrupt``) the temporary file is
    removed and the exception propagates; ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = None, allow_nan: bool = False) -> Path:
    """``obj`` as JSON at ``path``, atomically. NaN and infinities (not JSON) are refused unless ``allow_nan``."""
    text = json.dumps(obj, indent=indent, allow_nan=allow_nan) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))
