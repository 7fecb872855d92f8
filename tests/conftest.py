"""Shared test fixtures."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
OMNIGLOT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"

# The minimal Omniglot files sit beside the repository (../shared/data/omniglot) on the project's
# machines: families built with default arguments (the contract test) find them there.
if OMNIGLOT_DIR.is_dir():
    os.environ.setdefault("METARL_OMNIGLOT_DIR", str(OMNIGLOT_DIR))


@pytest.fixture
def load_script(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Import a script from scripts/ as a module (scripts are not a package)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"scripts_{name}", SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        # Registered while it runs, as an import would: dataclasses resolve string annotations through it.
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        return module

    return load


def directional_finite_difference(
    objective: Callable[[dict], torch.Tensor], params: dict, direction: dict, eps: float = 1e-6
) -> float:
    """Central difference of ``objective`` at ``params`` along ``direction`` (dicts of tensors, float64 for accuracy)."""
    with torch.no_grad():
        plus = objective({k: v + eps * direction[k] for k, v in params.items()})
        minus = objective({k: v - eps * direction[k] for k, v in params.items()})
    return float((plus - minus) / (2 * eps))


@pytest.fixture
def finite_difference() -> Callable[..., float]:
    """:func:`directional_finite_difference`, for meta-gradient checks against autograd."""
    return directional_finite_difference
