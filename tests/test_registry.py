"""The registry: the README's user-registration snippet, Gymnasium make/make_vec, clear errors."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import gymnasium
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401
import metarl

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet() -> str:
    text = README.read_text()
    marker = text.index("<!-- user-registration-snippet")
    match = re.search(r"```python\n(.*?)```", text[marker:], re.S)
    assert match, "README lost its registration snippet"
    return match.group(1)


@pytest.fixture
def user_module():
    """Run the README snippet as the user's own module, then unregister what it registered."""
    module = types.ModuleType("user_families")
    sys.modules[module.__name__] = module
    exec(compile(readme_snippet(), "README.md", "exec"), module.__dict__)
    yield module
    metarl.unregister("mylab/Line1D-v0")
    del sys.modules[module.__name__]


def test_readme_snippet_is_short() -> None:
    assert len(readme_snippet().strip().splitlines()) < 45  # < 30 lines of code; blank lines are formatting
    code_lines = [line for line in readme_snippet().splitlines() if line.strip()]
    assert len(code_lines) < 30


def test_user_family_from_readme(user_module: types.ModuleType) -> None:
    assert "mylab/Line1D-v0" in metarl.registered()
    env = gymnasium.make("mylab/Line1D-v0")
    check_env(env.unwrapped, skip_render_check=True)
    tasks = env.unwrapped.sample_tasks(2, split="test")
    env.unwrapped.set_task(tasks[0])
    env.reset(seed=0)
    _, reward, *_ = env.step(torch.tensor([0.1]).numpy())
    assert reward == pytest.approx(-abs(0.1 - float(tasks.goal[0])), abs=1e-6)

    venv = gymnasium.make_vec("mylab/Line1D-v0", num_envs=8)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (8, 1)
    raw = metarl.make_env("mylab/Line1D-v0", num_envs=8)
    raw.set_tasks(raw.sample_tasks(8, generator=torch.Generator().manual_seed(0)))
    raw.reset()
    out = raw.step(torch.full((8, 1), 0.05))
    assert torch.allclose(out.reward, -(0.05 - raw.tasks.goal).abs())


def test_duplicate_id_is_refused(user_module: types.ModuleType) -> None:
    with pytest.raises(ValueError, match="already registered as 'mylab/Line1D-v0'"):
        metarl.register("mylab/Line1D-v0", user_module.Line1D)


@pytest.mark.parametrize("bad_id", ["Line1D", "mylab/Line1D", "mylab/Line 1D-v0", "", 3])
def test_malformed_id_is_refused(bad_id: object) -> None:
    with pytest.raises(ValueError, match="family id must look like"):
        metarl.register(bad_id, lambda: None)  # type: ignore[arg-type]


def test_unknown_id_names_the_closest() -> None:
    with pytest.raises(metarl.UnknownFamilyError, match=r"'metarl/Navigaton2D-v0'.*Did you mean 'metarl/Navigation2D-v0'"):
        metarl.make_env("metarl/Navigaton2D-v0", num_envs=2)
    with pytest.raises(metarl.UnknownFamilyError):
        metarl.unregister("metarl/Nope-v0")


def test_entry_point_must_build_a_family() -> None:
    metarl.register("mylab/NotAFamily-v0", lambda: object())
    try:
        with pytest.raises(TypeError, match="not a TaskFamily"):
            metarl.make_family("mylab/NotAFamily-v0")
    finally:
        metarl.unregister("mylab/NotAFamily-v0")


def test_entry_point_string_and_kwargs() -> None:
    metarl.register("mylab/SmallNav-v0", "envs.navigation:Navigation2D", kwargs={"goal_low": -0.1, "goal_high": 0.1})
    try:
        tasks = metarl.make_family("mylab/SmallNav-v0").task_space.sample(50, generator=torch.Generator().manual_seed(0))
        assert float(tasks.goal.abs().max()) <= 0.1
        wide = metarl.make_family("mylab/SmallNav-v0", goal_low=-2.0, goal_high=2.0)  # caller overrides defaults
        assert float(wide.task_space.sample(50, generator=torch.Generator().manual_seed(0)).goal.abs().max()) > 0.1
    finally:
        metarl.unregister("mylab/SmallNav-v0")
