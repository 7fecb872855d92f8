"""A meta-RL experiment: config, run directory, meta-training, held-out evaluation against baselines.

``scripts/train_metarl.py`` and ``scripts/evaluate.py`` are thin wrappers
around :func:`train` and :func:`evaluate_run`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Annotated

import torch
import tyro

from agents.fewshot import FewShotMAML, FewShotMAMLConfig, ProtoNet, ProtoNetConfig
from agents.maml import MAML, MAMLConfig
from agents.reptile import Reptile, ReptileConfig
from agents.rl2 import RL2, RL2Config
from envs.omniglot import OmniglotBandit
from envs.omniglot_data import OneShotScore, load_one_shot_runs, score_one_shot_runs
from envs.reference_policies import reference_learners
from metarl.agent import MetaLearner
from metarl.checkpoint import best_checkpoint_path, latest_checkpoint, load_checkpoint
from metarl.evaluation import EvalConfig, EvalResult, evaluate, held_out_tasks, oracle_returns
from metarl.logging import CometMode, RunLogger
from metarl.tasks import Tasks
from metarl.training import Validation, from_dict, meta_train, resume_agent
from metarl.validation import check_positive_int

AGENTS = {
    "maml": (MAMLConfig, MAML),
    "rl2": (RL2Config, RL2),
    "reptile": (ReptileConfig, Reptile),
    "protonet": (ProtoNetConfig, ProtoNet),
    "fewshot-maml": (FewShotMAMLConfig, FewShotMAML),
}
"""Agent name -> (config class, agent class)."""

AgentConfig = (
    Annotated[MAMLConfig, tyro.conf.subcommand("maml")]
    | Annotated[RL2Config, tyro.conf.subcommand("rl2")]
    | Annotated[ReptileConfig, tyro.conf.subcommand("reptile")]
    | Annotated[ProtoNetConfig, tyro.conf.subcommand("protonet")]
    | Annotated[FewShotMAMLConfig, tyro.conf.subcommand("fewshot-maml")]
)
Agent = MAML | RL2 | Reptile | ProtoNet | FewShotMAML
FewShotLearner = ProtoNet | FewShotMAML
EVALUATION_METRIC_PREFIXES = ("pretrained/", "eval/", "one_shot_runs/")
"""Names of the metrics logged after meta-training (baselines, evaluation), which a resumed run logs afresh."""

FEW_SHOT_EVAL_TASKS = 600
"""Few-shot accuracy is reported over at least this many held-out tasks (the MAML and ProtoNet papers' protocol)."""


@dataclasses.dataclass
class TrainConfig:
    """Meta-train an agent on a task family, then evaluate adaptation on held-out tasks."""

    agent: AgentConfig = dataclasses.field(default_factory=MAMLConfig)
    """The agent and its hyperparameters, as a subcommand: ``maml`` (default), ``rl2``, ``reptile``, or the few-shot
    classifiers ``protonet`` and ``fewshot-maml`` (Omniglot)."""
    device: str = "cpu"
    """Torch device for the agent's envs, policy and updates."""
    seed: int = 0
    """Seed of every generator the agent owns."""
    iterations: int = 50
    """Meta-iterations to train for."""
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    """Held-out evaluation protocol."""
    baselines: bool = True
    """Also evaluate baselines: MAML, a random init and a pretrained (no inner loop) policy adapted with the same
    budget; RL², the untrained network and the family's reference policies (bandits, tabular MDPs); Reptile,
    PPO from a random init with the same budget; few-shot learners, the untrained network."""
    pretrain_iterations: int | None = None
    """Training iterations of the pretrained baseline (default: ``iterations``)."""
    run_dir: Path | None = None
    """Run directory (default: runs/<agent>-<env>-<time>)."""
    resume: Path | None = None
    """Continue the run in this directory from its latest checkpoint (its config.json is used)."""
    checkpoint_every: int = 10
    """Checkpoint every this many meta-iterations (and at the end)."""
    validate_every: int | None = None
    """Score the agent every this many meta-iterations (and at the end) on ``eval.num_tasks`` tasks of the training
    split, the same tasks each time, keep the best iterate as ``checkpoints/best.pt``, and evaluate that iterate on
    the held-out tasks instead of the last one (default: no validation; the last iterate is evaluated)."""
    comet: CometMode = "auto"
    """Comet mode: online with an API key, otherwise offline into the run directory."""
    project: str = "metarl"
    """Comet project."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        # --device and --seed belong to the run; the agent config carries them into the agent.
        self.agent = dataclasses.replace(self.agent, device=self.device, seed=self.seed)
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise ValueError(f"iterations must be a non-negative int, got {self.iterations!r}")
        if self.pretrain_iterations is not None and self.pretrain_iterations < 0:
            raise ValueError(f"pretrain_iterations must be non-negative, got {self.pretrain_iterations!r}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be positive, got {self.checkpoint_every!r}")
        if self.validate_every is not None:
            check_positive_int("validate_every", self.validate_every)
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be positive, got {self.threads!r}")

    @property
    def agent_name(self) -> str:
        return next(name for name, (config_cls, _) in AGENTS.items() if isinstance(self.agent, config_cls))


def make_agent(config: AgentConfig) -> Agent:
    """The agent for an agent config."""
    for config_cls, agent_cls in AGENTS.values():
        if isinstance(config, config_cls):
            return agent_cls(config)
    raise TypeError(f"no agent takes a {type(config).__name__}; known agents: {sorted(AGENTS)}")


def default_run_dir(config: TrainConfig) -> Path:
    env = config.agent.env_id.split("/")[-1]
    return Path("runs") / f"{config.agent_name}-{env}-{time.strftime('%Y%m%d-%H%M%S')}"


def load_run_config(run_dir: Path) -> TrainConfig:
    """The config a run was started with (its ``config.json``)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: no config.json")
    return from_dict(TrainConfig, json.loads(path.read_text()))


@dataclasses.dataclass(frozen=True)
class BestIterate:
    """The iterate of a run that scored best on its validation tasks."""

    checkpoint: Path
    iteration: int
    validation_score: float


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    run_dir: Path
    result: EvalResult | None
    checkpoint: Path | None
    comet_archive: Path | None
    one_shot: OneShotScore | None = None
    """Omniglot learners: error on Lake et al.'s 20 one-shot runs (where the data and a 20-way learner allow)."""
    best: BestIterate | None = None
    """With ``--validate-every``: the best-validated iterate, which the held-out evaluation scored."""


def train(config: TrainConfig) -> RunOutcome:
    """Meta-train (or resume), evaluate on held-out tasks, and write everything to the run directory."""
    resuming = config.resume is not None
    if resuming:
        run_dir = Path(config.resume)
        config = dataclasses.replace(load_run_config(run_dir), resume=run_dir, progress=config.progress)
    else:
        run_dir = config.run_dir or default_run_dir(config)
    if config.threads is not None:  # the run's own setting, also on resume: the thread count changes CPU sums
        torch.set_num_threads(config.threads)
    agent = make_agent(config.agent)  # refuses bad settings and unknown envs before any run directory is written
    stored = dataclasses.replace(config, resume=None, run_dir=run_dir)
    with RunLogger(run_dir, stored, project=config.project, comet=config.comet, resume=resuming) as logger:
        logger.log_params(dataclasses.asdict(stored))
        start = resume_agent(agent, run_dir) if resuming else 0
        if resuming:  # evaluation (and the pretrained baseline's training) is redone after every resume
            logger.truncate_metrics(start, drop_prefixes=EVALUATION_METRIC_PREFIXES)
        meta_train(
            agent,
            logger,
            config.iterations,
            start_iteration=start,
            checkpoint_every=config.checkpoint_every,
            progress=config.progress,
            validation=validation(agent, config),
        )
        best, best_path = None, best_checkpoint_path(run_dir)
        if config.validate_every is not None and best_path.is_file():
            # Evaluate (and report) the best-validated iterate, not the last (0 iterations validate nothing).
            state = load_checkpoint(best_path, map_location=config.agent.device)
            agent.load_state_dict(state["agent"])
            best = BestIterate(best_path, int(state["iteration"]), float(state["validation_score"]))
            logger.log_metrics({"eval/best_iteration": best.iteration}, step=config.iterations)
            logger.log_asset(best_path, "best.pt")
        result = evaluate_agent(agent, config, logger) if config.eval.num_tasks > 0 else None
        one_shot = one_shot_runs_error(agent) if isinstance(agent, (ProtoNet, FewShotMAML, RL2)) else None
        if one_shot is not None:
            logger.log_json("evaluation/one_shot_runs.json", dataclasses.asdict(one_shot))
            logger.log_metrics({"one_shot_runs/error_percent": one_shot.mean_error_percent}, step=config.iterations)
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is not None:
            logger.log_asset(checkpoint, "checkpoint.pt")
    return RunOutcome(run_dir, result, checkpoint, logger.offline_archive, one_shot, best)


def evaluation_protocol(agent: Agent, eval_config: EvalConfig) -> tuple[EvalConfig, str, str]:
    """The evaluation protocol as it applies to ``agent``, with the curve's x and y labels.

    RL² is scored per episode of a trial as trained; few-shot learners on at least
    :data:`FEW_SHOT_EVAL_TASKS` tasks; the others as configured.
    """
    x_label, y_label = "gradient steps", "mean episode return"
    if isinstance(agent, RL2):
        eval_config = dataclasses.replace(eval_config, num_steps=agent.config.episodes_per_trial - 1)
        x_label = "episode in trial"
    elif isinstance(agent, Reptile):
        x_label = "PPO updates"
    elif isinstance(agent, FewShotLearner):
        eval_config = dataclasses.replace(eval_config, num_tasks=max(eval_config.num_tasks, FEW_SHOT_EVAL_TASKS))
        x_label = "gradient steps on the support set" if isinstance(agent, FewShotMAML) else "support set seen"
        y_label = "query accuracy"
    return eval_config, x_label, y_label


def validation(agent: Agent, config: TrainConfig) -> Validation | None:
    """``--validate-every``'s :class:`Validation`: the evaluation protocol's task count and adaptation budget on
    tasks of the training split (drawn with the protocol's task seed), or ``None`` without it."""
    if config.validate_every is None:
        return None
    eval_config, _, _ = evaluation_protocol(agent, config.eval)
    tasks = held_out_tasks(agent.family, dataclasses.replace(eval_config, split="train"))
    return Validation(tasks, eval_config.num_steps, config.validate_every, seed=eval_config.seeds[0])


def evaluate_agent(agent: Agent, config: TrainConfig, logger: RunLogger, tasks: Tasks | None = None) -> EvalResult:
    """Held-out adaptation curves of ``agent`` beside its baselines, written to the run directory and Comet.

    MAML: return after 0..k gradient steps, beside the same network from a
    random init and a policy pretrained without an inner loop, both adapted
    with the same budget. Reptile: return after 0..k PPO updates, beside PPO
    from a random init with the same budget. RL²: return of each episode of a trial (trials as
    trained), beside the untrained network and, for bandits and tabular MDPs,
    the reference policies. The oracle is drawn where the family defines one.
    ``tasks``: the held-out tasks (default: sampled by the evaluation protocol).
    """
    eval_config, x_label, y_label = evaluation_protocol(agent, config.eval)
    tasks = tasks if tasks is not None else held_out_tasks(agent.family, eval_config)
    learners: dict[str, MetaLearner] = {config.agent_name.upper(): agent}
    if config.baselines:
        untrained = make_agent(dataclasses.replace(config.agent, seed=config.agent.seed + 10_000))
        if isinstance(agent, Reptile):
            learners["PPO from random init"] = untrained
        elif isinstance(agent, FewShotLearner):
            learners["untrained network"] = untrained
        elif isinstance(agent, MAML):
            learners["random init + adaptation"] = untrained
            pretrained = make_agent(dataclasses.replace(config.agent, inner_steps=0))
            iterations = config.iterations if config.pretrain_iterations is None else config.pretrain_iterations
            meta_train(
                pretrained,
                logger,
                iterations,
                progress=config.progress,
                description="pretraining baseline",
                metric_prefix="pretrained/",
                checkpoint=False,
            )
            learners["pretrained + adaptation"] = pretrained
        else:
            learners["random init (untrained RL²)"] = untrained
            learners.update(reference_learners(agent.family, device=config.agent.device))
    oracle = functools.partial(oracle_returns, agent.family, num_envs_per_task=1, device=config.agent.device)
    title = f"{config.agent_name.upper()} on {config.agent.env_id}, held-out tasks"
    return evaluate(
        learners,
        tasks,
        eval_config,
        oracle=oracle,
        run_dir=logger.run_dir,
        logger=logger,
        title=title,
        x_label=x_label,
        y_label=y_label,
        step=config.iterations,
    )


def one_shot_runs_error(agent: ProtoNet | FewShotMAML | RL2) -> OneShotScore | None:
    """Lake et al.'s 20-way within-alphabet one-shot error of ``agent`` on the 20 official runs.

    ``None`` where it does not apply: a family other than Omniglot, a MAML head
    or RL² policy with fewer than 20 ways (ProtoNet answers any number), or no
    ``all_runs.zip`` in the family's data folder. RL² answers from its memory
    of the run's 20 training images (:meth:`agents.rl2.RL2.classify`).
    """
    family = agent.family
    if not isinstance(family, OmniglotBandit) or (not isinstance(agent, ProtoNet) and family.num_ways < 20):
        return None
    try:
        runs = load_one_shot_runs(root=family.root, image_size=family.image_shape[-1])
    except FileNotFoundError:
        return None

    def classify(train_images: torch.Tensor, test_images: torch.Tensor) -> torch.Tensor:
        labels = torch.arange(len(train_images))  # one training image per class
        return agent.classify(train_images.unsqueeze(1), labels, test_images.unsqueeze(1)).cpu()

    return score_one_shot_runs(classify, runs)


def evaluate_run(
    run_dir: Path,
    eval_config: EvalConfig | None = None,
    checkpoint: Path | None = None,
    baselines: bool = False,
    tasks: Tasks | None = None,
) -> EvalResult:
    """Evaluate a saved run's checkpoint on held-out tasks (results go to ``run_dir/evaluation``).

    ``tasks`` (e.g. from a manifest) replace the protocol's sampled tasks, to repeat an evaluation exactly.
    """
    config = load_run_config(run_dir)
    if eval_config is not None:
        config = dataclasses.replace(config, eval=eval_config)
    config = dataclasses.replace(config, baselines=baselines)
    agent = make_agent(config.agent)
    path = checkpoint or latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}/checkpoints")
    agent.load_state_dict(load_checkpoint(path)["agent"])
    stored = load_run_config(run_dir)  # the logger reopens the run as it was configured
    with RunLogger(run_dir, stored, project=config.project, comet=config.comet, resume=True) as logger:
        return evaluate_agent(agent, config, logger, tasks)
