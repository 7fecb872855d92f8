"""Tasks as data: tensor structs, box task spaces, the held-out split, manifests, bad inputs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import metarl
from metarl.tasks import BoxTaskSpace, ParamRange, Tasks


@dataclasses.dataclass(frozen=True)
class PairTasks(Tasks):
    a: torch.Tensor  # (n,)
    b: torch.Tensor  # (n, 3)


def make_space() -> BoxTaskSpace[PairTasks]:
    return BoxTaskSpace(PairTasks, a=ParamRange(0.0, 2.0, 1.0), b=ParamRange((-1.0,) * 3, (1.0,) * 3, (0.0,) * 3))


def test_struct_operations() -> None:
    t = PairTasks(torch.arange(4.0), torch.arange(12.0).reshape(4, 3))
    assert len(t) == 4 and len(t[2]) == 1 and torch.equal(t[2].b, t.b[2:3])
    assert torch.equal(t[-1].a, torch.tensor([3.0]))
    assert torch.equal(t.repeat_interleave(2).a, torch.tensor([0.0, 0, 1, 1, 2, 2, 3, 3]))
    assert PairTasks.cat([t[0], t[3]]).equal(t[torch.tensor([0, 3])])
    mixed = t.where(torch.tensor([True, False, True, False]), t.apply(lambda x: -x))
    assert torch.equal(mixed.a, torch.tensor([0.0, -1.0, 2.0, -3.0]))
    assert [len(x) for x in t] == [1, 1, 1, 1]
    with pytest.raises(IndexError, match="index 4 is out of range for a batch of 4"):
        t[4]


def test_struct_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="disagree on the batch size"):
        PairTasks(torch.zeros(3), torch.zeros(4, 3))
    with pytest.raises(TypeError, match="PairTasks.a must be a torch.Tensor"):
        PairTasks([1.0], torch.zeros(1, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="leading batch dimension"):
        PairTasks(torch.tensor(1.0), torch.zeros(1, 3))


def test_box_space_samples_within_ranges_and_split() -> None:
    space = make_space()
    gen = torch.Generator().manual_seed(0)
    train, test = space.sample(500, generator=gen, split="train"), space.sample(500, generator=gen, split="test")
    for tasks in (train, test):
        assert bool(((tasks.a >= 0) & (tasks.a <= 2)).all()) and bool((tasks.b.abs() <= 1).all())
    assert not bool(space.held_out(train).any()) and bool(space.held_out(test).all())
    # About a fifth of the whole distribution is held out.
    everything = space.draw(20000, torch.Generator().manual_seed(1))
    assert 0.17 < float(space.held_out(everything).float().mean()) < 0.23
    assert space.default().equal(PairTasks(torch.tensor([1.0]), torch.zeros(1, 3)))


def test_held_out_region_is_interleaved_not_a_corner() -> None:
    """The test split covers the whole range of each parameter, so held-out tasks are in-distribution."""
    test = make_space().sample(2000, generator=torch.Generator().manual_seed(0), split="test")
    assert float(test.a.min()) < 0.2 and float(test.a.max()) > 1.8


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n": 0}, ValueError, "positive int, got 0"),
        ({"n": 2.5}, ValueError, "positive int, got 2.5"),
        ({"split": "validation"}, ValueError, "split must be one of .*'validation'"),
        ({"generator": 0}, TypeError, "generator must be a torch.Generator, got int"),
    ],
)
def test_sample_rejects_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    args = {"n": 3, "generator": torch.Generator(), "split": "train", **kwargs}
    with pytest.raises(error, match=match):
        make_space().sample(args.pop("n"), **args)


def test_param_range_validation() -> None:
    with pytest.raises(ValueError, match="below its high"):
        BoxTaskSpace(PairTasks, a=ParamRange(1.0, 1.0, 1.0), b=ParamRange((0.0,) * 3, (1.0,) * 3, (0.5,) * 3))
    with pytest.raises(ValueError, match=r"default 3.0 lies outside \[0.0, 2.0\]"):
        BoxTaskSpace(PairTasks, a=ParamRange(0.0, 2.0, 3.0), b=ParamRange((0.0,) * 3, (1.0,) * 3, (0.5,) * 3))
    with pytest.raises(ValueError, match="ranges were given for"):
        BoxTaskSpace(PairTasks, a=ParamRange(0.0, 2.0, 1.0))


def test_manifest_is_exact_and_checked(tmp_path) -> None:
    tasks = make_space().sample(33, generator=torch.Generator().manual_seed(0), split="test")
    manifest = json.loads(json.dumps(tasks.to_manifest("demo/Pair-v0")))
    assert manifest["family"] == "demo/Pair-v0" and manifest["size"] == 33
    assert Tasks.from_manifest(manifest).equal(tasks)  # type resolved from the manifest
    assert metarl.load_manifest(metarl.save_manifest(tasks, tmp_path / "a" / "m.json")).equal(tasks)
    with pytest.raises(ValueError, match="not a task manifest"):
        PairTasks.from_manifest({"format": "something-else"})

    @dataclasses.dataclass(frozen=True)
    class OtherTasks(Tasks):
        a: torch.Tensor

    with pytest.raises(ValueError, match="manifest holds"):
        OtherTasks.from_manifest(manifest)
