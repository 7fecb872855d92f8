"""MAML-RL: model-agnostic meta-learning for policies (Finn, Abbeel and Levine 2017).

Reads top to bottom:

1. sample a meta-batch of M training tasks; env ``i`` of the ``M x E`` batch runs task ``i // E``;
2. **inner loop**: collect trajectories with the current parameters, fit a
   linear baseline per task, and take policy-gradient steps on per-task
   copies of the parameters, all tasks in one batched computation;
3. collect validation trajectories with every task's adapted parameters (one
   rollout: each task acts with its own parameters in the same step);
4. **outer loop**: TRPO (natural gradient with a KL bound measured *through*
   the adaptation, as in the paper) or PPO-clip on the validation returns,
   differentiating through the inner steps (second order) or not (first order).

Optional Meta-SGD (Li et al. 2017): learned per-parameter inner step sizes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
import tyro
from gymnasium import spaces
from torch.func import vmap

import metarl
from agents.baselines import LinearFeatureBaseline
from agents.losses import masked_mean, ppo_clip_loss, reinforce_loss, surrogate_loss
from agents.trpo import trpo_step
from metarl.checkpoint import check_saved_options
from metarl.env import RescaledActions, TensorEnv
from metarl.machine import synchronize
from metarl.policies import MLPPolicy, init_parameters
from metarl.returns import discounted_returns, gae, next_values
from metarl.rollout import (
    Params,
    collect,
    first_episode_mask,
    first_episode_returns,
    policy_forward,
    start,
    task_batch_size,
    to_task_major,
)
from metarl.tasks import Tasks
from metarl.validation import check_positive_int


@dataclasses.dataclass
class MAMLConfig:
    """MAML-RL hyperparameters. Defaults: the paper's 2-D navigation setting, with ProMP's LVC inner objective."""

    env_id: str = "metarl/Navigation2D-v0"
    """Registered task family to meta-train on."""
    meta_batch_size: int = 20
    """Tasks per meta-iteration (M)."""
    episodes_per_task: int = 20
    """Envs per task (E); each collects ``horizon`` steps per rollout."""
    eval_episodes_per_task: int | None = None
    """Episodes per task and adaptation step in ``adaptation_curve`` (held-out evaluation); default:
    ``episodes_per_task``. The MAML paper's test script adapts with 40 (cbfinn/maml_rl,
    ``maml_examples/test_maml_point.py``: ``batch_size=4000`` steps of horizon 100)."""
    horizon: int | None = None
    """Rollout length in steps; default: the family's episode limit."""
    inner_steps: int = 1
    """Policy-gradient adaptation steps per task (0: plain multi-task training, the 'pretrained' baseline)."""
    inner_lr: float = 0.1
    """Inner-loop step size (the initial value when learned)."""
    first_order: bool = False
    """Drop second-order terms (FOMAML)."""
    inner_objective: Literal["reinforce", "lvc"] = "lvc"
    """Inner loss: 'lvc' (ProMP's low-variance curvature form, Rothfuss et al. 2018) or 'reinforce' (the MAML
    paper's log-likelihood form). Both take the same inner step; LVC's second-order meta-gradient also credits
    the pre-update policy for the samples it collects; with it, post-adaptation returns keep rising for ~800
    meta-iterations on Navigation2D instead of declining after ~50 (BENCHMARKS.md)."""
    learn_inner_lr: bool = False
    """Meta-learn one inner step size per parameter (Meta-SGD)."""
    inner_loop: Literal["batched", "looped"] = "batched"
    """Adapt all tasks in one batched computation, or one task at a time (for comparison)."""
    outer: Literal["trpo", "ppo"] = "trpo"
    """Outer optimiser."""
    max_kl: float = 0.01
    """TRPO: KL bound of a meta-update."""
    max_kl_half_life: float | None = None
    """TRPO: halve the KL bound every this many meta-iterations (None: constant). A fixed bound keeps the
    policy moving by the same KL once the meta-gradient is mostly noise; on Navigation2D the held-out
    return then declines after ~750-1,100 iterations; a half-life of 800 holds it near its peak, not above it
    (BENCHMARKS.md)."""
    cg_iters: int = 10
    """TRPO: conjugate-gradient iterations."""
    cg_damping: float = 1e-5
    """TRPO: damping added to Fisher-vector products."""
    ls_max_steps: int = 15
    """TRPO: line-search steps."""
    ls_backtrack: float = 0.8
    """TRPO: line-search shrink factor."""
    fisher_subsample: int = 5
    """TRPO: Fisher-vector products on every k-th time step of each rollout (1: all; OpenAI Baselines' TRPO
    uses every 5th sample); the gradient and the line search's KL check always use all samples."""
    ppo_epochs: int = 5
    """PPO: outer epochs per meta-iteration."""
    ppo_clip: float = 0.2
    """PPO: ratio clip."""
    outer_lr: float = 3e-4
    """PPO: Adam step size."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 1.0
    """GAE lambda (1.0: Monte-Carlo returns minus the baseline)."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Policy MLP widths."""
    activation: str = "tanh"
    """Policy activation (tanh or relu)."""
    init_log_std: float = 0.0
    """Initial log standard deviation of Gaussian policies."""
    rescale_actions: bool = True
    """Box action spaces: the policy acts in ``[-1, 1]`` per dimension, mapped onto the box
    (:class:`metarl.env.RescaledActions`), as the MAML paper's code does through rllab's ``normalize``; its unit
    initial noise then spans the box instead of saturating it. On Navigation2D (box ``[-0.1, 0.1]``) the
    post-adaptation return reaches about -12 within 100 meta-iterations instead of 1,000 (BENCHMARKS.md).
    Discrete action spaces are unaffected."""
    learn_log_std: bool = True
    """Meta-learn the Gaussian policy's log standard deviation (False: keep ``init_log_std``; the inner step still adapts it)."""
    init: Literal["xavier", "torch"] = "xavier"
    """Weight initialisation: Glorot-uniform with zero biases (the MAML paper's rllab code) or PyTorch's default."""
    device: Annotated[str, tyro.conf.Suppress] = "cpu"
    """Torch device for envs, policy and updates (on the command line: train_metarl.py's --device)."""
    seed: Annotated[int, tyro.conf.Suppress] = 0
    """Seed of every generator the agent owns (on the command line: train_metarl.py's --seed)."""

    def __post_init__(self) -> None:
        if self.eval_episodes_per_task is not None:
            check_positive_int("eval_episodes_per_task", self.eval_episodes_per_task)
        positive_ints = ("meta_batch_size", "episodes_per_task", "cg_iters", "ls_max_steps", "ppo_epochs", "fisher_subsample")
        for name in positive_ints:
            check_positive_int(name, getattr(self, name))
        if self.horizon is not None and (not isinstance(self.horizon, int) or self.horizon < 1):
            raise ValueError(f"horizon must be a positive int or None, got {self.horizon!r}")
        if not isinstance(self.inner_steps, int) or self.inner_steps < 0:
            raise ValueError(f"inner_steps must be a non-negative int, got {self.inner_steps!r}")
        for name in ("inner_lr", "max_kl", "outer_lr", "ppo_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.max_kl_half_life is not None and not self.max_kl_half_life > 0:
            raise ValueError(f"max_kl_half_life must be positive or None, got {self.max_kl_half_life!r}")
        if self.cg_damping < 0:
            raise ValueError(f"cg_damping must be non-negative, got {self.cg_damping!r}")
        if not 0 < self.ls_backtrack < 1:
            raise ValueError(f"ls_backtrack must lie in (0, 1), got {self.ls_backtrack!r}")
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)!r}")
        if self.init not in ("xavier", "torch"):
            raise ValueError(f"init must be 'xavier' or 'torch', got {self.init!r}")
        if self.inner_loop not in ("batched", "looped"):
            raise ValueError(f"inner_loop must be 'batched' or 'looped', got {self.inner_loop!r}")
        if self.inner_objective not in ("reinforce", "lvc"):
            raise ValueError(f"inner_objective must be 'reinforce' or 'lvc', got {self.inner_objective!r}")
        if self.outer not in ("trpo", "ppo"):
            raise ValueError(f"outer must be 'trpo' or 'ppo', got {self.outer!r}")
        if any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive, got {self.hidden_sizes!r}")


@dataclasses.dataclass
class _Batch:
    """One rollout of M tasks and what the losses need from it, task-major: ``(M, T*E, ...)``."""

    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    dist_params: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor  # 1 for samples of each env's first episode
    returns: torch.Tensor  # (M,) mean episode return per task

    def every_kth_step(self, k: int, envs_per_task: int) -> _Batch:
        """Every ``k``-th time step of every env (samples are ordered time-major within a task)."""

        def pick(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(1, (-1, envs_per_task))[:, ::k].flatten(1, 2)

        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _Batch(**{name: v if name == "returns" else pick(v) for name, v in fields.items()})


class MAML:
    """The MAML-RL meta-learner (see the module docstring); follows :class:`metarl.agent.MetaLearner`."""

    def __init__(self, config: MAMLConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.family = metarl.make_family(config.env_id)
        horizon = config.horizon or self.family.max_episode_steps
        if horizon is None:
            raise ValueError(f"{config.env_id} has no episode limit; set horizon")
        self.horizon = horizon
        self.env = self._make_env(config.meta_batch_size, config.episodes_per_task)
        obs_space = self.family.observation_space
        policy = MLPPolicy(
            int(obs_space.shape[0]),
            self.env.single_action_space,
            config.hidden_sizes,
            config.activation,
            init_log_std=config.init_log_std,
        )
        # Initialised on the CPU from our own generator (same weights on every device), then moved.
        self.policy = init_parameters(policy, torch.Generator().manual_seed(config.seed), config.init).to(self.device)
        self.inner_lrs = {
            name: torch.full_like(p, config.inner_lr, requires_grad=config.learn_inner_lr)
            for name, p in self.policy.named_parameters()
        }
        self.baseline = LinearFeatureBaseline()
        self.task_generator = torch.Generator().manual_seed(config.seed)
        self.action_generator = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self._eval_envs: dict[tuple[int, int], TensorEnv | RescaledActions] = {}
        self.optimizer = torch.optim.Adam(self._outer_params().values(), lr=config.outer_lr) if config.outer == "ppo" else None
        self.iteration = 0

    def max_kl(self) -> float:
        """TRPO's KL bound for the next meta-update (``max_kl``, halved every ``max_kl_half_life`` iterations)."""
        half_life = self.config.max_kl_half_life
        return self.config.max_kl * (1.0 if half_life is None else 0.5 ** (self.iteration / half_life))

    # --- parameters -------------------------------------------------------------
    def _outer_params(self) -> Params:
        """What the outer loop optimises: the policy (log-std unless fixed), plus the inner step sizes under Meta-SGD.

        Without inner steps (the pretrained baseline) there are no step sizes to learn.
        """
        params = {k: v for k, v in self.policy.named_parameters() if self.config.learn_log_std or k != "log_std"}
        if self.config.learn_inner_lr and self.config.inner_steps > 0:
            params.update({f"inner_lr/{k}": v for k, v in self.inner_lrs.items()})
        return params

    def _make_env(self, num_tasks: int, episodes_per_task: int) -> TensorEnv | RescaledActions:
        num_envs = num_tasks * episodes_per_task
        env = TensorEnv(self.family, num_envs, device=self.device, seed=self.config.seed + 2, validate_actions=False)
        rescale = self.config.rescale_actions and isinstance(self.family.action_space, spaces.Box)
        return RescaledActions(env) if rescale else env

    # --- sampling and advantages -----------------------------------------------------
    def _rollout(self, env: TensorEnv | RescaledActions, params: Params, num_tasks: int) -> _Batch:
        """One episode per env (its first; the rest of the rollout is masked out), as in the paper.

        An env whose episode terminates early autoresets and keeps stepping; those
        later steps would mix a second, cut-off episode into the baseline and the
        losses, so every statistic below counts the first episode only.
        """
        carry = start(env, self.policy)
        traj, _ = collect(env, self.policy, params, self.horizon, carry, generator=self.action_generator)
        first_episode = first_episode_mask(traj.done)
        # The horizon is the objective (as in the paper): episode ends and the rollout end are not bootstrapped.
        returns = discounted_returns(traj.rewards, traj.terminated, traj.truncated, self.config.gamma)
        values = self.baseline.fit_predict(traj.obs, traj.done, returns, num_tasks, mask=first_episode)
        nv = next_values(values, None, traj.terminated, traj.truncated)
        adv, _ = gae(traj.rewards, values, nv, traj.done, self.config.gamma, self.config.gae_lambda)
        mask = to_task_major(first_episode, num_tasks).to(adv.dtype)
        adv = to_task_major(adv, num_tasks)
        mean = masked_mean(adv, mask).unsqueeze(1)
        std = masked_mean((adv - mean).square(), mask).sqrt().unsqueeze(1)
        adv = (adv - mean) / (std + 1e-8) * mask
        return _Batch(
            obs=to_task_major(traj.obs, num_tasks),
            actions=to_task_major(traj.actions, num_tasks),
            log_probs=to_task_major(traj.log_probs, num_tasks),
            dist_params=to_task_major(traj.dist_params, num_tasks),
            advantages=adv,
            mask=mask,
            returns=first_episode_returns(traj, num_tasks),
        )

    # --- the inner loop -----------------------------------------------------------------
    def _task_loss(
        self, params: Params, obs: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The inner loss of one task's samples under one set of parameters.

        Both objectives have the same value and gradient, so the inner step is
        the same; LVC's likelihood ratio ``pi / stop_grad(pi)`` adds
        ``grad log pi grad log pi^T A`` to the Hessian that second-order
        meta-gradients differentiate through.
        """
        dist_params = self.policy.forward_with(params, obs).dist_params
        log_probs = self.policy.action_dist.log_prob(dist_params, actions)
        if self.config.inner_objective == "lvc":
            return surrogate_loss(log_probs, log_probs.detach(), advantages, mask)
        return reinforce_loss(log_probs, advantages, mask)

    def _adapt(self, params: Params, lrs: Params, batch: _Batch, first_order: bool) -> Params:
        """One inner policy-gradient step on every task: per-task parameters ``(M, ...)``.

        ``params`` are shared (the meta-parameters) or per task (after an
        earlier step); ``lrs`` are the step sizes. ``torch.func.grad`` keeps
        the step differentiable by autograd (the second-order meta-gradient,
        and once more for TRPO's Fisher-vector products); ``vmap`` runs all
        tasks at once.
        """
        num_tasks = batch.obs.shape[0]
        shared = task_batch_size(self.policy, params) is None
        task_grad = torch.func.grad(self._task_loss)
        if self.config.inner_loop == "batched":
            data = (batch.obs, batch.actions, batch.advantages, batch.mask)
            grads = vmap(task_grad, in_dims=(None if shared else 0, 0, 0, 0, 0))(params, *data)
        else:
            per_task = []
            for i in range(num_tasks):
                task_params = params if shared else {k: v[i] for k, v in params.items()}
                per_task.append(task_grad(task_params, batch.obs[i], batch.actions[i], batch.advantages[i], batch.mask[i]))
            grads = {k: torch.stack([g[k] for g in per_task]) for k in params}
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        return {k: (v.expand(num_tasks, *v.shape) if shared else v) - lrs[k] * grads[k] for k, v in params.items()}

    def _split_outer(self, outer: Params) -> tuple[Params, Params]:
        """Outer parameters as (policy parameters, inner step sizes)."""
        own = dict(self.policy.named_parameters())
        policy = {k: outer[k] if k in outer else own[k].detach() for k in self.inner_lrs}
        lrs = {k: outer.get(f"inner_lr/{k}", self.inner_lrs[k]) for k in self.inner_lrs}
        return policy, lrs

    def _replay_adaptation(self, outer: Params, batches: list[_Batch]) -> Params:
        """The adapted parameters as a differentiable function of the outer parameters, from stored batches."""
        params, lrs = self._split_outer(outer)
        for batch in batches:
            params = self._adapt(params, lrs, batch, first_order=self.config.first_order)
        return params

    def _sample_adaptation(
        self, env: TensorEnv | RescaledActions, num_tasks: int, num_steps: int, differentiable: bool = False
    ) -> tuple[list[_Batch], _Batch, Params]:
        """Roll out and adapt ``num_steps`` times.

        Returns the inner batches, the last batch and the parameters it was
        sampled with (the adapted ones). With ``differentiable``, those come
        with the adaptation's graph to the outer parameters (what the
        meta-gradient differentiates, so it need not replay the adaptation);
        otherwise no graph is kept.
        """

        def detached(tensors: Params) -> Params:
            return {k: v.detach() for k, v in tensors.items()}

        params, lrs = self._split_outer(self._outer_params())
        if not differentiable:
            params, lrs = detached(params), detached(lrs)
        first_order = self.config.first_order or not differentiable
        inner: list[_Batch] = []
        batch = self._rollout(env, detached(params), num_tasks)
        for _ in range(num_steps):
            inner.append(batch)
            params = self._adapt(params, lrs, batch, first_order=first_order)
            batch = self._rollout(env, detached(params), num_tasks)
        return inner, batch, params

    # --- the outer loop ---------------------------------------------------------------
    def _outputs_fn(
        self, inner: list[_Batch], valid: _Batch, exact_at: tuple[Params, Params] | None = None
    ) -> Callable[[Params], torch.Tensor]:
        """The adapted policies' distribution parameters on ``valid``'s samples, as a function of the outer parameters.

        With ``exact_at=(outer, adapted)``, the adaptation replayed on a
        subsample ``inner`` is shifted by a constant so that at ``outer`` it
        gives ``adapted``, the parameters adapted on all samples: the subsample
        then only approximates the adaptation's Jacobian, not the point it is taken at.
        """
        shift: Params = {}
        if exact_at is not None and inner:
            point, exact = exact_at
            approximate = self._replay_adaptation({k: v.detach() for k, v in point.items()}, inner)
            shift = {k: (exact[k] - approximate[k]).detach() for k in exact}

        def outputs(outer: Params) -> torch.Tensor:
            adapted = self._replay_adaptation(outer, inner)
            if shift:
                adapted = {k: v + shift[k] for k, v in adapted.items()}
            return self._dist_params_on(valid, adapted)

        return outputs

    def _dist_params_on(self, batch: _Batch, params: Params) -> torch.Tensor:
        """The policy's distribution parameters on ``batch``'s observations under (per-task) ``params``."""
        return policy_forward(self.policy, params, batch.obs.flatten(0, 1)).dist_params.reshape(*batch.obs.shape[:2], -1)

    def _kl_fn(self, valid: _Batch) -> Callable[[torch.Tensor], torch.Tensor]:
        """Mean KL(new || sampling policy) on ``valid``'s samples, as TRPO's reference implementations measure it."""
        dist = self.policy.action_dist

        def kl(new_dist_params: torch.Tensor) -> torch.Tensor:
            return masked_mean(dist.kl(new_dist_params, valid.dist_params), valid.mask).mean()

        return kl

    def meta_train_step(self) -> dict[str, float]:
        """One meta-iteration; returns pre-/post-adaptation returns and optimiser statistics."""
        cfg = self.config
        num_tasks = cfg.meta_batch_size
        tasks = self.family.task_space.sample(num_tasks, generator=self.task_generator, split="train")
        self.env.set_tasks(tasks.repeat_interleave(cfg.episodes_per_task))
        began = time.perf_counter()
        # TRPO's gradient reuses the adaptation the validation rollout was sampled with, graph included.
        inner, valid, adapted = self._sample_adaptation(self.env, num_tasks, cfg.inner_steps, differentiable=cfg.outer == "trpo")
        synchronize(self.device)
        sampled = time.perf_counter()
        dist = self.policy.action_dist

        outputs, kl = self._outputs_fn(inner, valid), self._kl_fn(valid)

        def surrogate(new_dist_params: torch.Tensor) -> torch.Tensor:
            log_probs = dist.log_prob(new_dist_params, valid.actions)
            return surrogate_loss(log_probs, valid.log_probs, valid.advantages, valid.mask).mean()

        params = self._outer_params()
        if cfg.outer == "trpo":
            fisher = None
            if cfg.fisher_subsample > 1:
                k, envs = cfg.fisher_subsample, cfg.episodes_per_task
                fisher_valid = valid.every_kth_step(k, envs)
                fisher_inner = [b.every_kth_step(k, envs) for b in inner]
                fisher = (self._outputs_fn(fisher_inner, fisher_valid, exact_at=(params, adapted)), self._kl_fn(fisher_valid))
            max_kl = self.max_kl()
            stats = trpo_step(
                params,
                surrogate,
                outputs,
                kl,
                max_kl,
                cfg.cg_iters,
                cfg.cg_damping,
                cfg.ls_max_steps,
                cfg.ls_backtrack,
                fisher=fisher,
                outputs=self._dist_params_on(valid, adapted),
            )
            stats["max_kl"] = max_kl
        else:
            assert self.optimizer is not None
            for _ in range(cfg.ppo_epochs):
                new = outputs(params)
                log_probs = dist.log_prob(new, valid.actions)
                loss = ppo_clip_loss(log_probs, valid.log_probs, valid.advantages, cfg.ppo_clip, valid.mask).mean()
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
            stats = {"surrogate": float(loss.detach()), "kl": float(kl(new.detach()))}
        if cfg.learn_inner_lr:
            with torch.no_grad():
                for lr in self.inner_lrs.values():
                    lr.clamp_(min=1e-6)  # a negative step size would ascend the inner loss
        self.iteration += 1
        pre = inner[0].returns.mean() if inner else valid.returns.mean()
        env_steps = (cfg.inner_steps + 1) * self.horizon * self.env.num_envs
        timing = {"seconds_sampling": sampled - began, "seconds_update": time.perf_counter() - sampled}
        timing["env_steps_per_second"] = env_steps / timing["seconds_sampling"]
        log_std = getattr(self.policy, "log_std", None)
        if log_std is not None:
            stats["policy_log_std"] = float(log_std.detach().mean())
        return {"return_before_adaptation": float(pre), "return_after_adaptation": float(valid.returns.mean()), **stats, **timing}

    # --- evaluation -----------------------------------------------------------------------
    def adaptation_curve(self, tasks: Tasks, num_steps: int, generator: torch.Generator) -> torch.Tensor:
        """Mean episode return per task after 0..``num_steps`` inner steps, ``(num_steps + 1, M)``."""
        num_tasks = len(tasks)
        episodes = self.config.eval_episodes_per_task or self.config.episodes_per_task
        if (num_tasks, episodes) not in self._eval_envs:
            self._eval_envs[num_tasks, episodes] = self._make_env(num_tasks, episodes)
        env = self._eval_envs[num_tasks, episodes]
        env.set_tasks(tasks.repeat_interleave(episodes))
        env.generator.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        saved = self.action_generator.get_state()
        self.action_generator.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
        try:
            inner, final, _ = self._sample_adaptation(env, num_tasks, num_steps)
        finally:
            self.action_generator.set_state(saved)  # evaluating never changes the training stream
        return torch.stack([b.returns for b in [*inner, final]]).cpu()

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "policy": self.policy.state_dict(),
            "inner_lrs": {k: v.detach().clone() for k, v in self.inner_lrs.items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "task_generator": self.task_generator.get_state(),
            "action_generator": self.action_generator.get_state(),
            "env_generator": self.env.generator.get_state(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checkpoints from before rescale_actions existed acted in the env's own units (only Box actions are rescaled).
        if isinstance(self.family.action_space, spaces.Box):
            check_saved_options(state["config"], self.config, [("rescale_actions", False)], "maml")
        self.policy.load_state_dict(state["policy"])
        with torch.no_grad():
            for k, v in state["inner_lrs"].items():
                self.inner_lrs[k].copy_(v)
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.task_generator.set_state(state["task_generator"])
        self.action_generator.set_state(state["action_generator"])
        self.env.generator.set_state(state["env_generator"])
        self.iteration = state["iteration"]
