"""RL² against the classic bandit and tabular-MDP algorithms, on held-out tasks.

For each setting (Bernoulli bandits with arm means ~ U[0,1]: k=5/n=10,
k=10/n=100, k=5/n=100; tabular MDPs with 10 states, 5 actions, 10 episodes of
10 steps), meta-train RL² for a wall-clock budget, then score the total reward
per trial on held-out tasks beside random, greedy, epsilon-greedy, UCB1,
Thompson sampling and the Gittins-index policy (bandits) or random and PSRL
(MDPs), all on the same tasks. The RL² paper's figures (Duan et al. 2016,
Table 1 and section 4.2) belong beside these; they are not reproduced here
from memory.

Run::

    python scripts/bench_rl2.py                          # every setting, 5 minutes of training each, CPU
    python scripts/bench_rl2.py --settings bandit-k5-n10 --minutes 20
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Literal

import torch
import tyro

import envs  # noqa: F401  (registers the built-in task families)
from agents.ppo import PPOSettings
from agents.rl2 import RL2, RL2Config
from envs.reference_policies import reference_learners
from metarl.evaluation import mean_ci
from metarl.machine import machine_info

Setting = Literal["bandit-k5-n10", "bandit-k10-n100", "bandit-k5-n100", "mdp-10x5"]
SETTINGS: dict[str, tuple[str, dict[str, int], int]] = {
    "bandit-k5-n10": ("metarl/BernoulliBandit-v0", {"num_arms": 5, "num_pulls": 10}, 1),
    "bandit-k10-n100": ("metarl/BernoulliBandit-v0", {"num_arms": 10, "num_pulls": 100}, 1),
    "bandit-k5-n100": ("metarl/BernoulliBandit-v0", {"num_arms": 5, "num_pulls": 100}, 1),
    "mdp-10x5": ("metarl/TabularMDP-v0", {"num_states": 10, "num_actions": 5, "episode_length": 10}, 10),
}


@dataclasses.dataclass
class BenchConfig:
    settings: tuple[Setting, ...] = ("bandit-k5-n10", "bandit-k10-n100", "bandit-k5-n100", "mdp-10x5")
    """Settings to run."""
    minutes: float = 5.0
    """Meta-training wall-clock budget per setting."""
    num_envs: int = 512
    """Trials per meta-iteration."""
    hidden_size: int = 128
    """GRU width."""
    lr: float = 1e-3
    """PPO step size."""
    vf_coef: float = 0.02
    """Value-loss weight. The GRU is shared by the policy and value heads; at 0.5 the value regression
    dominates it and RL² stays at random level on 100-pull trials (BENCHMARKS.md)."""
    gae_lambda: float = RL2Config.gae_lambda
    """GAE lambda (the RL² paper's 0.3 for bandits)."""
    reward_scale: float = RL2Config.reward_scale
    """Rewards are multiplied by this for advantages and value targets (see RL2Config.reward_scale)."""
    ent_coef: float = 0.01
    """Entropy bonus."""
    bptt_length: int | None = PPOSettings.bptt_length
    """Truncated-BPTT chunk length of the PPO update (None: whole trials)."""
    separate_critic: bool = False
    """Give the value head its own GRU instead (twice the compute per step)."""
    num_tasks: int = 1000
    """Held-out tasks scored per setting."""
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


def run_setting(name: str, config: BenchConfig) -> dict[str, object]:
    env_id, env_kwargs, episodes = SETTINGS[name]
    agent = RL2(
        RL2Config(
            env_id=env_id,
            env_kwargs=env_kwargs,
            episodes_per_trial=episodes,
            num_envs=config.num_envs,
            hidden_size=config.hidden_size,
            separate_critic=config.separate_critic,
            gae_lambda=config.gae_lambda,
            reward_scale=config.reward_scale,
            eval_envs_per_task=config.trials_per_task,
            ppo=PPOSettings(lr=config.lr, vf_coef=config.vf_coef, ent_coef=config.ent_coef, bptt_length=config.bptt_length),
            device=config.device,
            seed=config.seed,
        )
    )
    began, iterations = time.perf_counter(), 0
    while time.perf_counter() - began < config.minutes * 60:
        metrics = agent.meta_train_step()
        iterations += 1
    minutes = (time.perf_counter() - began) / 60
    tasks = agent.family.task_space.sample(config.num_tasks, generator=torch.Generator().manual_seed(12345), split="test")
    learners = {"RL2": agent, **reference_learners(agent.family, trials_per_task=config.trials_per_task, device=config.device)}
    rows: dict[str, dict[str, float]] = {}
    for learner_name, learner in learners.items():
        # Total reward per trial: the sum over the trial's episodes of each task's mean episode return.
        per_task = learner.adaptation_curve(tasks, episodes - 1, torch.Generator().manual_seed(0)).sum(0)
        mean, low, high = mean_ci(per_task, 0.95)
        rows[learner_name] = {"mean": mean, "ci_half_width": (high - low) / 2}
    reference = rows.get("Gittins") or rows.get("PSRL")
    print(
        f"\n{name}: {iterations} meta-iterations in {minutes:.1f} min (last training trial return {metrics['trial_return']:.2f})"
    )
    for learner_name, row in rows.items():
        gap = (
            f"  ({100 * (row['mean'] / reference['mean'] - 1):+.1f}% vs {'Gittins' if 'Gittins' in rows else 'PSRL'})"
            if reference
            else ""
        )
        print(f"  {learner_name:22s} {row['mean']:8.2f} ± {row['ci_half_width']:.2f}{gap}")
    return {"iterations": iterations, "minutes": minutes, "results": rows}


def main(config: BenchConfig) -> dict[str, object]:
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    report: dict[str, object] = {
        "machine": machine_info(),
        "config": dataclasses.asdict(config),
    }
    print(f"machine: {report['machine']}")
    report["settings"] = {name: run_setting(name, config) for name in config.settings}
    if config.json_out is not None:
        config.json_out.write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main(tyro.cli(BenchConfig, description=__doc__))
