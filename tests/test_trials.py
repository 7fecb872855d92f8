"""TrialEnv: RL²'s inputs, trial boundaries, and memory carried across episodes."""

from __future__ import annotations

import pytest
import torch

import envs  # noqa: F401
import metarl
from envs.navigation import NavigationTasks
from metarl.policies import GRUPolicy, init_parameters
from metarl.rollout import collect, start
from metarl.trials import TrialEnv


def nav_trials(goals: list[tuple[float, float]], episodes: int) -> TrialEnv:
    env = metarl.make_env("metarl/Navigation2D-v0", num_envs=len(goals), validate_actions=False)
    trials = TrialEnv(env, episodes)
    trials.set_tasks(NavigationTasks(torch.tensor(goals)))
    return trials


def test_observation_carries_previous_action_reward_and_episode_end() -> None:
    env = metarl.make_env("metarl/BernoulliBandit-v0", num_envs=2, num_arms=3, num_pulls=2, validate_actions=False)
    trials = TrialEnv(env, episodes_per_trial=2)
    trials.set_tasks(env.family.task_space.default().repeat_interleave(2))
    obs = trials.reset(seed=0)
    assert obs.shape == (2, 1 + 3 + 1 + 1) and trials.single_observation_space.shape == (6,)
    assert torch.equal(obs, torch.zeros(2, 6))  # a trial starts with no previous action, reward or flag
    out = trials.step(torch.tensor([2, 0]))
    assert torch.equal(out.obs[:, 1:4], torch.tensor([[0.0, 0, 1], [1, 0, 0]]))  # one-hot previous action
    assert torch.equal(out.obs[:, 4], out.reward) and torch.equal(out.obs[:, 5], torch.zeros(2))
    out = trials.step(torch.tensor([1, 1]))  # second pull: the first episode ends, the trial goes on
    assert not bool(out.terminated.any()) and not bool(out.reset_memory.any())
    assert torch.equal(out.obs[:, 5], torch.ones(2)) and torch.equal(out.obs[:, 4], out.reward)
    assert torch.equal(trials.episode_index, torch.ones(2, dtype=torch.long))
    trials.step(torch.tensor([0, 0]))
    out = trials.step(torch.tensor([0, 0]))  # fourth pull: the trial (2 episodes x 2 pulls) ends
    assert bool(out.terminated.all()) and bool(out.reset_memory.all())
    assert torch.equal(out.obs, torch.zeros(2, 6))  # the next trial starts clean
    assert torch.equal(trials.episode_index, torch.zeros(2, dtype=torch.long))


def test_previous_continuous_action_is_the_one_the_env_applied() -> None:
    """Navigation2D clips actions to [-0.1, 0.1]; the next input carries the clipped action, inside the declared box."""
    trials = nav_trials([(0.4, 0.4)], episodes=2)
    trials.reset(seed=0)
    out = trials.step(torch.tensor([[0.5, -0.03]]))
    torch.testing.assert_close(out.obs[0, :2], torch.tensor([0.1, -0.03]))  # the position moved by the clipped action
    torch.testing.assert_close(out.obs[0, 2:4], torch.tensor([0.1, -0.03]))
    assert trials.single_observation_space.contains(out.obs[0].numpy())


def test_trial_return_sums_every_episode_of_the_trial() -> None:
    trials = nav_trials([(0.3, 0.4)], episodes=2)
    trials.reset(seed=0)
    rewards, last = [], None
    for _ in range(200):
        last = trials.step(torch.zeros(1, 2))
        rewards.append(last.reward)
    assert bool(last.terminated.all())
    torch.testing.assert_close(last.episode_return, torch.stack(rewards).sum(0))
    assert int(last.episode_length) == 200


def test_memory_is_carried_across_episodes_and_reset_between_trials() -> None:
    trials = nav_trials([(0.3, 0.4), (-0.4, 0.2)], episodes=2)  # goals a random policy does not reach
    policy = init_parameters(
        GRUPolicy(trials.single_observation_space.shape[0], trials.single_action_space, 8), torch.Generator().manual_seed(0)
    )
    traj, _ = collect(
        trials, policy, dict(policy.named_parameters()), 450, start(trials, policy, seed=0), torch.Generator().manual_seed(0)
    )
    zero = (traj.hidden == 0).all(dim=-1)
    trial_ends = traj.reset_memory
    assert torch.equal(trial_ends.nonzero()[:, 0].unique(), torch.tensor([199, 399]))  # every 2 x 100 steps
    assert bool(zero[0].all()) and bool(zero[200].all()) and bool(zero[400].all())
    assert not bool(zero[100].any()), "the episode boundary at step 100 must not reset the memory"
    torch.testing.assert_close(zero[1:], trial_ends[:-1])


def test_time_feature_is_the_steps_taken_in_the_trial_over_the_horizon() -> None:
    """It runs on across episode boundaries, is 1 in the final observation of a trial, and restarts at 0."""
    env = metarl.make_env("metarl/BernoulliBandit-v0", num_envs=2, num_arms=3, num_pulls=2, validate_actions=False)
    trials = TrialEnv(env, episodes_per_trial=2, time_horizon=4)
    trials.set_tasks(env.family.task_space.default().repeat_interleave(2))
    assert trials.single_observation_space.shape == (7,)
    assert float(trials.single_observation_space.low[-1]) == 0.0 and float(trials.single_observation_space.high[-1]) == 1.0
    assert float(TrialEnv(env, episodes_per_trial=4, time_horizon=4).single_observation_space.high[-1]) == 2.0
    assert torch.equal(trials.reset(seed=0)[:, -1], torch.zeros(2))
    seen = []
    for _ in range(4):  # one trial: 2 episodes x 2 pulls
        out = trials.step(torch.tensor([1, 2]))
        seen.append(out.obs[:, -1])
    torch.testing.assert_close(torch.stack(seen), torch.tensor([[0.25] * 2, [0.5] * 2, [0.75] * 2, [0.0] * 2]))
    assert bool(out.terminated.all()) and torch.equal(out.final_obs[:, -1], torch.ones(2))
    assert torch.equal(out.obs[:, :-1], torch.zeros(2, 6))  # the other features restart as without the time feature


@pytest.mark.parametrize("time_horizon", [None, 8])
def test_episode_ends_are_read_back_from_the_final_observations(time_horizon: int | None) -> None:
    """Discrete (bandit, one-hot actions) and Box (Navigation2D) layouts; the trial's end is an episode end too."""
    env = metarl.make_env("metarl/BernoulliBandit-v0", num_envs=1, num_arms=3, num_pulls=2, validate_actions=False)
    bandit = TrialEnv(env, episodes_per_trial=2, time_horizon=time_horizon)
    bandit.set_tasks(env.family.task_space.default())
    bandit.reset(seed=0)
    ended = [bool(bandit.episode_ended(bandit.step(torch.tensor([1])).final_obs)) for _ in range(5)]
    assert ended == [False, True, False, True, False]
    nav = nav_trials([(0.1, 0.1), (0.3, 0.4)], episodes=2)  # the first goal is reached in one step of (0.1, 0.1)
    nav.reset(seed=0)
    first, second = (nav.episode_ended(nav.step(torch.full((2, 2), 0.1)).final_obs) for _ in range(2))
    assert first.tolist() == [True, False] and second.tolist() == [True, False]


def test_bad_trial_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = metarl.make_env("metarl/Navigation2D-v0", num_envs=2)
    with pytest.raises(ValueError, match="episodes_per_trial must be a positive int, got 0"):
        TrialEnv(env, 0)
    with pytest.raises(ValueError, match="time_horizon must be a positive int, got 0"):
        TrialEnv(env, 2, time_horizon=0)
    monkeypatch.setattr(env.family, "max_episode_steps", None)
    with pytest.raises(ValueError, match="a time_horizon needs a family with an episode limit"):
        TrialEnv(env, 2, time_horizon=200)
    TrialEnv(env, 2)  # without the feature an unbounded family is fine
