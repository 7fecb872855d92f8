"""Omniglot as a bandit: N-way few-shot classification, one image per step (Santoro et al. 2016; Lake et al. 2015).

:class:`OmniglotBandit` is both a task family (the bandit view, for RL² and
other reward-driven learners) and a :class:`metarl.fewshot.EpisodeSource` (the
supervised view: whole support and query sets, for MAML, Reptile or
prototypical networks). Both views draw their episodes with the same code, so
for the same generator state they see the same images in the same order.

:func:`synthetic_glyph_classes` makes a small table of generated glyphs with
the same layout as the real data, for tests and quick demos.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from gymnasium import spaces

from envs.omniglot_data import ENV_VAR, SPLIT_NAMES, OmniglotClasses, load_split, with_rotations
from metarl.env import TaskFamily, Transition
from metarl.fewshot import FewShotEpisodes
from metarl.registry import register
from metarl.structs import TensorStruct
from metarl.tasks import Split, Tasks, TaskSpace, check_split, check_task_generator
from metarl.validation import check_positive_int, is_int


@dataclasses.dataclass(frozen=True)
class OmniglotTasks(Tasks):
    classes: torch.Tensor  # (n, num_ways) long: indices into the family's class table (train classes first, then test)


@dataclasses.dataclass(frozen=True)
class OmniglotState(TensorStruct):
    image_ids: torch.Tensor  # (n, T) long: row of each step's image in the flat (class * drawers + drawer) image table
    labels: torch.Tensor  # (n, T) long: each step's true label in [0, num_ways)
    step: torch.Tensor  # (n,) long: index of the step whose image is shown now (T once the episode is over)


class _EpisodeIds(NamedTuple):
    """One episode per task as image rows and labels, support and query apart."""

    support_ids: torch.Tensor  # (n, N * shots)
    support_labels: torch.Tensor
    query_ids: torch.Tensor  # (n, N * queries)
    query_labels: torch.Tensor


# --- tasks ---------------------------------------------------------------------------


class OmniglotTaskSpace(TaskSpace[OmniglotTasks]):
    """``num_ways`` distinct classes per task, all from one split of the class table.

    Class ids ``0 .. num_train_classes - 1`` are the train classes and the
    following ``num_test_classes`` the held-out ones. :meth:`sample` draws
    from the requested split's id range only, so held-out tasks are held out
    by construction (disjoint class sets), without rejection sampling.

    :meth:`draw` (the whole distribution) picks a split per task with
    probability proportional to its number of classes, then the classes
    within that split; a task never mixes splits. The default task is the
    first ``num_ways`` train classes.
    """

    tasks_type: ClassVar[type[Tasks]] = OmniglotTasks

    def __init__(self, num_train_classes: int, num_test_classes: int, num_ways: int) -> None:
        self.num_train_classes = check_positive_int("num_train_classes", num_train_classes)
        self.num_test_classes = check_positive_int("num_test_classes", num_test_classes)
        self.num_ways = check_positive_int("num_ways", num_ways)
        for split, count in (("train", num_train_classes), ("test", num_test_classes)):
            if num_ways > count:
                raise ValueError(f"num_ways={num_ways} exceeds the {count} classes of the {split} split")

    @property
    def num_classes(self) -> int:
        return self.num_train_classes + self.num_test_classes

    def _split_range(self, split: str) -> tuple[int, int]:
        """(first id, number of classes) of ``split``."""
        return (0, self.num_train_classes) if split == "train" else (self.num_train_classes, self.num_test_classes)

    def _classes_of(self, split: str, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, num_ways)`` distinct ids of ``split`` per row: the first ``num_ways`` of a random permutation."""
        first, count = self._split_range(split)
        noise = torch.rand((n, count), generator=generator)
        return noise.argsort(dim=1, stable=True)[:, : self.num_ways] + first

    def sample(self, n: int, *, generator: torch.Generator, split: Split = "train") -> OmniglotTasks:
        """``n`` tasks whose classes all come from ``split`` (drawn with ``generator``, a CPU generator)."""
        check_positive_int("number of tasks", n)
        check_split(split)
        check_task_generator(generator)
        return OmniglotTasks(self._classes_of(split, n, generator))

    def draw(self, n: int, generator: torch.Generator) -> OmniglotTasks:
        train = self._classes_of("train", n, generator)
        test = self._classes_of("test", n, generator)
        is_test = torch.rand(n, generator=generator) < self.num_test_classes / self.num_classes
        return OmniglotTasks(torch.where(is_test.unsqueeze(1), test, train))

    def split_coordinates(self, tasks: OmniglotTasks) -> torch.Tensor:
        """Each class id rescaled to ``[0, 1)``; informative only (:meth:`held_out` decides by class set)."""
        return (self._checked(tasks).double() + 0.5).div(self.num_classes).float()

    def held_out(self, tasks: OmniglotTasks) -> torch.Tensor:
        """Boolean ``(n,)``: which tasks use held-out classes. A task mixing both splits is an error."""
        test = self._checked(tasks) >= self.num_train_classes
        mixed = test.any(dim=1) & ~test.all(dim=1)
        if bool(mixed.any()):
            rows = mixed.nonzero().flatten()[:5].tolist()
            raise ValueError(
                f"tasks {rows} mix train classes (ids < {self.num_train_classes}) and held-out classes; "
                f"e.g. classes {tasks.classes[rows[0]].tolist()}"
            )
        return test.all(dim=1)

    def default(self) -> OmniglotTasks:
        return OmniglotTasks(torch.arange(self.num_ways).unsqueeze(0))

    def _checked(self, tasks: OmniglotTasks) -> torch.Tensor:
        """``tasks.classes`` on the CPU after checking type, shape, dtype and id range (reads values: not for the hot path)."""
        if not isinstance(tasks, OmniglotTasks):
            raise TypeError(f"expected OmniglotTasks, got {type(tasks).__name__}")
        classes = tasks.classes.cpu()
        if classes.dtype != torch.long or classes.dim() != 2 or classes.shape[1] != self.num_ways:
            raise ValueError(
                f"tasks.classes must be a ({len(tasks)}, {self.num_ways}) long tensor, got {tuple(classes.shape)} {classes.dtype}"
            )
        bad = (classes < 0) | (classes >= self.num_classes)
        if bool(bad.any()):
            raise ValueError(f"class ids must lie in [0, {self.num_classes}); got {classes[bad][:8].tolist()}")
        return classes

    def __repr__(self) -> str:
        return (
            f"OmniglotTaskSpace(num_train_classes={self.num_train_classes}, "
            f"num_test_classes={self.num_test_classes}, num_ways={self.num_ways})"
        )


# --- the class table ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ClassTable:
    """Train and held-out classes in one flat table of images, train first."""

    images: torch.Tensor  # (num_classes * drawers, H * W) float32 on the CPU
    num_train_classes: int
    num_test_classes: int
    drawers: int
    image_size: tuple[int, int]
    alphabets: tuple[str, ...]
    characters: tuple[str, ...]


def _class_table(train: OmniglotClasses, test: OmniglotClasses) -> _ClassTable:
    for name, part in (("train", train), ("test", test)):
        if not isinstance(part, OmniglotClasses):
            raise TypeError(f"classes must be a (train, test) pair of OmniglotClasses; the {name} part is {type(part).__name__}")
        images = part.images
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.dtype.is_floating_point:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{name} images must be a float (classes, drawers, H, W) tensor, got {shape}")
        if images.shape[0] == 0 or images.shape[1] == 0:
            raise ValueError(f"the {name} split holds no images: shape {tuple(images.shape)}")
        low, high = float(images.min()), float(images.max())
        if not (0.0 <= low and high <= 1.0):
            raise ValueError(f"{name} images must lie in [0, 1] (strokes 1, background 0), got values in [{low}, {high}]")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise ValueError(
            "train and test classes must share the number of drawers and the image size, "
            f"got (drawers, H, W) = {tuple(train.images.shape[1:])} and {tuple(test.images.shape[1:])}"
        )
    c_train, drawers, h, w = train.images.shape
    c_test = test.images.shape[0]
    images = torch.cat([train.images, test.images]).to("cpu", torch.float32).reshape((c_train + c_test) * drawers, h * w)
    return _ClassTable(
        images.contiguous(),
        c_train,
        c_test,
        drawers,
        (h, w),
        tuple(train.alphabets) + tuple(test.alphabets),
        tuple(train.characters) + tuple(test.characters),
    )


@functools.lru_cache(maxsize=2)
def _loaded_table(split: str, root: str | None, image_size: int, env_root: str | None, train_rotations: bool) -> _ClassTable:
    """The class table of a named split, built once per process and shared by every family that loads it.

    ``env_root`` (``$METARL_OMNIGLOT_DIR`` at the call) is part of the key because
    ``load_split`` reads it when ``root`` is None.
    """
    train, test = load_split(split, root=root, image_size=image_size)
    return _class_table(with_rotations(train) if train_rotations else train, test)


# --- the family ---------------------------------------------------------------------


class OmniglotBandit(TaskFamily[OmniglotTasks, OmniglotState]):
    """N-way few-shot classification of Omniglot characters, played one image per step.

    **Description.** Each task is a set of ``num_ways`` character classes.
    An episode (one trial) draws ``shots + queries`` distinct drawers
    (handwritten instances) of each class, numbers the task's classes by a
    fresh random permutation (labels ``0 .. N-1``, so a label means nothing
    across episodes), and shows the images one per step: first the
    ``N * shots`` support images in a random order, then the ``N * queries``
    query images in a random order. Every step the agent names the class of
    the image it sees; the true label is revealed in the next observation.
    This is the online classification task of memory-augmented networks
    (Santoro et al. 2016) and of RL² agents: learning the task means binding
    images to labels within the episode.

    Supervised few-shot learning is the full-information special case: since
    every label is revealed, an episode's data is known in advance, and
    :meth:`episodes` hands it out whole (support set, query set) for MAML,
    Reptile or prototypical networks, drawn by the same code as the env's
    episodes.

    **Observation.** ``Box(0, 1, (H * W + num_ways,), float32)``: the shown
    image flattened row by row (strokes 1, background 0), then the one-hot of
    the *previous* step's true label (all zeros at the first step). After the
    last step (the final observation) the image part is blank and the one-hot
    holds the last label. The previous reward reaches recurrent agents through
    the RL² trial wrapper, not through this observation.

    **Action.** ``Discrete(num_ways)``: the guessed label.

    **Reward.** 1.0 if the action equals the shown image's label, else 0.0.
    The label itself is revealed with the step: ``info["label"]`` in the
    Gymnasium views (:meth:`step_info`), :meth:`labels` of a state.

    **Task distribution.** ``num_ways`` distinct classes drawn uniformly from
    one split's classes (:class:`OmniglotTaskSpace`). Default task: the first
    ``num_ways`` train classes.

    **Held-out split.** By class: the family's class table holds the split's
    train classes (ids ``0 .. C_train - 1``) then its held-out classes; train
    tasks use train classes only and test tasks held-out classes only, so the
    two are disjoint by construction (:meth:`OmniglotTaskSpace.held_out`). Which
    alphabets are held out is the data split's choice (``split``, see
    :func:`envs.omniglot_data.load_split`).

    **Episode end.** Terminated after the last query step, step
    ``N * (shots + queries)`` (``max_episode_steps`` only states that bound;
    truncation never fires). The task is kept across the autoreset, and each
    new episode draws fresh drawers, labels and orders.

    **Version history.** v0: initial version.

    Args:
        split: the Omniglot split to load (``"minimal"``, ``"background"``, ...;
            see :func:`envs.omniglot_data.load_split`); unused when ``classes`` is given.
        num_ways: ``N``, classes per task (at least 2).
        shots: support images per class (at least 1).
        queries: query images per class (at least 1).
        image_size: side of the square images, in pixels; must match ``classes`` when given.
        root: folder holding the Omniglot zips; default: ``load_split``'s own
            lookup (the ``METARL_OMNIGLOT_DIR`` environment variable, then its cache).
        classes: a ``(train, test)`` pair of class tables to use instead of
            loading a split (tests, demos with :func:`synthetic_glyph_classes`,
            a user's own glyphs).
        train_rotations: give every train class its 90, 180 and 270 degree
            rotations as three more train classes
            (:func:`envs.omniglot_data.with_rotations`; the augmentation of
            Santoro et al. 2016 and Vinyals et al. 2016). Held-out classes are
            left as they are. Not for ``"vinyals"``, whose classes already
            include their rotations.
    """

    def __init__(
        self,
        split: str = "minimal",
        num_ways: int = 5,
        shots: int = 1,
        queries: int = 1,
        image_size: int = 28,
        root: str | os.PathLike[str] | None = None,
        classes: tuple[OmniglotClasses, OmniglotClasses] | None = None,
        train_rotations: bool = False,
    ) -> None:
        for name, value, minimum in (("num_ways", num_ways, 2), ("shots", shots, 1), ("queries", queries, 1)):
            if not is_int(value) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        check_positive_int("image_size", image_size)
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown Omniglot split {split!r}; valid: {', '.join(SPLIT_NAMES)}")
        if root is not None and not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a folder path or None, got {root!r}")
        if not isinstance(train_rotations, bool):
            raise TypeError(f"train_rotations must be a bool, got {train_rotations!r}")
        if train_rotations and split == "vinyals" and classes is None:
            raise ValueError("train_rotations=True with split='vinyals': that split's classes already include their rotations")
        if classes is None:
            root_key = None if root is None else os.fspath(root)
            table = _loaded_table(split, root_key, image_size, os.environ.get(ENV_VAR), train_rotations)
        else:
            if root is not None:
                raise ValueError(f"give either classes or root, not both (root={os.fspath(root)!r})")
            if not isinstance(classes, tuple) or len(classes) != 2:
                raise TypeError(f"classes must be a (train, test) tuple of OmniglotClasses, got {type(classes).__name__}")
            table = _class_table(*classes)
            if train_rotations:
                table = _class_table(with_rotations(classes[0]), classes[1])
            if table.image_size != (image_size, image_size):
                h, w = table.image_size
                raise ValueError(f"classes hold {h}x{w} images but image_size={image_size}; pass image_size={h} (square images)")
        if shots + queries > table.drawers:
            raise ValueError(
                f"shots + queries = {shots} + {queries} = {shots + queries} exceeds the {table.drawers} drawers per class"
            )
        self.split = split if classes is None else "custom"
        self.root = root  # where the files were looked for (None: $METARL_OMNIGLOT_DIR or the default cache)
        self.num_ways, self.shots, self.queries = num_ways, shots, queries
        self.train_rotations = train_rotations
        self.image_shape: tuple[int, int, int] = (1, *table.image_size)
        self.task_space = OmniglotTaskSpace(table.num_train_classes, table.num_test_classes, num_ways)
        self.max_episode_steps = num_ways * (shots + queries)
        h, w = table.image_size
        self.observation_space = spaces.Box(0.0, 1.0, (h * w + num_ways,), np.float32)
        self.action_space = spaces.Discrete(num_ways)
        self._table = table
        self._images_on: dict[torch.device, torch.Tensor] = {}

    # --- data ------------------------------------------------------------------------
    @property
    def drawers(self) -> int:
        """Instances per class in the table (20 for Omniglot)."""
        return self._table.drawers

    @property
    def alphabets(self) -> tuple[str, ...]:
        """Alphabet of each class id (train classes first)."""
        return self._table.alphabets

    @property
    def characters(self) -> tuple[str, ...]:
        """Name of each class id (train classes first)."""
        return self._table.characters

    def _images(self, device: torch.device) -> torch.Tensor:
        """The flat ``(classes * drawers, H * W)`` image table on ``device``, copied there once."""
        images = self._images_on.get(device)
        if images is None:
            images = self._images_on[device] = self._table.images.to(device)
        return images

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_images_on"] = {}  # device copies are a cache; the CPU table travels
        return state

    # --- episodes ---------------------------------------------------------------------
    def _draw(self, classes: torch.Tensor, generator: torch.Generator) -> _EpisodeIds:
        """One episode per row of ``classes`` ``(n, N)``, as image rows and labels; batched, on ``classes.device``."""
        n, ways = classes.shape
        if ways != self.num_ways:
            raise ValueError(f"tasks have {ways} classes each, this family plays {self.num_ways}-way tasks")
        device, k, q = classes.device, self.shots, self.queries
        # shots + queries distinct drawers per (task, class): the first ones of a random permutation.
        drawers = torch.rand((n, ways, self.drawers), generator=generator, device=device).argsort(dim=-1)[..., : k + q]
        ids = classes.unsqueeze(-1) * self.drawers + drawers  # (n, N, k + q)
        # The task's j-th class gets label perm[j]: a fresh relabelling per episode.
        perm = torch.rand((n, ways), generator=generator, device=device).argsort(dim=-1)
        labels = perm.unsqueeze(-1).expand(n, ways, k + q)

        def shuffled(part: slice, count: int) -> tuple[torch.Tensor, torch.Tensor]:
            order = torch.rand((n, ways * count), generator=generator, device=device).argsort(dim=-1)
            part_ids, part_labels = ids[..., part].reshape(n, -1), labels[..., part].reshape(n, -1)
            return part_ids.gather(1, order), part_labels.gather(1, order)

        support_ids, support_labels = shuffled(slice(0, k), k)
        query_ids, query_labels = shuffled(slice(k, k + q), q)
        return _EpisodeIds(support_ids, support_labels, query_ids, query_labels)

    def episodes(self, tasks: OmniglotTasks, generator: torch.Generator) -> FewShotEpisodes:
        """One N-way episode per task, on ``tasks.device`` (``generator`` must live there too).

        Per task and class, ``shots + queries`` distinct drawers; labels are a
        fresh random relabelling of the task's classes; support and query sets
        are each in random order. Images are ``(M, S, 1, H, W)``.
        """
        self.task_space._checked(tasks)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != tasks.device.type:
            raise ValueError(
                f"generator is on {generator.device} but tasks are on {tasks.device}; use a generator on the tasks' device"
            )
        drawn = self._draw(tasks.classes, generator)
        images = self._images(tasks.device)
        n = len(tasks)

        def gather(ids: torch.Tensor) -> torch.Tensor:
            return images[ids.reshape(-1)].reshape(n, ids.shape[1], *self.image_shape)

        return FewShotEpisodes(
            gather(drawn.support_ids), drawn.support_labels, gather(drawn.query_ids), drawn.query_labels, self.num_ways
        )

    # --- the bandit ---------------------------------------------------------------------
    def observation(self, images: torch.Tensor, previous_labels: torch.Tensor) -> torch.Tensor:
        """Observations ``(n, H * W + num_ways)`` of flat ``images`` ``(n, H * W)`` after ``previous_labels`` ``(n,)``.

        A previous label of -1 means none (the first step): its one-hot is all zeros.
        The one place that fixes the layout, for the env and for code that feeds
        a trained agent images of its own (e.g. RL² on the official one-shot runs).
        """
        # One-hot by comparison (F.one_hot reads its input back to the host to check the range; -1 gives zeros).
        ways = torch.arange(self.num_ways, device=previous_labels.device)
        one_hot = previous_labels.unsqueeze(1) == ways
        return torch.cat([images, one_hot.to(images.dtype)], dim=1)

    def _observe(self, state: OmniglotState) -> torch.Tensor:
        image_ids, labels, step = state.image_ids, state.labels, state.step
        horizon = image_ids.shape[1]
        shown = image_ids.gather(1, step.clamp(max=horizon - 1).unsqueeze(1)).squeeze(1)
        image = self._images(image_ids.device)[shown] * (step < horizon).unsqueeze(1)
        previous = labels.gather(1, (step - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        return self.observation(image, torch.where(step > 0, previous, -1))

    def reset(self, tasks: OmniglotTasks, generator: torch.Generator) -> tuple[OmniglotState, torch.Tensor]:
        drawn = self._draw(tasks.classes, generator)
        image_ids = torch.cat([drawn.support_ids, drawn.query_ids], dim=1)
        labels = torch.cat([drawn.support_labels, drawn.query_labels], dim=1)
        state = OmniglotState(image_ids, labels, torch.zeros(len(tasks), dtype=torch.long, device=image_ids.device))
        return state, self._observe(state)

    def step(
        self, state: OmniglotState, action: torch.Tensor, tasks: OmniglotTasks, generator: torch.Generator
    ) -> Transition[OmniglotState]:
        reward = (action == self.labels(state)).to(torch.float32)
        next_state = OmniglotState(state.image_ids, state.labels, state.step + 1)
        terminated = next_state.step >= state.image_ids.shape[1]
        return Transition(next_state, self._observe(next_state), reward, terminated)

    def labels(self, state: OmniglotState) -> torch.Tensor:
        """``(n,)`` long: the true label of the image each env shows now (the one the next action is scored against)."""
        step = state.step.clamp(max=state.labels.shape[1] - 1)
        return state.labels.gather(1, step.unsqueeze(1)).squeeze(1)

    def step_info(self, state: OmniglotState, tasks: OmniglotTasks) -> dict[str, torch.Tensor]:
        """The true label of the image shown, revealed with the step (Gymnasium ``info["label"]``)."""
        return {"label": self.labels(state)}

    def is_query(self, state: OmniglotState) -> torch.Tensor:
        """``(n,)`` bool: whether the image shown now belongs to the query set (the support set comes first)."""
        return state.step >= self.num_ways * self.shots

    def __repr__(self) -> str:
        return (
            f"OmniglotBandit(split={self.split!r}, num_ways={self.num_ways}, shots={self.shots}, "
            f"queries={self.queries}, image_size={self.image_shape[1]}, train_rotations={self.train_rotations})"
        )


# --- synthetic glyphs -----------------------------------------------------------------


def synthetic_glyph_classes(
    num_train: int, num_test: int, image_size: int = 28, drawers: int = 20, seed: int = 0, strokes: int = 3
) -> tuple[OmniglotClasses, OmniglotClasses]:
    """A small generated stand-in for Omniglot: ``(train, test)`` classes of stroke glyphs.

    Each class is a random pen path of ``strokes`` line segments through
    points of the image's central 70%; each drawer redraws it with every
    point jittered (about 1 pixel at 28 px), the whole glyph shifted (up to
    about 2 pixels) and a few pixels of ink noise. Images are ``(C, drawers,
    image_size, image_size)`` in ``[0, 1]`` with strokes at 1, like the real
    data. Classes are distinct but drawers are not copies, so a learner has
    something to learn; the same arguments give the same glyphs everywhere
    (CPU generator seeded by ``seed``).
    """
    check_positive_int("num_train", num_train)
    check_positive_int("num_test", num_test)
    check_positive_int("drawers", drawers)
    check_positive_int("strokes", strokes)
    if not is_int(image_size) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    g = torch.Generator().manual_seed(seed)
    c = num_train + num_test
    pixel = 1.0 / image_size
    points = 0.15 + 0.7 * torch.rand((c, 1, strokes + 1, 2), generator=g)  # the class's pen path, in [0, 1]^2
    jitter = 0.035 * torch.randn((c, drawers, strokes + 1, 2), generator=g)
    shift = (torch.rand((c, drawers, 1, 2), generator=g) * 2 - 1) * 2.0 * pixel
    points = points + jitter + shift  # (C, D, strokes + 1, 2)
    centres = (torch.arange(image_size, dtype=torch.float32) + 0.5) * pixel
    grid = torch.stack(torch.meshgrid(centres, centres, indexing="ij"), dim=-1).reshape(1, 1, -1, 2)  # (1, 1, P, 2) as (y, x)
    half_width = 0.9 * pixel * image_size / 28
    ink = torch.zeros(c, drawers, image_size * image_size)
    for s in range(strokes):  # a few strokes: a short loop over segments, each drawn for every glyph at once
        a, b = points[:, :, s].unsqueeze(2), points[:, :, s + 1].unsqueeze(2)  # (C, D, 1, 2)
        ab, ap = b - a, grid - a
        t = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-8)).clamp(0.0, 1.0)
        distance = (ap - t.unsqueeze(-1) * ab).norm(dim=-1)  # (C, D, P)
        ink = torch.maximum(ink, ((half_width - distance) / pixel + 0.5).clamp(0.0, 1.0))  # anti-aliased edge
    flips = torch.rand(ink.shape, generator=g) < 0.01
    ink = torch.where(flips, 1.0 - ink, ink).reshape(c, drawers, image_size, image_size)

    def part(first: int, count: int) -> OmniglotClasses:
        names = tuple(f"glyph_{i:04d}" for i in range(first, first + count))
        return OmniglotClasses(ink[first : first + count].contiguous(), ("synthetic",) * count, names)

    return part(0, num_train), part(num_train, num_test)


register("metarl/OmniglotBandit-v0", OmniglotBandit)
