"""The LightningDataModule that owns the active pool and serves every loader a cycle needs.

Loaders: labeled (the views the method asks for, with pool ids and the pool's labels, repeated to
fill the epoch), unlabeled (the views the method asks for, ``uratio`` per labeled sample, each with
its pool index and never its label), evaluation (test split) and pool inference (no augmentation,
with indices). All are sharded by rank here, so the trainer must run with
``use_distributed_sampler=False`` (the active loop sets it).

With ``augmentation: device`` (the default) the loaders hand out uint8 images and ids only, and the
views are built after the batch reached its device (:meth:`ActiveDataModule.on_after_batch_transfer`,
:class:`~al_lightning.data.batch_augment.BatchViews`), each image with its own parameters drawn from
a generator seeded by (seed, cycle, rank): every rank draws different augmentations, reproducibly.
``augmentation: per_sample`` keeps the per-sample reference pipeline in the loader workers.
Evaluation and pool inference always read uint8 and standardise the batch on its device.

The data side never asks which method runs. A method declares what it needs as attributes, read
from the trainer's LightningModule when a loader is built:

* ``labeled_views`` / ``unlabeled_views``: names of the views (``plain``, ``weak``, ``strong``);
  an empty ``unlabeled_views`` means labeled data only.
* ``unlabeled_weights(ids) -> array``: optional; unlabeled ids are then drawn with replacement in
  proportion to these weights instead of by repeated permutations. The sampler calls it when the
  epoch's loader iterator is created: from the second epoch on that is after
  ``on_train_epoch_start``; the first epoch's iterator is created earlier (during the fit's
  set-up), so weights for it must exist by ``on_fit_start`` (with loader workers, even before).
* ``unlabeled_epoch_fraction``: optional; an epoch then ends after that fraction of the unlabeled
  pool has been drawn (across all ranks) instead of after ``steps_per_epoch`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset

from al_lightning.data.batch_augment import BatchViews
from al_lightning.data.datasets import DATASETS, ImageSplits
from al_lightning.data.pool import ActivePool
from al_lightning.data.samplers import RepeatedPermutationSampler, ShardSampler, WeightedReplacementSampler
from al_lightning.data.transforms import build_views


class LabeledSet(Dataset):
    """``{"index": pool id, "target": label, <view>: image, ...}`` for the labeled ids; labels come
    from the pool (or a strategy's pseudo-labels), never from the dataset."""

    def __init__(self, images: torch.Tensor, indices: np.ndarray, labels: np.ndarray,
                 views: dict[str, Any]) -> None:
        self.images, self.views = images, views
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.images[self.indices[i]]
        item = {name: view(image) for name, view in self.views.items()}
        item["index"], item["target"] = self.indices[i], self.labels[i]
        return item


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


def uint8_image(image: torch.Tensor) -> torch.Tensor:
    """The loader-side "view" of on-device augmentation: the stored uint8 image, untouched."""
    return image


#: the key under which loaders hand out raw uint8 images for on-device views
RAW = "image"


class PoolBatches:
    """``{"index", "plain"}`` batches of a uint8 loader, standardised on ``device`` after the
    transfer (no per-sample work in Python)."""

    def __init__(self, loader: DataLoader, normalize: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device) -> None:
        self.loader, self.normalize, self.device = loader, normalize, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.loader:
            images = batch[RAW].to(self.device, non_blocking=True)
            yield {"index": batch["index"], "plain": self.normalize(images)}


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
        uratio: unlabeled images per labeled image (FixMatch's mu); 0 trains on labeled data only.
        unlabeled_batch_size: unlabeled images per step per device, when it is not a multiple of
            the labeled batch (e.g. 54 next to 10 labeled in "Rethinking"'s MNIST setting);
            overrides ``uratio``.
        steps_per_epoch: optimizer steps in one epoch of a fit (unless the method sets
            ``unlabeled_epoch_fraction``).
        eval_batch_size: batch size for the test split and pool inference, per device.
        num_workers: loader worker processes per device.
        augmentation: ``device`` builds the weak and strong views on the whole batch where it is
            (the GPU when training on one); ``per_sample`` runs the per-sample reference pipeline
            in the loader workers (same policy, slower; kept as the specification).
        split_seed: seed of the train/test split where the dataset has none (digits).
        seed: seed of the sampling order (combined with the cycle and the epoch).
        dataset_options: extra options of the dataset (``image_folder``: image_size, channels).
    """

    def __init__(self, dataset: str = "digits", root: str = "data", download: bool = False,
                 batch_size: int = 64, uratio: int = 7, unlabeled_batch_size: int | None = None,
                 steps_per_epoch: int = 1024,
                 eval_batch_size: int = 512, num_workers: int = 2,
                 augmentation: Literal["device", "per_sample"] = "device", split_seed: int = 0,
                 seed: int = 0, dataset_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        if batch_size < 1 or uratio < 0 or steps_per_epoch < 1 or (unlabeled_batch_size or 0) < 0:
            raise ValueError("data.batch_size and data.steps_per_epoch must be >= 1, data.uratio and "
                             "data.unlabeled_batch_size >= 0")
        if augmentation not in ("device", "per_sample"):
            raise ValueError(f"data.augmentation must be device or per_sample, got {augmentation!r}")
        self.dataset, self.root, self.download = dataset, root, download
        self.batch_size, self.uratio, self.steps_per_epoch = batch_size, uratio, steps_per_epoch
        self.unlabeled_batch_size = batch_size * uratio if unlabeled_batch_size is None else unlabeled_batch_size
        self.eval_batch_size, self.num_workers = eval_batch_size, num_workers
        self.augmentation = augmentation
        self.split_seed, self.seed = split_seed, seed
        self.dataset_options = dict(dataset_options or {})
        self.spec = DATASETS.get(dataset)
        self.num_classes, self.in_channels = self.spec.shape(root, **self.dataset_options)
        self.splits: ImageSplits | None = None
        self.pool: ActivePool | None = None
        self.views: dict[str, Any] = {}
        self.batch_views: BatchViews | None = None
        #: the views each training loader's batches get on the device (``augmentation: device``)
        self._device_views: dict[str, tuple[str, ...]] = {}
        self._augment_seed = 0
        self._generator: torch.Generator | None = None
        #: training batches augmented in this fit when no trainer counts them (benchmarks, tests)
        self._batches = 0
        self.cycle = 0
        #: ``(ids, labels)`` a strategy pseudo-labeled for the next fit (CEAL); never pool labels
        self.pseudo_labeled: tuple[np.ndarray, np.ndarray] | None = None

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
        self.batch_views = BatchViews(self.splits.image_size, self.splits.hflip, self.splits.mean, self.splits.std)

    def ground_truth(self, indices: Any) -> np.ndarray:
        """True train labels, for the simulated oracle and diagnostics only, never the learner;
        the one exception is the labels a person's data came with (``splits.given_labels``)."""
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
    def _method(self) -> Any:
        trainer = getattr(self, "trainer", None)
        return trainer.lightning_module if trainer is not None else None

    def unlabeled_views(self) -> tuple[str, ...]:
        return tuple(getattr(self._method(), "unlabeled_views", ("weak", "strong")))

    def labeled_views(self) -> tuple[str, ...]:
        return tuple(getattr(self._method(), "labeled_views", ("weak",)))

    def _steps_per_epoch(self, num_unlabeled: int, world: int) -> int:
        fraction = getattr(self._method(), "unlabeled_epoch_fraction", None)
        if fraction is None or self.unlabeled_batch_size == 0 or num_unlabeled == 0:
            return self.steps_per_epoch
        return max(1, math.ceil(fraction * num_unlabeled / (self.unlabeled_batch_size * world)))

    def labeled_training_set(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, labels)`` the next fit trains on: the pool's labels plus any pseudo-labels a
        strategy handed over for this fit (never overlapping the pool's labeled ids)."""
        pool = self.pool
        assert pool is not None
        ids = pool.labeled_indices
        labels = pool.labels_of(ids)
        if self.pseudo_labeled is not None and len(self.pseudo_labeled[0]):
            extra_ids, extra_labels = (np.asarray(a, dtype=np.int64) for a in self.pseudo_labeled)
            keep = ~pool.labeled_mask[extra_ids]
            ids = np.concatenate([ids, extra_ids[keep]])
            labels = np.concatenate([labels, extra_labels[keep]])
        return ids, labels

    def train_dataloader(self) -> CombinedLoader:
        splits, pool = self._splits(), self.pool
        assert pool is not None
        if pool.num_labeled == 0:
            raise RuntimeError("the pool has no labeled sample; label an initial set before fitting")
        rank, world = self._rank()
        seed = self.seed * 7919 + self.cycle * 2
        labeled_ids, labels = self.labeled_training_set()
        self._device_views = {}
        self._augment_seed = seed * 1000003 + rank
        self._generator = None
        self._batches = 0
        labeled = LabeledSet(splits.train_images, labeled_ids, labels, self._loader_views("labeled", self.labeled_views()))
        unlabeled_ids = pool.unlabeled_indices
        views = self.unlabeled_views()
        use_unlabeled = bool(views) and self.unlabeled_batch_size > 0 and len(unlabeled_ids) > 0
        steps = self._steps_per_epoch(len(unlabeled_ids) if use_unlabeled else 0, world)
        loaders = {"labeled": self._loader(
            labeled, self.batch_size,
            RepeatedPermutationSampler(len(labeled), steps * self.batch_size, seed, rank, world,
                                       skip=lambda: self.resumed_batches() * self.batch_size),
            drop_last=True)}
        if use_unlabeled:
            unlabeled = UnlabeledSet(splits.train_images, unlabeled_ids, self._loader_views("unlabeled", views))
            num = steps * self.unlabeled_batch_size
            weights_of = getattr(self._method(), "unlabeled_weights", None)
            skip = lambda: self.resumed_batches() * self.unlabeled_batch_size  # noqa: E731
            if weights_of is None:
                sampler = RepeatedPermutationSampler(len(unlabeled), num, seed + 1, rank, world, skip=skip)
            else:
                sampler = WeightedReplacementSampler(len(unlabeled), num, seed + 1, rank, world,
                                                     weights=lambda: weights_of(unlabeled_ids), skip=skip)
            loaders["unlabeled"] = self._loader(unlabeled, self.unlabeled_batch_size, sampler, drop_last=True)
        return CombinedLoader(loaders, mode="min_size")

    def _loader_views(self, key: str, names: tuple[str, ...]) -> dict[str, Any]:
        """What the ``key`` loader's dataset applies per sample: the named views (per_sample), or
        nothing but the uint8 image, with the views remembered for the device (device)."""
        if self.augmentation == "per_sample":
            return {name: self.views[name] for name in names}
        self._device_views[key] = names
        return {RAW: uint8_image}

    def resumed_batches(self) -> int:
        """Batches of the current epoch a fit resumed from a mid-epoch checkpoint already trained
        on (0 otherwise); asked when an epoch's loader iterator starts."""
        fit_loop = getattr(getattr(self, "trainer", None), "fit_loop", None)
        if fit_loop is None or not fit_loop.restarting:
            return 0
        done = fit_loop.epoch_loop.batch_progress.current.processed
        return done if done < self.trainer.num_training_batches else 0

    def augmentation_generator(self, device: torch.device) -> torch.Generator:
        """This rank's generator of augmentation parameters on ``device``, re-seeded for every
        training batch from (seed, cycle, rank, batch number in the fit): a batch's views do not
        depend on what ran before it, so a fit resumed mid-epoch draws the same views."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device)
        fit_loop = getattr(getattr(self, "trainer", None), "fit_loop", None)
        batch = fit_loop.epoch_loop.batch_progress.total.ready if fit_loop is not None else self._batches
        self._batches = batch + 1
        seed = np.random.SeedSequence([self._augment_seed, batch]).generate_state(1, np.uint64)[0]
        return self._generator.manual_seed(int(seed))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Build the training views (and standardise evaluation images) on the batch's device."""
        views = self.batch_views
        if self.augmentation == "per_sample" or views is None:
            return batch
        if isinstance(batch, dict) and "labeled" in batch:
            layout = getattr(self._method(), "memory_format", torch.contiguous_format)
            generator = None
            for key, names in self._device_views.items():
                part = batch.get(key)
                if part is None or RAW not in part:
                    continue
                images = part.pop(RAW)
                generator = generator or self.augmentation_generator(images.device)
                for name in names:
                    part[name] = views(name, images, generator).contiguous(memory_format=layout)
        elif isinstance(batch, (list, tuple)) and len(batch) == 2 and batch[0].dtype == torch.uint8:
            batch = [views.normalize(batch[0]), batch[1]]
        return batch

    def _eval_loader(self) -> DataLoader:
        splits = self._splits()
        rank, world = self._rank()
        transform = self.views["plain"] if self.augmentation == "per_sample" else uint8_image
        dataset = EvalSet(splits.test_images, splits.test_targets, transform)
        return self._loader(dataset, self.eval_batch_size, ShardSampler(len(dataset), rank, world),
                            drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def inference_dataloader(self, indices: Any, split: str = "train", device: torch.device | None = None
                             ) -> PoolBatches:
        """``{"index", "plain"}`` batches of ``split`` ids in the given order, no augmentation: uint8
        images standardised on ``device`` (default: the trainer's, else the CPU)."""
        splits = self._splits()
        assert self.batch_views is not None
        images = splits.train_images if split == "train" else splits.test_images
        dataset = UnlabeledSet(images, np.asarray(indices), {RAW: uint8_image})
        loader = DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, num_workers=0,
                            pin_memory=torch.cuda.is_available())
        if device is None:
            trainer = getattr(self, "trainer", None)
            device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        return PoolBatches(loader, self.batch_views.normalize, device)

    def test_targets(self) -> torch.Tensor:
        return self._splits().test_targets

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._splits().names_of_classes

    def sample_ids(self, indices: Any) -> list[str]:
        """The stable id people see for each pool index: the path relative to the data root for
        ``image_folder``, the index itself for the standard datasets."""
        names = self._splits().train_names
        return [str(int(i)) if names is None else names[int(i)] for i in np.asarray(indices).reshape(-1)]

    def train_images_of(self, indices: Any) -> torch.Tensor:
        """The stored uint8 ``(N, C, H, W)`` train images of ``indices`` (for people and figures)."""
        return self._splits().train_images[torch.as_tensor(np.asarray(indices), dtype=torch.int64)]

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.state_dict() if self.pool is not None else None, "cycle": self.cycle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.setup()
        assert self.pool is not None
        if state.get("pool") is not None:
            self.pool.load_state_dict(state["pool"])
        self.cycle = int(state.get("cycle", 0))
