"""Meta-train an agent on a task family, then evaluate adaptation on held-out tasks.

    python scripts/train_metarl.py                      # MAML on Navigation2D, CPU, a few minutes
    python scripts/train_metarl.py --device cuda --iterations 500
    python scripts/train_metarl.py maml --inner-lr 0.05 --first-order   # agent settings after its name
    python scripts/train_metarl.py --iterations 300 rl2 --env-kwargs num_arms 5 num_pulls 100
    python scripts/train_metarl.py --iterations 100 reptile --env-id metarl/Pendulum-v0 --inner-learner sb3
    python scripts/train_metarl.py --iterations 2000 protonet --env-kwargs split minimal num_ways 20
    python scripts/train_metarl.py --config runs/<run>/config.json --seed 1
    python scripts/train_metarl.py --resume runs/<run>  # continue a killed run
    python scripts/train_metarl.py maml --help          # every field, explained

Flags of the run (iterations, evaluation, device, seed, ...) come first, then
the agent's name (``maml``, the default, ``rl2``, ``reptile``, ``protonet``, ``fewshot-maml``) and its own flags.
``--config FILE`` (JSON, e.g. a run's saved config.json) sets the defaults;
flags given with it override the file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import tyro

import envs  # noqa: F401  (registers the built-in task families)
from agents.experiment import RunOutcome, TrainConfig, train
from metarl.training import from_dict


def parse(argv: list[str]) -> TrainConfig:
    default = TrainConfig()
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("--config needs a file")
        path = Path(argv[i + 1])
        if not path.is_file():
            raise SystemExit(f"--config: no such file: {path}")
        data = json.loads(path.read_text())
        data.pop("run_dir", None)  # a saved run's directory is not the new run's
        default = from_dict(TrainConfig, data)
        argv = argv[:i] + argv[i + 2 :]
    cli_style = (tyro.conf.OmitSubcommandPrefixes, tyro.conf.ConsolidateSubcommandArgs)
    return tyro.cli(TrainConfig, default=default, args=argv, description=__doc__, config=cli_style)


def report(outcome: RunOutcome) -> str:
    lines = []
    if outcome.result is not None:
        lines += ["", outcome.result.table(), ""]
    if outcome.one_shot is not None:
        lines += [f"20-way one-shot runs (Lake et al. 2015): {outcome.one_shot.mean_error_percent:.1f}% error", ""]
    run = outcome.run_dir
    lines.append(f"Run directory: {run}")
    if outcome.result is not None:
        lines.append(f"  adaptation plot: {run / 'evaluation' / 'adaptation.png'}")
        lines.append(f"  evaluation:      {run / 'evaluation' / 'adaptation.json'}")
    lines.append(f"  metrics:         {run / 'metrics.jsonl'}")
    if outcome.checkpoint is not None:
        lines.append(f"  checkpoint:      {outcome.checkpoint}")
    if outcome.best is not None:
        best = outcome.best
        about = f"iteration {best.iteration}, validation score {best.validation_score:.4g}; the one evaluated above"
        lines.append(f"  best iterate:    {best.checkpoint}  ({about})")
    if outcome.comet_archive is not None:
        lines.append(f"  Comet (offline): {outcome.comet_archive}  (upload: comet upload {outcome.comet_archive})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> RunOutcome:
    outcome = train(parse(sys.argv[1:] if argv is None else argv))
    print(report(outcome))
    return outcome


if __name__ == "__main__":
    main()
