"""BernoulliBandit and TabularMDP: dynamics statistics, episode ends, splits, parameters, Gymnasium views."""

from __future__ import annotations

import re

import gymnasium
import pytest
import torch
from gymnasium import spaces

import envs  # noqa: F401  (registers the families)
import metarl
from envs.bandits import (
    BernoulliBandit,
    BernoulliBanditTasks,
    TabularMDP,
    TabularMDPState,
    TabularMDPTasks,
    TabularMDPTaskSpace,
)

BANDIT = "metarl/BernoulliBandit-v0"
MDP = "metarl/TabularMDP-v0"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- Bernoulli bandit ---------------------------------------------------------------


def test_bandit_reward_frequencies_match_default_means():
    k, num_envs, steps = 5, 1000, 200
    env = metarl.make_env(BANDIT, num_envs=num_envs, seed=0, num_arms=k, num_pulls=steps)
    means = env.tasks.means[0]
    torch.testing.assert_close(means, torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9]))
    env.reset()
    action = torch.arange(num_envs) % k  # 200 envs per arm -> 40,000 pulls per arm
    wins = torch.zeros(k)
    for _ in range(steps):
        out = env.step(action)
        assert set(out.reward.unique().tolist()) <= {0.0, 1.0}
        wins += torch.bincount(action, weights=out.reward, minlength=k)
    freq = wins / (steps * num_envs / k)
    # Standard error <= 0.0025 per arm; a wrong arm would be off by >= 0.2.
    torch.testing.assert_close(freq, means, atol=0.015, rtol=0)


def test_bandit_reward_uses_each_envs_own_task_and_keeps_it_across_episodes():
    k, n, num_envs = 4, 3, 8
    good = torch.arange(num_envs) % k
    tasks = BernoulliBanditTasks(torch.nn.functional.one_hot(good, k).float())  # arm `good` always pays, others never
    env = metarl.make_env(BANDIT, num_envs=num_envs, seed=1, num_arms=k, num_pulls=n)
    env.set_tasks(tasks)
    env.reset()
    for t in range(4 * n):
        action = (good + t % 2) % k  # the good arm on even steps, a bad one on odd steps
        out = env.step(action)
        assert torch.equal(out.reward, torch.full((num_envs,), float(t % 2 == 0)))
    assert env.tasks.equal(tasks)


def test_bandit_episodes_end_exactly_after_num_pulls():
    n, num_envs = 7, 6
    env = metarl.make_env(BANDIT, num_envs=num_envs, seed=2, num_arms=3, num_pulls=n)
    tasks = env.sample_tasks(num_envs, generator=_gen(0))
    env.set_tasks(tasks)
    obs = env.reset()
    assert torch.equal(obs, torch.zeros(num_envs, 1))
    returns = torch.zeros(num_envs)
    action_gen = _gen(3)
    for t in range(1, 3 * n + 1):
        out = env.step(torch.randint(0, 3, (num_envs,), generator=action_gen))
        returns += out.reward
        last = t % n == 0
        assert torch.equal(out.terminated, torch.full((num_envs,), last))
        assert not out.truncated.any()
        assert torch.equal(out.obs, torch.zeros(num_envs, 1))
        assert torch.equal(out.final_obs, torch.zeros(num_envs, 1))
        if last:
            assert torch.equal(out.episode_length, torch.full((num_envs,), n))
            torch.testing.assert_close(out.episode_return, returns)
            returns.zero_()
        else:
            assert not out.episode_length.any()
    assert env.tasks.equal(tasks)


def test_bandit_task_space_and_split():
    family = BernoulliBandit(num_arms=10, num_pulls=100)
    default = family.task_space.default()
    torch.testing.assert_close(default.means, torch.linspace(0.05, 0.95, 10).unsqueeze(0))
    train = family.task_space.sample(500, generator=_gen(0), split="train")
    test = family.task_space.sample(500, generator=_gen(0), split="test")
    assert train.means.shape == test.means.shape == (500, 10)
    assert train.means.dtype == torch.float32
    assert ((train.means >= 0) & (train.means <= 1)).all()
    assert not family.task_space.held_out(train).any()
    assert family.task_space.held_out(test).all()
    # On the full distribution the checkerboard holds out about 20%.
    fraction = family.task_space.held_out(family.task_space.draw(20_000, _gen(1))).float().mean()
    assert abs(float(fraction) - 0.2) < 0.02


# --- Tabular MDP ----------------------------------------------------------------------


def test_mdp_task_distribution():
    s, a = 6, 3
    space = TabularMDPTaskSpace(s, a)
    tasks = space.draw(2000, _gen(0))
    assert tasks.transitions.shape == (2000, s, a, s) and tasks.reward_means.shape == (2000, s, a)
    assert tasks.transitions.dtype == tasks.reward_means.dtype == torch.float32
    assert (tasks.transitions >= 0).all()
    torch.testing.assert_close(tasks.transitions.sum(-1), torch.ones(2000, s, a))
    # Dirichlet(1) marginals are Beta(1, S-1): mean 1/S, variance (S-1) / (S^2 (S+1)).
    assert abs(float(tasks.transitions.mean()) - 1 / s) < 1e-3
    assert abs(float(tasks.transitions.var()) - (s - 1) / (s**2 * (s + 1))) < 2e-3
    # mu(s, a) ~ N(1, 1); 36,000 draws.
    assert abs(float(tasks.reward_means.mean()) - 1.0) < 0.03
    assert abs(float(tasks.reward_means.std()) - 1.0) < 0.03
    # Same generator state, same tasks; the default task is fixed.
    assert space.draw(5, _gen(7)).equal(space.draw(5, _gen(7)))
    assert space.default().equal(TabularMDPTaskSpace(s, a).default())
    assert len(space.default()) == 1


def test_mdp_split_is_disjoint_and_holds_out_a_fifth():
    space = TabularMDPTaskSpace(10, 5)
    coords = space.split_coordinates(space.draw(20_000, _gen(0)))
    assert coords.shape == (20_000, 2)
    assert ((coords >= 0) & (coords <= 1)).all()
    # Phi(mu - 1) is uniform under the task distribution, so a fifth of the tasks is held out.
    assert abs(float(coords.mean()) - 0.5) < 0.01
    fraction = space.held_out(space.draw(20_000, _gen(1))).float().mean()
    assert abs(float(fraction) - 0.2) < 0.02
    train = space.sample(300, generator=_gen(2), split="train")
    test = space.sample(300, generator=_gen(2), split="test")
    assert not space.held_out(train).any()
    assert space.held_out(test).all()


def test_mdp_next_state_and_reward_frequencies_match_the_task():
    s, a, per_pair = 5, 3, 5000
    family = TabularMDP(num_states=s, num_actions=a)
    task = family.task_space.default()
    pairs = torch.arange(s * a).repeat_interleave(per_pair)
    state, action = pairs // a, pairs % a
    tasks = task.repeat_interleave(len(pairs))
    out = family.step(TabularMDPState(state), action, tasks, _gen(0))
    assert torch.equal(out.obs, torch.nn.functional.one_hot(out.state.state, s).float())
    assert not out.terminated.any()
    counts = torch.bincount(pairs * s + out.state.state, minlength=s * a * s).reshape(s, a, s)
    # Per-entry standard error <= 0.007; an indexing mistake moves entries by ~0.1 or more.
    torch.testing.assert_close(counts / per_pair, task.transitions[0], atol=0.035, rtol=0)
    reward = out.reward.reshape(s, a, per_pair)
    torch.testing.assert_close(reward.mean(-1), task.reward_means[0], atol=0.07, rtol=0)
    torch.testing.assert_close(reward.std(-1), torch.ones(s, a), atol=0.05, rtol=0)


def test_mdp_transitions_through_the_env_match_the_task():
    s, a, num_envs = 4, 2, 2000
    env = metarl.make_env(MDP, num_envs=num_envs, seed=0, num_states=s, num_actions=a, episode_length=5)
    task = env.tasks[0]
    obs = env.reset()
    counts = torch.zeros(s, a, s)
    action_gen = _gen(1)
    for _ in range(20):
        action = torch.randint(0, a, (num_envs,), generator=action_gen)
        out = env.step(action)
        for o in (out.obs, out.final_obs):
            assert torch.equal(o.sum(-1), torch.ones(num_envs)) and set(o.unique().tolist()) == {0.0, 1.0}
        prev, nxt = obs.argmax(-1), out.final_obs.argmax(-1)
        counts += torch.bincount((prev * a + action) * s + nxt, minlength=s * a * s).reshape(s, a, s)
        obs = out.obs
    freq = counts / counts.sum(-1, keepdim=True)
    torch.testing.assert_close(freq, task.transitions[0], atol=0.05, rtol=0)


def test_mdp_starts_in_state_zero_and_truncates_at_episode_length():
    length, num_envs = 4, 5
    env = metarl.make_env(MDP, num_envs=num_envs, seed=3, episode_length=length)
    tasks = env.sample_tasks(num_envs, generator=_gen(0))
    env.set_tasks(tasks)
    start = torch.zeros(num_envs, 10)
    start[:, 0] = 1.0
    assert torch.equal(env.reset(), start)
    action_gen = _gen(1)
    for t in range(1, 3 * length + 1):
        out = env.step(torch.randint(0, 5, (num_envs,), generator=action_gen))
        last = t % length == 0
        assert torch.equal(out.truncated, torch.full((num_envs,), last))
        assert not out.terminated.any()
        if last:
            assert torch.equal(out.obs, start)  # the next episode starts in state 0 again
            assert torch.equal(out.episode_length, torch.full((num_envs,), length))
        else:
            assert torch.equal(out.obs, out.final_obs)
    assert env.tasks.equal(tasks)


def test_same_seed_same_rollout():
    for id, kwargs in ((BANDIT, {}), (MDP, {})):
        runs = []
        for _ in range(2):
            env = metarl.make_env(id, num_envs=4, seed=11, **kwargs)
            env.set_tasks(env.sample_tasks(4, generator=_gen(5)))
            env.reset()
            runs.append(torch.stack([env.step(torch.tensor([0, 1, 0, 1])).reward for _ in range(12)]))
        assert torch.equal(runs[0], runs[1])


def test_task_manifest_round_trip(tmp_path):
    for id in (BANDIT, MDP):
        tasks = metarl.make_family(id).task_space.sample(3, generator=_gen(0))
        path = metarl.save_manifest(tasks, tmp_path / f"{id.replace('/', '_')}.json", family=id)
        assert metarl.load_manifest(path).equal(tasks)


# --- parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "kwargs", "message"),
    [
        (BernoulliBandit, {"num_arms": 1}, "num_arms must be an int >= 2, got 1"),
        (BernoulliBandit, {"num_arms": 2.0}, "num_arms must be an int >= 2, got 2.0"),
        (BernoulliBandit, {"num_arms": True}, "num_arms must be an int >= 2, got True"),
        (BernoulliBandit, {"num_pulls": 0}, "num_pulls must be an int >= 1, got 0"),
        (BernoulliBandit, {"num_pulls": "10"}, "num_pulls must be an int >= 1, got '10'"),
        (TabularMDP, {"num_states": 1}, "num_states must be an int >= 2, got 1"),
        (TabularMDP, {"num_actions": 1}, "num_actions must be an int >= 2, got 1"),
        (TabularMDP, {"num_actions": 3.5}, "num_actions must be an int >= 2, got 3.5"),
        (TabularMDP, {"episode_length": 0}, "episode_length must be an int >= 1, got 0"),
        (TabularMDP, {"episode_length": -3}, "episode_length must be an int >= 1, got -3"),
    ],
)
def test_bad_parameters_raise(factory, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        factory(**kwargs)


def test_bad_parameters_raise_through_the_registry():
    with pytest.raises(ValueError, match=re.escape("num_arms must be an int >= 2, got 1")):
        metarl.make_env(BANDIT, num_envs=2, num_arms=1)
    with pytest.raises(ValueError, match=re.escape("num_states must be an int >= 2, got 0")):
        gymnasium.make(MDP, num_states=0)


# --- Gymnasium views ----------------------------------------------------------------------


def test_gymnasium_make_bandit_with_kwargs():
    env = gymnasium.make(BANDIT, num_arms=10, num_pulls=100)
    assert env.action_space == spaces.Discrete(10)
    assert env.observation_space.shape == (1,)
    obs, _ = env.reset(seed=0)
    assert obs in env.observation_space
    for t in range(1, 101):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert reward in (0.0, 1.0) and not truncated
        assert terminated == (t == 100)
    env.close()


def test_gymnasium_make_vec_bandit_with_kwargs():
    env = gymnasium.make_vec(BANDIT, num_envs=8, num_arms=10, num_pulls=100)
    assert env.single_action_space == spaces.Discrete(10)
    assert env.single_observation_space.shape == (1,)
    assert env.action_space.shape == (8,)
    assert env.observation_space.shape == (8, 1)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (8, 1)
    for t in range(1, 101):
        obs, reward, terminated, truncated, _ = env.step(torch.randint(0, 10, (8,)))
        assert bool(terminated.all()) == (t == 100) and not truncated.any()
    env.close()


def test_gymnasium_views_of_the_tabular_mdp():
    env = gymnasium.make(MDP, num_states=6, num_actions=3, episode_length=4)
    assert env.action_space == spaces.Discrete(3)
    assert env.observation_space == spaces.Box(0.0, 1.0, (6,), "float32")
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    truncs = [env.step(env.action_space.sample())[3] for _ in range(8)]
    assert truncs == [False, False, False, True] * 2
    task = env.unwrapped.sample_tasks(2, split="test")[1]
    assert isinstance(task, TabularMDPTasks)
    env.unwrapped.set_task(task)
    env.reset()
    assert env.unwrapped.get_task().equal(task)
    env.close()
    vec = gymnasium.make_vec(MDP, num_envs=4, num_states=6, num_actions=3)
    assert vec.single_observation_space.shape == (6,) and vec.observation_space.shape == (4, 6)
    assert vec.single_action_space == spaces.Discrete(3)
    vec.close()


@pytest.mark.parametrize("id", [BANDIT, MDP])
def test_env_checker(id):
    from gymnasium.utils.env_checker import check_env

    check_env(gymnasium.make(id).unwrapped, skip_render_check=True)


# --- devices -----------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("id", [BANDIT, MDP])
def test_runs_on_cuda(id):
    env = metarl.make_env(id, num_envs=16, device="cuda", seed=0, validate_actions=False)
    env.set_tasks(env.sample_tasks(16, generator=_gen(0)))
    obs = env.reset()
    assert obs.device.type == "cuda"
    for _ in range(25):
        out = env.step(torch.randint(0, env.single_action_space.n, (16,), device="cuda"))
        assert out.reward.device.type == "cuda" and out.reward.dtype == torch.float32
        assert out.obs.dtype == torch.float32
