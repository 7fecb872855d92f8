"""RL²: a recurrent policy that learns to explore within a trial (Duan et al. 2016; Wang et al. 2016).

Reads top to bottom:

1. sample one training task per env; a trial is ``episodes_per_trial``
   episodes of that task (:class:`metarl.trials.TrialEnv`);
2. roll out whole trials with a GRU policy whose input is (observation,
   previous action, previous reward, episode-end flag) and whose memory is
   carried across episode boundaries and reset only between trials;
3. GAE over trials (a trial's end is terminal), then PPO with recurrent
   minibatches of whole env sequences, truncated BPTT of configurable length.

Adaptation happens in the memory, not the weights: the adaptation curve is
the return of episode 0, 1, ... of a trial on held-out tasks.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Any

import torch
import tyro
from gymnasium import spaces

import metarl
from agents.ppo import PPOSettings, ppo_update
from metarl.checkpoint import check_saved_options
from metarl.env import RescaledActions, TensorEnv
from metarl.machine import synchronize
from metarl.policies import GRUPolicy, init_parameters
from metarl.returns import gae, next_values
from metarl.rollout import collect, start
from metarl.schedules import linear_anneal
from metarl.tasks import Tasks
from metarl.trials import TrialEnv, action_features, trial_observation
from metarl.validation import check_positive_int


@dataclasses.dataclass
class RL2Config:
    """RL² hyperparameters. Defaults: Bernoulli bandits with 5 arms and 10 pulls (the RL² paper's smallest setting)."""

    env_id: str = "metarl/BernoulliBandit-v0"
    """Registered task family to meta-train on."""
    env_kwargs: dict[str, bool | int | float | str] = dataclasses.field(default_factory=dict)
    """Family keyword arguments, e.g. ``--env-kwargs num_arms 10 num_pulls 100`` (bandit defaults: 5 arms, 10 pulls)."""
    episodes_per_trial: int = 1
    """Episodes of one task per trial (K)."""
    num_envs: int = 256
    """Trials run side by side, each on its own task."""
    hidden_size: int = 256
    """GRU width."""
    encoder_size: int | None = None
    """Width of a ReLU layer between the input and the GRU (None: the GRU reads the input itself; see
    :class:`metarl.policies.GRUPolicy`)."""
    head_size: int | None = None
    """Width of a tanh layer in each of the policy and value heads (None: linear heads on the GRU state)."""
    separate_critic: bool = False
    """Give the value head a GRU of its own, so value regression does not shape the policy's memory."""
    time_feature: bool = False
    """Also feed the steps taken in the trial over the training trial's length, so that the value of a step
    need not be inferred by counting (Pardo et al. 2018)."""
    gamma: float = 0.99
    """Discount within a trial."""
    gae_lambda: float = 0.3
    """GAE lambda (the RL² paper uses 0.3 for bandits)."""
    reward_scale: float = 1.0
    """Multiplies rewards before advantages and value targets (the policy still sees raw rewards), so a long
    trial's values stay of order one, e.g. 0.05 for 100-pull bandits; reported returns are unscaled."""
    ppo: PPOSettings = dataclasses.field(default_factory=PPOSettings)
    """PPO update settings (epochs, minibatches, clip, learning rate, BPTT length, ...)."""
    lr_anneal_iterations: int | None = None
    """Decay PPO's step size linearly from ``ppo.lr`` to zero over this many meta-iterations (CleanRL's
    ``--anneal-lr``), e.g. the run's ``--iterations``; None keeps it constant. On 5-armed 100-pull bandits a
    constant step size falls back in long runs (BENCHMARKS.md)."""
    rescale_actions: bool = True
    """Box action spaces: the policy acts in ``[-1, 1]`` per dimension, mapped onto the box
    (:class:`metarl.env.RescaledActions`, as :class:`agents.maml.MAMLConfig` does), so the Gaussian's unit initial
    noise spans the box instead of dwarfing a small one (Navigation2D's is ``[-0.1, 0.1]``). Discrete action
    spaces are unaffected."""
    eval_envs_per_task: int = 4
    """Trials per held-out task in ``adaptation_curve``."""
    eval_deterministic: bool = False
    """``adaptation_curve`` takes the policy's most likely action instead of sampling one (SB3's
    ``evaluate_policy(deterministic=True)``). Off by default: RL²'s exploration may rely on sampling."""
    device: Annotated[str, tyro.conf.Suppress] = "cpu"
    """Torch device for envs, policy and updates (on the command line: train_metarl.py's --device)."""
    seed: Annotated[int, tyro.conf.Suppress] = 0
    """Seed of every generator the agent owns (on the command line: train_metarl.py's --seed)."""

    def __post_init__(self) -> None:
        for name in ("episodes_per_trial", "num_envs", "hidden_size", "eval_envs_per_task"):
            check_positive_int(name, getattr(self, name))
        for name in ("encoder_size", "head_size", "lr_anneal_iterations"):  # optional: None switches them off
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")
        if not self.reward_scale > 0:
            raise ValueError(f"reward_scale must be positive, got {self.reward_scale!r}")
        if self.lr_anneal_iterations is not None and self.ppo.desired_kl is not None:
            raise ValueError(
                f"lr_anneal_iterations={self.lr_anneal_iterations} and ppo.desired_kl={self.ppo.desired_kl} both set the "
                "step size; choose one"
            )
        if self.num_envs < self.ppo.num_minibatches:
            raise ValueError(f"num_envs ({self.num_envs}) must be at least ppo.num_minibatches ({self.ppo.num_minibatches})")


class RL2:
    """The RL² meta-learner (see the module docstring); follows :class:`metarl.agent.MetaLearner`."""

    def __init__(self, config: RL2Config) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.family = metarl.make_family(config.env_id, **config.env_kwargs)
        if self.family.max_episode_steps is None:
            raise ValueError(f"{config.env_id} declares no episode limit; RL² needs bounded trials")
        self.trial_steps = self.family.max_episode_steps * config.episodes_per_trial
        self.rescales_actions = config.rescale_actions and isinstance(self.family.action_space, spaces.Box)
        self.env = self.trial_env(config.num_envs, config.episodes_per_trial, config.seed + 2)
        if config.ppo.bptt_length is not None and self.trial_steps % config.ppo.bptt_length:
            raise ValueError(f"ppo.bptt_length {config.ppo.bptt_length} must divide the trial length {self.trial_steps}")
        obs_dim = int(self.env.single_observation_space.shape[0])
        policy = GRUPolicy(
            obs_dim,
            self.env.single_action_space,
            config.hidden_size,
            separate_critic=config.separate_critic,
            encoder_size=config.encoder_size,
            head_size=config.head_size,
        )
        self.policy = init_parameters(policy, torch.Generator().manual_seed(config.seed)).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.ppo.lr, eps=1e-5)
        self.task_generator = torch.Generator().manual_seed(config.seed)
        self.action_generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.minibatch_generator = torch.Generator().manual_seed(config.seed + 3)
        self._eval_envs: dict[tuple[int, int], TrialEnv] = {}
        self.iteration = 0

    def trial_env(self, num_envs: int, episodes_per_trial: int, seed: int) -> TrialEnv:
        """``num_envs`` trials of ``episodes_per_trial`` episodes on this agent's family, with the observations
        its policy reads (set their tasks with ``set_tasks``)."""
        env = TensorEnv(self.family, num_envs=num_envs, device=self.device, seed=seed, validate_actions=False)
        if self.rescales_actions:
            env = RescaledActions(env)
        return TrialEnv(env, episodes_per_trial, time_horizon=self.trial_steps if self.config.time_feature else None)

    # --- meta-training ------------------------------------------------------------------
    def meta_train_step(self) -> dict[str, float]:
        """One rollout of one trial per env on fresh training tasks, then a PPO update."""
        cfg = self.config
        began = time.perf_counter()
        tasks = self.family.task_space.sample(cfg.num_envs, generator=self.task_generator, split="train")
        self.env.set_tasks(tasks)
        params = {k: v.detach() for k, v in self.policy.named_parameters()}
        traj, _ = collect(self.env, self.policy, params, self.trial_steps, start(self.env, self.policy), self.action_generator)
        synchronize(self.device)
        sampled = time.perf_counter()
        nv = next_values(traj.values, traj.last_value, traj.terminated, traj.truncated, traj.final_values)
        advantages, returns = gae(traj.rewards * cfg.reward_scale, traj.values, nv, traj.done, cfg.gamma, cfg.gae_lambda)
        if cfg.lr_anneal_iterations is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = linear_anneal(cfg.ppo.lr, 0.0, self.iteration, cfg.lr_anneal_iterations)
        stats = ppo_update(self.policy, self.optimizer, traj, advantages, returns, cfg.ppo, self.minibatch_generator)
        self.iteration += 1
        trials = traj.episode_stats()
        return {
            "trial_return": float(trials["episode_return"]),
            "lr": self.optimizer.param_groups[0]["lr"],  # the step size this update used (see lr_anneal_iterations)
            **stats,
            "seconds_sampling": sampled - began,
            "seconds_update": time.perf_counter() - sampled,
            "env_steps_per_second": traj.num_steps * traj.num_envs / (sampled - began),
        }

    # --- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def adaptation_curve(
        self, tasks: Tasks, num_steps: int, generator: torch.Generator, deterministic: bool | None = None
    ) -> torch.Tensor:
        """Mean return of episode 0..``num_steps`` of a trial, per task: ``(num_steps + 1, M)``.

        Trials here have ``num_steps + 1`` episodes (training used
        ``episodes_per_trial``); each task runs ``eval_envs_per_task`` trials.
        ``deterministic``: take the policy's mode instead of sampling (default:
        ``config.eval_deterministic``).
        """
        if deterministic is None:
            deterministic = self.config.eval_deterministic
        dist = self.policy.action_dist
        episodes = num_steps + 1
        per_task = self.config.eval_envs_per_task
        key = (len(tasks), episodes)
        if key not in self._eval_envs:
            self._eval_envs[key] = self.trial_env(len(tasks) * per_task, episodes, seed=0)
        env = self._eval_envs[key]
        env.set_tasks(tasks.repeat_interleave(per_task))
        seeds = torch.randint(2**62, (2,), generator=generator).tolist()
        obs = env.reset(seed=seeds[0])
        actions = torch.Generator(device=self.device).manual_seed(seeds[1])
        hidden = self.policy.initial_hidden(env.num_envs, self.device)
        totals = torch.zeros(episodes, env.num_envs, device=self.device)
        in_first_trial = torch.ones(env.num_envs, dtype=torch.bool, device=self.device)
        columns = torch.arange(env.num_envs, device=self.device)
        for _ in range(env.max_trial_steps):
            out = self.policy(obs, hidden)
            action = dist.mode(out.dist_params) if deterministic else dist.sample(out.dist_params, actions)
            episode = env.episode_index.clone()
            step = env.step(action)
            totals.index_put_((episode, columns), step.reward * in_first_trial, accumulate=True)
            in_first_trial &= ~step.terminated
            hidden = torch.where(step.reset_memory.unsqueeze(-1), torch.zeros_like(out.hidden), out.hidden)
            obs = step.obs
        return totals.reshape(episodes, len(tasks), per_task).mean(-1).cpu()

    @torch.no_grad()
    def classify(self, support_images: torch.Tensor, support_labels: torch.Tensor, query_images: torch.Tensor) -> torch.Tensor:
        """Predicted labels ``(Q,)`` of one few-shot task's query images, answered from the GRU's memory.

        For families that build observations from images (``family.observation``,
        e.g. :class:`envs.omniglot.OmniglotBandit`). The support set is played as
        the first steps of a trial, in the given order: the policy guesses each
        image greedily, is rewarded, and sees the true label with the next
        image, as in training. Then every query image is answered greedily from
        the memory the support set left, each independently of the others (Lake
        et al.'s protocol: no query's label is revealed to another). Support
        labels lie in ``0..N-1`` with ``N <= num_ways``; answers are restricted to
        the labels present in the support set.
        """
        family = self.family
        if not callable(getattr(family, "observation", None)):
            raise TypeError(f"{type(family).__name__} builds no observations from images; classify needs family.observation")
        num_ways = int(family.action_space.n)
        support_labels = torch.as_tensor(support_labels, dtype=torch.long, device=self.device).reshape(-1)
        if len(support_labels) != len(support_images) or len(support_labels) == 0:
            raise ValueError(
                f"need one label per support image, got {len(support_labels)} labels for {len(support_images)} images"
            )
        if int(support_labels.min()) < 0 or int(support_labels.max()) >= num_ways:
            raise ValueError(f"support labels must lie in [0, {num_ways}), got {sorted(set(support_labels.tolist()))}")
        support = support_images.to(self.device, torch.float32).flatten(1)
        query = query_images.to(self.device, torch.float32).flatten(1)
        mode = self.policy.action_dist.mode
        hidden = self.policy.initial_hidden(1, self.device)
        previous_label = torch.full((1,), -1, dtype=torch.long, device=self.device)
        features = torch.zeros(1, num_ways, device=self.device)
        reward, ended = torch.zeros(1, device=self.device), torch.zeros(1, dtype=torch.bool, device=self.device)
        elapsed = self.env.elapsed(torch.arange(len(support) + 1, device=self.device))
        for t, (image, label) in enumerate(zip(support, support_labels, strict=True)):  # one step per image, not a rollout
            step_elapsed = None if elapsed is None else elapsed[t : t + 1]
            obs = trial_observation(family.observation(image.unsqueeze(0), previous_label), features, reward, ended, step_elapsed)
            out = self.policy(obs, hidden)
            action = mode(out.dist_params)
            hidden, previous_label = out.hidden, label.reshape(1)
            features = action_features(action, num_ways)
            reward = (action == label).float()
        q = len(query)
        query_elapsed = None if elapsed is None else elapsed[-1:].expand(q)
        obs = trial_observation(
            family.observation(query, previous_label.expand(q)),
            features.expand(q, -1),
            reward.expand(q),
            ended.expand(q),
            query_elapsed,
        )
        logits = self.policy(obs, hidden.expand(q, -1)).dist_params
        present = (support_labels.unsqueeze(1) == torch.arange(num_ways, device=self.device)).any(0)
        return logits.masked_fill(~present, -torch.inf).argmax(-1)

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "task_generator": self.task_generator.get_state(),
            "action_generator": self.action_generator.get_state(),
            "minibatch_generator": self.minibatch_generator.get_state(),
            "env_generator": self.env.env.generator.get_state(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The options that shape the network or what its actions mean; checkpoints from before an option existed
        # were saved without it. Only Box actions are rescaled.
        options = [("time_feature", False), ("encoder_size", None), ("head_size", None)]
        if isinstance(self.family.action_space, spaces.Box):
            options.append(("rescale_actions", False))
        check_saved_options(state["config"], self.config, options, "rl2")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.task_generator.set_state(state["task_generator"])
        self.action_generator.set_state(state["action_generator"])
        self.minibatch_generator.set_state(state["minibatch_generator"])
        self.env.env.generator.set_state(state["env_generator"])
        self.iteration = state["iteration"]
