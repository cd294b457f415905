"""Data layer: the active pool, the dataset registry, augmentations and the data module."""

from al_lightning.data.datamodule import ActiveDataModule
from al_lightning.data.datasets import DATASETS, DatasetNotFound, ImageSplits
from al_lightning.data.pool import ActivePool, PoolError

__all__ = ["ActiveDataModule", "ActivePool", "DATASETS", "DatasetNotFound", "ImageSplits", "PoolError"]
