"""MAML-RL speed and learning on Navigation2D, against the MAML paper and pytorch-maml-rl.

Speed: seconds per meta-iteration of the reference configuration (20 tasks x
20 episodes, horizon 100, one second-order inner step of size 0.1, gamma 0.99,
GAE lambda 1.0, TRPO max-KL 0.01 with 10 CG iterations and damping 1e-5, tanh
MLP 64x64), split into sampling and update, for the batched and the per-task
(looped) inner loop, with the Fisher-vector products on all samples or on
every 5th time step (the default; ``--fisher-subsamples``). Reference
figures: pytorch-maml-rl on this project's 2-core CPU, as quoted in issue 3:
~4.9 s per meta-iteration (~1.4 s sampling, ~3.5 s update).

Learning: meta-train the reference configuration with the agent's defaults
(actions rescaled to [-1, 1] as in the paper's code, ProMP's LVC inner
objective, Fisher-vector products on every 5th time step;
``--inner-objective reinforce --fisher-subsample 1`` gives the paper's exact
meta-gradient) for a wall-clock budget (default 30 minutes; evaluation time
excluded), then evaluate on 40 held-out goals (3 seeds; 20 episodes per
adaptation step, then again with 40, the paper's test protocol, unless
``--also-eval-episodes-per-task None``) after 0..3 inner steps, beside a randomly
initialised policy and a pretrained (no inner loop) policy adapted with the
same budget, and the oracle. Held-out returns are also taken at the
``--eval-at`` iterations (default 200, pytorch-maml-rl's ~-14 after one step). Paper figures (Finn et
al. 2017, 2-D navigation, as quoted in issue 3): -40.4 before adaptation,
-11.7 after one step; random init after one step -58.0.

Run::

    python scripts/bench_maml.py                     # speed, then a 30-minute learning run, CPU
    python scripts/bench_maml.py --mode speed        # speed only (a few minutes)
    python scripts/bench_maml.py --device cuda --meta-batch-sizes 20 40
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Literal

import torch
import tyro

import envs  # noqa: F401  (registers the built-in task families)
from agents.maml import MAML, MAMLConfig
from metarl.evaluation import EvalConfig, evaluate, held_out_tasks, oracle_returns
from metarl.logging import RunLogger
from metarl.machine import machine_info
from metarl.training import meta_train
from metarl.validation import check_positive_int

PAPER = {"before adaptation": -40.4, "after 1 step": -11.7, "random init, after 1 step": -58.0}
PYTORCH_MAML_RL = {
    "seconds_per_iteration": 4.9,
    "seconds_sampling": 1.4,
    "seconds_update": 3.5,
    "after 1 step at 200 iterations": -14.0,
}


@dataclasses.dataclass
class BenchConfig:
    mode: Literal["speed", "learning", "both"] = "both"
    """What to measure."""
    device: str = "cpu"
    """Torch device."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    inner_loops: tuple[Literal["batched", "looped"], ...] = ("batched", "looped")
    """Inner-loop implementations to time."""
    meta_batch_sizes: tuple[int, ...] = (20,)
    """Tasks per meta-batch to time."""
    fisher_subsamples: tuple[int, ...] = (1, 5)
    """TRPO Fisher-vector products on every k-th time step, for each k to time (1: all samples)."""
    speed_iterations: int = 5
    """Timed meta-iterations per configuration (after one warm-up iteration)."""
    minutes: float = 30.0
    """Wall-clock budget of the learning run's meta-training."""
    inner_loop: Literal["batched", "looped"] | None = None
    """Inner loop of the learning run (default: the faster one in the speed run, else batched)."""
    eval_at: tuple[int, ...] = (200,)
    """Iterations at which the learning run also evaluates held-out adaptation."""
    pretrain_iterations: int = 200
    """Meta-iterations of the pretrained baseline (no inner loop)."""
    seed: int = 0
    """Seed of the learning run."""
    learn_inner_lr: bool = MAMLConfig.learn_inner_lr
    """Learning run: meta-learn the inner step sizes (Meta-SGD) instead of the fixed 0.1."""
    learn_log_std: bool = MAMLConfig.learn_log_std
    """Learning run: meta-learn the policy's log-std (False: keep it at its initial value)."""
    init_log_std: float = MAMLConfig.init_log_std
    """Learning run: the policy's initial log-std."""
    meta_batch_size: int = MAMLConfig.meta_batch_size
    """Learning run: tasks per meta-iteration."""
    inner_objective: Literal["reinforce", "lvc"] = MAMLConfig.inner_objective
    """Learning run: the inner loss ('reinforce': the MAML paper's; 'lvc': ProMP's low-variance curvature form)."""
    fisher_subsample: int = MAMLConfig.fisher_subsample
    """Learning run: TRPO Fisher-vector products on every k-th time step (1: all samples)."""
    max_kl_half_life: float | None = MAMLConfig.max_kl_half_life
    """Learning run: halve TRPO's KL bound every this many meta-iterations (None: constant)."""
    inner_lr: float = MAMLConfig.inner_lr
    """Learning run: inner step size (the initial one under Meta-SGD; the MAML paper's point-robot code: 0.5)."""
    hidden_sizes: tuple[int, ...] = MAMLConfig.hidden_sizes
    """Learning run: policy MLP widths (the MAML paper: 100 100)."""
    activation: Literal["tanh", "relu"] = MAMLConfig.activation  # type: ignore[assignment]
    """Learning run: policy activation (the MAML paper: relu)."""
    rescale_actions: bool = MAMLConfig.rescale_actions
    """Learning run: the policy acts in [-1, 1], mapped onto the action box (as the MAML paper's code does;
    False: in the env's own units, [-0.1, 0.1])."""
    also_eval_episodes_per_task: int | None = 40
    """Also run the final held-out evaluation with this many episodes per task and adaptation step (the
    main evaluation uses the training's 20). Default 40: the MAML paper's test script adapts with 40, so its
    -11.7 compares with this evaluation. None: skip it."""
    run_dir: Path = Path("runs/bench_maml")
    """Where the learning run writes its run directory (config, metrics, evaluation, Comet)."""
    json_out: Path | None = None
    """Write every figure as JSON here."""

    def __post_init__(self) -> None:
        # Checked here, not when the second evaluation starts after the whole training budget.
        if self.also_eval_episodes_per_task is not None:
            check_positive_int("also_eval_episodes_per_task", self.also_eval_episodes_per_task)


def measure_speed(config: BenchConfig) -> list[dict[str, object]]:
    rows = []
    grid = itertools.product(config.meta_batch_sizes, config.inner_loops, config.fisher_subsamples)
    for tasks, inner_loop, subsample in grid:
        agent_config = MAMLConfig(
            meta_batch_size=tasks, inner_loop=inner_loop, fisher_subsample=subsample, device=config.device, seed=config.seed
        )
        agent = MAML(agent_config)
        agent.meta_train_step()  # warm-up
        runs = [agent.meta_train_step() for _ in range(config.speed_iterations)]
        row = {"meta_batch_size": tasks, "inner_loop": inner_loop, "fisher_subsample": subsample}
        for key in ("seconds_sampling", "seconds_update"):
            row[key] = statistics.median(r[key] for r in runs)
        row["seconds_per_iteration"] = statistics.median(r["seconds_sampling"] + r["seconds_update"] for r in runs)
        row["env_steps_per_second"] = statistics.median(r["env_steps_per_second"] for r in runs)
        rows.append(row)
        print(
            f"  M={tasks:3d} {inner_loop:8s} Fisher on every {subsample}. step: {row['seconds_per_iteration']:6.2f} s/iteration "
            f"(sampling {row['seconds_sampling']:.2f} s, update {row['seconds_update']:.2f} s, "
            f"{row['env_steps_per_second'] / 1e3:.0f}k env-steps/s)",
            flush=True,
        )
    return rows


def measure_learning(config: BenchConfig, inner_loop: str) -> dict[str, object]:
    agent_config = MAMLConfig(
        meta_batch_size=config.meta_batch_size,
        inner_loop=inner_loop,
        learn_inner_lr=config.learn_inner_lr,
        learn_log_std=config.learn_log_std,
        init_log_std=config.init_log_std,
        inner_objective=config.inner_objective,
        fisher_subsample=config.fisher_subsample,
        max_kl_half_life=config.max_kl_half_life,
        inner_lr=config.inner_lr,
        hidden_sizes=config.hidden_sizes,
        activation=config.activation,
        rescale_actions=config.rescale_actions,
        device=config.device,
        seed=config.seed,
    )  # type: ignore[arg-type]
    eval_config = EvalConfig(num_tasks=40, num_steps=3, seeds=(0, 1, 2))
    run_dir = config.run_dir / (
        time.strftime("%Y%m%d-%H%M%S")
        + ("-metasgd" if config.learn_inner_lr else "")
        + ("" if config.learn_log_std else f"-fixedstd{config.init_log_std:g}")
        + f"-{config.inner_objective}-fisher{config.fisher_subsample}"
        + ("" if config.meta_batch_size == 20 else f"-m{config.meta_batch_size}")
        + ("" if config.max_kl_half_life is None else f"-klhalflife{config.max_kl_half_life:g}")
        + ("" if config.rescale_actions else "-envunits")
        + ("" if config.inner_lr == MAMLConfig.inner_lr else f"-lr{config.inner_lr:g}")
        + ("" if config.hidden_sizes == MAMLConfig.hidden_sizes else "-h" + "x".join(map(str, config.hidden_sizes)))
        + ("" if config.activation == MAMLConfig.activation else f"-{config.activation}")
    )
    out: dict[str, object] = {"run_dir": str(run_dir), "inner_loop": inner_loop, "budget_minutes": config.minutes}
    with RunLogger(run_dir, {"bench": dataclasses.asdict(config), "agent": dataclasses.asdict(agent_config)}) as logger:
        agent = MAML(agent_config)
        tasks = held_out_tasks(agent.family, eval_config)
        trained_seconds, iteration, checkpoints = 0.0, 0, {}
        while trained_seconds < config.minutes * 60:
            began = time.perf_counter()
            meta_train(agent, logger, iteration + 1, start_iteration=iteration, progress=False, checkpoint=False)
            trained_seconds += time.perf_counter() - began
            iteration += 1
            if iteration in config.eval_at or iteration % 50 == 0:
                curve = torch.stack(
                    [agent.adaptation_curve(tasks, 1, torch.Generator().manual_seed(s)) for s in eval_config.seeds]
                )
                before, after = (float(curve[:, j].mean()) for j in (0, 1))
                checkpoints[iteration] = {"minutes": trained_seconds / 60, "before": before, "after_1_step": after}
                logger.log_metrics({"heldout/before": before, "heldout/after_1_step": after}, step=iteration)
                minutes = trained_seconds / 60
                print(
                    f"  iteration {iteration:4d} ({minutes:5.1f} min): held-out {before:7.2f} -> {after:7.2f} after 1 step",
                    flush=True,
                )
        out.update(iterations=iteration, trained_minutes=trained_seconds / 60, held_out_during_training=checkpoints)
        pretrained = MAML(dataclasses.replace(agent_config, inner_steps=0))
        meta_train(pretrained, logger, config.pretrain_iterations, progress=False, checkpoint=False, metric_prefix="pretrained/")
        learners = {"MAML": agent, "random init + adaptation": MAML(dataclasses.replace(agent_config, seed=config.seed + 10_000))}
        learners[f"pretrained ({config.pretrain_iterations} it.) + adaptation"] = pretrained
        oracle = lambda t, g: oracle_returns(agent.family, t, g, device=config.device)  # noqa: E731
        result = evaluate(
            learners,
            tasks,
            eval_config,
            oracle=oracle,
            run_dir=run_dir,
            logger=logger,
            title=f"MAML, {iteration} iterations",
            step=iteration,
        )
        print(result.table())
        out["evaluation"] = result.to_json()
        if config.also_eval_episodes_per_task is not None:
            episodes = config.also_eval_episodes_per_task
            for learner in learners.values():
                learner.config = dataclasses.replace(learner.config, eval_episodes_per_task=episodes)
            result = evaluate(
                learners,
                tasks,
                eval_config,
                oracle=oracle,
                run_dir=run_dir / f"evaluation-{episodes}-episodes",
                title=f"MAML, {iteration} iterations, {episodes} episodes per adaptation step",
            )
            print(result.table())
            out[f"evaluation_{episodes}_episodes"] = result.to_json()
    return out


def main(config: BenchConfig) -> dict[str, object]:
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    report: dict[str, object] = {"machine": machine_info(config.device), "paper": PAPER, "pytorch_maml_rl": PYTORCH_MAML_RL}
    print(f"machine: {report['machine']}")
    inner_loop = config.inner_loop
    if config.mode in ("speed", "both"):
        print("speed (reference configuration):")
        rows = measure_speed(config)
        report["speed"] = rows
        fastest = min(rows, key=lambda r: r["seconds_per_iteration"])
        speedup = PYTORCH_MAML_RL["seconds_per_iteration"] / fastest["seconds_per_iteration"]
        seconds = fastest["seconds_per_iteration"]
        label = f"{fastest['inner_loop']}, Fisher on every {fastest['fisher_subsample']}. step"
        print(f"  fastest: {label}: {seconds:.2f} s/iteration, {speedup:.1f}x pytorch-maml-rl; target <= 0.5 s")
        inner_loop = inner_loop or str(fastest["inner_loop"])
    if config.mode in ("learning", "both"):
        print(f"learning ({config.minutes:g} minutes of meta-training, inner loop {inner_loop or 'batched'}):")
        report["learning"] = measure_learning(config, inner_loop or "batched")
    if config.json_out is not None:
        config.json_out.parent.mkdir(parents=True, exist_ok=True)
        config.json_out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(tyro.cli(BenchConfig, description=__doc__))
