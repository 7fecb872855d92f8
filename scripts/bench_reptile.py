"""Reptile over PPO: speed of the native batched inner learner against Stable-Baselines3, and learning.

**Speed** (``--mode speed``): seconds per meta-iteration of the same work (M
tasks x k PPO updates, each on a fresh rollout of E envs x T steps, the same
PPO settings) with the native batched learner and with SB3's PPO as inner
learner, measured in one process, one after the other.

**Learning** (``--mode learning``): for each family, Reptile is meta-trained
for a wall-clock budget from several seeds; then, on held-out tasks, the
return after 0..k inner PPO updates from the Reptile initialization is scored
beside PPO from a random initialization with the same budget (one untrained
network per seed), and beside MAML-RL trained on the same family for the same
wall-clock (its x axis is policy-gradient steps, not PPO updates). Means and
Student-t 95% intervals over seeds x tasks; JSON and PNG go to ``--out``.

Run::

    python scripts/bench_reptile.py --mode speed
    python scripts/bench_reptile.py --mode learning --minutes 6 --jobs 2
"""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Literal

import torch
import tyro

import envs  # noqa: F401  (registers the built-in task families)
from agents.maml import MAML, MAMLConfig
from agents.reptile import Reptile, ReptileConfig
from metarl.evaluation import Curve, EvalConfig, EvalResult, held_out_tasks, plot
from metarl.files import write_json
from metarl.machine import machine_info

PRESETS: dict[str, dict[str, Any]] = {
    "metarl/CartPole-v0": {},
    # Pendulum's returns are in the thousands: scaled rewards keep the critic's loss from swamping the clipped gradient.
    "metarl/Pendulum-v0": {"reward_scale": 0.1},
}


@dataclasses.dataclass
class BenchConfig:
    mode: Literal["speed", "learning", "both"] = "both"
    """What to measure."""
    env_ids: tuple[str, ...] = ("metarl/CartPole-v0", "metarl/Pendulum-v0")
    """Families (CartPole and Pendulum with sampled physics)."""
    threads: int = 1
    """torch CPU threads per process."""
    device: str = "cpu"
    """Device of the native learner (SB3 runs on the CPU)."""
    speed_iterations: int = 3
    """Timed meta-iterations per learner (after one untimed warm-up)."""
    meta_batch_size: int = 8
    """Tasks per meta-iteration (M)."""
    minutes: float = 5.0
    """Learning: Reptile meta-training budget per seed (and MAML's budget)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Learning: training seeds (each also gives one untrained network for PPO from scratch)."""
    num_tasks: int = 20
    """Learning: held-out tasks."""
    eval_updates: int = 3
    """Learning: PPO updates (and MAML gradient steps) after the unadapted point."""
    maml: bool = True
    """Learning: also train and score MAML on the same family."""
    jobs: int = 2
    """Learning: training processes side by side (one thread each)."""
    out: Path = Path("runs/bench-reptile")
    """Where JSON results and plots go."""


def reptile_config(env_id: str, **overrides: Any) -> ReptileConfig:
    return ReptileConfig(env_id=env_id, **{**PRESETS.get(env_id, {}), **overrides})


# --- speed --------------------------------------------------------------------------------------


def speed(cfg: BenchConfig, env_id: str) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    seconds = {}
    for learner in ("native", "sb3"):
        agent = Reptile(reptile_config(env_id, inner_learner=learner, meta_batch_size=cfg.meta_batch_size, device=cfg.device))
        agent.meta_train_step()  # warm-up: allocation, first-call overheads
        began = time.perf_counter()
        for _ in range(cfg.speed_iterations):
            agent.meta_train_step()
        seconds[learner] = (time.perf_counter() - began) / cfg.speed_iterations
    c = agent.config
    work = dict(
        meta_batch_size=c.meta_batch_size,
        envs_per_task=c.envs_per_task,
        rollout_steps=agent.rollout_steps,
        inner_updates=c.inner_updates,
        ppo=dataclasses.asdict(c.ppo),
    )
    return {"env_id": env_id, "work": work, "seconds_per_iteration": seconds, "speedup": seconds["sb3"] / seconds["native"]}


# --- learning -----------------------------------------------------------------------------------


def _train_and_score(job: tuple[str, str, int, BenchConfig]) -> dict[str, Any]:
    """One training run (or none, for the untrained baseline), then its held-out curve ``(k + 1, tasks)``."""
    kind, env_id, seed, cfg = job
    torch.set_num_threads(cfg.threads)
    if kind == "maml":
        agent: Reptile | MAML = MAML(MAMLConfig(env_id=env_id, seed=seed, device=cfg.device))
    else:
        agent = Reptile(reptile_config(env_id, seed=seed if kind == "reptile" else seed + 10_000, device=cfg.device))
    iterations, began = 0, time.perf_counter()
    while kind != "scratch" and time.perf_counter() - began < cfg.minutes * 60:
        agent.meta_train_step()
        iterations += 1
    trained = time.perf_counter() - began
    tasks = held_out_tasks(agent.family, EvalConfig(num_tasks=cfg.num_tasks))
    curve = agent.adaptation_curve(tasks, cfg.eval_updates, torch.Generator().manual_seed(seed))
    return {"kind": kind, "seed": seed, "iterations": iterations, "train_seconds": trained, "curve": curve.tolist()}


def learning(cfg: BenchConfig, env_id: str) -> dict[str, Any]:
    jobs = [(kind, env_id, seed, cfg) for seed in cfg.seeds for kind in ("reptile", "scratch")]
    if cfg.maml:
        jobs.append(("maml", env_id, cfg.seeds[0], cfg))
    with ProcessPoolExecutor(max_workers=cfg.jobs) as pool:
        runs = list(pool.map(_train_and_score, jobs))
    names = {"reptile": "Reptile + PPO updates", "scratch": "PPO from random init", "maml": "MAML-RL (x: gradient steps)"}
    eval_config = EvalConfig(num_tasks=cfg.num_tasks, num_steps=cfg.eval_updates, seeds=tuple(cfg.seeds))
    curves = {}
    for kind, name in names.items():
        values = [r["curve"] for r in runs if r["kind"] == kind]
        if values:  # (seeds, steps, tasks)
            curves[name] = Curve.from_values(torch.tensor(values), eval_config.confidence)
    result = EvalResult(
        curves,
        eval_config,
        cfg.num_tasks,
        title=f"Reptile on {env_id}, held-out tasks ({cfg.minutes:g} min of meta-training per seed)",
        x_label="inner PPO updates",
    )
    out = cfg.out / env_id.split("/")[-1]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "adaptation.json", result.to_json())
    plot(result, out / "adaptation.png")
    print(result.table(), flush=True)
    return {
        "env_id": env_id,
        "table": result.table(),
        "runs": [{k: v for k, v in r.items() if k != "curve"} for r in runs],
        "plot": str(out / "adaptation.png"),
    }


def main(cfg: BenchConfig) -> None:
    report: dict[str, Any] = {"machine": machine_info(cfg.device), "config": {**dataclasses.asdict(cfg), "out": str(cfg.out)}}
    if cfg.mode in ("speed", "both"):
        report["speed"] = [speed(cfg, env_id) for env_id in cfg.env_ids]
        for s in report["speed"]:
            sec = s["seconds_per_iteration"]
            print(f"{s['env_id']}: native {sec['native']:.2f} s/it, SB3 {sec['sb3']:.2f} s/it, native {s['speedup']:.1f}x faster")
    if cfg.mode in ("learning", "both"):
        report["learning"] = [learning(cfg, env_id) for env_id in cfg.env_ids]
    cfg.out.mkdir(parents=True, exist_ok=True)
    path = cfg.out / f"bench-{cfg.mode}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"report: {path}")


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
