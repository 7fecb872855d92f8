"""Argument checks shared by every public constructor: bad input gets an error naming the value."""

from __future__ import annotations


def is_int(value: object) -> bool:
    """An int that is not a bool (``True`` is an int to Python, never a count to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(name: str, value: object) -> int:
    """``value`` if it is an int >= 1, else ``ValueError("<name> must be a positive int, got <value>")``."""
    if not is_int(value) or value < 1:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value  # type: ignore[return-value]
