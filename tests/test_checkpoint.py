"""Atomic checkpoints, the run directory's checkpoints/ folder, and crash safety."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metarl.checkpoint import (
    LAST_NAME,
    check_saved_options,
    checkpoint_dir,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    save_run_checkpoint,
)


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    torch.rand(5, generator=g)  # advance it, so the saved state is not just the seed
    return {
        "step": seed,
        "params": {"w": torch.randn(3, 4, generator=g), "b": torch.zeros(4, dtype=torch.float64)},
        "history": [1.5, 2.5, {"nested": torch.arange(3)}],
        "name": "maml",
        "generator": g.get_state(),
    }


def _assert_same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_round_trip_restores_tensors_nesting_and_generator_state(tmp_path):
    state = _state(7)
    path = save_checkpoint(tmp_path / "sub" / "ck.pt", state)
    assert path == tmp_path / "sub" / "ck.pt"
    loaded = load_checkpoint(path)
    _assert_same(state, loaded)

    original = torch.Generator().manual_seed(7)
    torch.rand(5, generator=original)
    torch.randn(3, 4, generator=original)  # the draws _state made before taking the state
    restored = torch.Generator()
    restored.set_state(loaded["generator"])
    assert torch.equal(torch.rand(10, generator=restored), torch.rand(10, generator=original))
    assert [p.name for p in path.parent.iterdir()] == ["ck.pt"]  # no temp file left behind


def test_load_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "iter_000001.pt"
    with pytest.raises(FileNotFoundError, match="nope/iter_000001.pt"):
        load_checkpoint(missing)


def test_save_refuses_non_dict_and_load_refuses_non_dict_file(tmp_path):
    with pytest.raises(TypeError, match="dict"):
        save_checkpoint(tmp_path / "x.pt", [1, 2])  # type: ignore[arg-type]
    torch.save(torch.zeros(2), tmp_path / "tensor.pt")
    with pytest.raises(TypeError, match="not a checkpoint dict"):
        load_checkpoint(tmp_path / "tensor.pt")


def test_run_checkpoints_keep_the_newest_n_and_point_last_at_the_newest(tmp_path):
    assert latest_checkpoint(tmp_path) is None  # no checkpoints/ folder yet
    for step in (10, 20, 30, 40, 50, 60):
        path = save_run_checkpoint(tmp_path, step, _state(step), keep=3)
        assert path == checkpoint_path(tmp_path, step) == checkpoint_dir(tmp_path) / f"iter_{step:06d}.pt"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [40, 50, 60]
    assert sorted(p.name for p in checkpoint_dir(tmp_path).iterdir()) == [
        "iter_000040.pt",
        "iter_000050.pt",
        "iter_000060.pt",
        LAST_NAME,
    ]
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path) / "iter_000060.pt"
    _assert_same(load_checkpoint(checkpoint_dir(tmp_path) / LAST_NAME), _state(60))


def test_latest_checkpoint_orders_steps_numerically_past_six_digits(tmp_path):
    save_run_checkpoint(tmp_path, 999_999, {"step": 999_999})
    save_run_checkpoint(tmp_path, 1_000_000, {"step": 1_000_000})
    assert latest_checkpoint(tmp_path).name == "iter_1000000.pt"
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 1_000_000


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_keep_must_be_a_positive_int(tmp_path, bad):
    with pytest.raises(ValueError, match="keep"):
        save_run_checkpoint(tmp_path, 1, {}, keep=bad)


def test_step_must_be_a_non_negative_int(tmp_path):
    with pytest.raises(ValueError, match="step"):
        checkpoint_path(tmp_path, -1)


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_crash_during_save_keeps_the_previous_checkpoint_and_leaves_no_temp_files(tmp_path, monkeypatch, error):
    save_run_checkpoint(tmp_path, 10, _state(10))
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # partial bytes, as a kill mid-write leaves them
        raise error

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(type(error)):
        save_run_checkpoint(tmp_path, 20, _state(20))
    with pytest.raises(type(error)):
        save_checkpoint(checkpoint_path(tmp_path, 10), _state(99))  # over an existing file
    monkeypatch.setattr(torch, "save", real_save)

    folder = checkpoint_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["iter_000010.pt", LAST_NAME]  # no .tmp files
    assert latest_checkpoint(tmp_path) == folder / "iter_000010.pt"
    _assert_same(load_checkpoint(folder / "iter_000010.pt"), _state(10))
    _assert_same(load_checkpoint(folder / LAST_NAME), _state(10))


def test_stale_temp_files_of_a_killed_save_are_ignored_then_cleaned(tmp_path):
    folder = checkpoint_dir(tmp_path)
    folder.mkdir()
    (folder / ".iter_000020.pt.abc123.tmp").write_bytes(b"half")  # what SIGKILL mid-save leaves
    assert latest_checkpoint(tmp_path) is None
    save_run_checkpoint(tmp_path, 30, {"step": 30})
    assert sorted(p.name for p in folder.iterdir()) == ["iter_000030.pt", LAST_NAME]


@dataclasses.dataclass
class _Options:
    rescale_actions: bool = True
    head_size: int | None = None


def test_check_saved_options_names_the_option_and_the_flag_that_matches_the_checkpoint():
    options = [("rescale_actions", False), ("head_size", None)]
    check_saved_options({"rescale_actions": True, "head_size": None}, _Options(), options, "rl2")
    with pytest.raises(
        ValueError, match=r"rescale_actions=False, this agent has rescale_actions=True \(pass rl2 --no-rescale-actions\)"
    ):
        check_saved_options({}, _Options(), options, "rl2")  # saved before the option existed: its absent value
    with pytest.raises(ValueError, match=r"head_size=64, this agent has head_size=None \(pass maml --head-size 64\)"):
        check_saved_options({"rescale_actions": True, "head_size": 64}, _Options(), options, "maml")
    with pytest.raises(ValueError, match=r"pass rl2 --rescale-actions"):
        check_saved_options({"rescale_actions": True}, _Options(rescale_actions=False), options, "rl2")
