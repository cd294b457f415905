"""The LightningDataModule that owns the active pool and serves every loader a cycle needs.

Loaders: labeled (weak view, repeated to fill ``steps_per_epoch``), unlabeled (the views the method
asks for, ``uratio`` per labeled sample, each with its pool index and never its label), evaluation
(test split) and pool inference (no augmentation, with indices). All are sharded by rank here, so
the trainer must run with ``use_distributed_sampler=False`` (the active loop sets it).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from al_lightning.data.datasets import DATASETS, ImageSplits
from al_lightning.data.pool import ActivePool
from al_lightning.data.samplers import RepeatedPermutationSampler, ShardSampler
from al_lightning.data.transforms import build_views


class LabeledSet(Dataset):
    """``(image, label)`` for the labeled ids; labels come from the pool, not the dataset."""

    def __init__(self, images: torch.Tensor, indices: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.transform = images, transform
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[self.indices[i]]), self.labels[i]


class UnlabeledSet(Dataset):
    """``{"index": pool id, <view>: image, ...}`` for the unlabeled ids; it holds no targets at all."""

    def __init__(self, images: torch.Tensor, indices: np.ndarray, views: dict[str, Any]) -> None:
        self.images, self.views = images, views
        self.indices = torch.as_tensor(indices, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        index = self.indices[i]
        image = self.images[index]
        item = {name: view(image) for name, view in self.views.items()}
        item["index"] = index
        return item


class EvalSet(Dataset):
    """``(image, target)`` without augmentation, for the test split."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform) -> None:
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.targets[i]


class ActiveDataModule(L.LightningDataModule):
    """Holds the dataset in memory as uint8 and the :class:`ActivePool` over its train split.

    Args:
        dataset: a registered dataset (``digits``, ``mnist``, ``fashion_mnist``, ``cifar10``,
            ``cifar100``, ``svhn``, ``stl10``, ``image_folder``).
        root: where the dataset's files are (or are downloaded to).
        download: fetch missing files (needs internet; done once, on local rank 0).
        batch_size: labeled images per step *per device*.
        uratio: unlabeled images per labeled image (FixMatch's mu).
        steps_per_epoch: optimizer steps in one epoch of a fit.
        eval_batch_size: batch size for the test split and pool inference, per device.
        num_workers: loader worker processes per device.
        split_seed: seed of the train/test split where the dataset has none (digits).
        seed: seed of the sampling order (combined with the cycle and the epoch).
        dataset_options: extra options of the dataset (``image_folder``: image_size, channels).
    """

    def __init__(self, dataset: str = "digits", root: str = "data", download: bool = False,
                 batch_size: int = 64, uratio: int = 7, steps_per_epoch: int = 1024,
                 eval_batch_size: int = 512, num_workers: int = 2, split_seed: int = 0,
                 seed: int = 0, dataset_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        if batch_size < 1 or uratio < 0 or steps_per_epoch < 1:
            raise ValueError("data.batch_size and data.steps_per_epoch must be >= 1, data.uratio >= 0")
        self.dataset, self.root, self.download = dataset, root, download
        self.batch_size, self.uratio, self.steps_per_epoch = batch_size, uratio, steps_per_epoch
        self.eval_batch_size, self.num_workers = eval_batch_size, num_workers
        self.split_seed, self.seed = split_seed, seed
        self.dataset_options = dict(dataset_options or {})
        self.spec = DATASETS.get(dataset)
        self.num_classes, self.in_channels = self.spec.shape(root, **self.dataset_options)
        self.splits: ImageSplits | None = None
        self.pool: ActivePool | None = None
        self.views: dict[str, Any] = {}
        self.cycle = 0

    # ------------------------------------------------------------------ set-up
    def prepare_data(self) -> None:
        if self.download:
            self.spec.loader(self.root, download=True, split_seed=self.split_seed,
                             **self.dataset_options)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        self.splits = self.spec.loader(self.root, download=False, split_seed=self.split_seed,
                                       **self.dataset_options)
        self.num_classes = self.splits.num_classes
        self.pool = ActivePool(len(self.splits.train_targets), self.num_classes)
        self.views = build_views(self.splits.image_size, self.splits.hflip,
                                 self.splits.mean, self.splits.std)

    def ground_truth(self, indices: Any) -> np.ndarray:
        """True train labels, for the simulated oracle and diagnostics only, never the learner."""
        return self._splits().train_targets[torch.as_tensor(indices, dtype=torch.int64)].numpy()

    def _splits(self) -> ImageSplits:
        if self.splits is None:
            raise RuntimeError("the data module is not set up; call setup() first")
        return self.splits

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _loader(self, dataset: Dataset, batch_size: int, sampler, drop_last: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    # ----------------------------------------------------------------- loaders
    def unlabeled_views(self) -> tuple[str, ...]:
        trainer = getattr(self, "trainer", None)
        module = trainer.lightning_module if trainer is not None else None
        return tuple(getattr(module, "unlabeled_views", ("weak", "strong")))

    def train_dataloader(self) -> CombinedLoader:
        splits, pool = self._splits(), self.pool
        assert pool is not None
        if pool.num_labeled == 0:
            raise RuntimeError("the pool has no labeled sample; label an initial set before fitting")
        rank, world = self._rank()
        seed = self.seed * 7919 + self.cycle * 2
        labeled_ids = pool.labeled_indices
        labeled = LabeledSet(splits.train_images, labeled_ids, pool.labels_of(labeled_ids),
                             self.views["weak"])
        num = self.steps_per_epoch * self.batch_size
        loaders = {"labeled": self._loader(
            labeled, self.batch_size,
            RepeatedPermutationSampler(len(labeled), num, seed, rank, world), drop_last=True)}
        views = self.unlabeled_views()
        if views and self.uratio > 0 and pool.num_unlabeled > 0:
            unlabeled = UnlabeledSet(splits.train_images, pool.unlabeled_indices,
                                     {name: self.views[name] for name in views})
            loaders["unlabeled"] = self._loader(
                unlabeled, self.batch_size * self.uratio,
                RepeatedPermutationSampler(len(unlabeled), num * self.uratio, seed + 1, rank, world),
                drop_last=True)
        return CombinedLoader(loaders, mode="min_size")

    def _eval_loader(self) -> DataLoader:
        splits = self._splits()
        rank, world = self._rank()
        dataset = EvalSet(splits.test_images, splits.test_targets, self.views["plain"])
        return self._loader(dataset, self.eval_batch_size, ShardSampler(len(dataset), rank, world),
                            drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def inference_dataloader(self, indices: Any, split: str = "train") -> DataLoader:
        """``{"index", "plain"}`` batches of ``split`` ids in the given order, no augmentation."""
        splits = self._splits()
        images = splits.train_images if split == "train" else splits.test_images
        dataset = UnlabeledSet(images, np.asarray(indices), {"plain": self.views["plain"]})
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, num_workers=0)

    def test_targets(self) -> torch.Tensor:
        return self._splits().test_targets

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.state_dict() if self.pool is not None else None, "cycle": self.cycle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.setup()
        assert self.pool is not None
        if state.get("pool") is not None:
            self.pool.load_state_dict(state["pool"])
        self.cycle = int(state.get("cycle", 0))
