"""The shared PPO update's early stop on the approximate KL (PPOSettings.target_kl), its KL-adaptive step size
(PPOSettings.desired_kl) and its gradient-norm stat."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import envs  # noqa: F401
import metarl
from agents.ppo import ADAPTIVE_LR_BOUNDS, PPOSettings, adapt_lr, ppo_update
from agents.reptile import SB3PPO, Reptile, ReptileConfig
from metarl.policies import MLPPolicy, init_parameters
from metarl.rollout import collect, start

SETTINGS = PPOSettings(epochs=3, num_minibatches=2, lr=0.05)


def _update(
    settings: PPOSettings, stacked_tasks: int | None = None, sgd: bool = False, optimizer_out: list | None = None
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """One ppo_update on a fixed Pendulum rollout from a fixed policy; returns its stats and the new parameters.
    ``sgd``: step with plain SGD instead of Adam; ``optimizer_out``: receives the optimizer."""
    env = metarl.make_env("metarl/Pendulum-v0", num_envs=4, seed=0, validate_actions=False)
    policy = init_parameters(MLPPolicy(3, env.single_action_space, (8,), value_head=True), torch.Generator().manual_seed(0))
    params = dict(policy.named_parameters())
    if stacked_tasks is not None:
        params = {k: v.detach().expand(stacked_tasks, *v.shape).clone().requires_grad_(True) for k, v in params.items()}
    traj, _ = collect(env, policy, params, 8, start(env, policy), torch.Generator().manual_seed(1))
    advantages = torch.randn(traj.rewards.shape, generator=torch.Generator().manual_seed(2))
    optimizer = (torch.optim.SGD if sgd else torch.optim.Adam)(params.values(), lr=settings.lr)
    if optimizer_out is not None:
        optimizer_out.append(optimizer)
    stats = ppo_update(policy, optimizer, traj, advantages, advantages, settings, torch.Generator().manual_seed(3), params)
    return stats, {k: v.detach().clone() for k, v in params.items()}


def test_a_target_kl_never_reached_changes_nothing() -> None:
    plain_stats, plain = _update(SETTINGS)
    stats, params = _update(dataclasses.replace(SETTINGS, target_kl=1e9))
    assert stats["minibatch_updates"] == SETTINGS.epochs * SETTINGS.num_minibatches
    assert "minibatch_updates" not in plain_stats
    for k in plain:
        torch.testing.assert_close(params[k], plain[k], rtol=0, atol=0)


def test_a_tiny_target_kl_stops_after_the_first_step() -> None:
    """At step size 0.05 the policy moves after one step, so a KL bound of 1e-12 stops the rest (never the first)."""
    _, before = _update(dataclasses.replace(SETTINGS, lr=1e-30))  # a step too small to move float32 parameters
    _, full = _update(SETTINGS)
    stats, params = _update(dataclasses.replace(SETTINGS, target_kl=1e-12))
    assert stats["minibatch_updates"] == 1
    assert any(not torch.equal(params[k], before[k]) for k in params)  # the first step was taken
    assert any(not torch.equal(params[k], full[k]) for k in params)  # and the others were not


def test_kl_options_are_refused_where_they_cannot_apply() -> None:
    with pytest.raises(ValueError, match=r"target_kl must be positive or None, got 0"):
        PPOSettings(target_kl=0)
    with pytest.raises(ValueError, match=r"target_kl=0.01 needs one learner; these parameters stack 2 tasks"):
        _update(dataclasses.replace(SETTINGS, target_kl=0.01), stacked_tasks=2)
    with pytest.raises(ValueError, match=r"desired_kl=0.01 needs one learner; these parameters stack 2 tasks"):
        _update(dataclasses.replace(SETTINGS, desired_kl=0.01), stacked_tasks=2)
    with pytest.raises(ValueError, match=r"desired_kl must be positive or None, got -1"):
        PPOSettings(desired_kl=-1)

    small = dict(meta_batch_size=2, envs_per_task=2, rollout_steps=16, hidden_sizes=(8,))
    with pytest.raises(ValueError, match=r"ppo.target_kl=0.01 needs one PPO learner.*inner_learner='sb3'"):
        ReptileConfig(**small, ppo=PPOSettings(target_kl=0.01))
    with pytest.raises(ValueError, match=r"ppo.desired_kl=0.01 is not supported by Reptile"):
        ReptileConfig(**small, inner_learner="sb3", ppo=PPOSettings(desired_kl=0.01))
    learner = SB3PPO(Reptile(ReptileConfig(**small, inner_learner="sb3", ppo=PPOSettings(target_kl=0.01))))
    assert learner.model.target_kl == 0.01  # SB3's own PPO stops each task's update by the same rule


def test_grad_norm_is_the_gradient_norm_before_clipping() -> None:
    """One SGD step of size 1 moves the parameters by minus the gradient, so the step's length is the norm that
    the stat reports, however hard the clip then scales the gradient down."""
    _, before = _update(dataclasses.replace(SETTINGS, lr=1e-30), sgd=True)
    for max_grad_norm, clipped in ((1e9, False), (1e-3, True)):
        settings = PPOSettings(epochs=1, num_minibatches=1, lr=1.0, max_grad_norm=max_grad_norm)
        stats, after = _update(settings, sgd=True)
        step = torch.cat([(after[k] - before[k]).flatten() for k in before]).norm().item()
        assert stats["grad_norm"] > 1e-2
        assert step == pytest.approx(max_grad_norm if clipped else stats["grad_norm"], rel=1e-3)


@pytest.mark.parametrize(
    ("lr", "kl", "expected"),
    [
        (3e-4, 0.05, 2e-4),  # over twice the desired 0.01: divided by 1.5
        (3e-4, 0.02, 3e-4),  # from half to twice the desired: left alone
        (3e-4, 0.005, 3e-4),
        (3e-4, 0.004, 4.5e-4),  # under half: multiplied by 1.5
        (ADAPTIVE_LR_BOUNDS[0], 1.0, ADAPTIVE_LR_BOUNDS[0]),  # never below the floor
        (0.009, 0.0, ADAPTIVE_LR_BOUNDS[1]),  # nor above the ceiling
    ],
)
def test_adaptive_step_size_rule(lr: float, kl: float, expected: float) -> None:
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr)
    adapt_lr(optimizer, kl, desired_kl=0.01)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_desired_kl_adapts_the_step_size_during_an_update_and_keeps_it() -> None:
    """A desired KL far above any reached grows the step size at every minibatch but the first (KL 0 there); one far
    below shrinks it, and with it how far the parameters move."""
    steps = SETTINGS.epochs * SETTINGS.num_minibatches
    _, before = _update(dataclasses.replace(SETTINGS, lr=1e-30))
    moved = {}
    for desired, expected_lr in ((1e9, min(1e-3 * 1.5 ** (steps - 1), ADAPTIVE_LR_BOUNDS[1])), (1e-12, None)):
        optimizer: list = []
        _, params = _update(dataclasses.replace(SETTINGS, lr=1e-3, desired_kl=desired), optimizer_out=optimizer)
        lr = optimizer[0].param_groups[0]["lr"]
        if expected_lr is not None:
            assert lr == pytest.approx(expected_lr)
        else:
            assert lr < 1e-3 / 1.5 ** (steps // 2)  # shrunk at most minibatches: the policy moved after each step
        moved[desired] = torch.cat([(params[k] - before[k]).flatten() for k in params]).norm().item()
    assert moved[1e-12] < moved[1e9]
