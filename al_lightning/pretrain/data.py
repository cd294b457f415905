"""What pre-training reads from the data: augmented views of every train image with its pool id.

:class:`PretrainDataModule` wraps the ``data`` section's :class:`ActiveDataModule` and uses only its
splits: the train images (never the pool or its labels) for training and for the features written at
the end, and the test split for the kNN monitor. Like the active data module it shards by rank itself,
so the trainer runs with ``use_distributed_sampler=False``: every rank draws its slice of one seeded
global stream (a permutation of the train split per epoch, or DeepCluster's cluster-uniform stream).

A pre-training method declares what it needs, read when the loader is built:

* ``view_transforms(splits) -> list of transforms``: one augmented view per entry;
* ``cluster_assignments() -> (N,) ints``: optional; the epoch then samples uniformly over the
  non-empty clusters (read when the epoch's loader iterator starts, as the active data module's
  ``unlabeled_weights``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from al_lightning.data import ActiveDataModule, ImageSplits
from al_lightning.data.samplers import RepeatedPermutationSampler


class MultiViewSet(Dataset):
    """``{"index": train id, "views": [transform(image) for each transform]}``; no targets at all."""

    def __init__(self, images: torch.Tensor, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.images, self.transforms = images, list(transforms)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.images[i]
        return {"index": i, "views": [transform(image) for transform in self.transforms]}


def cluster_uniform_stream(assignments: torch.Tensor, total: int, generator: torch.Generator) -> torch.Tensor:
    """``total`` ids drawn equally from every non-empty cluster, uniformly within it (DeepCluster's
    ``UnifLabelSampler``, Caron et al. 2018 section 3.3, "sampling images based on a uniform
    distribution over the classes"): each of the ``m`` non-empty clusters gets ``ceil(total / m)``
    slots filled from a random permutation of its members, repeated when the cluster is smaller
    (DeepCluster draws with replacement then; a repeated permutation is just as uniform and never
    repeats an id before all were drawn); the slots are shuffled and cut to ``total``."""
    assignments = torch.as_tensor(assignments, dtype=torch.int64).reshape(-1)
    _, counts = torch.unique(assignments, return_counts=True)
    per_cluster = -(-total // len(counts))
    shuffled = torch.randperm(assignments.numel(), generator=generator)
    grouped = shuffled[torch.argsort(assignments[shuffled], stable=True)]  # by cluster, random within
    starts = torch.cumsum(counts, 0) - counts
    slots = starts[:, None] + torch.arange(per_cluster)[None, :] % counts[:, None]
    stream = grouped[slots.reshape(-1)]
    return stream[torch.randperm(stream.numel(), generator=generator)][:total]


class ClusterUniformSampler(Sampler[int]):
    """``num_samples`` ids per rank from :func:`cluster_uniform_stream` over ``assignments()``, read
    when iteration starts; seeded by (seed, epoch), so ranks holding the same assignments draw the
    same global stream and take disjoint slices of it."""

    def __init__(self, num_samples: int, seed: int, rank: int, world_size: int,
                 assignments: Callable[[], Any]) -> None:
        self.num_samples, self.seed, self.rank, self.world_size = num_samples, seed, rank, world_size
        self.assignments = assignments
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_stream(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return cluster_uniform_stream(torch.as_tensor(self.assignments()), self.num_samples * self.world_size,
                                      generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_stream()[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples


class PretrainDataModule(L.LightningDataModule):
    """Pre-training loaders over the splits of ``source`` (the CLI's ``data`` section).

    An epoch is one pass over the train split: ``N // (batch_size * world)`` steps of
    ``source.batch_size`` images per device (drop-last, as SimSiam and SimCLR).
    """

    def __init__(self, source: ActiveDataModule) -> None:
        super().__init__()
        self.source = source

    @property
    def batch_size(self) -> int:
        return self.source.batch_size

    def prepare_data(self) -> None:
        self.source.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.source.setup(stage)

    def splits(self) -> ImageSplits:
        self.source.setup()
        assert self.source.splits is not None
        return self.source.splits

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        method = self.trainer.lightning_module
        splits = self.splits()
        rank, world = self._rank()
        size = len(splits.train_images)
        steps = max(1, size // (self.batch_size * world))
        seed = self.source.seed * 7919 + 1
        assignments = getattr(method, "cluster_assignments", None)
        sampler = RepeatedPermutationSampler(size, steps * self.batch_size, seed, rank, world) if assignments is None \
            else ClusterUniformSampler(steps * self.batch_size, seed, rank, world, assignments)
        workers = self.source.num_workers
        return DataLoader(MultiViewSet(splits.train_images, method.view_transforms(splits)),
                          batch_size=self.batch_size, sampler=sampler, drop_last=True, num_workers=workers,
                          persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())

    def embedding_loader(self, indices: Any, split: str) -> DataLoader:
        """``{"index", "plain"}`` batches of un-augmented ``split`` images, in the given order."""
        return self.source.inference_dataloader(np.asarray(indices), split)

    def split_size(self, split: str) -> int:
        splits = self.splits()
        return len(splits.train_images if split == "train" else splits.test_images)

    def test_targets(self) -> torch.Tensor:
        """For the kNN monitor only; training never sees a label."""
        return self.splits().test_targets
