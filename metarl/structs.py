"""Frozen dataclasses of tensors that share one leading batch dimension.

Tasks and env states are both "a batch of things, one row per env". This base
gives them the operations the engine needs (move, index, concatenate, repeat,
select by mask) once, instead of every family writing them again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Self

import torch


@dataclasses.dataclass(frozen=True)
class TensorStruct:
    """Base for frozen dataclasses whose fields are tensors with leading dim ``n``.

    Subclasses declare tensor fields only; every field must share dimension 0.
    Integer indexing keeps the batch dimension (``s[3]`` has length 1), so every
    element of a batch is itself a batch and can be passed wherever one is expected.
    """

    def __post_init__(self) -> None:
        sizes = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{type(self).__name__}.{field.name} must be a torch.Tensor, got {type(value).__name__}")
            if value.dim() == 0:
                raise ValueError(f"{type(self).__name__}.{field.name} needs a leading batch dimension, got a scalar")
            sizes[field.name] = value.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{type(self).__name__} fields disagree on the batch size: {sizes}")

    # --- introspection -------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields as a name -> tensor dict (no copies)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __len__(self) -> int:
        return next(iter(self.tensors().values())).shape[0]

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors().values())).device

    # --- batch operations -----------------------------------------------------
    def apply(self, fn: Any) -> Self:
        """A new struct with ``fn`` applied to every tensor."""
        return type(self)(**{k: fn(v) for k, v in self.tensors().items()})

    def to(self, device: torch.device | str) -> Self:
        return self.apply(lambda t: t.to(device))

    def __getitem__(self, index: int | slice | torch.Tensor | Sequence[int]) -> Self:
        if isinstance(index, int):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"index {index} is out of range for a batch of {n}")
            index = slice(index, index + 1 if index != -1 else None)
        return self.apply(lambda t: t[index])

    def __iter__(self) -> Iterator[Self]:
        return (self[i] for i in range(len(self)))

    def repeat_interleave(self, repeats: int) -> Self:
        """Each row repeated ``repeats`` times in place: M tasks -> M*E envs, grouped by task."""
        return self.apply(lambda t: t.repeat_interleave(repeats, dim=0))

    @classmethod
    def cat(cls, items: Sequence[Self]) -> Self:
        if not items:
            raise ValueError(f"cannot concatenate an empty sequence of {cls.__name__}")
        names = items[0].tensors().keys()
        return cls(**{k: torch.cat([getattr(it, k) for it in items], dim=0) for k in names})

    def where(self, mask: torch.Tensor, other: Self) -> Self:
        """Row-wise select: row i from ``self`` where ``mask[i]`` else from ``other``."""
        out = {}
        for k, a in self.tensors().items():
            b = getattr(other, k)
            m = mask.reshape(mask.shape + (1,) * (a.dim() - 1))
            out[k] = torch.where(m, a, b)
        return type(self)(**out)

    def equal(self, other: Self) -> bool:
        """Exact equality of every field (shapes, dtypes and values)."""
        if type(self) is not type(other):
            return False
        mine, theirs = self.tensors(), other.tensors()
        return all(
            mine[k].dtype == theirs[k].dtype and mine[k].shape == theirs[k].shape and torch.equal(mine[k], theirs[k])
            for k in mine
        )
