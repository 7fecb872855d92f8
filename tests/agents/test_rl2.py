"""RL²: recurrent PPO over trials, resume, and learning to explore a two-armed bandit."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import envs  # noqa: F401
import metarl
from agents.ppo import ADAPTIVE_LR_BOUNDS, PPOSettings, _task_columns, replay_sequence
from agents.rl2 import RL2, RL2Config
from metarl.policies import GRUPolicy, init_parameters
from metarl.returns import gae
from metarl.rollout import collect, start
from metarl.trials import TrialEnv

TINY = dict(env_kwargs={"num_arms": 2, "num_pulls": 4}, num_envs=8, hidden_size=16, ppo=PPOSettings(num_minibatches=2, epochs=2))


def _chunks(x: torch.Tensor, length: int) -> torch.Tensor:
    """``(T, N, ...)`` -> ``(length, N * T // length, ...)``: ppo_update's chunk columns of one task."""
    return _task_columns(x, length, 1)[:, 0]


@pytest.mark.parametrize("separate_critic", [False, True])
def test_replayed_chunks_reproduce_the_rollout(separate_critic: bool) -> None:
    """Truncated-BPTT chunks started from the stored memory give exactly the rollout's distributions."""
    env = metarl.make_env("metarl/BernoulliBandit-v0", num_envs=3, num_arms=2, num_pulls=3, validate_actions=False)
    trials = TrialEnv(env, episodes_per_trial=2)
    trials.set_tasks(env.sample_tasks(3, generator=torch.Generator().manual_seed(0)))
    policy = init_parameters(
        GRUPolicy(trials.single_observation_space.shape[0], trials.single_action_space, 8, separate_critic=separate_critic),
        torch.Generator().manual_seed(0),
    )
    traj, _ = collect(
        trials, policy, dict(policy.named_parameters()), 12, start(trials, policy, seed=0), torch.Generator().manual_seed(1)
    )
    fused_calls = []
    step_by_step = policy.forward_sequence
    policy.forward_sequence = lambda *args: fused_calls.append(1) or step_by_step(*args)
    # Trials are 6 steps: chunks of 12 and 4 have a memory reset inside and go step by step, chunks of 3 and 6 end
    # where a trial ends and run as one fused sequence.
    for length, fused in ((12, False), (4, False), (3, True), (6, True)):
        hidden = _chunks(traj.hidden, length)[0]
        fused_calls.clear()
        with torch.no_grad():
            dist, values = replay_sequence(policy, _chunks(traj.obs, length), hidden, _chunks(traj.reset_memory, length))
        assert bool(fused_calls) == fused, length
        torch.testing.assert_close(dist, _chunks(traj.dist_params, length))
        torch.testing.assert_close(values, _chunks(traj.values, length))


@pytest.mark.parametrize("separate_critic", [False, True])
def test_meta_train_step_runs_and_resumes_exactly(separate_critic: bool) -> None:
    config = RL2Config(**TINY, separate_critic=separate_critic)
    straight = RL2(config)
    for _ in range(3):
        metrics = straight.meta_train_step()
    assert {"trial_return", "policy_loss", "value_loss", "entropy"} <= set(metrics)
    assert straight.policy.hidden_size == 16 * (2 if separate_critic else 1)
    first = RL2(config)
    first.meta_train_step()
    resumed = RL2(config)
    resumed.load_state_dict(first.state_dict())
    for _ in range(2):
        resumed.meta_train_step()
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_step_size_decays_linearly_to_zero_over_the_anneal_iterations_and_resumes() -> None:
    config = RL2Config(**TINY, lr_anneal_iterations=4)
    agent = RL2(config)
    used = []
    for _ in range(5):
        used.append(agent.meta_train_step()["lr"])
    lr = config.ppo.lr
    assert used == pytest.approx([lr, 0.75 * lr, 0.5 * lr, 0.25 * lr, 0.0])
    resumed = RL2(config)
    resumed.load_state_dict(RL2(config).state_dict() | {"iteration": 2})
    resumed.meta_train_step()
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.5 * lr)
    with pytest.raises(ValueError, match="lr_anneal_iterations"):
        RL2Config(**TINY, lr_anneal_iterations=0)
    with pytest.raises(ValueError, match=r"lr_anneal_iterations=4 and ppo.desired_kl=0.01 both set the step size"):
        RL2Config(**{**TINY, "ppo": PPOSettings(desired_kl=0.01)}, lr_anneal_iterations=4)


def test_an_adapted_step_size_carries_over_updates_and_resumes() -> None:
    config = RL2Config(**{**TINY, "ppo": PPOSettings(num_minibatches=2, epochs=2, desired_kl=1e9)})
    straight = RL2(config)
    used = [straight.meta_train_step()["lr"] for _ in range(3)]
    lr = config.ppo.lr
    # 3 of an update's 4 minibatches grow it (the first's KL is 0), up to the ceiling.
    assert used == pytest.approx([lr * 1.5**3, lr * 1.5**6, ADAPTIVE_LR_BOUNDS[1]])
    first = RL2(config)
    first.meta_train_step()
    resumed = RL2(config)
    resumed.load_state_dict(first.state_dict())
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(lr * 1.5**3)
    for _ in range(2):
        resumed.meta_train_step()
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_time_feature_widens_the_input_and_checkpoints_must_agree_on_it() -> None:
    timed = RL2(RL2Config(**TINY, time_feature=True))
    plain = RL2(RL2Config(**TINY))
    assert timed.env.single_observation_space.shape[0] == plain.env.single_observation_space.shape[0] + 1
    timed.meta_train_step()
    tasks = timed.family.task_space.sample(3, generator=torch.Generator().manual_seed(0), split="test")
    assert timed.adaptation_curve(tasks, 1, torch.Generator().manual_seed(0)).shape == (2, 3)  # longer trials than training
    with pytest.raises(ValueError, match=r"trained with time_feature=True.*pass rl2 --time-feature"):
        plain.load_state_dict(timed.state_dict())
    with pytest.raises(ValueError, match=r"trained with time_feature=False.*pass rl2 --no-time-feature"):
        timed.load_state_dict(plain.state_dict())


def test_encoder_and_heads_train_and_checkpoints_must_agree_on_them() -> None:
    layered = RL2(RL2Config(**TINY, encoder_size=8, head_size=4))
    plain = RL2(RL2Config(**TINY))
    assert layered.policy.encoder.in_features == plain.env.single_observation_space.shape[0]
    stats = layered.meta_train_step()
    assert math.isfinite(stats["policy_loss"])
    with pytest.raises(ValueError, match=r"trained with encoder_size=8, this agent has encoder_size=None.*--encoder-size 8"):
        plain.load_state_dict(layered.state_dict())
    with pytest.raises(ValueError, match=r"trained with head_size=None, this agent has head_size=4"):
        RL2(RL2Config(**TINY, head_size=4)).load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="head_size must be a positive int"):
        RL2Config(**TINY, head_size=0)


def test_box_actions_are_rescaled_to_the_unit_box_and_checkpoints_must_agree_on_it() -> None:
    """With rescale_actions (the default) the policy acts in [-1, 1] per dimension: a unit action is a full step of
    Navigation2D's [-0.1, 0.1] box, and the input's previous action stays in the policy's units."""
    nav = dict(env_id="metarl/Navigation2D-v0", episodes_per_trial=2, num_envs=4, hidden_size=8)
    rescaled, plain = RL2(RL2Config(**nav)), RL2(RL2Config(**nav, rescale_actions=False))
    assert rescaled.env.single_action_space.high.tolist() == [1.0, 1.0]
    assert plain.env.single_action_space.high.tolist() == [pytest.approx(0.1)] * 2
    for agent, unit in ((rescaled, 1.0), (plain, 0.1)):
        env = agent.trial_env(1, 2, seed=0)
        env.set_tasks(agent.family.task_space.default())
        env.reset(seed=0)
        out = env.step(torch.tensor([[unit, -2 * unit]]))  # the second coordinate is clipped to a full step
        torch.testing.assert_close(out.obs[0, :2], torch.tensor([0.1, -0.1]))
        torch.testing.assert_close(out.obs[0, 2:4], torch.tensor([unit, -unit]))
    assert math.isfinite(rescaled.meta_train_step()["policy_loss"])
    with pytest.raises(
        ValueError, match=r"trained with rescale_actions=False, this agent has rescale_actions=True.*--no-rescale-actions"
    ):
        rescaled.load_state_dict(plain.state_dict())
    # Discrete actions are never rescaled: a bandit checkpoint loads whatever the flag says.
    bandit = RL2(RL2Config(**TINY))
    RL2(RL2Config(**TINY, rescale_actions=False)).load_state_dict(bandit.state_dict())


def test_adaptation_curve_is_per_episode_of_a_trial() -> None:
    agent = RL2(
        RL2Config(**{**TINY, "env_id": "metarl/TabularMDP-v0", "env_kwargs": {"episode_length": 5}, "episodes_per_trial": 3})
    )
    tasks = agent.family.task_space.sample(4, generator=torch.Generator().manual_seed(0), split="test")
    curve = agent.adaptation_curve(tasks, 2, torch.Generator().manual_seed(0))
    assert curve.shape == (3, 4)
    torch.testing.assert_close(curve, agent.adaptation_curve(tasks, 2, torch.Generator().manual_seed(0)))


def test_deterministic_evaluation_takes_the_mode_action() -> None:
    """Navigation2D's dynamics are deterministic, so with mode actions no draw is left: any generator gives the
    same curve; sampled actions give a different curve per generator."""
    config = RL2Config(env_id="metarl/Navigation2D-v0", episodes_per_trial=2, num_envs=4, hidden_size=8, eval_envs_per_task=2)
    agent = RL2(config)
    tasks = agent.family.task_space.sample(3, generator=torch.Generator().manual_seed(0), split="test")
    mode = [agent.adaptation_curve(tasks, 1, torch.Generator().manual_seed(seed), deterministic=True) for seed in (0, 1)]
    torch.testing.assert_close(mode[0], mode[1], rtol=0, atol=0)
    sampled = [agent.adaptation_curve(tasks, 1, torch.Generator().manual_seed(seed)) for seed in (0, 1)]
    assert not torch.equal(sampled[0], sampled[1])
    assert not torch.equal(sampled[0], mode[0])
    by_config = RL2(dataclasses.replace(config, eval_deterministic=True))
    torch.testing.assert_close(by_config.adaptation_curve(tasks, 1, torch.Generator().manual_seed(2)), mode[0])


def test_reward_scale_scales_the_value_targets_not_the_reported_return(monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.rl2

    seen: list[torch.Tensor] = []

    def spy(rewards: torch.Tensor, *args, **kwargs):
        seen.append(rewards.clone())
        return gae(rewards, *args, **kwargs)

    monkeypatch.setattr(agents.rl2, "gae", spy)
    reported = [RL2(RL2Config(**TINY, reward_scale=scale)).meta_train_step()["trial_return"] for scale in (1.0, 0.25)]
    assert seen[0].abs().sum() > 0  # the trials collected some reward
    torch.testing.assert_close(seen[1], 0.25 * seen[0])  # same seed, same first rollout
    assert reported[0] == reported[1]


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"episodes_per_trial": 0}, "episodes_per_trial must be a positive int, got 0"),
        ({"gae_lambda": 2.0}, r"gae_lambda must lie in \[0, 1\], got 2.0"),
        ({"num_envs": 2}, r"num_envs \(2\) must be at least ppo.num_minibatches \(4\)"),
        ({"reward_scale": 0.0}, "reward_scale must be positive, got 0.0"),
    ],
)
def test_bad_settings_are_refused(override: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RL2Config(**override)
    with pytest.raises(ValueError, match="bptt_length must be a positive int or None, got 0"):
        PPOSettings(bptt_length=0)


@pytest.mark.slow
def test_rl2_beats_random_on_two_armed_bandits() -> None:
    torch.set_num_threads(1)
    config = RL2Config(env_kwargs={"num_arms": 2, "num_pulls": 10}, num_envs=256, hidden_size=64, ppo=PPOSettings(lr=1e-3))
    agent = RL2(config)
    for _ in range(200):
        agent.meta_train_step()
    tasks = agent.family.task_space.sample(500, generator=torch.Generator().manual_seed(0), split="test")
    total = float(agent.adaptation_curve(tasks, 0, torch.Generator().manual_seed(0)).mean())
    random_policy = float(tasks.means.mean()) * 10
    best_arm = float(tasks.means.max(dim=1).values.mean()) * 10
    # A clear margin (about 13 standard errors): a quarter of the way from random play to the best arm.
    assert total > random_policy + (best_arm - random_policy) / 4, (
        f"RL² {total:.2f}, random {random_policy:.2f}, best arm {best_arm:.2f}"
    )


@pytest.mark.parametrize(
    ("env_id", "episodes"),
    [("metarl/Navigation2D-v0", 2), ("metarl/CartPole-v0", 2), ("metarl/Pendulum-v0", 1)],
)
def test_rl2_runs_beyond_bandits(env_id: str, episodes: int) -> None:
    """Goal-varying and dynamics-varying families, continuous and discrete actions, several episodes per trial."""
    agent = RL2(
        RL2Config(
            env_id=env_id, episodes_per_trial=episodes, num_envs=4, hidden_size=8, ppo=PPOSettings(num_minibatches=2, epochs=1)
        )
    )
    stats = agent.meta_train_step()
    assert stats["trial_return"] != 0.0
    tasks = agent.family.task_space.sample(2, generator=torch.Generator().manual_seed(0), split="test")
    curve = agent.adaptation_curve(tasks, episodes - 1, torch.Generator().manual_seed(0))
    assert curve.shape == (episodes, 2) and bool(torch.isfinite(curve).all())


def test_rl2_runs_on_the_omniglot_bandit_as_a_memory_based_learner() -> None:
    """MANN-style: the GRU reads each image with the previous label (in the observation) and reward (the trial wrapper)."""
    from envs.omniglot import synthetic_glyph_classes

    classes = synthetic_glyph_classes(6, 6, image_size=12)
    kwargs = {"classes": classes, "image_size": 12, "num_ways": 3}
    settings = {k: v for k, v in TINY.items() if k != "env_kwargs"}
    agent = RL2(RL2Config(env_id="metarl/OmniglotBandit-v0", env_kwargs=kwargs, **settings))
    assert agent.trial_steps == 3 * 2  # 3 ways x (1 shot + 1 query)
    stats = agent.meta_train_step()
    assert 0.0 <= stats["trial_return"] <= 6.0
    tasks = agent.family.task_space.sample(4, generator=torch.Generator().manual_seed(0), split="test")
    curve = agent.adaptation_curve(tasks, 0, torch.Generator().manual_seed(1))
    assert curve.shape == (1, 4) and bool(((curve >= 0) & (curve <= 6)).all())


@pytest.mark.parametrize("time_feature", [False, True])
def test_rl2_classify_answers_from_the_memory_a_played_support_set_leaves(time_feature: bool) -> None:
    """classify plays the support set as the trial's first steps; its first answer is the env rollout's first query action.

    Later queries are answered independently (no query's label reaches another), so each
    answer is the same whether the query images come together or one at a time.
    """
    from envs.omniglot import synthetic_glyph_classes

    size, ways = 12, 4
    kwargs = {"classes": synthetic_glyph_classes(6, 6, image_size=size), "image_size": size, "num_ways": ways}
    settings = {k: v for k, v in TINY.items() if k != "env_kwargs"}
    agent = RL2(RL2Config(env_id="metarl/OmniglotBandit-v0", env_kwargs=kwargs, time_feature=time_feature, **settings))
    agent.meta_train_step()  # any weights do; one update moves them off their initial values
    env = agent.trial_env(1, 1, seed=5)
    env.set_tasks(agent.family.task_space.sample(1, generator=torch.Generator().manual_seed(0), split="test"))
    obs = env.reset(seed=5)
    hidden = agent.policy.initial_hidden(1, "cpu")
    images, labels, actions = [], [], []
    with torch.no_grad():
        for _ in range(env.max_trial_steps):
            images.append(obs[0, : size * size].reshape(1, size, size))
            labels.append(int(env.env.step_info()["label"][0]))
            out = agent.policy(obs, hidden)
            action = agent.policy.action_dist.mode(out.dist_params)
            actions.append(int(action[0]))
            obs, hidden = env.step(action).obs, out.hidden
    support, query = torch.stack(images[:ways]), torch.stack(images[ways:])
    answers = agent.classify(support, torch.tensor(labels[:ways]), query)
    assert answers.shape == (ways,) and int(answers[0]) == actions[ways]
    one_at_a_time = [int(agent.classify(support, torch.tensor(labels[:ways]), query[j : j + 1])[0]) for j in range(ways)]
    assert one_at_a_time == answers.tolist()
    # Only labels present in the support set can be answered.
    assert set(agent.classify(support[:2], torch.tensor([0, 1]), query).tolist()) <= {0, 1}
    with pytest.raises(ValueError, match=r"support labels must lie in \[0, 4\)"):
        agent.classify(support, torch.tensor([0, 1, 2, 7]), query)
    bandit = RL2(RL2Config(**TINY))
    with pytest.raises(TypeError, match="builds no observations from images"):
        bandit.classify(support, torch.tensor(labels[:ways]), query)
