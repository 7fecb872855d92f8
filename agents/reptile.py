"""Reptile over PPO: meta-learn an initialization from which a few PPO updates solve a task (Nichol et al. 2018).

Reads top to bottom:

1. sample a meta-batch of M training tasks;
2. **inner loop**: from the meta-parameters θ, run ``inner_updates`` (k) PPO
   updates on every task, each on a fresh rollout of ``envs_per_task`` envs;
3. **outer loop**: θ ← θ + ε · mean_i(θ̃_i − θ), with ε annealed linearly
   (or the Reptile direction fed to Adam as a negative gradient).

Two inner learners behind one interface (:class:`InnerLearner`):

- :class:`NativePPO`: the project's PPO with every task's parameter copy and
  Adam state stacked ``(M, ...)``; all M tasks' rollouts and updates run as
  one batched computation on the device (:func:`agents.ppo.ppo_update`).
- :class:`SB3PPO`: ``stable_baselines3.PPO`` trained on one task at a time,
  for any Gymnasium env with ``set_task`` (metarl families through the SB3
  ``VecEnv`` view), with θ copied in and θ̃ copied out of its policy.

The policy (actor and critic) is meta-learned; every task starts with a fresh Adam.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Any, Literal, Protocol

import numpy as np
import torch
import tyro
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from torch import nn

import metarl
from agents.ppo import PPOSettings, ppo_update
from metarl.adapters import SB3VecEnv
from metarl.env import TaskFamily, TensorEnv
from metarl.machine import synchronize
from metarl.policies import MLPPolicy, init_parameters
from metarl.returns import gae, next_values
from metarl.rollout import Params, Trajectories, collect, first_episode_returns, start
from metarl.schedules import linear_anneal
from metarl.tasks import Tasks
from metarl.validation import check_positive_int


@dataclasses.dataclass
class ReptileConfig:
    """Reptile-over-PPO hyperparameters. Defaults: CartPole with sampled physics."""

    env_id: str = "metarl/CartPole-v0"
    """Registered task family to meta-train on."""
    inner_learner: Literal["native", "sb3"] = "native"
    """Inner PPO: the batched native one, or SB3's PPO one task at a time (SB3 runs resume, but not bit-for-bit)."""
    meta_batch_size: int = 8
    """Tasks per meta-iteration (M)."""
    envs_per_task: int = 8
    """Envs per task (E)."""
    rollout_steps: int | None = None
    """Steps per env per inner PPO update (default: the family's episode limit, so every env finishes an episode)."""
    inner_updates: int = 3
    """PPO updates per task from θ (k); each collects a fresh rollout."""
    ppo: PPOSettings = dataclasses.field(default_factory=lambda: PPOSettings(lr=1e-3, ent_coef=0.0))
    """Inner PPO settings (a fresh Adam per task)."""
    meta_lr: float = 1.0
    """Reptile step size ε at the first meta-iteration, in (0, 1]."""
    meta_lr_final: float = 0.1
    """ε after ``anneal_iterations`` (linear in between; constant after), in (0, 1]."""
    anneal_iterations: int = 200
    """Meta-iterations over which ε goes from ``meta_lr`` to ``meta_lr_final``."""
    outer_optimizer: Literal["sgd", "adam"] = "sgd"
    """``sgd``: θ += ε·Δ. ``adam``: Adam with step size ``outer_lr`` on the gradient −Δ (ε unused)."""
    outer_lr: float = 1e-3
    """Adam step size of the outer optimizer (``outer_optimizer=adam``)."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this for learning (not for reported returns); e.g. 0.1 on Pendulum."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Actor and critic MLP widths."""
    activation: str = "tanh"
    """MLP activation (tanh or relu)."""
    init_log_std: float = 0.0
    """Initial log standard deviation of Gaussian policies."""
    device: Annotated[str, tyro.conf.Suppress] = "cpu"
    """Torch device (on the command line: train_metarl.py's --device)."""
    seed: Annotated[int, tyro.conf.Suppress] = 0
    """Seed of every generator the agent owns (on the command line: train_metarl.py's --seed)."""

    def __post_init__(self) -> None:
        for name in ("meta_batch_size", "envs_per_task", "inner_updates", "anneal_iterations"):
            check_positive_int(name, getattr(self, name))
        if self.rollout_steps is not None:
            check_positive_int("rollout_steps", self.rollout_steps)
        for name in ("meta_lr", "meta_lr_final"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} (the Reptile step size ε) must lie in (0, 1], got {getattr(self, name)!r}")
        for name in ("outer_lr", "reward_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")
        if self.inner_learner not in ("native", "sb3"):
            raise ValueError(f"inner_learner must be 'native' or 'sb3', got {self.inner_learner!r}")
        if self.outer_optimizer not in ("sgd", "adam"):
            raise ValueError(f"outer_optimizer must be 'sgd' or 'adam', got {self.outer_optimizer!r}")
        if self.inner_learner == "native" and self.ppo.target_kl is not None:
            raise ValueError(
                f"ppo.target_kl={self.ppo.target_kl} needs one PPO learner; the native inner learner steps "
                "meta_batch_size tasks as one (use inner_learner='sb3', which stops each task on its own)"
            )
        if self.ppo.desired_kl is not None:
            raise ValueError(
                f"ppo.desired_kl={self.ppo.desired_kl} is not supported by Reptile: each task's inner PPO would need a "
                "step size of its own (the native learner steps all tasks as one; SB3's PPO has no KL-adaptive schedule)"
            )
        if any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive, got {self.hidden_sizes!r}")

    def meta_step_size(self, iteration: int) -> float:
        """ε at meta-iteration ``iteration`` (0-based)."""
        return linear_anneal(self.meta_lr, self.meta_lr_final, iteration, self.anneal_iterations)


def reptile_direction(theta: Params, adapted: Params) -> Params:
    """mean over tasks of (θ̃ − θ), with ``adapted`` holding each task's parameters stacked ``(M, ...)``."""
    return {k: adapted[k].detach().mean(0) - v.detach() for k, v in theta.items()}


def reptile_update(theta: Params, adapted: Params, step_size: float) -> Params:
    """The Reptile step applied in place: θ ← θ + ε · mean over tasks of (θ̃ − θ); returns the direction."""
    direction = reptile_direction(theta, adapted)
    with torch.no_grad():
        for k, v in theta.items():
            v.add_(direction[k], alpha=step_size)
    return direction


class InnerLearner(Protocol):
    """Adapts the meta-parameters to a batch of tasks with ``num_updates`` PPO updates each."""

    def adapt(self, theta: Params, tasks: Tasks, num_updates: int, measure: bool) -> tuple[Params, torch.Tensor]:
        """Returns the adapted parameters ``(M, ...)`` and per-task returns ``(R, M)``, on the agent's device.

        With ``measure``, ``R = num_updates + 1`` and row ``j`` is the mean
        first-episode return of fresh episodes under the parameters after
        ``j`` updates (the adaptation curve); without, whatever returns the
        learner saw while training (for logging).
        """
        ...


# --- the native batched learner ------------------------------------------------------------


class NativePPO:
    """All tasks' PPO learners as one: stacked parameters, stacked Adam state, one rollout of M x E envs."""

    def __init__(self, agent: Reptile) -> None:
        self.agent = agent
        self._envs: dict[int, TensorEnv] = {}

    def env(self, num_tasks: int) -> TensorEnv:
        """The ``num_tasks x E`` env (built once per size)."""
        if num_tasks not in self._envs:
            self._envs[num_tasks] = self.agent.make_env(num_tasks * self.agent.config.envs_per_task)
        return self._envs[num_tasks]

    def adapt(self, theta: Params, tasks: Tasks, num_updates: int, measure: bool) -> tuple[Params, torch.Tensor]:
        agent, cfg = self.agent, self.agent.config
        num_tasks = len(tasks)
        env = self.env(num_tasks)
        env.set_tasks(tasks.repeat_interleave(cfg.envs_per_task))
        params = {k: v.detach().expand(num_tasks, *v.shape).clone().requires_grad_(True) for k, v in theta.items()}
        optimizer = torch.optim.Adam(params.values(), lr=cfg.ppo.lr, eps=1e-5)
        returns = []
        for update in range(num_updates + int(measure)):
            traj = agent.rollout(env, {k: v.detach() for k, v in params.items()})
            returns.append(first_episode_returns(traj, num_tasks))
            if update < num_updates:
                advantages, targets = agent.advantages(traj)
                ppo_update(agent.policy, optimizer, traj, advantages, targets, cfg.ppo, agent.minibatch_generator, params)
        return {k: v.detach() for k, v in params.items()}, torch.stack(returns)


# --- the Stable-Baselines3 learner ----------------------------------------------------------


def sb3_parameter_names(num_hidden_layers: int, gaussian: bool) -> dict[str, str]:
    """Our :class:`~metarl.policies.MLPPolicy` (with value head) parameter names -> SB3 ``ActorCriticPolicy``'s.

    SB3's ``MlpPolicy`` with ``net_arch=dict(pi=h, vf=h)`` has the same
    layers: its extractor's Linear layers sit at even indices (activations between).
    """
    names = {}
    for net, ours in (("policy_net", "actor"), ("value_net", "critic")):
        for i in range(num_hidden_layers):
            for kind in ("weight", "bias"):
                names[f"{ours}.layers.{i}.{kind}"] = f"mlp_extractor.{net}.{2 * i}.{kind}"
    for kind in ("weight", "bias"):
        names[f"actor.layers.{num_hidden_layers}.{kind}"] = f"action_net.{kind}"
        names[f"critic.layers.{num_hidden_layers}.{kind}"] = f"value_net.{kind}"
    if gaussian:
        names["log_std"] = "log_std"
    return names


class _ScaleReward(VecEnvWrapper):
    """Multiplies rewards by a constant (the native learner's ``reward_scale``)."""

    def __init__(self, venv: VecEnv, scale: float) -> None:
        super().__init__(venv)
        self.scale = scale

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        return obs, rewards * self.scale, dones, infos


class SB3PPO:
    """Stable-Baselines3's PPO as the inner learner, one task after another.

    ``vec_env`` (default: the family's ``SB3VecEnv`` view with ``envs_per_task``
    envs) is any SB3 ``VecEnv`` whose envs have ``set_task(task)``, e.g. a
    ``DummyVecEnv`` of ``gymnasium.make(id)``; every env runs the same task.
    Budget and settings mirror the native learner: ``n_steps`` =
    ``rollout_steps``, the same epochs, minibatches, clip, step size and
    entropy weight; SB3's value loss is a plain MSE where ours is half of
    one, so its ``vf_coef`` is halved to match. Each task starts from θ with a
    fresh Adam; every update starts from reset envs, as the native learner's do.
    """

    def __init__(self, agent: Reptile, vec_env: VecEnv | None = None) -> None:
        self.agent = agent
        cfg = agent.config
        self.vec_env = vec_env or SB3VecEnv(agent.make_env(cfg.envs_per_task, device="cpu"))
        if not isinstance(self.vec_env, SB3VecEnv):
            first = self.vec_env.get_attr("unwrapped", [0])[0]
            if not callable(getattr(first, "set_task", None)):
                raise TypeError(f"the SB3 inner learner needs envs with set_task(task); {type(first).__name__} has none")
        scaled = _ScaleReward(self.vec_env, cfg.reward_scale) if cfg.reward_scale != 1.0 else self.vec_env
        samples = agent.rollout_steps * self.vec_env.num_envs
        activation = {"tanh": nn.Tanh, "relu": nn.ReLU}[cfg.activation]
        self.model = PPO(
            "MlpPolicy",
            scaled,
            learning_rate=cfg.ppo.lr,
            n_steps=agent.rollout_steps,
            batch_size=samples // cfg.ppo.num_minibatches,
            n_epochs=cfg.ppo.epochs,
            gamma=cfg.gamma,
            gae_lambda=cfg.gae_lambda,
            clip_range=cfg.ppo.clip,
            ent_coef=cfg.ppo.ent_coef,
            target_kl=cfg.ppo.target_kl,
            vf_coef=cfg.ppo.vf_coef / 2,
            max_grad_norm=cfg.ppo.max_grad_norm,
            policy_kwargs=dict(net_arch=dict(pi=list(cfg.hidden_sizes), vf=list(cfg.hidden_sizes)), activation_fn=activation),
            seed=cfg.seed,
            device="cpu",
        )
        # A logger with no outputs: without one, every learn() call makes an empty SB3-<time> folder in the temp dir.
        self.model.set_logger(Logger(folder=None, output_formats=[]))
        self.names = sb3_parameter_names(len(cfg.hidden_sizes), agent.policy.gaussian)
        self._sb3_params = dict(self.model.policy.named_parameters())

    def _set_task(self, task: Tasks) -> None:
        if isinstance(self.vec_env, SB3VecEnv):
            self.vec_env.set_tasks(task.repeat_interleave(self.vec_env.num_envs))
        else:
            self.vec_env.env_method("set_task", task)

    def load(self, params: Params) -> None:
        """Copy our parameters into the SB3 policy and give it a fresh Adam."""
        with torch.no_grad():
            for ours, theirs in self.names.items():
                self._sb3_params[theirs].copy_(params[ours])
        policy = self.model.policy
        policy.optimizer = policy.optimizer_class(policy.parameters(), lr=self.agent.config.ppo.lr, **policy.optimizer_kwargs)

    def params(self) -> Params:
        """The SB3 policy's parameters under our names (copies, on the agent's device)."""
        return {ours: self._sb3_params[theirs].detach().clone().to(self.agent.device) for ours, theirs in self.names.items()}

    def adapt(self, theta: Params, tasks: Tasks, num_updates: int, measure: bool) -> tuple[Params, torch.Tensor]:
        paths: list[list[Params]] = []  # per task: θ and the parameters after every update (measure), or the last only
        seen = torch.zeros(num_updates, len(tasks))
        steps = self.agent.rollout_steps * self.vec_env.num_envs
        for i in range(len(tasks)):
            self._set_task(tasks[i])
            self.load(theta)
            path = [{k: v.detach().clone() for k, v in theta.items()}] if measure else []
            for update in range(num_updates):
                self.model.learn(total_timesteps=steps, reset_num_timesteps=True)  # one rollout, one PPO update
                episodes = [info["r"] for info in self.model.ep_info_buffer]
                seen[update, i] = float(np.mean(episodes)) if episodes else float("nan")
                if measure or update == num_updates - 1:
                    path.append(self.params())
            paths.append(path)
        after = [{k: torch.stack([path[j][k] for path in paths]) for k in theta} for j in range(len(paths[0]))]
        if not measure:
            return after[-1], seen.to(self.agent.device)  # on the agent's device, as the native learner's
        # The curve is measured exactly as the native learner's: fresh first episodes under each update's parameters.
        return after[-1], torch.stack([self.agent.measure(params, tasks) for params in after])


# --- the agent ------------------------------------------------------------------------------------


class Reptile:
    """Reptile over PPO (see the module docstring); follows :class:`metarl.agent.MetaLearner`."""

    def __init__(self, config: ReptileConfig, vec_env: VecEnv | None = None) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.family: TaskFamily = metarl.make_family(config.env_id)
        steps = config.rollout_steps or self.family.max_episode_steps
        if steps is None:
            raise ValueError(f"{config.env_id} has no episode limit; set rollout_steps")
        self.rollout_steps = steps
        if steps * config.envs_per_task < config.ppo.num_minibatches:
            raise ValueError(
                f"rollout_steps x envs_per_task = {steps * config.envs_per_task} samples per task "
                f"cannot fill ppo.num_minibatches = {config.ppo.num_minibatches}"
            )
        policy = MLPPolicy(
            int(self.family.observation_space.shape[0]),
            self.family.action_space,
            config.hidden_sizes,
            config.activation,
            value_head=True,
            init_log_std=config.init_log_std,
        )
        self.policy = init_parameters(policy, torch.Generator().manual_seed(config.seed)).to(self.device)
        self.task_generator = torch.Generator().manual_seed(config.seed)
        self.action_generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.minibatch_generator = torch.Generator().manual_seed(config.seed + 3)
        self.outer = torch.optim.Adam(self.policy.parameters(), lr=config.outer_lr) if config.outer_optimizer == "adam" else None
        self._native = NativePPO(self)
        self.inner: InnerLearner = self._native if config.inner_learner == "native" else SB3PPO(self, vec_env)
        self.iteration = 0

    def make_env(self, num_envs: int, device: torch.device | str | None = None) -> TensorEnv:
        return TensorEnv(
            self.family, num_envs=num_envs, device=device or self.device, seed=self.config.seed + 2, validate_actions=False
        )

    # --- shared by the learners -------------------------------------------------------------
    def rollout(self, env: TensorEnv, params: Params) -> Trajectories:
        """``rollout_steps`` steps of every env from a reset, with (per-task) ``params``."""
        traj, _ = collect(env, self.policy, params, self.rollout_steps, start(env, self.policy), generator=self.action_generator)
        return traj

    def advantages(self, traj: Trajectories) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE advantages and value targets of scaled rewards, bootstrapping truncations and the rollout's end."""
        cfg = self.config
        nv = next_values(traj.values, traj.last_value, traj.terminated, traj.truncated, traj.final_values)
        return gae(traj.rewards * cfg.reward_scale, traj.values, nv, traj.done, cfg.gamma, cfg.gae_lambda)

    def measure(self, params: Params, tasks: Tasks) -> torch.Tensor:
        """Mean first-episode return per task ``(M,)`` of fresh episodes under per-task ``params`` ``(M, ...)``."""
        env = self._native.env(len(tasks))
        env.set_tasks(tasks.repeat_interleave(self.config.envs_per_task))
        return first_episode_returns(self.rollout(env, params), len(tasks))

    # --- meta-training ------------------------------------------------------------------------
    def meta_train_step(self) -> dict[str, float]:
        """Adapt to a meta-batch of training tasks with k PPO updates each, then the Reptile step."""
        cfg = self.config
        began = time.perf_counter()
        tasks = self.family.task_space.sample(cfg.meta_batch_size, generator=self.task_generator, split="train")
        theta = dict(self.policy.named_parameters())
        adapted, returns = self.inner.adapt(theta, tasks, cfg.inner_updates, measure=False)
        synchronize(self.device)
        adapted_at = time.perf_counter()
        step_size = cfg.meta_step_size(self.iteration)
        if self.outer is None:
            direction = reptile_update(theta, adapted, step_size)
        else:
            direction = reptile_direction(theta, adapted)
            self.outer.zero_grad()
            for k, v in theta.items():
                v.grad = -direction[k]
            self.outer.step()
        self.iteration += 1
        env_steps = cfg.inner_updates * self.rollout_steps * cfg.envs_per_task * len(tasks)
        norm = torch.sqrt(sum(d.square().sum() for d in direction.values()))
        stats = torch.stack([returns[0].nanmean(), returns[-1].nanmean(), norm]).tolist()
        return {
            "return_before_adaptation": stats[0],
            "return_last_inner_update": stats[1],
            "reptile_direction_norm": stats[2],
            "meta_step_size": step_size,
            "seconds_inner": adapted_at - began,
            "env_steps_per_second": env_steps / (adapted_at - began),
        }

    # --- evaluation ---------------------------------------------------------------------------
    def adaptation_curve(self, tasks: Tasks, num_steps: int, generator: torch.Generator) -> torch.Tensor:
        """Mean first-episode return per task after 0..``num_steps`` inner PPO updates from θ, ``(num_steps + 1, M)``."""
        # The env of len(tasks) envs per task batch is the training env when len(tasks) == meta_batch_size.
        streams = (self.action_generator, self.minibatch_generator, self._native.env(len(tasks)).generator)
        saved = [g.get_state() for g in streams]
        for g, seed in zip(streams, torch.randint(2**62, (3,), generator=generator).tolist(), strict=True):
            g.manual_seed(seed)
        try:
            _, curve = self.inner.adapt(dict(self.policy.named_parameters()), tasks, num_steps, measure=True)
        finally:  # evaluating never changes the training streams
            for g, state in zip(streams, saved, strict=True):
                g.set_state(state)
        return curve.cpu()

    # --- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "policy": self.policy.state_dict(),
            "outer": self.outer.state_dict() if self.outer else None,
            "task_generator": self.task_generator.get_state(),
            "action_generator": self.action_generator.get_state(),
            "minibatch_generator": self.minibatch_generator.get_state(),
            "env_generator": self._native.env(self.config.meta_batch_size).generator.get_state(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        if self.outer is not None and state["outer"] is not None:
            self.outer.load_state_dict(state["outer"])
        self.task_generator.set_state(state["task_generator"])
        self.action_generator.set_state(state["action_generator"])
        self.minibatch_generator.set_state(state["minibatch_generator"])
        self._native.env(self.config.meta_batch_size).generator.set_state(state["env_generator"])
        self.iteration = state["iteration"]
