"""Who answers a labeling request: ``SimulatedOracle`` reads the dataset's ground truth at once;
``FileOracle`` asks people, who answer between fits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from al_lightning.data.datamodule import ActiveDataModule
from al_lightning.loop.labeling import QueryBatch, write_queries


class Oracle:
    def label(self, indices: np.ndarray, datamodule: ActiveDataModule) -> np.ndarray | None:
        """Labels of ``indices`` now, or ``None`` when they come later (:meth:`ask` was the request)."""
        raise NotImplementedError

    def ask(self, batch: QueryBatch, run_dir: Path) -> dict[str, Path]:
        """Hand ``batch`` to whoever answers later; returns the files written."""
        raise NotImplementedError


class SimulatedOracle(Oracle):
    """Benchmarks: the true train label of every requested id."""

    def label(self, indices: np.ndarray, datamodule: ActiveDataModule) -> np.ndarray:
        return datamodule.ground_truth(indices)


class FileOracle(Oracle):
    """People label between fits. Each acquisition writes ``queries/cycle_<k>.csv`` (stable id,
    acquisition score, predicted class and probability), a contact sheet and a Label Studio tasks
    file, and the run stops; ``al-lightning label RUN_DIR ANSWERS`` imports the answers and
    ``al-lightning fit --resume RUN_DIR`` continues."""

    def label(self, indices: np.ndarray, datamodule: ActiveDataModule) -> None:
        return None

    def ask(self, batch: QueryBatch, run_dir: Path) -> dict[str, Path]:
        return write_queries(run_dir, batch)
