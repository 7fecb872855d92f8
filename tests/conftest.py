"""Shared test fixtures."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
OMNIGLOT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"

# The minimal Omniglot files sit beside the repository (../shared/data/omniglot) on the project's
# machines: families built with default arguments (the contract test) find them there.
if OMNIGLOT_DIR.is_dir():
    os.environ.setdefault("METARL_OMNIGLOT_DIR", str(OMNIGLOT_DIR))


@pytest.fixture
def load_script() -> Callable[[str], ModuleType]:
    """Import a script from scripts/ as a module (scripts are not a package)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"scripts_{name}", SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
