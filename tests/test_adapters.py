"""The Stable-Baselines3 view of a TensorEnv and the Gymnasium set_task vector env."""

from __future__ import annotations

import math
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium import spaces

import envs  # noqa: F401  (registers the built-in families)
import metarl
from envs.navigation import NavigationTasks
from metarl.adapters import GymTaskVectorEnv, SB3VecEnv

NAV = "metarl/Navigation2D-v0"


def nav_sb3(goals: list[tuple[float, float]]) -> SB3VecEnv:
    env = SB3VecEnv(metarl.make_env(NAV, num_envs=len(goals), seed=0))
    env.set_tasks(NavigationTasks(torch.tensor(goals)))
    return env


# --- SB3VecEnv ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family_id", [NAV, "metarl/CartPole-v0"])
def test_sb3_shapes_and_dtypes(family_id: str) -> None:
    tensor_env = metarl.make_env(family_id, num_envs=5, seed=0)
    env = SB3VecEnv(tensor_env)
    assert env.num_envs == 5
    assert env.observation_space == tensor_env.single_observation_space
    assert env.action_space == tensor_env.single_action_space
    obs = env.reset()
    obs_shape = env.observation_space.shape
    assert obs.dtype == np.float32 and obs.shape == (5, *obs_shape)
    for _ in range(3):
        actions = np.stack([env.action_space.sample() for _ in range(5)])
        obs, rewards, dones, infos = env.step(actions)
        assert obs.dtype == np.float32 and obs.shape == (5, *obs_shape)
        assert rewards.dtype == np.float32 and rewards.shape == (5,)
        assert dones.dtype == np.bool_ and dones.shape == (5,)
        assert isinstance(infos, list) and len(infos) == 5 and all(isinstance(i, dict) for i in infos)


def test_sb3_time_limit_truncation_on_navigation() -> None:
    env = nav_sb3([(0.25, 0.25)] * 3)
    env.reset()
    action = np.tile(np.array([0.001, -0.002], np.float32), (3, 1))  # away from the goal: never reached
    rewards = []
    for _ in range(99):
        obs, reward, dones, infos = env.step(action)
        rewards.append(reward)
        assert not dones.any() and infos == [{}, {}, {}]
    obs, reward, dones, infos = env.step(action)
    rewards.append(reward)
    assert dones.all()
    np.testing.assert_array_equal(obs, np.zeros((3, 2), np.float32))  # already the next episode's start
    for i, info in enumerate(infos):
        np.testing.assert_allclose(info["terminal_observation"], [0.1, -0.2], atol=1e-5)
        assert info["TimeLimit.truncated"] is True
        assert info["episode"]["l"] == 100
        assert info["episode"]["r"] == pytest.approx(float(np.sum([r[i] for r in rewards])), rel=1e-5)


def test_sb3_terminal_observation_only_where_done() -> None:
    env = nav_sb3([(0.05, 0.05), (-0.4, -0.4), (0.05, 0.05)])
    env.reset()
    obs, reward, dones, infos = env.step(np.full((3, 2), 0.05, np.float32))  # envs 0 and 2 land on their goal
    np.testing.assert_array_equal(dones, [True, False, True])
    assert infos[1] == {}
    for i in (0, 2):
        assert set(infos[i]) == {"terminal_observation", "TimeLimit.truncated", "episode"}
        np.testing.assert_allclose(infos[i]["terminal_observation"], [0.05, 0.05])
        assert infos[i]["TimeLimit.truncated"] is False  # terminated, not truncated: no bootstrapping
        assert infos[i]["episode"]["l"] == 1
        np.testing.assert_array_equal(obs[i], [0.0, 0.0])
    np.testing.assert_allclose(obs[1], [0.05, 0.05])
    np.testing.assert_allclose(reward[1], -math.hypot(0.45, 0.45), rtol=1e-6)


def test_sb3_discrete_actions_and_column_actions() -> None:
    env = SB3VecEnv(metarl.make_env("metarl/CartPole-v0", num_envs=4, seed=0))
    env.reset()
    env.step(np.array([0, 1, 0, 1], dtype=np.int64))
    env.step(np.array([[0], [1], [0], [1]], dtype=np.int64))  # (n, 1), as some SB3 code paths hold them
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, dtype=np.int64))


def test_sb3_vecenv_methods_and_tasks() -> None:
    tensor_env = metarl.make_env(NAV, num_envs=4, seed=0)
    env = SB3VecEnv(tensor_env)
    assert env.render_mode is None
    assert env.get_attr("max_episode_steps") == [100] * 4  # from the family
    assert env.get_attr("num_envs", indices=[1, 2]) == [4, 4]
    assert env.env_is_wrapped(gymnasium.Wrapper) == [False] * 4
    with pytest.raises(AttributeError, match="no_such_attr"):
        env.get_attr("no_such_attr")
    env.set_attr("validate_actions", False)
    assert tensor_env.validate_actions is False
    with pytest.raises(ValueError, match="whole batched env"):
        env.set_attr("validate_actions", True, indices=[0])
    with pytest.raises(ValueError, match="set_tasks"):
        env.env_method("reset", indices=1)

    tasks = env.sample_tasks(4, generator=torch.Generator().manual_seed(0), split="test")
    env.set_tasks(tasks)
    assert env.tasks.equal(tasks) and tensor_env.tasks.equal(tasks)
    assert env.env_method("reset") is not None


def test_sb3_seed_controls_the_next_reset() -> None:
    env = SB3VecEnv(metarl.make_env("metarl/CartPole-v0", num_envs=4))
    assert env.seed(7) == [7] * 4
    first = env.reset()
    env.seed(7)
    np.testing.assert_array_equal(env.reset(), first)
    assert not np.array_equal(env.reset(), first)  # a seed is used once


@pytest.mark.slow
def test_sb3_ppo_learns_cartpole() -> None:
    """RL-Zoo's CartPole-v1 PPO settings on metarl/CartPole-v0 (default task = Gymnasium's physics).

    30k steps take ~9 s on one CPU thread and reach 500 on seeds 0-4; random play scores ~22.
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.logger import Logger

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: extra threads only contend on a small shared CPU
    try:
        env = SB3VecEnv(metarl.make_env("metarl/CartPole-v0", num_envs=8, seed=0))
        model = PPO(
            "MlpPolicy",
            env,
            seed=0,
            n_steps=32,
            batch_size=256,
            gae_lambda=0.8,
            gamma=0.98,
            n_epochs=20,
            ent_coef=0.0,
            learning_rate=1e-3,
            clip_range=0.2,
            device="cpu",
        )
        model.set_logger(Logger(folder=None, output_formats=[]))  # else learn() leaves an SB3-<time> folder in the temp dir
        model.learn(30_000)
        assert len(model.ep_info_buffer) > 0 and {"r", "l"} <= set(model.ep_info_buffer[0])
        eval_env = SB3VecEnv(metarl.make_env("metarl/CartPole-v0", num_envs=8, seed=1))
        returns, _ = evaluate_policy(
            model, eval_env, n_eval_episodes=10, deterministic=True, warn=False, return_episode_rewards=True
        )
    finally:
        torch.set_num_threads(threads)
    assert len(returns) == 10
    assert np.mean(returns) >= 150, returns


# --- GymTaskVectorEnv ---------------------------------------------------------------------------

GOALS = [(0.3, 0.4), (-0.2, 0.1), (0.45, -0.35)]
ACTIONS = [(0.001, -0.002), (0.002, 0.0005), (-0.001, 0.001)]  # constant per env; none reaches its goal


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_gym_task_vector_env_runs_each_envs_task(asynchronous: bool) -> None:
    n = 2 if asynchronous else 3  # async spawns a process per env: keep it small
    tasks = NavigationTasks(torch.tensor(GOALS[:n]))
    actions = torch.tensor(ACTIONS[:n])
    reference = metarl.make_env(NAV, num_envs=n, seed=0)  # the same physics, batched
    reference.set_tasks(tasks)
    with GymTaskVectorEnv(NAV, n, asynchronous=asynchronous) as env:
        assert env.device == torch.device("cpu")
        assert env.single_observation_space == reference.single_observation_space
        assert env.single_action_space == reference.single_action_space
        assert env.action_shape == reference.action_shape and env.action_dtype == reference.action_dtype
        env.set_tasks(tasks)
        assert env.tasks is tasks
        obs = env.reset(seed=0)
        assert obs.dtype == torch.float32 and torch.equal(obs, reference.reset())
        goals = tasks.goal
        for t in range(1, 106):
            out = env.step(actions)
            expected = reference.step(actions)
            for name in out._fields:
                mine, theirs = getattr(out, name), getattr(expected, name)
                assert mine.dtype == theirs.dtype and mine.device.type == "cpu", name
                assert torch.allclose(mine.float(), theirs.float(), atol=1e-6), (t, name)
            # reward of env i: minus the distance from its position (before any reset) to its own goal
            assert torch.allclose(out.reward, -torch.linalg.vector_norm(out.final_obs - goals, dim=-1), atol=1e-6)
            if t == 100:
                assert out.truncated.all() and not out.terminated.any() and out.reset_memory.all()
                assert torch.allclose(out.final_obs, 100 * actions, atol=1e-5)
                assert torch.equal(out.obs, torch.zeros(n, 2))
                assert (out.episode_length == 100).all()
            else:
                assert not out.truncated.any() and not out.reset_memory.any()
                assert (out.episode_length == 0).all() and (out.episode_return == 0).all()
            if t == 101:  # autoreset kept each env's goal
                expected_reward = -torch.linalg.vector_norm(actions - goals, dim=-1)
                assert torch.allclose(out.reward, expected_reward, atol=1e-6)


def test_gym_task_vector_env_accepts_a_list_of_tasks_and_factories() -> None:
    tasks = NavigationTasks(torch.tensor(GOALS))
    env = GymTaskVectorEnv([lambda: gymnasium.make(NAV)] * 3)
    try:
        assert env.tasks.equal(NavigationTasks(torch.tensor([[0.25, 0.25]] * 3)))  # the envs' get_task()
        env.set_tasks(list(tasks))  # any sequence, one task per env
        assert isinstance(env.tasks, list) and len(env.tasks) == 3
        env.reset()
        out = env.step(torch.zeros(3, 2))
        assert torch.allclose(out.reward, -torch.linalg.vector_norm(tasks.goal, dim=-1))
    finally:
        env.close()


class TargetEnv(gymnasium.Env):
    """A user env with a plain-int task: reward 1 when the action hits the target; 3 steps an episode."""

    observation_space = spaces.Box(0.0, 3.0, (1,), np.float64)
    action_space = spaces.Discrete(3)

    def __init__(self) -> None:
        self.target, self.t = 0, 0

    def set_task(self, task: int) -> None:
        self.target = int(task)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return np.array([float(self.t)]), float(action == self.target), False, self.t >= 3, {}


def test_gym_task_vector_env_with_a_user_env_and_sb3_on_top() -> None:
    env = GymTaskVectorEnv([TargetEnv] * 3)
    assert env.tasks is None and env.action_dtype == torch.long and env.action_shape == ()
    env.set_tasks([0, 1, 2])
    env.reset(seed=0)
    out = env.step(torch.tensor([0, 0, 2]))
    assert out.obs.dtype == torch.float32  # float64 sub-env observations come back as float32
    assert torch.equal(out.reward, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(TypeError, match="integers"):
        env.step(torch.zeros(3))

    sb3 = SB3VecEnv(env)  # the SB3 view works over anything with the TensorEnv interface
    sb3.reset()
    for _ in range(3):
        obs, reward, dones, infos = sb3.step(np.array([0, 1, 1]))
        np.testing.assert_array_equal(reward, [1.0, 1.0, 0.0])
    assert dones.all() and all(i["TimeLimit.truncated"] for i in infos)
    np.testing.assert_array_equal(infos[0]["terminal_observation"], [3.0])
    assert infos[0]["episode"] == {"r": 3.0, "l": 3, "t": infos[0]["episode"]["t"]}
    np.testing.assert_array_equal(obs, np.zeros((3, 1)))
    sb3.close()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_gym_task_vector_env_refuses_envs_without_set_task(asynchronous: bool) -> None:
    with pytest.raises(TypeError, match=r"CartPoleEnv \(CartPole-v1\).*set_task|set_task.*CartPoleEnv \(CartPole-v1\)"):
        GymTaskVectorEnv("CartPole-v1", 2, asynchronous=asynchronous)


def test_gym_task_vector_env_input_errors() -> None:
    with pytest.raises(ValueError, match="num_envs"):
        GymTaskVectorEnv(NAV)
    with pytest.raises(ValueError, match="3 env factories"):
        GymTaskVectorEnv([TargetEnv] * 3, num_envs=2)
    with pytest.raises(TypeError, match="gymnasium.make"):
        GymTaskVectorEnv([TargetEnv], max_episode_steps=5)
    with GymTaskVectorEnv(NAV, 2) as env:
        tasks = NavigationTasks(torch.tensor(GOALS))
        with pytest.raises(ValueError, match="3 tasks for 2 envs"):
            env.set_tasks(tasks)
        with pytest.raises(RuntimeError, match="reset"):
            env.step(torch.zeros(2, 2))
        env.set_tasks(tasks[:2])
        with pytest.raises(RuntimeError, match="reset"):
            env.step(torch.zeros(2, 2))  # new tasks need a reset: episodes never mix tasks
        env.reset()
        with pytest.raises(ValueError, match="shape"):
            env.step(torch.zeros(3, 2))
