"""The contract every registered family keeps, checked on every registered id and device."""

from __future__ import annotations

import json
import pickle
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import envs  # noqa: F401  (registers the built-in families)
import metarl

FAMILY_IDS = [i for i in metarl.registered() if i.startswith("metarl/")]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _with_data(family_id: str) -> Any:
    """``family_id``, or a skipped param when its default build needs data files this machine lacks (Omniglot)."""
    try:
        metarl.make_family(family_id)
    except FileNotFoundError as err:
        return pytest.param(family_id, marks=pytest.mark.skip(reason=f"{family_id}: data files missing: {err}"))
    return family_id


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return request.param


def random_actions(env: metarl.TensorEnv, generator: torch.Generator) -> torch.Tensor:
    space = env.single_action_space
    if isinstance(space, gymnasium.spaces.Discrete):
        return torch.randint(0, int(space.n), (env.num_envs,), generator=generator).to(env.device)
    low, high = (torch.as_tensor(b) for b in (space.low, space.high))
    u = torch.rand((env.num_envs, *space.shape), generator=generator)
    return (low + u * (high - low)).to(env.device)


def task_rows(tasks: metarl.Tasks) -> set[tuple[float, ...]]:
    """Each task's parameters as one hashable row."""
    flat = torch.cat([t.reshape(len(tasks), -1).double() for t in tasks.tensors().values()], dim=1)
    return {tuple(row) for row in flat.tolist()}


def rollout(env: metarl.TensorEnv, steps: int, seed: int) -> list[metarl.StepOutput]:
    gen = torch.Generator().manual_seed(seed)
    env.reset(seed=seed)
    return [env.step(random_actions(env, gen)) for _ in range(steps)]


def test_builtin_families_are_registered() -> None:
    for name in ["Navigation2D", "CartPole", "Pendulum", "BernoulliBandit", "TabularMDP", "OmniglotBandit"]:
        assert f"metarl/{name}-v0" in FAMILY_IDS


@pytest.mark.parametrize("family_id", [_with_data(i) for i in FAMILY_IDS])
class TestFamilyContract:
    def test_gymnasium_env_checker(self, family_id: str) -> None:
        env = gymnasium.make(family_id)
        check_env(env.unwrapped, skip_render_check=True)
        for method in ("sample_tasks", "set_task", "get_task"):
            assert callable(getattr(env.unwrapped, method))

    def test_single_env_runs_its_task(self, family_id: str) -> None:
        env = gymnasium.make(family_id).unwrapped
        tasks = env.sample_tasks(3, split="test", generator=torch.Generator().manual_seed(0))
        env.set_task(tasks[1])
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        assert env.get_task().equal(tasks[1])
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and isinstance(reward, float)

    def test_make_vec_is_a_batched_vector_env(self, family_id: str, device: str) -> None:
        venv = gymnasium.make_vec(family_id, num_envs=6, device=device, seed=0)
        assert isinstance(venv, gymnasium.vector.VectorEnv)
        assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
        obs, _ = venv.reset(seed=0)
        assert isinstance(obs, torch.Tensor) and obs.device.type == device
        assert tuple(obs.shape) == venv.observation_space.shape
        space = venv.single_action_space
        actions = torch.as_tensor(np.stack([space.sample() for _ in range(6)])).to(device)
        obs, reward, terminated, truncated, info = venv.step(actions)
        assert reward.shape == terminated.shape == truncated.shape == (6,)
        assert terminated.dtype == truncated.dtype == torch.bool
        assert info["final_obs"].shape == obs.shape

    def test_same_seed_same_trajectory(self, family_id: str, device: str) -> None:
        runs = []
        for _ in range(2):
            env = metarl.make_env(family_id, num_envs=5, device=device, seed=3)
            env.set_tasks(env.sample_tasks(5, generator=torch.Generator().manual_seed(1)))
            runs.append(rollout(env, 60, seed=7))
        for a, b in zip(*runs, strict=True):
            for x, y in zip(a, b, strict=True):
                assert torch.equal(x, y)

    def test_observations_in_space(self, family_id: str, device: str) -> None:
        env = metarl.make_env(family_id, num_envs=4, device=device, seed=0)
        space = env.single_observation_space
        for out in rollout(env, 40, seed=0):
            for row in torch.cat([out.obs, out.final_obs]).cpu().numpy():
                assert space.contains(row), f"{row} not in {space}"

    def test_autoreset_keeps_the_task(self, family_id: str, device: str) -> None:
        env = metarl.make_env(family_id, num_envs=4, device=device, seed=0)
        tasks = env.sample_tasks(4, generator=torch.Generator().manual_seed(2)).to(device)
        env.set_tasks(tasks)
        horizon = env.family.max_episode_steps or 1000
        outs = rollout(env, horizon + 5, seed=0)
        done = torch.stack([o.done for o in outs])
        assert bool(done.any(dim=0).all()), "every env should finish an episode within its horizon"
        assert env.tasks.equal(tasks)
        # The episode clock restarts where an episode ends: lengths are counted per episode.
        lengths = torch.stack([o.episode_length for o in outs])
        assert int(lengths.max()) <= horizon
        assert bool((lengths[done] > 0).all()) and bool((lengths[~done] == 0).all())

    def test_held_out_tasks_are_disjoint_from_train(self, family_id: str) -> None:
        space = metarl.make_family(family_id).task_space
        train = space.sample(300, generator=torch.Generator().manual_seed(0), split="train")
        test = space.sample(300, generator=torch.Generator().manual_seed(0), split="test")
        assert not bool(space.held_out(train).any())
        assert bool(space.held_out(test).all())
        train_rows, test_rows = task_rows(train), task_rows(test)
        assert not train_rows & test_rows
        assert len(test_rows) == 300, "held-out tasks should be distinct"

    def test_task_sampling_is_seeded(self, family_id: str) -> None:
        space = metarl.make_family(family_id).task_space
        a = space.sample(20, generator=torch.Generator().manual_seed(5), split="test")
        b = space.sample(20, generator=torch.Generator().manual_seed(5), split="test")
        c = space.sample(20, generator=torch.Generator().manual_seed(6), split="test")
        assert a.equal(b) and not a.equal(c)

    def test_manifest_round_trip(self, family_id: str, tmp_path) -> None:
        space = metarl.make_family(family_id).task_space
        tasks = space.sample(17, generator=torch.Generator().manual_seed(0), split="test")
        text = json.dumps(tasks.to_manifest(family_id))
        assert type(tasks).from_manifest(json.loads(text)).equal(tasks)
        path = metarl.save_manifest(tasks, tmp_path / "tasks.json", family=family_id)
        assert metarl.load_manifest(path).equal(tasks)

    def test_tasks_pickle_and_move(self, family_id: str, device: str) -> None:
        tasks = metarl.make_family(family_id).task_space.sample(4, generator=torch.Generator().manual_seed(0))
        assert pickle.loads(pickle.dumps(tasks)).equal(tasks)
        assert tasks.to(device).to("cpu").equal(tasks)

    def test_single_env_pickles(self, family_id: str) -> None:
        env = gymnasium.make(family_id)
        clone = pickle.loads(pickle.dumps(env))
        a, _ = env.reset(seed=4)
        b, _ = clone.reset(seed=4)
        np.testing.assert_array_equal(a, b)

    def test_wrong_number_of_tasks_is_refused(self, family_id: str) -> None:
        env = metarl.make_env(family_id, num_envs=4)
        with pytest.raises(ValueError, match="got 3 tasks for 4 envs"):
            env.set_tasks(env.sample_tasks(3, generator=torch.Generator().manual_seed(0)))

    def test_wrong_action_shape_is_refused(self, family_id: str) -> None:
        env = metarl.make_env(family_id, num_envs=4)
        env.reset(seed=0)
        with pytest.raises(ValueError, match=r"action has shape \(3"):
            env.step(torch.zeros((3, *env.action_shape), dtype=env.action_dtype))
