"""TensorEnv behaviour on Navigation2D, where every quantity has a closed form."""

from __future__ import annotations

import math

import pytest
import torch

import envs  # noqa: F401
import metarl
from envs.navigation import NavigationTasks


def nav_env(goals: list[tuple[float, float]], **kwargs) -> metarl.TensorEnv:
    env = metarl.make_env("metarl/Navigation2D-v0", num_envs=len(goals), **kwargs)
    env.set_tasks(NavigationTasks(torch.tensor(goals)))
    env.reset(seed=0)
    return env


def test_reward_is_minus_distance_and_actions_are_clipped() -> None:
    env = nav_env([(0.3, 0.4), (-0.2, 0.0)])
    out = env.step(torch.tensor([[1.0, 1.0], [0.05, -0.05]]))  # the first action is clipped to (0.1, 0.1)
    expected = torch.tensor([-math.hypot(0.2, 0.3), -math.hypot(0.25, 0.05)])
    assert torch.allclose(out.obs, torch.tensor([[0.1, 0.1], [0.05, -0.05]]))
    assert torch.allclose(out.reward, expected)


def test_truncation_keeps_final_obs_and_restarts_on_the_same_goal() -> None:
    goals = [(0.3, 0.4), (-0.45, 0.2)]
    env = nav_env(goals)
    step = torch.tensor([[0.001, 0.0], [0.0, -0.001]])
    outs = [env.step(step) for _ in range(101)]
    for t, out in enumerate(outs[:99]):
        assert not bool(out.done.any()), f"no episode should end at step {t}"
    last = outs[99]
    assert bool(last.truncated.all()) and not bool(last.terminated.any())
    assert torch.allclose(last.final_obs, 100 * step, atol=1e-5)  # last observation of the episode
    assert torch.equal(last.obs, torch.zeros(2, 2))  # already the next episode's start
    assert torch.allclose(last.episode_length.float(), torch.tensor([100.0, 100.0]))
    returns = torch.stack([o.reward for o in outs[:100]]).sum(0)
    assert torch.allclose(last.episode_return, returns)
    # The next episode still chases the same goal.
    first_of_next = outs[100]
    assert torch.allclose(first_of_next.reward, -(step - torch.tensor(goals)).norm(dim=1))
    assert bool((first_of_next.episode_return == 0).all())


def test_terminates_within_a_hundredth_of_the_goal() -> None:
    env = nav_env([(0.05, 0.05), (0.3, 0.3)])
    out = env.step(torch.tensor([[0.045, 0.055], [0.1, 0.1]]))
    assert out.terminated.tolist() == [True, False]
    assert not bool(out.truncated.any())
    assert torch.allclose(out.final_obs[0], torch.tensor([0.045, 0.055]))


def test_set_tasks_requires_reset() -> None:
    env = nav_env([(0.3, 0.4)])
    env.set_tasks(NavigationTasks(torch.tensor([[0.1, 0.1]])))
    with pytest.raises(RuntimeError, match=r"call reset\(\) before step\(\)"):
        env.step(torch.zeros(1, 2))


def test_bad_actions_raise_naming_the_value() -> None:
    env = nav_env([(0.3, 0.4), (0.1, 0.1)])
    with pytest.raises(ValueError, match=r"action has shape \(2, 3\), expected \(2, 2\)"):
        env.step(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"must be finite; got \[nan\]"):
        env.step(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    cartpole = metarl.make_env("metarl/CartPole-v0", num_envs=3)
    cartpole.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must be in \[0, 2\); got \[2, -1\]"):
        cartpole.step(torch.tensor([0, 2, -1]))
    with pytest.raises(TypeError, match="discrete actions must be integers"):
        cartpole.step(torch.tensor([0.0, 1.0, 1.0]))


def test_wrong_task_type_and_num_envs() -> None:
    env = metarl.make_env("metarl/CartPole-v0", num_envs=2)
    with pytest.raises(TypeError, match="takes CartPoleTasks, got NavigationTasks"):
        env.set_tasks(NavigationTasks(torch.zeros(2, 2)))
    with pytest.raises(ValueError, match="num_envs must be a positive int, got 0"):
        metarl.make_env("metarl/CartPole-v0", num_envs=0)


def test_unvalidated_env_skips_value_checks_only() -> None:
    env = nav_env([(0.3, 0.4)], validate_actions=False)
    env.step(torch.tensor([[float("nan"), 0.0]]))  # no host read, no error
    with pytest.raises(ValueError, match="action has shape"):
        env.step(torch.zeros(2, 2))


@pytest.mark.parametrize("family_id", ["metarl/Navigation2D-v0", "metarl/CartPole-v0"])
def test_compiled_step_matches_eager(family_id: str) -> None:
    runs = []
    for compile_step in (False, True):
        env = metarl.make_env(family_id, num_envs=16, seed=0, compile=compile_step)
        env.set_tasks(env.sample_tasks(16, generator=torch.Generator().manual_seed(0)))
        env.reset(seed=1)
        gen = torch.Generator().manual_seed(2)
        if env.action_dtype == torch.long:
            actions = [torch.randint(0, 2, (16,), generator=gen) for _ in range(60)]
        else:
            actions = [torch.rand(16, 2, generator=gen) * 0.3 - 0.15 for _ in range(60)]
        runs.append([env.step(a) for a in actions])
    for eager, compiled in zip(*runs, strict=True):
        for a, b in zip(eager, compiled, strict=True):
            torch.testing.assert_close(a, b)


def test_rescaled_actions_map_the_unit_box_onto_the_action_box() -> None:
    goals = [(0.3, 0.4), (-0.2, 0.0), (0.0, 0.0)]
    plain, rescaled = nav_env(goals), metarl.RescaledActions(nav_env(goals))
    assert rescaled.single_action_space.low.tolist() == [-1, -1] and rescaled.single_action_space.high.tolist() == [1, 1]
    unit = torch.tensor([[-1.0, 1.0], [0.5, 0.0], [3.0, -0.2]])
    torch.testing.assert_close(rescaled.to_env_action(unit), 0.1 * unit)
    got, expected = rescaled.step(unit), plain.step(0.1 * unit)  # the third action is clipped by the env as usual
    torch.testing.assert_close(got.obs, expected.obs)
    torch.testing.assert_close(got.reward, expected.reward)
    assert rescaled.generator is rescaled.env.generator and rescaled.num_envs == 3


def test_rescaled_actions_need_a_bounded_box() -> None:
    with pytest.raises(TypeError, match="RescaledActions needs a bounded Box action space, got Discrete"):
        metarl.RescaledActions(metarl.make_env("metarl/CartPole-v0", num_envs=2))
