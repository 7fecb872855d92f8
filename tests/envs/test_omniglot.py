"""OmniglotBandit: episode structure, splits, the bandit's observations and rewards, kwargs, devices, generated glyphs.

Most tests use "coded" classes: images whose first two pixels spell the
class id and the drawer, so every shown image can be traced back to where it
came from. One test reads the real minimal files when they are on the machine.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import gymnasium
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the families)
import metarl
from envs.omniglot import (
    OmniglotBandit,
    OmniglotState,
    OmniglotTasks,
    OmniglotTaskSpace,
    synthetic_glyph_classes,
)
from envs.omniglot_data import OmniglotClasses
from metarl.fewshot import EpisodeSource, FewShotEpisodes

FAMILY_ID = "metarl/OmniglotBandit-v0"
OMNIGLOT_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot"
NUM_TRAIN, NUM_TEST, DRAWERS, SIZE = 12, 8, 20, 6


def _gen(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def coded_classes(
    num_train: int = NUM_TRAIN, num_test: int = NUM_TEST, drawers: int = DRAWERS, size: int = SIZE
) -> tuple[OmniglotClasses, OmniglotClasses]:
    """Classes whose image ``[c, d]`` holds ``(c + 1) / 64`` in pixel 0 and ``(d + 1) / 64`` in pixel 1."""
    c = num_train + num_test
    images = torch.zeros(c, drawers, size * size)
    images[:, :, 0] = (torch.arange(c).view(c, 1) + 1) / 64
    images[:, :, 1] = (torch.arange(drawers).view(1, drawers) + 1) / 64
    images[:, :, 2:] = 0.5
    images = images.reshape(c, drawers, size, size)
    names = tuple(f"c{i}" for i in range(c))
    return (
        OmniglotClasses(images[:num_train], ("coded",) * num_train, names[:num_train]),
        OmniglotClasses(images[num_train:], ("coded",) * num_test, names[num_train:]),
    )


def decode(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class id, drawer) of flattened coded images ``(..., H * W)``."""
    return (flat[..., 0] * 64).round().long() - 1, (flat[..., 1] * 64).round().long() - 1


def coded_family(**kwargs) -> OmniglotBandit:
    return OmniglotBandit(classes=coded_classes(), image_size=SIZE, **kwargs)


# --- episodes ---------------------------------------------------------------------------


def test_family_is_an_episode_source_with_its_spaces() -> None:
    family = coded_family(num_ways=4, shots=2, queries=3)
    assert isinstance(family, EpisodeSource)
    assert family.image_shape == (1, SIZE, SIZE)
    assert family.max_episode_steps == 4 * (2 + 3)
    assert family.observation_space.shape == (SIZE * SIZE + 4,)
    assert family.action_space == gymnasium.spaces.Discrete(4)
    assert len(family.characters) == len(family.alphabets) == NUM_TRAIN + NUM_TEST


def test_episode_structure() -> None:
    ways, shots, queries, m = 4, 2, 3, 64
    family = coded_family(num_ways=ways, shots=shots, queries=queries)
    tasks = family.task_space.sample(m, generator=_gen(0), split="train")
    ep = family.episodes(tasks, _gen(1))
    assert isinstance(ep, FewShotEpisodes) and ep.num_ways == ways and ep.num_tasks == m
    assert ep.support_images.shape == (m, ways * shots, 1, SIZE, SIZE)
    assert ep.query_images.shape == (m, ways * queries, 1, SIZE, SIZE)
    assert ep.support_labels.dtype == ep.query_labels.dtype == torch.long
    support_class, support_drawer = decode(ep.support_images.flatten(2))
    query_class, query_drawer = decode(ep.query_images.flatten(2))
    for i in range(m):
        task_classes = tasks.classes[i].tolist()
        assert sorted(support_class[i].tolist()) == sorted(task_classes * shots)
        assert sorted(query_class[i].tolist()) == sorted(task_classes * queries)
        # The labels relabel the task's classes: same class <=> same label, over support and query.
        pairs = set(
            zip(
                support_class[i].tolist() + query_class[i].tolist(),
                ep.support_labels[i].tolist() + ep.query_labels[i].tolist(),
                strict=True,
            )
        )
        assert len(pairs) == ways
        assert sorted(label for _, label in pairs) == list(range(ways))
        # Drawers are distinct within a class of an episode, across support and query.
        instances = list(
            zip(
                support_class[i].tolist() + query_class[i].tolist(),
                support_drawer[i].tolist() + query_drawer[i].tolist(),
                strict=True,
            )
        )
        assert len(set(instances)) == ways * (shots + queries)


def test_labels_and_orders_vary_across_tasks_and_episodes() -> None:
    ways, m = 5, 400
    family = coded_family(num_ways=ways, shots=2, queries=1)
    one_task = family.task_space.sample(1, generator=_gen(0)).repeat_interleave(m)
    ep = family.episodes(one_task, _gen(1))
    support_class, _ = decode(ep.support_images.flatten(2))
    first_class = one_task.classes[0, 0]
    label_of_first = ep.support_labels[support_class == first_class].view(m, 2)
    assert bool((label_of_first[:, 0] == label_of_first[:, 1]).all())
    counts = torch.bincount(label_of_first[:, 0], minlength=ways)
    assert bool((counts > m / ways / 2).all()), f"labels should be a uniform relabelling, got counts {counts.tolist()}"
    assert len({tuple(row) for row in ep.support_labels.tolist()}) > m / 2, "support orders should vary"
    # The same generator state gives the same episodes.
    again = family.episodes(one_task, _gen(1))
    assert torch.equal(again.support_images, ep.support_images) and torch.equal(again.query_labels, ep.query_labels)


def test_env_reset_draws_the_episode_that_episodes_gives() -> None:
    family = coded_family(num_ways=3, shots=2, queries=2)
    tasks = family.task_space.sample(10, generator=_gen(0))
    state, _ = family.reset(tasks, _gen(7))
    ep = family.episodes(tasks, _gen(7))
    images = torch.cat([ep.support_images, ep.query_images], dim=1).flatten(2)
    assert torch.equal(family._images(torch.device("cpu"))[state.image_ids], images)
    assert torch.equal(state.labels, torch.cat([ep.support_labels, ep.query_labels], dim=1))


# --- splits --------------------------------------------------------------------------------


def test_train_and_test_tasks_use_disjoint_classes() -> None:
    family = coded_family(num_ways=5)
    space = family.task_space
    train = space.sample(300, generator=_gen(0), split="train")
    test = space.sample(300, generator=_gen(0), split="test")
    assert bool((train.classes < NUM_TRAIN).all()) and bool((test.classes >= NUM_TRAIN).all())
    assert not bool(space.held_out(train).any()) and bool(space.held_out(test).all())
    for tasks in (train, test):
        assert all(len(set(row)) == 5 for row in tasks.classes.tolist()), "a task's classes are distinct"
    shown, _ = decode(family.episodes(test, _gen(1)).query_images.flatten(2))
    assert bool((shown >= NUM_TRAIN).all()), "held-out tasks show held-out classes only"
    # The whole distribution holds both kinds of task, never a mix.
    drawn = space.draw(500, _gen(2))
    held = space.held_out(drawn)
    assert 0 < int(held.sum()) < 500
    assert space.split_coordinates(drawn).shape == (500, 5)
    assert space.default().equal(OmniglotTasks(torch.arange(5).unsqueeze(0)))


def test_tasks_mixing_splits_and_bad_class_ids_are_refused() -> None:
    family = coded_family(num_ways=2)
    with pytest.raises(ValueError, match=r"tasks \[1\] mix train classes"):
        family.task_space.held_out(OmniglotTasks(torch.tensor([[0, 1], [0, NUM_TRAIN]])))
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 20\); got \[20\]"):
        family.episodes(OmniglotTasks(torch.tensor([[0, 20]])), _gen(0))
    with pytest.raises(ValueError, match=r"must be a \(1, 2\) long tensor"):
        family.episodes(OmniglotTasks(torch.tensor([[0, 1, 2]])), _gen(0))
    with pytest.raises(TypeError, match="expected OmniglotTasks"):
        family.episodes(metarl.make_family("metarl/Navigation2D-v0").task_space.default(), _gen(0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator, got int"):
        family.task_space.sample(2, generator=0)


def test_manifest_round_trip(tmp_path: Path) -> None:
    family = coded_family()
    tasks = family.task_space.sample(9, generator=_gen(3), split="test")
    text = json.dumps(tasks.to_manifest(FAMILY_ID))
    assert OmniglotTasks.from_manifest(json.loads(text)).equal(tasks)
    path = metarl.save_manifest(tasks, tmp_path / "tasks.json", family=FAMILY_ID)
    assert metarl.load_manifest(path).equal(tasks)


# --- the bandit ----------------------------------------------------------------------------


def test_observations_rewards_and_labels_step_by_step() -> None:
    ways, shots, queries, n = 3, 2, 1, 5
    family = coded_family(num_ways=ways, shots=shots, queries=queries)
    tasks = family.task_space.sample(n, generator=_gen(0))
    generator = _gen(1)
    state, obs = family.reset(tasks, generator)
    table = family._images(torch.device("cpu"))
    horizon = ways * (shots + queries)
    hw = SIZE * SIZE
    previous = None
    for t in range(horizon):
        assert bool((state.step == t).all())
        assert torch.equal(obs[:, :hw], table[state.image_ids[:, t]])
        expected_one_hot = torch.zeros(n, ways) if previous is None else torch.nn.functional.one_hot(previous, ways).float()
        assert torch.equal(obs[:, hw:], expected_one_hot), f"step {t}: the previous label's one-hot"
        label = family.labels(state)
        assert torch.equal(label, state.labels[:, t])
        assert bool((family.is_query(state) == (t >= ways * shots)).all())
        # Every action against the same state: reward 1 exactly for the true label.
        for action in range(ways):
            out = family.step(state, torch.full((n,), action), tasks, generator)
            assert torch.equal(out.reward, (label == action).float())
        action = torch.where(torch.arange(n) % 2 == 0, label, (label + 1) % ways)
        state, obs, reward, terminated = family.step(state, action, tasks, generator)
        assert torch.equal(reward, (torch.arange(n) % 2 == 0).float())
        assert bool((terminated == (t == horizon - 1)).all())
        previous = label
    # The final observation: a blank image and the last label.
    assert bool((obs[:, :hw] == 0).all())
    assert torch.equal(obs[:, hw:], torch.nn.functional.one_hot(previous, ways).float())


def test_episode_length_termination_and_autoreset_keep_the_task() -> None:
    ways, shots, queries, num_envs = 2, 1, 2, 4
    horizon = ways * (shots + queries)
    env = metarl.TensorEnv(coded_family(num_ways=ways, shots=shots, queries=queries), num_envs=num_envs, seed=0)
    tasks = env.sample_tasks(num_envs, generator=_gen(4), split="test")
    env.set_tasks(tasks)
    obs = env.reset()
    episodes: list[list[torch.Tensor]] = [[obs]]
    for step in range(1, 3 * horizon + 1):
        out = env.step(torch.zeros(num_envs, dtype=torch.long))
        ends = step % horizon == 0
        assert bool((out.terminated == ends).all()) and not bool(out.truncated.any())
        assert bool((out.episode_length == (horizon if ends else 0)).all())
        if ends:
            assert bool((out.final_obs[:, : SIZE * SIZE] == 0).all())
            episodes.append([out.obs])
        else:
            episodes[-1].append(out.obs)
    assert env.tasks.equal(tasks)
    shown = [decode(torch.stack(ep[:horizon], dim=1)[..., : SIZE * SIZE]) for ep in episodes[:3]]
    for classes, _ in shown:
        for i in range(num_envs):
            assert sorted(set(classes[i].tolist())) == sorted(tasks.classes[i].tolist()), "same task after autoreset"
    (classes_0, drawers_0), (classes_1, drawers_1) = shown[0], shown[1]
    assert not (torch.equal(classes_0, classes_1) and torch.equal(drawers_0, drawers_1)), "fresh drawers and orders"


def test_gymnasium_views_with_injected_classes() -> None:
    env = gymnasium.make(FAMILY_ID, classes=synthetic_glyph_classes(6, 5, image_size=12), image_size=12, num_ways=3)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (12 * 12 + 3,) and env.observation_space.contains(obs)
    assert not obs[-3:].any()
    family = metarl.make_family(FAMILY_ID, classes=coded_classes(), image_size=SIZE, shots=3)
    assert family.shots == 3 and family.split == "custom"


# --- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_ways": 1}, "num_ways must be an int >= 2, got 1"),
        ({"num_ways": True}, "num_ways must be an int >= 2, got True"),
        ({"num_ways": 2.0}, "num_ways must be an int >= 2, got 2.0"),
        ({"shots": 0}, "shots must be an int >= 1, got 0"),
        ({"queries": -1}, "queries must be an int >= 1, got -1"),
        ({"image_size": 0}, "image_size must be a positive int, got 0"),
        ({"image_size": 28}, "classes hold 6x6 images but image_size=28"),
        ({"split": "omniglot"}, "unknown Omniglot split 'omniglot'"),
        ({"num_ways": 9}, "num_ways=9 exceeds the 8 classes of the test split"),
        ({"shots": 15, "queries": 6}, r"shots \+ queries = 15 \+ 6 = 21 exceeds the 20 drawers per class"),
        ({"root": "/data/omniglot"}, "give either classes or root, not both"),
    ],
)
def test_bad_kwargs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OmniglotBandit(**{"classes": coded_classes(), "image_size": SIZE, **kwargs})


def test_bad_class_tables_are_refused() -> None:
    train, test = coded_classes()
    with pytest.raises(TypeError, match=r"classes must be a \(train, test\) tuple"):
        OmniglotBandit(classes=[train, test], image_size=SIZE)
    with pytest.raises(TypeError, match="the test part is Tensor"):
        OmniglotBandit(classes=(train, test.images), image_size=SIZE)
    with pytest.raises(ValueError, match=r"train images must lie in \[0, 1\].*got values in \[-0.484375, 0.0\]"):
        OmniglotBandit(classes=(OmniglotClasses(train.images - 0.5, train.alphabets, train.characters), test), image_size=SIZE)
    fewer_drawers = OmniglotClasses(test.images[:, :10], test.alphabets, test.characters)
    with pytest.raises(ValueError, match="share the number of drawers"):
        OmniglotBandit(classes=(train, fewer_drawers), image_size=SIZE)
    with pytest.raises(ValueError, match="num_ways=5 exceeds the 3 classes of the train split"):
        OmniglotTaskSpace(3, 8, 5)


def test_train_rotations_add_rotated_train_classes_and_leave_held_out_classes_alone() -> None:
    plain, rotated = coded_family(), coded_family(train_rotations=True)
    assert rotated.task_space.num_train_classes == 4 * NUM_TRAIN
    assert rotated.task_space.num_test_classes == NUM_TEST
    train, test = coded_classes()
    images = rotated._table.images.reshape(-1, DRAWERS, SIZE, SIZE)
    for k in range(4):  # all classes rotated by 90 k degrees, k = 0..3 in turn, then the held-out classes as they were
        torch.testing.assert_close(images[k * NUM_TRAIN : (k + 1) * NUM_TRAIN], torch.rot90(train.images, k, dims=(-2, -1)))
    torch.testing.assert_close(images[4 * NUM_TRAIN :], test.images)
    assert rotated.characters[NUM_TRAIN] == "c0_rot90" and rotated.characters[4 * NUM_TRAIN] == plain.characters[NUM_TRAIN]
    held_out = rotated.task_space.sample(50, generator=_gen(0), split="test")
    assert bool((held_out.classes >= 4 * NUM_TRAIN).all())
    with pytest.raises(TypeError, match="train_rotations must be a bool, got 'yes'"):
        coded_family(train_rotations="yes")
    with pytest.raises(ValueError, match="split='vinyals': that split's classes already include their rotations"):
        OmniglotBandit(split="vinyals", train_rotations=True)


# --- devices and pickling -----------------------------------------------------------------------


def _check_device(device: str) -> None:
    family = coded_family(num_ways=3, shots=2)
    tasks = family.task_space.sample(6, generator=_gen(0)).to(device)
    ep = family.episodes(tasks, _gen(1, device))
    for t in (ep.support_images, ep.support_labels, ep.query_images, ep.query_labels):
        assert t.device.type == device
    assert family._images(tasks.device) is family._images(tasks.device), "the image table is moved once per device"
    shown, _ = decode(ep.support_images.flatten(2))
    for i in range(6):
        assert sorted(set(shown[i].tolist())) == sorted(tasks.classes[i].tolist())
    env = metarl.TensorEnv(family, num_envs=6, device=device, tasks=tasks, seed=0)
    obs = env.reset()
    out = env.step(torch.zeros(6, dtype=torch.long, device=device))
    assert obs.device.type == out.obs.device.type == out.reward.device.type == device


def test_cpu_device_consistency() -> None:
    _check_device("cpu")


@pytest.mark.cuda
def test_cuda_device_consistency() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _check_device("cuda")


def test_family_pickles_without_its_device_copies() -> None:
    family = coded_family()
    family.episodes(family.task_space.default(), _gen(0))
    clone = pickle.loads(pickle.dumps(family))
    assert clone._images_on == {}
    a = family.episodes(family.task_space.default(), _gen(5))
    b = clone.episodes(clone.task_space.default(), _gen(5))
    assert torch.equal(a.query_images, b.query_images)


def test_state_is_a_tensor_struct() -> None:
    family = coded_family()
    state, _ = family.reset(family.task_space.sample(3, generator=_gen(0)), _gen(1))
    assert isinstance(state, OmniglotState) and len(state) == 3
    assert state.image_ids.shape == state.labels.shape == (3, family.max_episode_steps)


# --- generated glyphs --------------------------------------------------------------------------


def test_synthetic_glyphs_are_seeded_varied_and_learnable() -> None:
    train, test = synthetic_glyph_classes(20, 10, image_size=28, drawers=20, seed=0)
    assert train.images.shape == (20, 20, 28, 28) and test.images.shape == (10, 20, 28, 28)
    for part in (train, test):
        assert part.images.dtype == torch.float32
        assert float(part.images.min()) >= 0.0 and float(part.images.max()) <= 1.0
    assert set(train.names).isdisjoint(test.names)
    assert torch.equal(synthetic_glyph_classes(20, 10, seed=0)[0].images, train.images)
    assert not torch.equal(synthetic_glyph_classes(20, 10, seed=1)[0].images, train.images)
    assert not torch.equal(train.images[0, 0], train.images[0, 1]), "drawers are not copies"
    # 5-way 1-shot nearest neighbour on raw pixels: well above chance (0.2), yet not solved outright.
    family = OmniglotBandit(classes=(train, test))
    tasks = family.task_space.sample(300, generator=_gen(0), split="test")
    ep = family.episodes(tasks, _gen(1))
    distance = torch.cdist(ep.query_images.flatten(2), ep.support_images.flatten(2))
    predicted = ep.support_labels.gather(1, distance.argmin(dim=-1))
    accuracy = float((predicted == ep.query_labels).float().mean())
    assert 0.4 < accuracy < 0.95, accuracy


def test_synthetic_glyph_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="num_train must be a positive int, got 0"):
        synthetic_glyph_classes(0, 3)
    with pytest.raises(ValueError, match="image_size must be an int >= 8, got 4"):
        synthetic_glyph_classes(3, 3, image_size=4)


# --- the real minimal data -----------------------------------------------------------------------


def test_real_minimal_split() -> None:
    if not (OMNIGLOT_DIR / "images_background_small1.zip").is_file():
        pytest.skip(f"the minimal Omniglot files are not in {OMNIGLOT_DIR}")
    family = OmniglotBandit(split="minimal", root=OMNIGLOT_DIR)
    space = family.task_space
    assert space.num_train_classes + space.num_test_classes == 242  # Greek and Latin are in both small sets
    assert family.drawers == 20 and family.image_shape == (1, 28, 28)
    names = list(zip(family.alphabets, family.characters, strict=True))
    assert len(set(names)) == 242
    assert set(names[: space.num_train_classes]).isdisjoint(names[space.num_train_classes :])
    test = space.sample(50, generator=_gen(0), split="test")
    ep = family.episodes(test, _gen(1))
    assert ep.support_images.shape == (50, 5, 1, 28, 28)
    assert float(ep.query_images.min()) >= 0.0 and float(ep.query_images.max()) <= 1.0
    assert 0.02 < float(ep.query_images.mean()) < 0.5, "strokes are 1 on a 0 background"
    env = metarl.TensorEnv(family, num_envs=50, tasks=test, seed=0)
    obs = env.reset()
    assert all(family.observation_space.contains(row) for row in obs.numpy())


def test_gymnasium_views_reveal_the_label_in_info() -> None:
    """The single env's info["label"] is the label the action was scored against (reward 1 iff equal)."""
    env = gymnasium.make("metarl/OmniglotBandit-v0", classes=synthetic_glyph_classes(6, 6, image_size=12), image_size=12)
    env.reset(seed=0)
    for action in [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]:
        _, reward, terminated, _, info = env.step(action)
        assert isinstance(info["label"], int) and reward == float(info["label"] == action)
        if terminated:
            break
