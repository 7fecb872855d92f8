"""Omniglot few-shot learning: the one-shot runs of Lake et al. and N-way K-shot accuracy on held-out classes.

Every learner is meta-trained for a wall-clock budget on the training classes
of one split (default ``minimal``: background small 1 and 2, every fifth
character of each alphabet held out), one process per learner, one thread
each. Then:

- **20-way within-alphabet one-shot runs** (the 20 official runs,
  ``all_runs.zip``): error in percent, mean over runs (Lake et al. 2015);
- **5-way and 20-way 1-shot accuracy on held-out classes**: mean and
  Student-t 95% interval over ``--eval-tasks`` tasks, one query per class;
- **full information vs reward only**: MAML whose inner loop sees the revealed
  labels against MAML whose inner loop sees only bandit rewards, same budget.

Learners: ProtoNet (metric-based; ``protonet-rotations`` adds each training
character rotated by 90, 180 and 270 degrees as extra training classes),
FewShotMAML with label or reward feedback,
Reptile (the same network and inner loop, Reptile's outer update),
RL² (memory-based, the GRU reads the previous label in its observation), and a
nearest-neighbour-on-pixels reference. Every learner answers through
``classify(support, labels, query)``, each query on its own; RL² plays the
support set as the first steps of a trial and answers each query from the
memory it left (:meth:`agents.rl2.RL2.classify`), so a 20-way RL² takes the
official runs like the others.

Run::

    python scripts/bench_omniglot.py                      # minimal split, ~1 hour on 2 cores
    python scripts/bench_omniglot.py --split vinyals --root ~/omniglot   # full zips (1200/423 classes); a GPU helps

The full split needs ``images_background.zip`` and ``images_evaluation.zip``
in ``--root`` (or ``$METARL_OMNIGLOT_DIR``; ``--download`` fetches them on a
machine with internet).
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
import metarl
from agents.fewshot import FewShotMAML, FewShotMAMLConfig, ProtoNet, ProtoNetConfig
from agents.ppo import PPOSettings
from agents.rl2 import RL2, RL2Config
from envs.omniglot_data import load_one_shot_runs, score_one_shot_runs
from metarl.evaluation import mean_ci
from metarl.machine import machine_info

MINUTES = {
    "protonet": 20.0,
    "protonet-rotations": 20.0,
    "maml-20way": 20.0,
    "maml-5way-labels": 8.0,
    "maml-5way-reward": 8.0,
    "rl2-5way": 8.0,
    "rl2-20way": 8.0,
    "reptile-5way": 8.0,
    "reptile-20way": 8.0,
}
"""Training budget per learner, in minutes (times ``--minutes-scale``)."""

Learner = Literal[
    "pixels", "protonet", "protonet-rotations", "maml-20way", "maml-5way-labels", "maml-5way-reward", "rl2-5way",
    "rl2-20way", "reptile-5way", "reptile-20way",
]  # fmt: skip


@dataclasses.dataclass
class BenchConfig:
    learners: tuple[Learner, ...] = (
        "pixels", "protonet", "protonet-rotations", "maml-20way", "maml-5way-labels", "maml-5way-reward", "rl2-5way", "rl2-20way",
        "reptile-5way", "reptile-20way",
    )  # fmt: skip
    """Learners to train and score."""
    split: str = "minimal"
    """Omniglot split (minimal, minimal1, minimal2, background, vinyals)."""
    root: Path | None = None
    """Folder with the zips (default: $METARL_OMNIGLOT_DIR, else ~/.cache/metarl/omniglot)."""
    download: bool = False
    """Fetch missing official zips (needs internet)."""
    image_size: int = 28
    """Image side in pixels."""
    minutes_scale: float = 1.0
    """Multiplies every learner's training budget (:data:`MINUTES`)."""
    eval_tasks: int = 600
    """Held-out tasks per accuracy figure."""
    jobs: int = 2
    """Learners trained side by side (one process and one thread each)."""
    device: str = "cpu"
    """Torch device."""
    seed: int = 0
    """Seed of every learner."""
    out: Path = Path("runs/bench-omniglot")
    """Where the JSON report goes."""


def family_kwargs(cfg: BenchConfig, num_ways: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"split": cfg.split, "num_ways": num_ways, "image_size": cfg.image_size}
    if cfg.root is not None:
        kwargs["root"] = str(cfg.root)
    return kwargs


def accuracy(classify: Any, cfg: BenchConfig, num_ways: int) -> dict[str, float]:
    """Held-out N-way 1-shot query accuracy of ``classify(support, labels, query)``: mean and 95% interval over tasks."""
    family = metarl.make_family("metarl/OmniglotBandit-v0", **family_kwargs(cfg, num_ways))
    generator = torch.Generator().manual_seed(12345)
    tasks = family.task_space.sample(cfg.eval_tasks, generator=generator, split="test")
    episodes = family.episodes(tasks, generator)
    correct = []
    for i in range(cfg.eval_tasks):
        predicted = classify(episodes.support_images[i], episodes.support_labels[i], episodes.query_images[i]).cpu()
        correct.append((predicted == episodes.query_labels[i]).float().mean())
    mean, low, high = mean_ci(torch.stack(correct), 0.95)
    return {"mean": mean, "ci_low": low, "ci_high": high, "tasks": cfg.eval_tasks}


def runs_error(classify: Any, cfg: BenchConfig) -> float:
    runs = load_one_shot_runs(root=cfg.root, image_size=cfg.image_size, download=cfg.download)

    def by_index(train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
        return classify(train.unsqueeze(1), torch.arange(len(train)), test.unsqueeze(1)).cpu()

    return score_one_shot_runs(by_index, runs).mean_error_percent


def nearest_pixels(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The label of the nearest support image in pixel space (squared Euclidean)."""
    return labels[torch.cdist(query.flatten(1), support.flatten(1)).argmin(1)]


def make_learner(name: str, cfg: BenchConfig) -> ProtoNet | FewShotMAML | RL2:
    common = dict(device=cfg.device, seed=cfg.seed)
    if name.startswith("protonet"):  # more ways in training than in tests (Snell et al.); 40 fit the 45 held-out classes
        kwargs = {**family_kwargs(cfg, 20), "queries": 5}  # Snell et al. train on 5 queries per class
        if name.endswith("rotations"):  # rotated characters as extra training classes (Vinyals et al.'s augmentation)
            kwargs["train_rotations"] = True
        return ProtoNet(ProtoNetConfig(env_kwargs=kwargs, train_ways=40, **common))
    if name == "maml-20way":  # the paper's 20-way setting, first order and one inner step to fit the CPU budget
        config = FewShotMAMLConfig(
            env_kwargs=family_kwargs(cfg, 20), meta_batch_size=16, inner_lr=0.1, first_order=True, **common
        )
        return FewShotMAML(config)
    if name.startswith("reptile"):  # first-order inner SGD on whole episodes, ε 1.0 -> 0.1 (Nichol et al.'s schedule shape)
        ways = 20 if name.endswith("20way") else 5
        config = FewShotMAMLConfig(
            env_kwargs=family_kwargs(cfg, ways), outer="reptile", meta_batch_size=8 if ways == 5 else 5, inner_steps=3,
            inner_lr=0.1, anneal_iterations=1500, **common,
        )  # fmt: skip
        return FewShotMAML(config)
    if name in ("maml-5way-labels", "maml-5way-reward"):
        feedback = "labels" if name.endswith("labels") else "reward"
        return FewShotMAML(FewShotMAMLConfig(env_kwargs=family_kwargs(cfg, 5), feedback=feedback, **common))
    if name.startswith("rl2"):
        ppo = PPOSettings(lr=1e-3, num_minibatches=4, epochs=4, ent_coef=0.01)
        kwargs = family_kwargs(cfg, 20 if name.endswith("20way") else 5)
        return RL2(RL2Config(env_id="metarl/OmniglotBandit-v0", env_kwargs=kwargs, num_envs=64, ppo=ppo, **common))
    raise ValueError(f"unknown learner {name!r}")


def run_learner(job: tuple[str, BenchConfig]) -> dict[str, Any]:
    name, cfg = job
    torch.set_num_threads(1)
    report: dict[str, Any] = {"learner": name}
    if name == "pixels":
        report["runs_error_percent"] = runs_error(nearest_pixels, cfg)
        report["accuracy_5way_1shot"] = accuracy(nearest_pixels, cfg, 5)
        report["accuracy_20way_1shot"] = accuracy(nearest_pixels, cfg, 20)
        return report
    agent = make_learner(name, cfg)
    iterations, began = 0, time.perf_counter()
    while time.perf_counter() - began < MINUTES[name] * cfg.minutes_scale * 60:
        agent.meta_train_step()
        iterations += 1
    report.update(iterations=iterations, train_minutes=(time.perf_counter() - began) / 60)
    if agent.family.num_ways == 5:
        report["accuracy_5way_1shot"] = accuracy(agent.classify, cfg, 5)
        return report
    report["runs_error_percent"] = runs_error(agent.classify, cfg)
    report["accuracy_20way_1shot"] = accuracy(agent.classify, cfg, 20)
    if isinstance(agent, ProtoNet):
        report["accuracy_5way_1shot"] = accuracy(agent.classify, cfg, 5)
    return report


def table(results: list[dict[str, Any]]) -> str:
    def acc(r: dict[str, Any], key: str) -> str:
        a = r.get(key)
        return "—" if a is None else f"{100 * a['mean']:.1f} ± {100 * (a['ci_high'] - a['ci_low']) / 2:.1f}"

    lines = [
        "| learner | training | 20 one-shot runs, error % | 5-way 1-shot acc. % | 20-way 1-shot acc. % |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        trained = f"{r['iterations']} it, {r['train_minutes']:.0f} min" if "iterations" in r else "none"
        runs = f"{r['runs_error_percent']:.1f}" if "runs_error_percent" in r else "—"
        lines.append(
            f"| {r['learner']} | {trained} | {runs} | {acc(r, 'accuracy_5way_1shot')} | {acc(r, 'accuracy_20way_1shot')} |"
        )
    return "\n".join(lines)


def main(cfg: BenchConfig) -> None:
    with ProcessPoolExecutor(max_workers=cfg.jobs) as pool:
        results = list(pool.map(run_learner, [(name, cfg) for name in cfg.learners]))
    print(table(results))
    cfg.out.mkdir(parents=True, exist_ok=True)
    path = cfg.out / f"bench-{cfg.split}.json"
    config = {**dataclasses.asdict(cfg), "out": str(cfg.out), "root": None if cfg.root is None else str(cfg.root)}
    path.write_text(
        json.dumps({"machine": machine_info(cfg.device), "config": config, "results": results, "table": table(results)}, indent=2)
    )
    print(f"report: {path}")


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
