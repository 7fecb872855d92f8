"""One registry for task families, registered with Gymnasium under the same id.

``metarl.register("metarl/Navigation2D-v0", Navigation2D)`` records the family
and registers it with Gymnasium, so that

* ``gymnasium.make(id)`` gives a single env (:class:`metarl.gym_envs.TaskEnv`),
* ``gymnasium.make_vec(id, num_envs=N, device=...)`` gives the batched
  ``gymnasium.vector.VectorEnv`` (:class:`metarl.gym_envs.TaskVectorEnv`),
* ``metarl.make_env(id, num_envs=N, device=...)`` gives the raw
  :class:`metarl.env.TensorEnv` the rollout engine uses.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
from collections.abc import Callable
from typing import Any

import gymnasium
import torch

from metarl.env import TaskFamily, TensorEnv

# Gymnasium's id grammar, with the version made mandatory: behaviour changes bump -vN.
_ID_PATTERN = re.compile(r"^(?:[\w:.-]+/)?[\w:.-]+-v\d+$")


class UnknownFamilyError(LookupError):
    """No family is registered under the requested id."""


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """How to build one registered family: a callable (or ``"module:attr"``) and default kwargs."""

    id: str
    entry_point: Callable[..., TaskFamily] | str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def make_family(self, **kwargs: Any) -> TaskFamily:
        factory = self.entry_point
        if isinstance(factory, str):
            module_name, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(module_name), attr)
        family = factory(**{**self.kwargs, **kwargs})
        if not isinstance(family, TaskFamily):
            raise TypeError(f"{self.id}: entry point returned {type(family).__name__}, not a TaskFamily")
        return family


_REGISTRY: dict[str, FamilySpec] = {}


@dataclasses.dataclass(frozen=True)
class _SingleEnvEntry:
    """Gymnasium entry point for the single env (picklable, so AsyncVectorEnv can build it)."""

    spec: FamilySpec

    def __call__(self, seed: int | None = None, **kwargs: Any) -> gymnasium.Env:
        from metarl.gym_envs import TaskEnv

        return TaskEnv(self.spec.make_family(**kwargs), family_id=self.spec.id, seed=seed)


@dataclasses.dataclass(frozen=True)
class _VectorEnvEntry:
    """Gymnasium vector entry point: ``make_vec(id, num_envs=N, device=..., seed=..., **family_kwargs)``."""

    spec: FamilySpec

    def __call__(
        self, num_envs: int, device: torch.device | str = "cpu", seed: int | None = None, **kwargs: Any
    ) -> gymnasium.vector.VectorEnv:
        from metarl.gym_envs import TaskVectorEnv

        env = TensorEnv(self.spec.make_family(**kwargs), num_envs=num_envs, device=device, seed=seed)
        return TaskVectorEnv(env, family_id=self.spec.id)


def register(id: str, entry_point: Callable[..., TaskFamily] | str, kwargs: dict[str, Any] | None = None) -> FamilySpec:
    """Register a task family under ``id`` here and with Gymnasium.

    Args:
        id: ``"namespace/Name-vN"`` (namespace optional, version required).
        entry_point: a callable returning a :class:`TaskFamily` (usually the
            family class), or ``"module:attr"``.
        kwargs: default keyword arguments for the entry point; callers can override them.

    Raises:
        ValueError: malformed or already registered id.
    """
    if not isinstance(id, str) or not _ID_PATTERN.match(id):
        raise ValueError(f"family id must look like 'namespace/Name-v0', got {id!r}")
    if id in _REGISTRY or id in gymnasium.registry:
        raise ValueError(f"a family is already registered as {id!r}; bump the version (-vN) for a changed family")
    if not (callable(entry_point) or isinstance(entry_point, str)):
        raise TypeError(f"entry_point must be callable or 'module:attr', got {entry_point!r}")
    spec = FamilySpec(id, entry_point, dict(kwargs or {}))
    _REGISTRY[id] = spec
    gymnasium.register(id=id, entry_point=_SingleEnvEntry(spec), vector_entry_point=_VectorEnvEntry(spec))
    return spec


def unregister(id: str) -> None:
    """Remove ``id`` from this registry and Gymnasium's (for notebooks and tests that re-register)."""
    spec(id)  # raises with suggestions when unknown
    del _REGISTRY[id]
    gymnasium.registry.pop(id, None)


def registered() -> list[str]:
    """All registered family ids, sorted."""
    return sorted(_REGISTRY)


def spec(id: str) -> FamilySpec:
    """The spec registered under ``id``; an unknown id names the closest registered ones."""
    try:
        return _REGISTRY[id]
    except KeyError:
        close = difflib.get_close_matches(id, _REGISTRY, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        known = ", ".join(registered()) or "none (import the module that registers it, e.g. `import envs`)"
        raise UnknownFamilyError(f"no task family registered as {id!r}.{hint} Registered: {known}") from None


def make_family(id: str, **kwargs: Any) -> TaskFamily:
    """Build the family registered as ``id`` (``kwargs`` override its defaults)."""
    return spec(id).make_family(**kwargs)


def make_env(
    id: str,
    num_envs: int,
    device: torch.device | str = "cpu",
    seed: int | None = None,
    validate_actions: bool = True,
    compile: bool = False,
    **kwargs: Any,
) -> TensorEnv:
    """A :class:`TensorEnv` of ``num_envs`` envs of family ``id`` on ``device`` (``kwargs`` go to the family)."""
    family = make_family(id, **kwargs)
    return TensorEnv(family, num_envs=num_envs, device=device, seed=seed, validate_actions=validate_actions, compile=compile)
