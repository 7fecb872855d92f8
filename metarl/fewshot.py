"""Few-shot classification as data: the episodes a classification task family hands to learners.

A classification family (e.g. ``metarl/OmniglotBandit-v0``) is a contextual
bandit: each step shows one image, the action is a class, the reward is 1 if
right. Because the true label is revealed after every step, the data of a
whole trial is known in advance: a support set (``shots`` images per class)
and a query set (``queries`` per class). Full-information learners (supervised
MAML, prototypical networks) read those tensors directly through
:class:`EpisodeSource`; bandit learners step through the same images in the env.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import torch

from metarl.tasks import Tasks


@dataclasses.dataclass(frozen=True)
class FewShotEpisodes:
    """One N-way episode per task, every tensor on the tasks' device.

    Images are ``(M, S, C, H, W)`` floats; labels are ``(M, S)`` longs in
    ``[0, N)``, the task's own numbering of its classes (a random relabelling
    of the underlying classes, so a label carries no identity across tasks).
    """

    support_images: torch.Tensor
    support_labels: torch.Tensor
    query_images: torch.Tensor
    query_labels: torch.Tensor
    num_ways: int

    def __post_init__(self) -> None:
        for kind in ("support", "query"):
            images, labels = getattr(self, f"{kind}_images"), getattr(self, f"{kind}_labels")
            if images.dim() != 5 or labels.shape != images.shape[:2]:
                raise ValueError(
                    f"{kind} images must be (M, S, C, H, W) with labels (M, S); got {tuple(images.shape)}, {tuple(labels.shape)}"
                )
        if self.support_images.shape[0] != self.query_images.shape[0]:
            raise ValueError("support and query sets disagree on the number of tasks")

    @property
    def num_tasks(self) -> int:
        return self.support_images.shape[0]

    def to(self, device: torch.device | str) -> FewShotEpisodes:
        return dataclasses.replace(
            self,
            support_images=self.support_images.to(device),
            support_labels=self.support_labels.to(device),
            query_images=self.query_images.to(device),
            query_labels=self.query_labels.to(device),
        )


@runtime_checkable
class EpisodeSource(Protocol):
    """A task family that can hand out whole few-shot episodes for its tasks."""

    num_ways: int
    shots: int
    queries: int
    image_shape: tuple[int, int, int]

    def episodes(self, tasks: Tasks, generator: torch.Generator) -> FewShotEpisodes:
        """One episode per task: fresh drawers (instances) of the task's classes, drawn with ``generator``."""
        ...
