"""RL² against the classic bandit and tabular-MDP algorithms, and on control families, on held-out tasks.

For each setting, meta-train RL² for a wall-clock budget, then score it on
held-out tasks:

- Bernoulli bandits with arm means ~ U[0,1] (k=5/n=10, k=10/n=100,
  k=5/n=100) and tabular MDPs (10 states, 5 actions, 10 episodes of 10
  steps): total reward per trial beside random, greedy, epsilon-greedy, UCB1,
  Thompson sampling and the Gittins-index policy (bandits) or random and PSRL
  (MDPs), all on the same tasks. The RL² paper's figures (Duan et al. 2016,
  Tables 1 and 2) are quoted beside ours in BENCHMARKS.md.
- Navigation2D with 2 episodes per trial (the goal is found in the first,
  the second should go straight to it) and Pendulum with varying gravity, mass
  and length (2 episodes per trial): the return of each episode of a trial on
  40 held-out tasks x 3 seeds (the evaluator's protocol, as for MAML), beside
  the untrained network and the oracle where the family has one.

Each setting has its own hyperparameters (``SETTINGS``); a flag given on the
command line overrides them for every setting run.

Run::

    python scripts/bench_rl2.py                          # every bandit/MDP setting, 5 minutes of training each, CPU
    python scripts/bench_rl2.py --settings bandit-k5-n10 --minutes 20
    python scripts/bench_rl2.py --settings navigation2d pendulum --minutes 30
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import tyro
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import envs  # noqa: F401  (registers the built-in task families)
from agents.ppo import PPOSettings
from agents.rl2 import RL2, RL2Config
from envs.navigation import Navigation2D
from envs.reference_policies import reference_learners
from metarl.checkpoint import load_checkpoint, save_checkpoint
from metarl.evaluation import EvalConfig, evaluate, held_out_tasks, mean_ci, oracle_returns
from metarl.files import atomic_write
from metarl.machine import machine_info
from metarl.rollout import collect, start
from metarl.schedules import linear_anneal
from metarl.tasks import Tasks
from metarl.training import Validation, keep_if_best
from metarl.validation import check_positive_int

SettingName = Literal["bandit-k5-n10", "bandit-k10-n100", "bandit-k5-n100", "mdp-10x5", "navigation2d", "pendulum"]


@dataclasses.dataclass(frozen=True)
class Setting:
    """A task family, its trial shape, and the RL² hyperparameters used on it (flags override them)."""

    env_id: str
    env_kwargs: dict[str, int]
    episodes_per_trial: int
    hyperparameters: dict[str, Any]
    """Values of :class:`BenchConfig`'s hyperparameter fields for this setting."""
    against_reference_policies: bool = True
    """Score total reward per trial on 1,000 tasks beside the family's reference policies; otherwise
    the per-episode curve of the evaluator's protocol beside the untrained network and the oracle."""


# Bandits and MDPs: the settings that lifted RL² off random level (BENCHMARKS.md: value-loss weight 0.02
# for the shared GRU, the paper's GAE lambda 0.3, the steps taken as an input); on 100-pull bandits and MDPs also
# a ReLU input layer and tanh heads around the GRU. Control: rewards scaled so that values stay of
# order one, a long-horizon lambda, and no entropy bonus (the Gaussian's entropy only widens clipped actions);
# a step size that adapts to hold each update's KL near 0.01 (Navigation2D: several times faster than the fixed
# 3e-4, a straighter second episode, no collapse in three seeds; Pendulum: faster too); the time input on
# Navigation2D (measured there, not on Pendulum). 0 for a layer size: no such layer; 0 for target_kl or desired_kl: off.
BANDIT_HYPERPARAMETERS = dict(
    num_envs=512,
    lr=1e-3,
    vf_coef=0.02,
    gamma=0.99,
    gae_lambda=0.3,
    reward_scale=1.0,
    ent_coef=0.01,
    bptt_length=None,
    target_kl=0.0,
    desired_kl=0.0,
    time_feature=True,
    encoder_size=0,
    head_size=0,
)
LAYERED_HYPERPARAMETERS = {**BANDIT_HYPERPARAMETERS, "encoder_size": 64, "head_size": 64}
CONTROL_HYPERPARAMETERS = dict(
    num_envs=256,
    lr=3e-4,
    vf_coef=0.5,
    gamma=0.99,
    gae_lambda=0.95,
    reward_scale=0.1,
    ent_coef=0.0,
    bptt_length=None,
    target_kl=0.0,
    desired_kl=0.01,
    time_feature=False,
    encoder_size=0,
    head_size=0,
)
SETTINGS: dict[str, Setting] = {
    "bandit-k5-n10": Setting("metarl/BernoulliBandit-v0", {"num_arms": 5, "num_pulls": 10}, 1, BANDIT_HYPERPARAMETERS),
    "bandit-k10-n100": Setting("metarl/BernoulliBandit-v0", {"num_arms": 10, "num_pulls": 100}, 1, LAYERED_HYPERPARAMETERS),
    "bandit-k5-n100": Setting("metarl/BernoulliBandit-v0", {"num_arms": 5, "num_pulls": 100}, 1, LAYERED_HYPERPARAMETERS),
    "mdp-10x5": Setting(
        "metarl/TabularMDP-v0", {"num_states": 10, "num_actions": 5, "episode_length": 10}, 10, LAYERED_HYPERPARAMETERS
    ),
    "navigation2d": Setting(
        "metarl/Navigation2D-v0", {}, 2, {**CONTROL_HYPERPARAMETERS, "time_feature": True}, against_reference_policies=False
    ),
    "pendulum": Setting(
        "metarl/Pendulum-v0", {}, 2, {**CONTROL_HYPERPARAMETERS, "reward_scale": 0.01}, against_reference_policies=False
    ),
}


@dataclasses.dataclass
class BenchConfig:
    settings: tuple[SettingName, ...] = ("bandit-k5-n10", "bandit-k10-n100", "bandit-k5-n100", "mdp-10x5")
    """Settings to run."""
    minutes: float = 5.0
    """Meta-training wall-clock budget per setting."""
    num_envs: int | None = None
    """Trials per meta-iteration (default: the setting's own, see SETTINGS)."""
    hidden_size: int = 128
    """GRU width."""
    encoder_size: int | None = None
    """Width of a ReLU input layer before the GRU (RL2Config.encoder_size; default: the setting's own; 0: none)."""
    head_size: int | None = None
    """Width of a tanh layer in the policy and value heads (RL2Config.head_size; default: the setting's own; 0: linear
    heads)."""
    lr: float | None = None
    """PPO step size (default: the setting's own)."""
    vf_coef: float | None = None
    """Value-loss weight (default: the setting's own). The GRU is shared by the policy and value heads; at 0.5
    the value regression dominates it and RL² stays at random level on 100-pull trials (BENCHMARKS.md)."""
    gamma: float | None = None
    """Discount within a trial (default: the setting's own)."""
    gae_lambda: float | None = None
    """GAE lambda (default: the setting's own; the RL² paper's 0.3 for bandits)."""
    reward_scale: float | None = None
    """Rewards are multiplied by this for advantages and value targets (see RL2Config.reward_scale;
    default: the setting's own)."""
    ent_coef: float | None = None
    """Entropy bonus (default: the setting's own)."""
    bptt_length: int | None = None
    """Truncated-BPTT chunk length of the PPO update (default: the setting's own: whole trials)."""
    target_kl: float | None = None
    """Stop a PPO update early once a minibatch's approximate KL exceeds 1.5 x this (PPOSettings.target_kl;
    default: the setting's own; 0: never)."""
    desired_kl: float | None = None
    """Adapt the step size to keep each PPO update near this approximate KL (PPOSettings.desired_kl; default: the
    setting's own; 0: a fixed step size)."""
    rescale_actions: bool = RL2Config.rescale_actions
    """Box actions in ``[-1, 1]`` mapped onto the box (RL2Config.rescale_actions); --no-rescale-actions acts in the
    env's units, as the runs before this flag did (control settings only)."""
    separate_critic: bool = False
    """Give the value head its own GRU instead (twice the compute per step)."""
    anneal_lr: bool = False
    """Decay the step size linearly to zero over the wall-clock budget (CleanRL's PPO anneals it over its
    iterations), so that late updates cannot undo what was learned."""
    anneal_lr_start: float = 0.0
    """With --anneal-lr: the fraction of the budget trained at the full step size before the decay begins
    (0: decay from the start), so that a decay meant to settle a plateau does not slow the climb to it."""
    time_feature: bool | None = None
    """Also feed the steps taken in the trial (RL2Config.time_feature; default: the setting's own)."""
    num_tasks: int = 1000
    """Held-out tasks scored per bandit/MDP setting (control settings: the evaluator's 40 tasks x 3 seeds)."""
    trials_per_task: int = 2
    """Trials per held-out task (for RL² and every reference policy)."""
    device: str = "cpu"
    """Torch device."""
    threads: int | None = None
    """torch CPU threads."""
    seed: int = 0
    """Seed of the RL² agents."""
    json_out: Path | None = None
    """Write every figure as JSON here."""
    save_dir: Path | None = None
    """Save each setting's trained agent here as ``SETTING.pt`` before it is scored, so that a lost scoring can be
    re-run with --load-dir; every meta-iteration's metrics (losses, approximate KL, gradient norm, ...) go to
    ``SETTING-metrics.jsonl`` beside it, one JSON object per line."""
    snapshot_every: int | None = None
    """With --save-dir: also save the agent every this many meta-iterations, as ``SETTING/iter_NNNNN.pt``."""
    validate_every: int | None = None
    """With --save-dir: score the agent every this many meta-iterations (and at the end) on --validation-tasks tasks
    of the training split (metarl.training.Validation) and keep the best iterate as ``SETTING-best.pt``; both it
    and the last iterate are then scored on the held-out tasks (rows "RL2 (best iterate)")."""
    validation_tasks: int = 1000
    """Tasks of the training split that --validate-every scores, --trials-per-task trials each."""
    plot_dir: Path | None = None
    """Navigation2D: draw one trial on each of the first held-out goals for each RL² agent (sampled and most likely
    actions) here, as ``navigation2d-NAME.png``."""
    load_dir: Path | None = None
    """Score the agents saved in this directory by --save-dir instead of training (--minutes is then unused). Give
    the flags that shape the network as in the saved run (--hidden-size, --encoder-size, --head-size,
    --separate-critic, --time-feature): loading refuses a mismatch."""

    def __post_init__(self) -> None:
        # Checked here, not after a setting's whole training budget.
        if not self.minutes > 0:
            raise ValueError(f"minutes must be positive, got {self.minutes!r}")
        for name in ("hidden_size", "num_tasks", "trials_per_task", "validation_tasks"):
            check_positive_int(name, getattr(self, name))
        for name in ("encoder_size", "head_size"):
            size = getattr(self, name)
            if size is not None and (not isinstance(size, int) or size < 0):
                raise ValueError(f"{name} must be a non-negative int (0: no such layer), got {size!r}")
        if self.target_kl is not None and not self.target_kl >= 0:
            raise ValueError(f"target_kl must be non-negative (0: no early stop), got {self.target_kl!r}")
        if self.desired_kl is not None and not self.desired_kl >= 0:
            raise ValueError(f"desired_kl must be non-negative (0: a fixed step size), got {self.desired_kl!r}")
        for name in ("snapshot_every", "validate_every"):
            every = getattr(self, name)
            if every is not None:
                check_positive_int(name, every)
                if self.save_dir is None:
                    raise ValueError(f"{name}={every!r} needs --save-dir")
        if not 0 <= self.anneal_lr_start < 1:
            raise ValueError(f"anneal_lr_start must be in [0, 1), got {self.anneal_lr_start!r}")
        if self.anneal_lr_start > 0 and not self.anneal_lr:
            raise ValueError(f"anneal_lr_start={self.anneal_lr_start!r} has no effect without --anneal-lr")
        unknown = set(self.settings) - set(SETTINGS)
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}; choose from {sorted(SETTINGS)}")
        adaptive = [name for name in self.settings if hyperparameters(SETTINGS[name], self)["desired_kl"]]
        if self.anneal_lr and adaptive:
            raise ValueError(f"--anneal-lr and desired_kl both set the step size of {adaptive}; give --desired-kl 0 or drop one")
        if self.load_dir is not None:
            missing = [name for name in self.settings if not (self.load_dir / f"{name}.pt").is_file()]
            if missing:
                raise ValueError(f"--load-dir {self.load_dir} holds no saved agent for {missing}")


def hyperparameters(setting: Setting, config: BenchConfig) -> dict[str, Any]:
    """The setting's hyperparameters, with every field given on the command line (not None) taking precedence."""
    given = {name: getattr(config, name) for name in setting.hyperparameters if getattr(config, name) is not None}
    return {**setting.hyperparameters, **given}


def make_agent(setting: Setting, config: BenchConfig, seed: int) -> RL2:
    h = hyperparameters(setting, config)
    return RL2(
        RL2Config(
            env_id=setting.env_id,
            env_kwargs=setting.env_kwargs,
            episodes_per_trial=setting.episodes_per_trial,
            num_envs=h["num_envs"],
            hidden_size=config.hidden_size,
            encoder_size=h["encoder_size"] or None,
            head_size=h["head_size"] or None,
            separate_critic=config.separate_critic,
            rescale_actions=config.rescale_actions,
            time_feature=h["time_feature"],
            gamma=h["gamma"],
            gae_lambda=h["gae_lambda"],
            reward_scale=h["reward_scale"],
            eval_envs_per_task=config.trials_per_task,
            ppo=PPOSettings(
                lr=h["lr"],
                vf_coef=h["vf_coef"],
                ent_coef=h["ent_coef"],
                bptt_length=h["bptt_length"],
                target_kl=h["target_kl"] or None,
                desired_kl=h["desired_kl"] or None,
            ),
            device=config.device,
            seed=seed,
        )
    )


@dataclasses.dataclass(frozen=True)
class ModeActions:
    """An RL² agent scored with its most likely action at every step instead of a sampled one."""

    agent: RL2

    def adaptation_curve(self, tasks: Tasks, num_steps: int, generator: torch.Generator) -> torch.Tensor:
        return self.agent.adaptation_curve(tasks, num_steps, generator, deterministic=True)


def sampled_and_mode(agents: dict[str, RL2]) -> dict[str, tuple[RL2, bool]]:
    """Each RL² agent twice: ``(agent, False)`` under its name (sampled actions) and ``(agent, True)`` as
    "NAME (mode)" (its most likely actions)."""
    played: dict[str, tuple[RL2, bool]] = {}
    for name, agent in agents.items():
        played[name], played[f"{name} (mode)"] = (agent, False), (agent, True)
    return played


def with_mode_actions(agents: dict[str, RL2]) -> dict[str, RL2 | ModeActions]:
    """Each RL² agent, scored with sampled actions under its name and with its most likely ones as "NAME (mode)"."""
    return {name: ModeActions(agent) if mode else agent for name, (agent, mode) in sampled_and_mode(agents).items()}


def against_reference_policies(agents: dict[str, RL2], setting: Setting, config: BenchConfig) -> dict[str, dict[str, float]]:
    """Total reward per trial on ``config.num_tasks`` held-out tasks: each RL² agent (sampled and most likely
    actions) and the reference policies."""
    family = next(iter(agents.values())).family
    tasks = family.task_space.sample(config.num_tasks, generator=torch.Generator().manual_seed(12345), split="test")
    learners = {
        **with_mode_actions(agents),
        **reference_learners(family, trials_per_task=config.trials_per_task, device=config.device),
    }
    rows: dict[str, dict[str, float]] = {}
    for learner_name, learner in learners.items():
        # Total reward per trial: the sum over the trial's episodes of each task's mean episode return.
        curve = learner.adaptation_curve(tasks, setting.episodes_per_trial - 1, torch.Generator().manual_seed(0))
        mean, low, high = mean_ci(curve.sum(0), 0.95)
        rows[learner_name] = {"mean": mean, "ci_half_width": (high - low) / 2}
    reference = rows.get("Gittins") or rows.get("PSRL")
    for learner_name, row in rows.items():
        gap = (
            f"  ({100 * (row['mean'] / reference['mean'] - 1):+.1f}% vs {'Gittins' if 'Gittins' in rows else 'PSRL'})"
            if reference
            else ""
        )
        print(f"  {learner_name:30s} {row['mean']:8.2f} ± {row['ci_half_width']:.2f}{gap}")
    return rows


PLOTTED_TASKS = 8
"""Navigation2D: held-out goals whose trials --plot-dir draws."""

STRAIGHT_TOLERANCE = 0.05
"""Navigation2D: an episode went straight to the goal if, after as many steps as the straight path needs, it is
within this distance of the goal (half of one step's reach; goals lie 0.38 from the start on average)."""


class NavigationTrials(NamedTuple):
    """:func:`play_navigation_trials`'s record of one trial per env, each ``(T, tasks x trials, ...)`` over the
    rollout's steps (the trial's own, then the start of the next, which no measure reads)."""

    position: torch.Tensor
    """The robot's position after each step ``(T, N, 2)``."""
    reward: torch.Tensor
    """Each step's reward: minus the distance to the goal after it ``(T, N)``."""
    episode: torch.Tensor
    """The episode of the trial each step belongs to (``episodes_per_trial`` and above: a later trial)."""
    step_in_episode: torch.Tensor
    """The step's index within its episode, from 0."""
    ended: torch.Tensor
    """Whether the step ended its episode (inside the goal's box or at the step limit)."""


def play_navigation_trials(agent: RL2, tasks: Tasks, trials_per_task: int, deterministic: bool, seed: int) -> NavigationTrials:
    """Navigation2D: play ``trials_per_task`` trials of each task (in task order, trials side by side) with the
    engine's rollout, and record where each episode of each trial went."""
    if not isinstance(agent.family, Navigation2D):
        raise TypeError(f"Navigation2D trials need a Navigation2D agent, got {type(agent.family).__name__}")
    env = agent.trial_env(len(tasks) * trials_per_task, agent.config.episodes_per_trial, seed=seed)
    env.set_tasks(tasks.repeat_interleave(trials_per_task))
    params = {k: v.detach() for k, v in agent.policy.named_parameters()}
    actions = torch.Generator(device=agent.device).manual_seed(seed)
    traj, _ = collect(env, agent.policy, params, agent.trial_steps, start(env, agent.policy, seed=seed), actions, deterministic)
    ended = env.episode_ended(traj.final_obs)  # episode ends, not only trial ends (traj.done)
    t = torch.arange(traj.num_steps, device=ended.device).unsqueeze(1).expand_as(ended)
    begins = torch.cat([torch.ones_like(ended[:1]), ended[:-1]])
    step_in_episode = t - torch.where(begins, t, 0).cummax(0).values
    episode = ended.long().cumsum(0) - ended.long()
    position = traj.final_obs[..., :2]  # the trial observation starts with the env's own: the position
    return NavigationTrials(position, traj.rewards, episode, step_in_episode, ended)


class StraightPath(NamedTuple):
    """:func:`distance_after_straight_path`'s measures, each ``(episodes, tasks x trials)``."""

    distance: torch.Tensor
    """Distance to the goal after as many steps as the straight path needs."""
    steps: torch.Tensor
    """The episode's length: below the family's step limit where it ended inside the goal's box."""
    straight_steps: torch.Tensor
    """The straight path's steps (the same for every episode of a trial)."""


def distance_after_straight_path(agent: RL2, tasks: Tasks, trials_per_task: int, deterministic: bool, seed: int) -> StraightPath:
    """Navigation2D: the distance to the goal of each episode of a trial after as many steps as the straight path
    needs (the oracle's, ``ceil(max_i |goal_i| / max step)``): about 0 when the episode goes straight to the goal;
    and the episode's length, to set beside those steps (:func:`play_navigation_trials` plays the trials).
    """
    played = play_navigation_trials(agent, tasks, trials_per_task, deterministic, seed)
    episodes = agent.config.episodes_per_trial
    goals = tasks.goal.to(agent.device).repeat_interleave(trials_per_task, dim=0)
    max_step = float(agent.family.action_space.high.min())
    straight_steps = torch.ceil(goals.abs().amax(-1) / max_step - 1e-6).clamp(min=1)
    ended, step_in_episode = played.ended, played.step_in_episode
    in_episode = played.episode == torch.arange(episodes, device=ended.device).view(-1, 1, 1)  # (episodes, T, N)
    # The straight path's last step, or the episode's own if it ended sooner (within the goal's box).
    at = (step_in_episode == straight_steps - 1) | (ended & (step_in_episode < straight_steps - 1))
    at = at.unsqueeze(0) & in_episode
    if not bool((at.sum(1) == 1).all()):  # a trial's episodes all end within its steps, so one step each
        raise RuntimeError("expected one straight-path step per episode and trial")
    steps = (ended.unsqueeze(0) & in_episode).mul(step_in_episode + 1).sum(1)  # each episode's length, at its end
    return StraightPath((at * -played.reward).sum(1).cpu(), steps.cpu(), straight_steps.expand_as(steps).cpu())


def plot_navigation_paths(agent: RL2, tasks: Tasks, path: Path, deterministic: bool = False, seed: int = 0) -> Path:
    """Draw one trial's path per task (each episode in its own colour, from the origin) beside its goal's box, one
    panel per task, to a PNG: whether the later episodes go straight to the goal is then plain to see."""
    played = play_navigation_trials(agent, tasks, 1, deterministic, seed)
    position, episode = played.position.cpu(), played.episode.cpu()
    episodes = agent.config.episodes_per_trial
    columns = min(len(tasks), 4)
    rows = -(-len(tasks) // columns)
    fig = Figure(figsize=(3 * columns, 3 * rows), layout="constrained")  # no pyplot: no global backend or state
    for i, goal in enumerate(tasks.goal.cpu()):
        ax = fig.add_subplot(rows, columns, i + 1)
        for e in range(episodes):
            steps = position[episode[:, i] == e, i]
            xy = torch.cat([torch.zeros(1, 2), steps])  # every episode starts at the origin
            ax.plot(xy[:, 0], xy[:, 1], marker=".", markersize=3, linewidth=1, label=f"episode {e + 1} ({len(steps)} steps)")
        box = 0.01  # Navigation2D ends an episode within this of the goal on both axes
        ax.add_patch(Rectangle((goal[0] - box, goal[1] - box), 2 * box, 2 * box, color="black"))
        ax.plot([0, goal[0]], [0, goal[1]], color="black", linestyle=":", linewidth=0.8)
        ax.set_aspect("equal")
        ax.set_xlim(-0.6, 0.6)
        ax.set_ylim(-0.6, 0.6)
        ax.legend(fontsize=6, loc="lower left")
        ax.set_title(f"goal ({goal[0]:.2f}, {goal[1]:.2f})", fontsize=8)
    fig.suptitle(f"RL² on held-out Navigation2D goals ({'most likely' if deterministic else 'sampled'} actions)")
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def straight_path_rows(learners: dict[str, tuple[RL2, bool]], tasks: Tasks) -> dict[str, dict[str, list[float]]]:
    """Per learner ``(agent, mode actions?)`` and episode (:func:`distance_after_straight_path`, 10 trials per task):
    the mean distance after the straight path's steps, the fraction of trials within tolerance then, the median
    episode length, the fraction of episodes that ended at the goal, and the fraction that did so within two steps
    of the straight path's."""
    rows: dict[str, dict[str, list[float]]] = {}
    for name, (learner, deterministic) in learners.items():
        measured = distance_after_straight_path(learner, tasks, trials_per_task=10, deterministic=deterministic, seed=0)
        if not rows:
            mean_straight = measured.straight_steps[0].double().mean().item()
            print(f"\ndistance to the goal after the straight path's steps ({mean_straight:.2f} on average; within")
            print(f"{STRAIGHT_TOLERANCE}: went straight), and the episode's length (median; ended at the goal; within 2 steps)")
        means = [mean_ci(d, 0.95) for d in measured.distance]
        straight = (measured.distance <= STRAIGHT_TOLERANCE).double().mean(1).tolist()
        limit = learner.family.max_episode_steps
        rows[name] = {
            "mean": [m for m, _, _ in means],
            "ci_half_width": [(high - low) / 2 for _, low, high in means],
            "fraction_straight": straight,
            "median_steps": measured.steps.double().median(1).values.tolist(),
            "fraction_at_goal": (measured.steps < limit).double().mean(1).tolist(),
            "fraction_within_2_steps": (measured.steps <= measured.straight_steps + 2).double().mean(1).tolist(),
        }
        row = rows[name]
        cells = "   ".join(
            f"episode {e + 1}: {m:.3f} ± {(h - lo) / 2:.3f} ({100 * f:.0f}% straight), {row['median_steps'][e]:.0f} steps "
            f"({100 * row['fraction_at_goal'][e]:.0f}% at the goal; {100 * row['fraction_within_2_steps'][e]:.0f}%)"
            for e, ((m, lo, h), f) in enumerate(zip(means, straight, strict=True))
        )
        print(f"  {name:30s} {cells}")
    return rows


def per_episode(agents: dict[str, RL2], setting: Setting, config: BenchConfig) -> dict[str, dict[str, list[float]]]:
    """Return of each episode of a trial on the evaluator's held-out tasks: each RL² agent (sampled and most likely
    actions), the untrained network, the oracle."""
    eval_config = EvalConfig(num_steps=setting.episodes_per_trial - 1)
    untrained = make_agent(setting, config, seed=config.seed + 10_000)
    learners = {**with_mode_actions(agents), "untrained RL2": untrained}
    family = untrained.family
    oracle = functools.partial(oracle_returns, family, device=config.device)
    tasks = held_out_tasks(family, eval_config)
    result = evaluate(learners, tasks, eval_config, oracle=oracle, x_label="episode in trial")
    print(result.table())
    rows = {name: {"mean": curve.mean, "ci_low": curve.ci_low, "ci_high": curve.ci_high} for name, curve in result.curves.items()}
    if result.oracle is not None:
        rows["oracle"] = {"mean": [result.oracle.mean], "ci_low": [result.oracle.ci_low], "ci_high": [result.oracle.ci_high]}
    if isinstance(family, Navigation2D):
        played = {**sampled_and_mode(agents), "untrained RL2": (untrained, False)}
        rows["straight_path"] = straight_path_rows(played, tasks)
        if config.plot_dir is not None:
            for name, (agent, deterministic) in sampled_and_mode(agents).items():
                png = config.plot_dir / f"navigation2d-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.png"
                print(f"  paths: {plot_navigation_paths(agent, tasks[:PLOTTED_TASKS], png, deterministic)}")
    return rows


def annealed_lr(lr: float, elapsed: float, budget: float, start: float) -> float:
    """``--anneal-lr``'s step size after ``elapsed`` of ``budget`` seconds: ``lr`` for the first ``start``
    fraction of the budget, then linearly to zero at the end of it."""
    held = start * budget
    return linear_anneal(lr, 0.0, max(elapsed - held, 0.0), budget - held)


VALIDATION_TASK_SEED = 54321
"""Seed of the generator that draws --validate-every's tasks (from the training split)."""


def validation_for(agent: RL2, setting: Setting, num_tasks: int, every: int) -> Validation:
    """--validate-every's validation: the return of the trial's last episode (the whole trial's for bandits) on
    ``num_tasks`` tasks of the training split, as many trials each as the agent's ``eval_envs_per_task``."""
    generator = torch.Generator().manual_seed(VALIDATION_TASK_SEED)
    tasks = agent.family.task_space.sample(num_tasks, generator=generator, split="train")
    return Validation(tasks, setting.episodes_per_trial - 1, every)


def with_best_iterate(
    agent: RL2, setting: Setting, config: BenchConfig, best_path: Path | None
) -> tuple[dict[str, RL2], dict[str, object]]:
    """The agents to score: the last iterate as "RL2", and the best-validated one saved at ``best_path`` (when
    there is one) as "RL2 (best iterate)"; plus that iterate's number and validation score for the report."""
    if best_path is None or not best_path.is_file():
        return {"RL2": agent}, {}
    state = load_checkpoint(best_path, map_location=agent.device)
    best = make_agent(setting, config, config.seed)
    best.load_state_dict(state["agent"])
    print(f"{setting.env_id}: best iterate {state['iteration']} (validation score {state['validation_score']:.3f})")
    return {"RL2": agent, "RL2 (best iterate)": best}, {
        "best_iteration": int(state["iteration"]),
        "best_validation_score": float(state["validation_score"]),
    }


def run_setting(name: str, config: BenchConfig) -> dict[str, object]:
    setting = SETTINGS[name]
    agent = make_agent(setting, config, config.seed)
    score = against_reference_policies if setting.against_reference_policies else per_episode
    if config.load_dir is not None:
        agent.load_state_dict(load_checkpoint(config.load_dir / f"{name}.pt", map_location=agent.device))
        print(f"\n{name}: scoring the agent saved after {agent.iteration} meta-iterations in {config.load_dir}")
        agents, best = with_best_iterate(agent, setting, config, config.load_dir / f"{name}-best.pt")
        results = score(agents, setting, config)
        return {"iterations": agent.iteration, "loaded_from": str(config.load_dir), **best, "results": results}
    validation, best_path = None, None
    if config.validate_every is not None and config.save_dir is not None:  # (__post_init__ requires both together)
        validation = validation_for(agent, setting, config.validation_tasks, config.validate_every)
        best_path = config.save_dir / f"{name}-best.pt"
        best_path.unlink(missing_ok=True)  # an earlier run's best is not this run's
    validation_scores: list[tuple[int, float]] = []

    def validate(validation: Validation, best_path: Path) -> None:
        validation_scores.append((iterations, keep_if_best(agent, validation, iterations, best_path)))
        print(f"  iteration {iterations:5d}: validation score {validation_scores[-1][1]:9.3f}", flush=True)

    metrics_file = None
    if config.save_dir is not None:
        config.save_dir.mkdir(parents=True, exist_ok=True)
        metrics_file = (config.save_dir / f"{name}-metrics.jsonl").open("w")
    began, iterations, budget = time.perf_counter(), 0, config.minutes * 60
    phases: dict[str, list[float]] = {"seconds_sampling": [], "seconds_update": []}
    while iterations == 0 or time.perf_counter() - began < budget:  # at least one iteration
        if config.anneal_lr:
            for group in agent.optimizer.param_groups:
                group["lr"] = annealed_lr(agent.config.ppo.lr, time.perf_counter() - began, budget, config.anneal_lr_start)
        metrics = agent.meta_train_step()
        iterations += 1
        if metrics_file is not None:
            metrics_file.write(json.dumps({"iteration": iterations, **metrics}) + "\n")
            metrics_file.flush()
        if config.snapshot_every is not None and config.save_dir is not None and iterations % config.snapshot_every == 0:
            save_checkpoint(config.save_dir / name / f"iter_{iterations:05d}.pt", agent.state_dict())
        if validation is not None and iterations % validation.every == 0:
            validate(validation, best_path)
        for key, seconds in phases.items():
            seconds.append(metrics[key])
        if iterations % 50 == 0:  # the training curve, for runs that are watched
            print(
                f"  iteration {iterations:5d} ({(time.perf_counter() - began) / 60:5.1f} min): "
                f"training trial return {metrics['trial_return']:9.2f}, entropy {metrics['entropy']:.3f}",
                flush=True,
            )
    minutes, used = (time.perf_counter() - began) / 60, hyperparameters(setting, config)
    medians = {key: statistics.median(seconds) for key, seconds in phases.items()}
    print(f"\n{name}: {iterations} meta-iterations in {minutes:.1f} min, hyperparameters {used}")
    print(
        f"median seconds per meta-iteration: sampling {medians['seconds_sampling']:.3f}, update {medians['seconds_update']:.3f}; "
        f"last training trial return {metrics['trial_return']:.2f}"
    )
    if validation is not None and iterations % validation.every != 0:  # the last iterate is a candidate too
        validate(validation, best_path)
    if metrics_file is not None:
        metrics_file.close()
    if config.save_dir is not None:
        save_checkpoint(config.save_dir / f"{name}.pt", agent.state_dict())
    agents, best = with_best_iterate(agent, setting, config, best_path)
    return {
        "iterations": iterations,
        "minutes": minutes,
        **{f"median_{key}": value for key, value in medians.items()},
        "hyperparameters": used,
        "validation_scores": validation_scores,
        **best,
        "results": score(agents, setting, config),
    }


def main(config: BenchConfig) -> dict[str, object]:
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    report: dict[str, object] = {
        "machine": machine_info(config.device),
        "config": dataclasses.asdict(config),
    }
    print(f"machine: {report['machine']}")
    report["settings"] = {name: run_setting(name, config) for name in config.settings}
    if config.json_out is not None:
        config.json_out.write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main(tyro.cli(BenchConfig, description=__doc__))
