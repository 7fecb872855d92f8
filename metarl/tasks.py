"""Tasks are data: batches of task parameters, their distributions and held-out splits.

A family's :class:`TaskSpace` samples :class:`Tasks` (a frozen dataclass of
tensors, one row per task) from an explicit ``torch.Generator``. Sampling always
happens on the CPU, so a seed names the same tasks on every device; move the
batch with ``tasks.to(device)``.

Held-out split
--------------
Continuous families map each task to a point of the unit cube
(:meth:`TaskSpace.split_coordinates`). The cube is cut into a grid of
``10`` cells per axis, and a cell is *held out* when a fixed linear hash of its
index is ``0 mod 5``. So 20% of the parameter space, spread across it like a
checkerboard, belongs to the test split and the rest to the train split:
disjoint by construction, inside the training support, and checkable for any
task with :meth:`TaskSpace.held_out`. Families with discrete task identities
(Omniglot classes) override :meth:`TaskSpace.held_out` with disjoint id sets.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Self, TypeVar

import torch

from metarl.files import write_json
from metarl.structs import TensorStruct
from metarl.validation import check_positive_int

Split = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")

MANIFEST_FORMAT = "metarl.tasks/1"
_GRID_CELLS = 10  # cells per unit-cube axis
_HELD_OUT_MODULUS = 5  # one cell class in five is held out -> 20% of the space


@dataclasses.dataclass(frozen=True)
class Tasks(TensorStruct):
    """A batch of tasks: subclass with one tensor field per task parameter."""

    def to_manifest(self, family: str | None = None) -> dict[str, Any]:
        """A JSON-able description that :meth:`from_manifest` turns back into equal tensors.

        Float32/64 values go through Python floats, whose JSON text round-trips
        exactly, so a reloaded batch is bit-identical.
        """
        cls = type(self)
        return {
            "format": MANIFEST_FORMAT,
            "family": family,
            "type": f"{cls.__module__}:{cls.__qualname__}",
            "size": len(self),
            "fields": {
                name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "data": t.cpu().tolist()}
                for name, t in self.tensors().items()
            },
        }

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Self:
        """Rebuild a batch from :meth:`to_manifest` output (on the CPU)."""
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a task manifest: format is {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        target: type[Tasks] = cls
        if cls is Tasks:
            target = _resolve_type(manifest["type"])
        elif manifest["type"] != f"{cls.__module__}:{cls.__qualname__}":
            raise ValueError(f"manifest holds {manifest['type']}, not {cls.__module__}:{cls.__qualname__}")
        fields = {}
        for name, spec in manifest["fields"].items():
            dtype = getattr(torch, spec["dtype"])
            fields[name] = torch.tensor(spec["data"], dtype=dtype).reshape(spec["shape"])
        return target(**fields)  # type: ignore[return-value]


TasksT = TypeVar("TasksT", bound=Tasks)


def _resolve_type(path: str) -> type[Tasks]:
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Tasks)):
        raise TypeError(f"{path} is not a Tasks subclass")
    return obj


def save_manifest(tasks: Tasks, path: str | os.PathLike[str], family: str | None = None) -> Path:
    """Write ``tasks`` as a JSON manifest, atomically (a crash never leaves half a file)."""
    return write_json(path, tasks.to_manifest(family))


def load_manifest(path: str | os.PathLike[str]) -> Tasks:
    """Read a manifest written by :func:`save_manifest`."""
    with open(path) as f:
        return Tasks.from_manifest(json.load(f))


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def check_task_generator(generator: object) -> None:
    """Refuse anything but a CPU ``torch.Generator``: tasks are sampled on the CPU, so a seed names the same tasks everywhere."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(f"tasks are sampled on the CPU; got a generator on {generator.device}")


class TaskSpace(ABC, Generic[TasksT]):
    """A family's task distribution with its train/test split.

    Subclasses implement :meth:`draw` (the whole distribution) and
    :meth:`split_coordinates`; :meth:`sample` keeps only the requested split.
    """

    tasks_type: ClassVar[type[Tasks]]

    @abstractmethod
    def draw(self, n: int, generator: torch.Generator) -> TasksT:
        """``n`` tasks from the full distribution, ignoring the split."""

    @abstractmethod
    def split_coordinates(self, tasks: TasksT) -> torch.Tensor:
        """Each task as a point of the unit cube, shape ``(n, d)``, used to assign its split."""

    @abstractmethod
    def default(self) -> TasksT:
        """One task (batch of 1): the family's reference parameters."""

    def held_out(self, tasks: TasksT) -> torch.Tensor:
        """Boolean ``(n,)``: which tasks belong to the test split."""
        u = self.split_coordinates(tasks).clamp(0.0, 1.0 - 1e-7)
        cells = (u * _GRID_CELLS).floor().long()
        coeffs = torch.arange(cells.shape[1]) % (_HELD_OUT_MODULUS - 1) + 1  # 1..4, all invertible mod 5
        return (cells * coeffs).sum(dim=1) % _HELD_OUT_MODULUS == 0

    def sample(self, n: int, *, generator: torch.Generator, split: Split = "train") -> TasksT:
        """``n`` tasks of ``split``, drawn with ``generator`` (a CPU generator).

        Rejection sampling against :meth:`held_out`: the result is the first
        ``n`` accepted draws, so it depends only on the generator's state.
        """
        check_positive_int("number of tasks", n)
        check_split(split)
        check_task_generator(generator)
        want_test = split == "test"
        kept: list[TasksT] = []
        count = 0
        accept_rate = 1.0 / _HELD_OUT_MODULUS if want_test else 1.0 - 1.0 / _HELD_OUT_MODULUS
        while count < n:
            batch = self.draw(math.ceil((n - count) / accept_rate * 1.25) + 8, generator)
            mask = self.held_out(batch) == want_test
            accepted = batch[mask]
            kept.append(accepted)
            count += len(accepted)
        return type(kept[0]).cat(kept)[:n]


def uniform(generator: torch.Generator, low: torch.Tensor, high: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` draws of U[low, high) (elementwise; ``low``/``high`` share a shape)."""
    u = torch.rand((n, *low.shape), generator=generator, dtype=torch.float64)
    return (low + u * (high - low)).to(torch.float32)


@dataclasses.dataclass(frozen=True)
class ParamRange:
    """Uniform range and reference value of one task parameter (scalars or same-shape sequences)."""

    low: float | tuple[float, ...]
    high: float | tuple[float, ...]
    default: float | tuple[float, ...]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low, high, default = (torch.as_tensor(v, dtype=torch.float32) for v in (self.low, self.high, self.default))
        if not (low.shape == high.shape == default.shape):
            raise ValueError(f"low/high/default shapes differ: {tuple(low.shape)}, {tuple(high.shape)}, {tuple(default.shape)}")
        if not bool((low < high).all()):
            raise ValueError(f"every low must be below its high, got low={self.low}, high={self.high}")
        if not bool(((default >= low) & (default <= high)).all()):
            raise ValueError(f"default {self.default} lies outside [{self.low}, {self.high}]")
        return low, high, default


class BoxTaskSpace(TaskSpace[TasksT]):
    """Independent uniform parameters, one :class:`ParamRange` per field of ``tasks_type``.

    The split coordinates are the parameters rescaled to the unit cube.
    """

    def __init__(self, tasks_type: type[TasksT], **ranges: ParamRange) -> None:
        names = [f.name for f in dataclasses.fields(tasks_type)]
        if sorted(ranges) != sorted(names):
            raise ValueError(f"{tasks_type.__name__} has fields {names}; ranges were given for {sorted(ranges)}")
        self.tasks_type = tasks_type
        self.ranges = ranges
        self._bounds = {name: r.tensors() for name, r in ranges.items()}

    def draw(self, n: int, generator: torch.Generator) -> TasksT:
        fields = {name: uniform(generator, low, high, n) for name, (low, high, _) in self._bounds.items()}
        return self.tasks_type(**fields)  # type: ignore[return-value]

    def split_coordinates(self, tasks: TasksT) -> torch.Tensor:
        cols = []
        for name, (low, high, _) in self._bounds.items():
            value = getattr(tasks, name).cpu()
            cols.append(((value - low) / (high - low)).reshape(len(tasks), -1))
        return torch.cat(cols, dim=1)

    def default(self) -> TasksT:
        return self.tasks_type(**{name: d.unsqueeze(0) for name, (_, _, d) in self._bounds.items()})  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"BoxTaskSpace({self.tasks_type.__name__}, {', '.join(f'{k}={v}' for k, v in self.ranges.items())})"
