"""Who answers a labeling request. ``SimulatedOracle`` reads the dataset's ground truth."""

from __future__ import annotations

import numpy as np

from al_lightning.data.datamodule import ActiveDataModule


class Oracle:
    def label(self, indices: np.ndarray, datamodule: ActiveDataModule) -> np.ndarray:
        raise NotImplementedError


class SimulatedOracle(Oracle):
    """Benchmarks: the true train label of every requested id."""

    def label(self, indices: np.ndarray, datamodule: ActiveDataModule) -> np.ndarray:
        return datamodule.ground_truth(indices)
