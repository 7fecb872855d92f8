"""Few-shot classification learners over any :class:`~metarl.fewshot.EpisodeSource` family.

A classification family (``metarl/OmniglotBandit-v0``) hands out whole N-way
episodes: a support set to adapt on and a query set to score the adapted
learner. Two learners read them:

* :class:`ProtoNet` (Snell, Swersky and Zemel 2017): embed support and query
  images with :class:`ConvNet`, average each class's support embeddings into a
  prototype, classify a query by its negative squared distance to every
  prototype. No gradient steps at test time; trained with Adam on the query
  cross-entropy, optionally with more ways than it is tested on.
* :class:`FewShotMAML` (Finn, Abbeel and Levine 2017): a :class:`ConvNet` with
  an N-way head; the inner loop takes SGD steps on each task's support set,
  all tasks of a meta-batch in one batched computation (``vmap`` of
  ``torch.func.grad``), and the outer loop minimises the adapted networks'
  query loss with Adam, second order by default. The inner loop learns from
  the revealed labels (``feedback="labels"``: supervised MAML) or from bandit
  rewards only (``feedback="reward"``: the true contextual bandit). With
  ``outer="reptile"`` the same inner loop runs first order on each task's
  whole episode and the meta-update is Reptile's (Nichol et al. 2018).

Both follow :class:`metarl.agent.MetaLearner` and add ``query_accuracy`` (per
task) and ``classify`` (one task, e.g. a run of Lake et al.'s 20-way one-shot
challenge). Accuracy is the mean reward of the greedy policy on the query
images, so it is the "return" of the evaluator's adaptation curves.

Batch norm keeps no running statistics: every forward normalises with the
statistics of the images it is given, as MAML's reference code does. A
task's prediction for one query image therefore depends on the other query
images of that task (transductive, like MAML's and ProtoNet's reference
evaluation), never on another task's images.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
import tyro
from torch import nn
from torch.func import functional_call, grad, vmap

import metarl
from agents.reptile import reptile_update
from metarl.env import TaskFamily
from metarl.fewshot import EpisodeSource, FewShotEpisodes
from metarl.schedules import linear_anneal
from metarl.tasks import Tasks
from metarl.validation import check_positive_int, is_int

Params = dict[str, torch.Tensor]
EnvKwargs = dict[str, bool | int | float | str]


# --- the network ------------------------------------------------------------------------


class BatchStatNorm(nn.Module):
    """Batch norm of ``(B, C, H, W)`` inputs with the batch's statistics only (no running statistics), written out.

    Same function as ``nn.BatchNorm2d(C, track_running_stats=False)``, but
    built from differentiable elementwise ops instead of ``native_batch_norm``:
    that kernel's backward has an incorrect ``vmap`` batching rule
    (pytorch/functorch#534), so second-order MAML through a batched inner
    step got wrong meta-gradients (checked against finite differences in
    ``tests/test_fewshot.py``: e.g. a nonzero gradient for a conv bias that
    batch norm makes irrelevant).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two passes (mean, then the mean square of the centred input): stable, and on CPU several
        # times faster than torch.var_mean's Welford reduction over these non-contiguous dims.
        centred = x - x.mean(dim=(0, 2, 3), keepdim=True)
        var = centred.square().mean(dim=(0, 2, 3), keepdim=True)
        return centred * (self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)) + self.bias.view(1, -1, 1, 1)


class ConvBlock(nn.Module):
    """3x3 convolution, batch norm (batch statistics only), ReLU, 2x2 max-pool."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, kernel_size=3, padding=1)
        self.norm = BatchStatNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.norm(self.conv(x))), 2)


class ConvNet(nn.Module):
    """The Omniglot network of MAML (Finn et al. 2017, after Vinyals et al. 2016) and of prototypical networks.

    ``blocks`` blocks of [conv 3x3 with ``width`` filters, batch norm, ReLU,
    2x2 max-pool] (defaults: 4 blocks of 64, so a 28x28 image becomes a 64-d
    embedding), then a linear head with ``num_outputs`` outputs (MAML), or no
    head: the flattened embedding (ProtoNet).

    Batch norm has no running statistics (:class:`BatchStatNorm`): it always
    uses the statistics of the batch, in train and eval mode alike, so
    the network is a pure function of its parameters and the batch and works
    under ``torch.func.functional_call`` with per-task parameters batched by
    ``vmap`` (each task normalised with its own images' statistics).

    Initialisation (from ``generator``, no global RNG): Glorot-uniform conv and
    linear weights with zero biases, as MAML's reference code initialises its
    convolutions; batch-norm scale 1 and offset 0.

    Args:
        image_shape: ``(C, H, W)`` of the inputs.
        width: filters per convolution.
        blocks: number of conv blocks; each halves the spatial size (floor).
        num_outputs: head outputs, or ``None`` for the embedding.
        generator: CPU generator the parameters are drawn from.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        width: int = 64,
        blocks: int = 4,
        num_outputs: int | None = None,
        *,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        check_positive_int("width", width)
        check_positive_int("blocks", blocks)
        if num_outputs is not None:
            check_positive_int("num_outputs", num_outputs)
        if len(image_shape) != 3 or not all(is_int(s) and s >= 1 for s in image_shape):
            raise ValueError(f"image_shape must be (C, H, W) positive ints, got {image_shape!r}")
        channels, height, width_px = image_shape
        if min(height, width_px) < 2**blocks:
            raise ValueError(f"{blocks} blocks halve the image {blocks} times; {height}x{width_px} is too small")
        self.image_shape = tuple(image_shape)
        self.blocks = nn.Sequential(*(ConvBlock(channels if i == 0 else width, width) for i in range(blocks)))
        self.embedding_dim = width * (height >> blocks) * (width_px >> blocks)
        self.head = nn.Linear(self.embedding_dim, num_outputs) if num_outputs is not None else None
        self._initialise(generator)

    @torch.no_grad()
    def _initialise(self, generator: torch.Generator) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                receptive = module.weight[0, 0].numel() if isinstance(module, nn.Conv2d) else 1
                fan_in, fan_out = module.weight.shape[1] * receptive, module.weight.shape[0] * receptive
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                module.weight.uniform_(-bound, bound, generator=generator)
                module.bias.zero_()
            elif isinstance(module, BatchStatNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images -> ``(B, embedding_dim)``, normalised with this batch's statistics."""
        return self.blocks(images).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_outputs)``, or the embedding when there is no head."""
        features = self.embed(images)
        return self.head(features) if self.head is not None else features


def task_forward(net: nn.Module, params: Params, images: torch.Tensor, shared: bool) -> torch.Tensor:
    """``net`` on each task's images ``(M, S, C, H, W)`` -> ``(M, S, ...)``, all tasks in one batched call.

    ``params`` are the shared meta-parameters (``shared=True``) or per-task
    parameters with a leading task dimension. Batch norm normalises each task
    with its own images' statistics.
    """

    def one_task(p: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(net, p, (x,))

    return vmap(one_task, in_dims=(None if shared else 0, 0))(params, images.to(next(iter(params.values())).dtype))


# --- shared plumbing ----------------------------------------------------------------------


def make_episode_source(env_id: str, env_kwargs: EnvKwargs) -> TaskFamily:
    """``metarl.make_family(env_id, **env_kwargs)``, refused unless it hands out few-shot episodes."""
    family = metarl.make_family(env_id, **env_kwargs)
    if not isinstance(family, EpisodeSource):
        raise TypeError(
            f"{env_id} ({type(family).__name__}) is not a few-shot classification family: it does not implement "
            "metarl.fewshot.EpisodeSource (num_ways, shots, queries, image_shape, episodes(tasks, generator))"
        )
    check_positive_int(f"{env_id} num_ways", family.num_ways)
    return family


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_env_kwargs(env_kwargs: object) -> None:
    if not isinstance(env_kwargs, dict) or not all(isinstance(k, str) for k in env_kwargs):
        raise ValueError(f"env_kwargs must be a dict of keyword arguments, got {env_kwargs!r}")
    if "num_ways" in env_kwargs:
        check_positive_int("env_kwargs['num_ways']", env_kwargs["num_ways"])


def _check_num_steps(num_steps: object) -> int:
    if not is_int(num_steps) or num_steps < 0:  # type: ignore[operator]
        raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
    return num_steps  # type: ignore[return-value]


def _single_task_episode(
    image_shape: tuple[int, ...], support_images: torch.Tensor, support_labels: torch.Tensor, query_images: torch.Tensor
) -> FewShotEpisodes:
    """One task's sets as a batch of one episode (query labels unknown: zeros)."""
    for name, images in (("support_images", support_images), ("query_images", query_images)):
        if images.dim() != 4 or tuple(images.shape[1:]) != tuple(image_shape):
            raise ValueError(f"{name} must be (S, {', '.join(map(str, image_shape))}), got {tuple(images.shape)}")
    if support_labels.shape != support_images.shape[:1] or support_labels.dtype != torch.long:
        raise ValueError(f"support_labels must be a long tensor of shape ({support_images.shape[0]},), got {support_labels}")
    if bool((support_labels < 0).any()):
        raise ValueError(f"support labels must be non-negative, got {support_labels.tolist()}")
    num_ways = int(support_labels.max()) + 1
    query_labels = torch.zeros(query_images.shape[0], dtype=torch.long, device=query_images.device)
    return FewShotEpisodes(support_images[None], support_labels[None], query_images[None], query_labels[None], num_ways)


def _eval_action_generator(device: torch.device, generator: torch.Generator) -> torch.Generator:
    """A fresh generator on ``device`` seeded from ``generator``: evaluation never touches the training streams."""
    return torch.Generator(device=device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))


# --- prototypical networks ------------------------------------------------------------------------


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, num_ways: int) -> torch.Tensor:
    """Mean support embedding per class: ``(M, S, D)``, labels ``(M, S)`` -> ``(M, num_ways, D)``.

    A class without support images gets the zero vector (episodes always have
    ``shots >= 1`` per class, so this only matters for hand-made inputs).
    """
    one_hot = (labels.unsqueeze(-1) == torch.arange(num_ways, device=labels.device)).to(embeddings.dtype)  # (M, S, N)
    sums = one_hot.transpose(1, 2) @ embeddings
    return sums / one_hot.sum(1).clamp(min=1).unsqueeze(-1)


def prototype_logits(query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Negative squared Euclidean distances: ``(M, Q, D)`` queries, ``(M, N, D)`` prototypes -> ``(M, Q, N)``."""
    return -(query.unsqueeze(2) - protos.unsqueeze(1)).square().sum(-1)


@dataclasses.dataclass
class ConvLearnerConfig:
    """What every few-shot learner on :class:`ConvNet` is configured with: the family, the network, the device."""

    env_id: str = "metarl/OmniglotBandit-v0"
    """Registered few-shot classification family (an EpisodeSource)."""
    env_kwargs: EnvKwargs = dataclasses.field(default_factory=dict)
    """Family keyword arguments, e.g. ``--env-kwargs split minimal num_ways 20 shots 1``."""
    width: int = 64
    """Filters per conv block."""
    blocks: int = 4
    """Conv blocks (each halves the image)."""
    eval_batch_size: int = 32
    """Tasks evaluated together by ``query_accuracy`` / ``adaptation_curve`` (memory bound)."""
    device: Annotated[str, tyro.conf.Suppress] = "cpu"
    """Torch device for the network and updates (on the command line: train_metarl.py's --device)."""
    seed: Annotated[int, tyro.conf.Suppress] = 0
    """Seed of every generator the agent owns (on the command line: train_metarl.py's --seed)."""

    def __post_init__(self) -> None:
        _check_env_kwargs(self.env_kwargs)
        for name in ("width", "blocks", "eval_batch_size"):
            check_positive_int(name, getattr(self, name))


@dataclasses.dataclass
class ProtoNetConfig(ConvLearnerConfig):
    """Prototypical-network hyperparameters. Defaults: Snell et al.'s Omniglot setting (Adam 1e-3, one episode per update)."""

    train_ways: int | None = None
    """Ways of the training episodes (Snell et al.: 60 for Omniglot); default: the family's ``num_ways``."""
    meta_batch_size: int = 1
    """Episodes per update (their losses are averaged)."""
    lr: float = 1e-3
    """Adam step size (at the start, see ``lr_halving_updates``)."""
    lr_halving_updates: int | None = None
    """Halve the step size every this many updates (Snell et al.: every 2000 episodes); None keeps it constant."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("meta_batch_size", self.meta_batch_size)
        for name in ("train_ways", "lr_halving_updates"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        _check_positive("lr", self.lr)


class ProtoNet:
    """Prototypical networks (see the module docstring); follows :class:`metarl.agent.MetaLearner`.

    Training with more ways than testing (``train_ways``): the agent builds a
    second family, ``make_family(env_id, **env_kwargs, num_ways=train_ways)``,
    and samples its training tasks and episodes there; ``self.family`` (the
    family as configured) is what evaluation samples held-out tasks from. The
    network does not depend on the number of ways, so nothing else changes.
    """

    def __init__(self, config: ProtoNetConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.family = make_episode_source(config.env_id, config.env_kwargs)
        train_ways = config.train_ways or self.family.num_ways
        if train_ways == self.family.num_ways:
            self.train_family = self.family
        else:
            self.train_family = make_episode_source(config.env_id, {**config.env_kwargs, "num_ways": train_ways})
        net = ConvNet(self.family.image_shape, config.width, config.blocks, generator=torch.Generator().manual_seed(config.seed))
        self.net = net.to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.task_generator = torch.Generator().manual_seed(config.seed)
        self.episode_generator = torch.Generator().manual_seed(config.seed + 1)
        self.iteration = 0

    def logits(self, params: Params, episodes: FewShotEpisodes) -> torch.Tensor:
        """Query logits ``(M, Q, N)``: support and query embedded together (one batch-norm batch per task)."""
        num_support = episodes.support_images.shape[1]
        images = torch.cat([episodes.support_images, episodes.query_images], dim=1)
        embeddings = task_forward(self.net, params, images, shared=True)
        protos = prototypes(embeddings[:, :num_support], episodes.support_labels, episodes.num_ways)
        return prototype_logits(embeddings[:, num_support:], protos)

    def learning_rate(self) -> float:
        """The step size of the next update: ``lr`` halved once per ``lr_halving_updates`` updates done."""
        every = self.config.lr_halving_updates
        return self.config.lr * (0.5 ** (self.iteration // every) if every else 1.0)

    def meta_train_step(self) -> dict[str, float]:
        """One Adam step on the query cross-entropy of ``meta_batch_size`` fresh training episodes."""
        began = time.perf_counter()
        tasks = self.train_family.task_space.sample(self.config.meta_batch_size, generator=self.task_generator, split="train")
        episodes = self.train_family.episodes(tasks, self.episode_generator).to(self.device)
        sampled = time.perf_counter()
        logits = self.logits(dict(self.net.named_parameters()), episodes)
        loss = F.cross_entropy(logits.flatten(0, 1), episodes.query_labels.flatten())
        lr = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.iteration += 1
        accuracy = (logits.detach().argmax(-1) == episodes.query_labels).float().mean()
        done = time.perf_counter()
        return {
            "loss": float(loss.detach()),
            "query_accuracy": float(accuracy),
            "lr": lr,
            "seconds_sampling": sampled - began,
            "seconds_update": done - sampled,
            "seconds": done - began,
        }

    # --- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def _episode_accuracy(self, episodes: FewShotEpisodes) -> torch.Tensor:
        params = {k: v.detach() for k, v in self.net.named_parameters()}
        chunk = self.config.eval_batch_size
        accuracies = []
        for start in range(0, episodes.num_tasks, chunk):
            part = _task_slice(episodes, start, start + chunk).to(self.device)
            accuracies.append((self.logits(params, part).argmax(-1) == part.query_labels).float().mean(1))
        return torch.cat(accuracies).cpu()

    def query_accuracy(self, tasks: Tasks, generator: torch.Generator, num_steps: int | None = None) -> torch.Tensor:
        """Query accuracy per task ``(M,)`` on one fresh episode per task drawn with ``generator``.

        ``num_steps`` is accepted for a signature common with :class:`FewShotMAML`
        and ignored: a prototypical network adapts by averaging, not by steps.
        """
        if num_steps is not None:
            _check_num_steps(num_steps)
        return self._episode_accuracy(self.family.episodes(tasks, generator))

    def adaptation_curve(self, tasks: Tasks, num_steps: int, generator: torch.Generator) -> torch.Tensor:
        """Query accuracy per task, ``(num_steps + 1, M)``: the same row at every index.

        A prototypical network has no gradient steps: it adapts once, by
        computing the prototypes of the support set, so already at index 0 it
        has seen the support set (unlike MAML's index 0, which is the
        unadapted network). Every index holds that accuracy, so its curve is a
        flat line the evaluator can draw against gradient-based learners.
        """
        _check_num_steps(num_steps)
        return self.query_accuracy(tasks, generator).expand(num_steps + 1, -1).clone()

    def classify(self, support_images: torch.Tensor, support_labels: torch.Tensor, query_images: torch.Tensor) -> torch.Tensor:
        """Predicted labels ``(Q,)`` of one task's query images from its labelled support set.

        ``support_images`` is ``(N*K, C, H, W)`` (or ``(N, C, H, W)`` one-shot)
        with labels in ``0..N-1``; any number of ways works (e.g. Lake et al.'s
        20-way one-shot runs: 20 training images labelled 0..19, 20 test images).
        Predictions are restricted to the labels present in the support set.
        """
        episode = _single_task_episode(self.net.image_shape, support_images, support_labels, query_images).to(self.device)
        params = {k: v.detach() for k, v in self.net.named_parameters()}
        present = F.one_hot(episode.support_labels[0], episode.num_ways).any(0)
        with torch.no_grad():
            return self.logits(params, episode)[0].masked_fill(~present, -math.inf).argmax(-1)

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "task_generator": self.task_generator.get_state(),
            "episode_generator": self.episode_generator.get_state(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.task_generator.set_state(state["task_generator"])
        self.episode_generator.set_state(state["episode_generator"])
        self.iteration = state["iteration"]


def _task_slice(episodes: FewShotEpisodes, start: int, stop: int) -> FewShotEpisodes:
    return dataclasses.replace(
        episodes,
        support_images=episodes.support_images[start:stop],
        support_labels=episodes.support_labels[start:stop],
        query_images=episodes.query_images[start:stop],
        query_labels=episodes.query_labels[start:stop],
    )


# --- MAML -------------------------------------------------------------------------------------


@dataclasses.dataclass
class FewShotMAMLConfig(ConvLearnerConfig):
    """MAML-for-classification hyperparameters. Defaults: the MAML paper's 5-way Omniglot setting.

    The head has one output per way of the family (``env_kwargs num_ways``),
    fixed at construction: a model for Lake et al.'s 20-way one-shot runs must
    be trained with ``num_ways=20`` (``--env-kwargs num_ways 20``).
    """

    feedback: Literal["labels", "reward"] = "labels"
    """Inner-loop signal: the revealed support labels (supervised MAML) or bandit rewards only (REINFORCE)."""
    meta_batch_size: int = 32
    """Tasks per meta-iteration (MAML Omniglot: 32 for 5-way, 16 for 20-way)."""
    inner_steps: int = 1
    """Inner SGD steps during meta-training (MAML Omniglot: 1 for 5-way, 5 for 20-way); the evaluation default too."""
    inner_lr: float = 0.4
    """Inner SGD step size (MAML Omniglot: 0.4 for 5-way, 0.1 for 20-way)."""
    first_order: bool = False
    """Drop second-order terms (FOMAML)."""
    outer: Literal["maml", "reptile"] = "maml"
    """Outer loop: ``maml`` (Adam on the adapted networks' query loss, through the inner steps) or ``reptile``
    (Nichol et al. 2018: ``inner_steps`` first-order steps on all of each task's episode, then θ ← θ + ε·mean(θ̃ − θ))."""
    outer_lr: float = 1e-3
    """MAML: Adam step size of the meta-update."""
    meta_lr: float = 1.0
    """Reptile: step size ε at the first meta-iteration, in (0, 1]."""
    meta_lr_final: float = 0.1
    """Reptile: ε after ``anneal_iterations`` (linear in between), in (0, 1]."""
    anneal_iterations: int = 2000
    """Reptile: meta-iterations over which ε anneals."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.outer not in ("maml", "reptile"):
            raise ValueError(f"outer must be 'maml' or 'reptile', got {self.outer!r}")
        for name in ("meta_lr", "meta_lr_final"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} (Reptile's step size ε) must lie in (0, 1], got {getattr(self, name)!r}")
        check_positive_int("anneal_iterations", self.anneal_iterations)
        if self.feedback not in ("labels", "reward"):
            raise ValueError(f"feedback must be 'labels' or 'reward', got {self.feedback!r}")
        check_positive_int("meta_batch_size", self.meta_batch_size)
        if not is_int(self.inner_steps) or self.inner_steps < 0:
            raise ValueError(f"inner_steps must be a non-negative int, got {self.inner_steps!r}")
        for name in ("inner_lr", "outer_lr"):
            _check_positive(name, getattr(self, name))
        if not isinstance(self.first_order, bool):
            raise ValueError(f"first_order must be a bool, got {self.first_order!r}")


class FewShotMAML:
    """MAML for few-shot classification (see the module docstring); follows :class:`metarl.agent.MetaLearner`.

    Each meta-iteration samples ``meta_batch_size`` training tasks and one
    episode per task, adapts a copy of the network per task with
    ``inner_steps`` SGD steps on its support set (all tasks at once:
    ``vmap`` over tasks of ``torch.func.grad`` of the per-task loss), and takes
    an Adam step on the adapted networks' mean query loss, differentiating
    through the inner steps (or not: ``first_order``). Every parameter adapts,
    batch-norm scales and offsets included, as in MAML's reference code.

    Feedback
    --------
    ``"labels"``: the inner loss is the support cross-entropy and the outer
    loss the query cross-entropy (supervised MAML).

    ``"reward"``: the inner loop sees rewards only. On every inner step the
    current (per-task) softmax policy samples one action per support image,
    reward ``r = 1[a == y]``, and the inner loss is REINFORCE with a per-task
    mean-reward baseline ``b`` (the mean of that step's support rewards):
    ``-(1/S) sum (r - b) log pi(a|x)``. The sampled actions are treated as
    data: the second-order meta-gradient differentiates the REINFORCE step
    with its samples held fixed and has no score-function term for how the
    sampling distribution depends on the meta-parameters (as MAML-RL's inner
    step, without DiCE/ProMP corrections). The outer objective is the adapted
    policy's *expected* query reward, ``sum_a pi'(a|x) r(x, a) = pi'(y|x)``:
    the labels enter only through the reward function. We take the exact
    expectation rather than REINFORCE on sampled query actions because it is
    the same objective with a zero-variance gradient, and the bandit
    constraint binds the learner where it is deployed, in the inner loop on
    new tasks; during meta-training the env reveals each step's label, hence
    its whole reward function. Unlike the cross-entropy, this objective's
    gradient vanishes as ``pi'(y|x) -> 0``. Evaluation (``query_accuracy``,
    ``adaptation_curve``, ``classify``) scores the *greedy* prediction
    ``argmax pi'(.|x)``, not the stochastic policy's expected reward (which
    the ``query_expected_reward`` training metric reports).
    """

    def __init__(self, config: FewShotMAMLConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.family = make_episode_source(config.env_id, config.env_kwargs)
        self.num_ways: int = self.family.num_ways
        net = ConvNet(
            self.family.image_shape,
            config.width,
            config.blocks,
            num_outputs=self.num_ways,
            generator=torch.Generator().manual_seed(config.seed),
        )
        self.net = net.to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.outer_lr)
        self.task_generator = torch.Generator().manual_seed(config.seed)
        self.episode_generator = torch.Generator().manual_seed(config.seed + 1)
        self.action_generator = torch.Generator(device=self.device).manual_seed(config.seed + 2)
        self.iteration = 0

    # --- the inner loop -----------------------------------------------------------------------
    def _label_loss(self, params: Params, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One task's support cross-entropy."""
        return F.cross_entropy(functional_call(self.net, params, (images,)), labels)

    def _reinforce_loss(
        self, params: Params, images: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor
    ) -> torch.Tensor:
        """One task's REINFORCE loss ``-(1/S) sum (r - b) log pi(a|x)`` on sampled actions."""
        log_probs = functional_call(self.net, params, (images,)).log_softmax(-1)
        return -(advantages * log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)).mean()

    def bandit_feedback(
        self, params: Params, shared: bool, episodes: FewShotEpisodes, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One sampled action per support image from the current policies: ``(actions, rewards, advantages)``, each ``(M, S)``.

        Rewards are ``1[a == y]``; advantages subtract each task's mean support reward.
        """
        with torch.no_grad():
            logits = task_forward(self.net, params, episodes.support_images, shared)
            probs = logits.softmax(-1).flatten(0, 1)
            actions = torch.multinomial(probs, 1, generator=generator).view(logits.shape[:2])
            rewards = (actions == episodes.support_labels).to(logits.dtype)
        return actions, rewards, rewards - rewards.mean(1, keepdim=True)

    def inner_gradients(
        self, params: Params, shared: bool, episodes: FewShotEpisodes, generator: torch.Generator
    ) -> tuple[Params, torch.Tensor | None]:
        """Per-task gradients ``(M, ...)`` of the inner loss on the support sets, and the sampled rewards (reward mode)."""
        in_dims = (None if shared else 0, 0, 0)
        images = episodes.support_images.to(next(iter(params.values())).dtype)
        if self.config.feedback == "labels":
            return vmap(grad(self._label_loss), in_dims=in_dims)(params, images, episodes.support_labels), None
        actions, rewards, advantages = self.bandit_feedback(params, shared, episodes, generator)
        grads = vmap(grad(self._reinforce_loss), in_dims=(*in_dims, 0))(params, images, actions, advantages)
        return grads, rewards

    def adapt(
        self,
        params: Params,
        episodes: FewShotEpisodes,
        num_steps: int,
        generator: torch.Generator,
        first_order: bool,
        on_step: Callable[[Params, bool], None] | None = None,
    ) -> tuple[Params, torch.Tensor | None]:
        """``num_steps`` inner SGD steps from the shared ``params`` on every task's support set.

        Returns the per-task parameters (still the shared ones when
        ``num_steps == 0``) and the first step's support rewards (reward mode).
        With ``first_order`` the inner gradients are detached, so the adapted
        parameters move with the meta-parameters with identity Jacobian.
        ``on_step(params, shared)`` is called before the first step and after every step.
        """
        shared, first_rewards = True, None
        if on_step is not None:
            on_step(params, shared)
        for step in range(num_steps):
            grads, rewards = self.inner_gradients(params, shared, episodes, generator)
            if step == 0:
                first_rewards = rewards
            if first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            params = {k: v - self.config.inner_lr * grads[k] for k, v in params.items()}
            shared = False
            if on_step is not None:
                on_step(params, shared)
        return params, first_rewards

    def query_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Outer loss on query logits ``(M, Q, N)``: cross-entropy (labels) or minus the expected reward ``pi(y|x)`` (reward)."""
        if self.config.feedback == "labels":
            return F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return -logits.softmax(-1).gather(-1, labels.unsqueeze(-1)).mean()

    def meta_loss(
        self, params: Params, episodes: FewShotEpisodes, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """The outer loss as a differentiable function of the meta-parameters, with the query logits and extra metrics."""
        cfg = self.config
        adapted, rewards = self.adapt(params, episodes, cfg.inner_steps, generator, cfg.first_order)
        logits = task_forward(self.net, adapted, episodes.query_images, shared=cfg.inner_steps == 0)
        extras = {} if rewards is None else {"support_reward": float(rewards.mean())}
        return self.query_loss(logits, episodes.query_labels), logits, extras

    # --- the outer loop -----------------------------------------------------------------------
    def meta_train_step(self) -> dict[str, float]:
        """One meta-iteration on ``meta_batch_size`` fresh training tasks: adapt, then an Adam step on the query loss."""
        began = time.perf_counter()
        tasks = self.family.task_space.sample(self.config.meta_batch_size, generator=self.task_generator, split="train")
        episodes = self.family.episodes(tasks, self.episode_generator).to(self.device)
        sampled = time.perf_counter()
        if self.config.outer == "reptile":
            loss, logits, extras = self._reptile_step(episodes)
        else:
            loss, logits, extras = self.meta_loss(dict(self.net.named_parameters()), episodes, self.action_generator)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        self.iteration += 1
        logits = logits.detach()
        metrics = {
            "loss": float(loss.detach()),
            "query_accuracy": float((logits.argmax(-1) == episodes.query_labels).float().mean()),
        }
        if self.config.feedback == "reward":
            metrics["query_expected_reward"] = -metrics["loss"]
        done = time.perf_counter()
        return {
            **metrics,
            **extras,
            "seconds_sampling": sampled - began,
            "seconds_update": done - sampled,
            "seconds": done - began,
        }

    def _reptile_step(self, episodes: FewShotEpisodes) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Reptile: adapt on every task's whole episode (support and query: all of it is revealed), move θ toward the mean.

        Returns the query loss of the adapted networks (a metric here, not an objective), their query logits and ε.
        """
        cfg = self.config
        whole = dataclasses.replace(
            episodes,
            support_images=torch.cat([episodes.support_images, episodes.query_images], dim=1),
            support_labels=torch.cat([episodes.support_labels, episodes.query_labels], dim=1),
        )
        theta = dict(self.net.named_parameters())
        with torch.no_grad():
            start = {k: v.detach() for k, v in theta.items()}
            adapted, _ = self.adapt(start, whole, cfg.inner_steps, self.action_generator, first_order=True)
            shared = cfg.inner_steps == 0
            logits = task_forward(self.net, adapted, episodes.query_images, shared)
            loss = self.query_loss(logits, episodes.query_labels)
            if shared:
                adapted = {k: v.expand(episodes.num_tasks, *v.shape) for k, v in adapted.items()}
            step_size = linear_anneal(cfg.meta_lr, cfg.meta_lr_final, self.iteration, cfg.anneal_iterations)
            reptile_update(theta, adapted, step_size)
        return loss, logits, {"meta_step_size": step_size}

    # --- evaluation -----------------------------------------------------------------------------
    def _accuracy_curve(self, episodes: FewShotEpisodes, num_steps: int, generator: torch.Generator) -> torch.Tensor:
        """Query accuracy ``(num_steps + 1, M)`` after 0..num_steps inner steps on each task's support set."""
        base = {k: v.detach() for k, v in self.net.named_parameters()}
        chunk = self.config.eval_batch_size
        curves = []
        for start in range(0, episodes.num_tasks, chunk):
            part = _task_slice(episodes, start, start + chunk).to(self.device)
            rows: list[torch.Tensor] = []

            def score(params: Params, shared: bool, part: FewShotEpisodes = part, rows: list[torch.Tensor] = rows) -> None:
                logits = task_forward(self.net, params, part.query_images, shared)
                rows.append((logits.argmax(-1) == part.query_labels).float().mean(1))

            with torch.no_grad():  # torch.func.grad still differentiates inside; no graph is kept
                self.adapt(base, part, num_steps, generator, first_order=True, on_step=score)
            curves.append(torch.stack(rows))
        return torch.cat(curves, dim=1).cpu()

    def _eval_generators(self, tasks: Tasks, generator: torch.Generator) -> tuple[FewShotEpisodes, torch.Generator]:
        episodes = self.family.episodes(tasks, generator)
        return episodes, _eval_action_generator(self.device, generator)

    def query_accuracy(self, tasks: Tasks, generator: torch.Generator, num_steps: int | None = None) -> torch.Tensor:
        """Query accuracy per task ``(M,)`` after ``num_steps`` inner steps (default: ``inner_steps``), one fresh episode each."""
        num_steps = self.config.inner_steps if num_steps is None else _check_num_steps(num_steps)
        episodes, actions = self._eval_generators(tasks, generator)
        return self._accuracy_curve(episodes, num_steps, actions)[-1]

    def adaptation_curve(self, tasks: Tasks, num_steps: int, generator: torch.Generator) -> torch.Tensor:
        """Query accuracy per task after 0..``num_steps`` inner steps, ``(num_steps + 1, M)``, on one episode per task.

        Index 0 is the unadapted network (chance level on average: the labels
        are a random relabelling per task). In reward mode the inner steps
        sample actions from a generator seeded from ``generator``; the training
        streams are never touched.
        """
        _check_num_steps(num_steps)
        episodes, actions = self._eval_generators(tasks, generator)
        return self._accuracy_curve(episodes, num_steps, actions)

    def classify(
        self,
        support_images: torch.Tensor,
        support_labels: torch.Tensor,
        query_images: torch.Tensor,
        *,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predicted labels ``(Q,)`` of one task's query images after adapting on its support set.

        ``support_images`` is ``(N*K, C, H, W)`` (or ``(N, C, H, W)``) with
        labels in ``0..N-1``, ``N <= num_ways`` of the head; predictions are
        restricted to the labels present in the support set. Lake et al.'s
        20-way one-shot runs need a model trained with ``num_ways=20``.
        ``num_steps`` defaults to ``inner_steps``; in reward mode, the inner
        steps sample actions from ``generator`` (default: one seeded with the
        config's seed, so a call is deterministic).
        """
        num_steps = self.config.inner_steps if num_steps is None else _check_num_steps(num_steps)
        episode = _single_task_episode(self.net.image_shape, support_images, support_labels, query_images)
        if episode.num_ways > self.num_ways:
            raise ValueError(
                f"support labels go up to {episode.num_ways - 1}, but this model's head has {self.num_ways} outputs; "
                f"train it with env_kwargs num_ways >= {episode.num_ways}"
            )
        episode = episode.to(self.device)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        present = F.one_hot(episode.support_labels[0], self.num_ways).any(0)
        base = {k: v.detach() for k, v in self.net.named_parameters()}
        with torch.no_grad():
            adapted, _ = self.adapt(base, episode, num_steps, generator, first_order=True)
            logits = task_forward(self.net, adapted, episode.query_images, shared=num_steps == 0)[0]
        return logits.masked_fill(~present, -math.inf).argmax(-1)

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "task_generator": self.task_generator.get_state(),
            "episode_generator": self.episode_generator.get_state(),
            "action_generator": self.action_generator.get_state(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.task_generator.set_state(state["task_generator"])
        self.episode_generator.set_state(state["episode_generator"])
        self.action_generator.set_state(state["action_generator"])
        self.iteration = state["iteration"]
