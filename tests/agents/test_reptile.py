"""Reptile over PPO: the update's closed form, batched PPO = per-task PPO, the SB3 learner, refused settings."""

from __future__ import annotations

import dataclasses

import gymnasium
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

import envs  # noqa: F401
import metarl
from agents.ppo import PPOSettings, ppo_update
from agents.reptile import SB3PPO, Reptile, ReptileConfig, reptile_update
from metarl.policies import MLPPolicy, init_parameters
from metarl.rollout import collect, start
from metarl.schedules import linear_anneal

TINY = dict(meta_batch_size=2, envs_per_task=2, rollout_steps=16, inner_updates=2, hidden_sizes=(8,))
TINY_PPO = PPOSettings(epochs=2, num_minibatches=2, lr=1e-2)


def tiny(**overrides) -> ReptileConfig:
    return ReptileConfig(**{**TINY, "ppo": TINY_PPO, **overrides})


def copy_of(generator: torch.Generator) -> torch.Generator:
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    return copy


def test_reptile_update_matches_its_closed_form_on_quadratics() -> None:
    """Task i's loss 0.5 |θ - c_i|²: k SGD steps of size α give θ̃_i = c_i + (1 - α)^k (θ - c_i), so the
    Reptile step is θ + ε (1 - (1 - α)^k) (mean c - θ)."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    theta0 = torch.randn(3, generator=gen, dtype=torch.float64)
    alpha, k, eps = 0.3, 4, 0.7
    adapted = theta0.expand(5, 3).clone()
    for _ in range(k):
        adapted = adapted - alpha * (adapted - centres)  # gradient of the quadratic
    theta = {"w": theta0.clone()}
    direction = reptile_update(theta, {"w": adapted}, eps)
    closed = theta0 + eps * (1 - (1 - alpha) ** k) * (centres.mean(0) - theta0)
    torch.testing.assert_close(theta["w"], closed, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(direction["w"], (1 - (1 - alpha) ** k) * (centres.mean(0) - theta0))


@pytest.mark.parametrize("env_id", ["metarl/CartPole-v0", "metarl/Pendulum-v0"])
def test_batched_ppo_is_exactly_per_task_ppo(env_id: str) -> None:
    """M stacked learners in one ppo_update take each task's own PPO path (same minibatch order)."""
    num_tasks, per_task = 3, 2
    env = metarl.make_env(env_id, num_envs=num_tasks * per_task, seed=0, validate_actions=False)
    env.set_tasks(env.sample_tasks(num_tasks, generator=torch.Generator().manual_seed(1)).repeat_interleave(per_task))
    policy = init_parameters(
        MLPPolicy(env.single_observation_space.shape[0], env.single_action_space, (8,), value_head=True),
        torch.Generator().manual_seed(0),
    )
    noise = torch.Generator().manual_seed(2)
    # Each task gets its own starting point, so a mix-up between tasks would show.
    stacked = {k: v.detach() + 0.1 * torch.randn(num_tasks, *v.shape, generator=noise) for k, v in policy.named_parameters()}
    traj, _ = collect(env, policy, stacked, 12, start(env, policy), generator=torch.Generator().manual_seed(3))
    # The updates run in float64 so that the two summation orders agree to rounding.
    traj = dataclasses.replace(
        traj,
        obs=traj.obs.double(),
        log_probs=traj.log_probs.double(),
        actions=traj.actions.double() if traj.actions.is_floating_point() else traj.actions,
    )
    stacked = {k: v.double() for k, v in stacked.items()}
    advantages = torch.randn(traj.rewards.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    returns = torch.randn(traj.rewards.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    settings = PPOSettings(epochs=2, num_minibatches=3, lr=1e-2, max_grad_norm=0.05)  # a small clip norm: clipping acts

    batched = {k: v.clone().requires_grad_(True) for k, v in stacked.items()}
    ppo_update(
        policy,
        torch.optim.Adam(batched.values(), lr=settings.lr, eps=1e-5),
        traj,
        advantages,
        returns,
        settings,
        torch.Generator().manual_seed(6),
        batched,
    )

    for i in range(num_tasks):
        own = {k: v[i].clone().requires_grad_(True) for k, v in stacked.items()}
        cols = slice(i * per_task, (i + 1) * per_task)
        task_traj = dataclasses.replace(
            traj, **{f: getattr(traj, f)[:, cols] for f in ("obs", "actions", "log_probs", "reset_memory")}
        )
        ppo_update(
            policy,
            torch.optim.Adam(own.values(), lr=settings.lr, eps=1e-5),
            task_traj,
            advantages[:, cols],
            returns[:, cols],
            settings,
            torch.Generator().manual_seed(6),
            own,
        )
        for k in own:
            torch.testing.assert_close(batched[k][i], own[k], rtol=1e-9, atol=1e-10)
        assert any(not torch.equal(own[k], stacked[k][i]) for k in own)


def test_shared_ppo_update_is_unchanged_for_a_plain_module() -> None:
    """Without stacked params, ppo_update steps the policy's own parameters through the optimizer."""
    env = metarl.make_env("metarl/CartPole-v0", num_envs=4, seed=0, validate_actions=False)
    policy = init_parameters(MLPPolicy(4, env.single_action_space, (8,), value_head=True), torch.Generator().manual_seed(0))
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    traj, _ = collect(env, policy, dict(policy.named_parameters()), 8, start(env, policy), torch.Generator().manual_seed(1))
    adv = torch.randn(traj.rewards.shape, generator=torch.Generator().manual_seed(2))
    stats = ppo_update(policy, torch.optim.Adam(policy.parameters(), lr=1e-2), traj, adv, adv, TINY_PPO, torch.Generator())
    assert set(stats) == {"policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm"}
    assert all(not torch.equal(before[k], v) for k, v in policy.named_parameters())


@pytest.mark.parametrize("inner_learner", ["native", "sb3"])
@pytest.mark.parametrize("env_id", ["metarl/CartPole-v0", "metarl/Pendulum-v0"])
def test_meta_step_moves_theta_by_exactly_epsilon_times_the_reptile_direction(inner_learner: str, env_id: str) -> None:
    agent = Reptile(tiny(inner_learner=inner_learner, env_id=env_id, meta_lr=0.4, anneal_iterations=10))
    theta = {k: v.detach().clone() for k, v in agent.policy.named_parameters()}
    tasks = agent.family.task_space.sample(2, generator=copy_of(agent.task_generator), split="train")
    # The same adaptation the meta-step will run (same tasks, same streams), to know θ̃ - θ.
    streams = [g.get_state() for g in (agent.action_generator, agent.minibatch_generator)]
    adapted, _ = agent.inner.adapt(dict(agent.policy.named_parameters()), tasks, 2, measure=False)
    direction = {k: adapted[k].mean(0) - theta[k] for k in theta}
    assert all(bool((adapted[k] != theta[k]).any()) for k in theta)  # every tensor adapted
    if inner_learner == "native":  # the SB3 learner's randomness is its own; only the native step is replayed
        for g, state in zip((agent.action_generator, agent.minibatch_generator), streams, strict=True):
            g.set_state(state)
        agent._native.env(2).generator.manual_seed(agent.config.seed + 2)
    else:
        agent.inner.adapt = lambda *args, **kwargs: (adapted, torch.zeros(2, 2))  # type: ignore[method-assign]
    stats = agent.meta_train_step()
    assert stats["meta_step_size"] == pytest.approx(0.4)
    for k, v in agent.policy.named_parameters():
        torch.testing.assert_close(v.detach(), theta[k] + 0.4 * direction[k], rtol=1e-6, atol=1e-6)


def test_sb3_learner_leaves_no_log_folders_behind(tmp_path, monkeypatch) -> None:
    """SB3 makes an SB3-<time> folder in the temp dir per learn() unless given a logger; ours gets one with no outputs."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    agent = Reptile(tiny(inner_learner="sb3"))
    agent.meta_train_step()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("SB3-")] == []


def test_sb3_learner_copies_parameters_in_and_out() -> None:
    """θ loaded into SB3's policy gives the same action distribution and values as ours, and reads back unchanged."""
    for env_id in ("metarl/CartPole-v0", "metarl/Pendulum-v0"):
        agent = Reptile(tiny(inner_learner="sb3", env_id=env_id))
        learner = agent.inner
        assert isinstance(learner, SB3PPO)
        theta = {k: v.detach() for k, v in agent.policy.named_parameters()}
        learner.load(theta)
        for k, v in learner.params().items():
            torch.testing.assert_close(v, theta[k], rtol=0, atol=0)
        obs = torch.randn(5, agent.family.observation_space.shape[0], generator=torch.Generator().manual_seed(0))
        ours = agent.policy(obs)
        sb3 = learner.model.policy
        dist = sb3.get_distribution(obs)
        torch.testing.assert_close(sb3.predict_values(obs).squeeze(-1), ours.value)
        if agent.policy.gaussian:
            mean = ours.dist_params[:, : ours.dist_params.shape[1] // 2]
            torch.testing.assert_close(dist.distribution.mean, mean)
        else:
            torch.testing.assert_close(dist.distribution.logits, ours.dist_params.log_softmax(-1))


def test_sb3_learner_runs_on_a_gymnasium_env_with_set_task_and_refuses_one_without() -> None:
    vec = DummyVecEnv([lambda: gymnasium.make("metarl/CartPole-v0")] * 2)
    agent = Reptile(tiny(inner_learner="sb3"), vec_env=vec)
    stats = agent.meta_train_step()
    assert stats["reptile_direction_norm"] > 0
    with pytest.raises(TypeError, match="set_task"):
        Reptile(tiny(inner_learner="sb3"), vec_env=DummyVecEnv([lambda: gymnasium.make("CartPole-v1")] * 2))


def test_adaptation_curve_shape_and_no_side_effects() -> None:
    agent = Reptile(tiny())
    tasks = agent.family.task_space.sample(3, generator=torch.Generator().manual_seed(0), split="test")
    states = [g.get_state() for g in (agent.task_generator, agent.action_generator, agent.minibatch_generator)]
    theta = {k: v.detach().clone() for k, v in agent.policy.named_parameters()}
    curve = agent.adaptation_curve(tasks, 2, torch.Generator().manual_seed(1))
    assert curve.shape == (3, 3) and bool((curve > 0).all())  # CartPole pays 1 per step
    again = agent.adaptation_curve(tasks, 2, torch.Generator().manual_seed(1))
    torch.testing.assert_close(curve, again)
    assert all(
        torch.equal(s, g.get_state())
        for s, g in zip(states, (agent.task_generator, agent.action_generator, agent.minibatch_generator), strict=True)
    )
    assert all(torch.equal(v, theta[k]) for k, v in agent.policy.named_parameters())


def test_evaluating_a_meta_batch_sized_task_set_leaves_training_unchanged() -> None:
    """The native env of meta_batch_size tasks is the training env: evaluation must restore its generator too."""
    straight, evaluated = Reptile(tiny()), Reptile(tiny())
    tasks = evaluated.family.task_space.sample(evaluated.config.meta_batch_size, generator=torch.Generator(), split="test")
    for agent in (straight, evaluated):
        agent.meta_train_step()
    evaluated.adaptation_curve(tasks, 1, torch.Generator().manual_seed(1))
    for agent in (straight, evaluated):
        agent.meta_train_step()
    for (k, a), b in zip(straight.policy.named_parameters(), evaluated.policy.parameters(), strict=True):
        assert torch.equal(a, b), k


def test_state_dict_resumes_exactly() -> None:
    straight = Reptile(tiny())
    for _ in range(3):
        straight.meta_train_step()
    first = Reptile(tiny())
    first.meta_train_step()
    resumed = Reptile(tiny())
    resumed.load_state_dict(first.state_dict())
    for _ in range(2):
        resumed.meta_train_step()
    for (k, a), (_, b) in zip(straight.policy.named_parameters(), resumed.policy.named_parameters(), strict=True):
        assert torch.equal(a, b), k


def test_adam_outer_optimizer_follows_the_reptile_direction() -> None:
    agent = Reptile(tiny(outer_optimizer="adam", outer_lr=1e-3))
    theta = {k: v.detach().clone() for k, v in agent.policy.named_parameters()}
    agent.meta_train_step()
    moved = {k: (v.detach() - theta[k]).abs().max() for k, v in agent.policy.named_parameters()}
    assert all(0 < float(m) <= 1e-3 + 1e-7 for m in moved.values())  # Adam's first step is at most lr per entry


@pytest.mark.parametrize(
    "override, match",
    [
        ({"inner_updates": 0}, "inner_updates"),
        ({"meta_lr": 0.0}, "meta_lr"),
        ({"meta_lr": 1.5}, "meta_lr"),
        ({"meta_lr_final": -0.1}, "meta_lr_final"),
        ({"meta_batch_size": 0}, "meta_batch_size"),
        ({"rollout_steps": 0}, "rollout_steps"),
        ({"inner_learner": "sb2"}, "inner_learner"),
        ({"gamma": 1.2}, "gamma"),
        ({"reward_scale": 0.0}, "reward_scale"),
    ],
)
def test_bad_settings_are_refused(override: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny(**override)


def test_unknown_env_and_unfillable_minibatches_are_refused() -> None:
    with pytest.raises(metarl.UnknownFamilyError):
        Reptile(tiny(env_id="metarl/NoSuchThing-v0"))
    with pytest.raises(ValueError, match="num_minibatches"):
        Reptile(tiny(rollout_steps=1, envs_per_task=1))


@pytest.mark.slow
def test_native_and_sb3_learners_adapt_comparably_at_equal_budget() -> None:
    """Same init, tasks, budget and PPO settings: the adapted returns agree within 3 standard errors.

    Tolerance: |mean_native - mean_sb3| after k updates below 3 x the standard
    error of that difference over 4 held-out tasks x 3 seeds per learner (a
    two-sided test at about the 99.7% level if the two learners are equivalent),
    and each learner improves on the unadapted return by more than that much.
    """
    curves = {}
    for learner in ("native", "sb3"):
        agent = Reptile(ReptileConfig(inner_learner=learner, rollout_steps=200, envs_per_task=8))
        tasks = agent.family.task_space.sample(4, generator=torch.Generator().manual_seed(0), split="test")
        curves[learner] = torch.stack([agent.adaptation_curve(tasks, 5, torch.Generator().manual_seed(s)) for s in range(3)])
    native, sb3 = (curves[k][:, -1].flatten() for k in ("native", "sb3"))
    tolerance = 3 * float((native.var() / native.numel() + sb3.var() / sb3.numel()).sqrt())
    assert abs(float(native.mean() - sb3.mean())) < tolerance
    torch.testing.assert_close(curves["native"][:, 0], curves["sb3"][:, 0])  # one measurement protocol for both
    for learner, curve in curves.items():
        assert float(curve[:, -1].mean() - curve[:, 0].mean()) > tolerance, learner


def test_linear_anneal_runs_from_start_to_end_then_stays() -> None:
    assert linear_anneal(1e-3, 0.0, 0.0, 60.0) == 1e-3
    assert linear_anneal(1e-3, 0.0, 45.0, 60.0) == pytest.approx(2.5e-4)
    assert linear_anneal(1e-3, 0.0, 75.0, 60.0) == 0.0  # bench_rl2's last iteration may start past its budget
    assert linear_anneal(1.0, 0.1, 100, 200) == pytest.approx(0.55)
    assert linear_anneal(1.0, 0.1, 400, 200) == pytest.approx(0.1)
