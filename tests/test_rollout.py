"""The rollout engine: storage, per-task parameters, recurrent memory, bootstrap values, statistics."""

from __future__ import annotations

import pytest
import torch

import envs  # noqa: F401
import metarl
from envs.navigation import NavigationTasks
from metarl.policies import GRUPolicy, MLPPolicy, init_parameters
from metarl.rollout import collect, policy_forward, start, task_batch_size


def nav(goals: torch.Tensor, per_task: int = 1) -> metarl.TensorEnv:
    env = metarl.make_env("metarl/Navigation2D-v0", num_envs=len(goals) * per_task, validate_actions=False)
    env.set_tasks(NavigationTasks(goals).repeat_interleave(per_task))
    return env


def stacked(params: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([p[k].detach() for p in params]) for k in params[0]}


def test_storage_shapes_and_devices() -> None:
    env = nav(torch.rand(6, 2) - 0.5)
    policy = MLPPolicy(2, env.single_action_space, value_head=True)
    traj, carry = collect(env, policy, dict(policy.named_parameters()), 30, start(env, policy, seed=0))
    assert traj.obs.shape == traj.final_obs.shape == (30, 6, 2)
    assert traj.actions.shape == (30, 6, 2) and traj.dist_params.shape == (30, 6, 4)
    for name in ("log_probs", "rewards", "values", "final_values", "episode_return"):
        assert getattr(traj, name).shape == (30, 6), name
    assert traj.terminated.dtype == traj.truncated.dtype == torch.bool
    assert traj.last_value.shape == (6,) and carry.obs.shape == (6, 2) and carry.hidden is None
    assert not traj.rewards.requires_grad


def test_each_task_acts_with_its_own_params() -> None:
    env = nav(torch.tensor([[0.3, 0.3], [-0.3, -0.3]]), per_task=3)
    policy = MLPPolicy(2, env.single_action_space)
    params = [dict(policy.named_parameters()) for _ in range(2)]
    shift = {"actor.layers.2.bias": torch.full((2,), 5.0)}
    params = stacked(
        [{k: v + shift.get(k, 0) for k, v in params[0].items()}, {k: v - shift.get(k, 0) for k, v in params[1].items()}]
    )
    assert task_batch_size(policy, params) == 2
    traj, _ = collect(env, policy, params, 1, start(env, policy, seed=0), deterministic=True)
    # Large positive / negative means are clipped to the action box: +0.1 for task 0's envs, -0.1 for task 1's.
    assert torch.allclose(traj.final_obs[0, :3], torch.full((3, 2), 0.1))
    assert torch.allclose(traj.final_obs[0, 3:], torch.full((3, 2), -0.1))


@pytest.mark.parametrize("policy_cls", [MLPPolicy, GRUPolicy])
@pytest.mark.parametrize("use_vmap", [False, True])
def test_batched_params_equal_one_rollout_per_task(policy_cls: type, use_vmap: bool) -> None:
    goals = torch.rand(3, 2, generator=torch.Generator().manual_seed(0)) - 0.5
    policies = [policy_cls(2, metarl.make_family("metarl/Navigation2D-v0").action_space) for _ in range(3)]
    for p in policies:
        p.task_batched_forward = not use_vmap  # vmap is the path for user modules without task batching
    env = nav(goals, per_task=2)
    params = stacked([dict(p.named_parameters()) for p in policies])
    batched, _ = collect(env, policies[0], params, 40, start(env, policies[0], seed=0), deterministic=True)
    for i, p in enumerate(policies):
        alone = nav(goals[i : i + 1], per_task=2)
        traj, _ = collect(alone, p, dict(p.named_parameters()), 40, start(alone, p, seed=0), deterministic=True)
        torch.testing.assert_close(batched.actions[:, 2 * i : 2 * i + 2], traj.actions)
        torch.testing.assert_close(batched.values[:, 2 * i : 2 * i + 2] if batched.values is not None else None, traj.values)


def test_params_that_do_not_fit_are_refused() -> None:
    policy = MLPPolicy(2, metarl.make_family("metarl/Navigation2D-v0").action_space)
    params = dict(policy.named_parameters())
    with pytest.raises(KeyError, match="missing \\['log_std'\\]"):
        task_batch_size(policy, {k: v for k, v in params.items() if k != "log_std"})
    mixed = {k: (v.unsqueeze(0) if k == "log_std" else v) for k, v in params.items()}
    with pytest.raises(ValueError, match="either every param carries a task dimension or none does"):
        task_batch_size(policy, mixed)
    three = stacked([params] * 3)
    with pytest.raises(ValueError, match="4 envs cannot be split evenly among 3 tasks"):
        policy_forward(policy, three, torch.zeros(4, 2))


def test_recurrent_memory_resets_exactly_where_told() -> None:
    env = nav(torch.tensor([[0.3, 0.3], [-0.4, 0.2]]), per_task=2)  # goals too far for a random policy to reach
    policy = init_parameters(GRUPolicy(2, env.single_action_space, hidden_size=16), torch.Generator().manual_seed(0))
    params = dict(policy.named_parameters())
    traj, carry = collect(env, policy, params, 230, start(env, policy, seed=0), generator=torch.Generator().manual_seed(0))
    reset = traj.reset_memory
    assert bool(reset[99].all()) and int(reset.sum()) >= 8  # episodes end at least at 100 and 200
    zero = (traj.hidden == 0).all(dim=-1)
    assert bool(zero[0].all())  # a fresh rollout starts with empty memory
    torch.testing.assert_close(zero[1:], reset[:-1])  # forgotten right after a reset, carried otherwise
    assert bool(((carry.hidden == 0).all(-1) == reset[-1]).all())


def test_carry_continues_a_rollout_exactly() -> None:
    goals = torch.tensor([[0.3, 0.3], [-0.2, 0.1]])
    policy = GRUPolicy(2, metarl.make_family("metarl/Navigation2D-v0").action_space, hidden_size=8)
    params = dict(policy.named_parameters())
    env = nav(goals)
    whole, _ = collect(env, policy, params, 150, start(env, policy, seed=0), deterministic=True)
    env = nav(goals)
    first, carry = collect(env, policy, params, 60, start(env, policy, seed=0), deterministic=True)
    second, _ = collect(env, policy, params, 90, carry, deterministic=True)
    torch.testing.assert_close(torch.cat([first.hidden, second.hidden]), whole.hidden)
    torch.testing.assert_close(torch.cat([first.rewards, second.rewards]), whole.rewards)


def test_final_values_are_values_of_final_observations() -> None:
    env = nav(torch.tensor([[0.3, 0.3], [-0.4, 0.2]]))  # goals too far for a random policy to reach
    policy = init_parameters(MLPPolicy(2, env.single_action_space, value_head=True), torch.Generator().manual_seed(0))
    params = dict(policy.named_parameters())
    traj, carry = collect(env, policy, params, 120, start(env, policy, seed=0), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(traj.final_values, policy(traj.final_obs).value)
        torch.testing.assert_close(traj.last_value, policy(carry.obs).value)
    assert bool(traj.truncated[99].all())


def test_episode_stats_without_host_reads() -> None:
    goals = torch.tensor([[0.3, 0.4], [0.0, -0.5]])
    env = nav(goals)
    policy = MLPPolicy(2, env.single_action_space)
    zero = {k: torch.zeros_like(v) for k, v in policy.named_parameters()}  # mean action 0: the robot stays put
    traj, _ = collect(env, policy, zero, 250, start(env, policy, seed=0), deterministic=True)
    stats = traj.episode_stats()
    assert all(isinstance(v, torch.Tensor) for v in stats.values())
    assert int(stats["episodes"]) == 4  # two 100-step episodes per env
    expected = -100 * goals.norm(dim=1).mean()
    torch.testing.assert_close(stats["episode_return"], expected)
    assert float(stats["episode_length"]) == 100.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_rollout_never_syncs() -> None:
    env = metarl.make_env("metarl/Navigation2D-v0", num_envs=64, device="cuda", validate_actions=False)
    policy = GRUPolicy(2, env.single_action_space, hidden_size=16).cuda()
    carry = start(env, policy, seed=0)
    gen = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        collect(env, policy, dict(policy.named_parameters()), 50, carry, generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
