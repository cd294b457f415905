"""The labeled/unlabeled split of a data pool, kept as plain numpy so every layer can share it.

An index is labeled exactly when it has a label, so "never both labeled and unlabeled" holds by
construction. Every mutation validates first and commits after, so a rejected call changes nothing.
"""

from __future__ import annotations

import codecs
import json
import os
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from al_lightning.errors import UserError

STATE_VERSION = 1


class PoolError(UserError, ValueError):
    """A request that would corrupt the pool; the pool is left as it was."""


def _as_index_array(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise PoolError(f"{what} must be a 1-D sequence, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise PoolError(f"{what} must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)


class ActivePool:
    """Pool of ``size`` samples; tracks labels, the cycle each label was bought in and the history."""

    def __init__(self, size: int, num_classes: int) -> None:
        if size <= 0 or num_classes <= 1:
            raise PoolError(f"pool needs size > 0 and num_classes > 1, got {size}, {num_classes}")
        self.size = int(size)
        self.num_classes = int(num_classes)
        self._labels = np.full(self.size, -1, dtype=np.int64)
        self._cycle = np.full(self.size, -1, dtype=np.int64)
        self.history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- queries
    @property
    def labeled_mask(self) -> np.ndarray:
        return self._labels >= 0

    @property
    def labeled_indices(self) -> np.ndarray:
        return np.flatnonzero(self._labels >= 0)

    @property
    def unlabeled_indices(self) -> np.ndarray:
        return np.flatnonzero(self._labels < 0)

    @property
    def num_labeled(self) -> int:
        return int(np.count_nonzero(self._labels >= 0))

    @property
    def num_unlabeled(self) -> int:
        return self.size - self.num_labeled

    def labels_of(self, indices: Any) -> np.ndarray:
        idx = _as_index_array(indices, "indices")
        self._check_range(idx)
        labels = self._labels[idx]
        if np.any(labels < 0):
            raise PoolError(f"ids {idx[labels < 0][:10].tolist()} are not labeled")
        return labels

    def cycle_of(self, indices: Any) -> np.ndarray:
        idx = _as_index_array(indices, "indices")
        self._check_range(idx)
        return self._cycle[idx]

    def class_counts(self) -> np.ndarray:
        return np.bincount(self._labels[self._labels >= 0], minlength=self.num_classes)

    # ---------------------------------------------------------------- mutation
    def label(self, indices: Any, labels: Any, cycle: int = 0) -> None:
        """Record ``labels`` for pool ``indices`` bought at ``cycle``; all-or-nothing."""
        idx = _as_index_array(indices, "indices")
        lab = _as_index_array(labels, "labels")
        if idx.shape != lab.shape:
            raise PoolError(f"got {idx.size} indices but {lab.size} labels")
        self._check_range(idx)
        uniq, counts = np.unique(idx, return_counts=True)
        if np.any(counts > 1):
            raise PoolError(f"duplicate ids in one request: {uniq[counts > 1][:10].tolist()}")
        already = idx[self._labels[idx] >= 0]
        if already.size:
            raise PoolError(f"ids already labeled: {already[:10].tolist()}")
        bad = (lab < 0) | (lab >= self.num_classes)
        if np.any(bad):
            raise PoolError(
                f"labels outside [0, {self.num_classes}) for ids {idx[bad][:10].tolist()}: "
                f"{lab[bad][:10].tolist()}"
            )
        self._labels[idx] = lab
        self._cycle[idx] = int(cycle)
        self.history.append({"cycle": int(cycle), "indices": idx.tolist()})

    def _check_range(self, idx: np.ndarray) -> None:
        bad = (idx < 0) | (idx >= self.size)
        if np.any(bad):
            raise PoolError(f"ids out of range [0, {self.size}): {idx[bad][:10].tolist()}")

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        labeled = self.labeled_indices
        return {
            "version": STATE_VERSION,
            "size": self.size,
            "num_classes": self.num_classes,
            "labeled": labeled.tolist(),
            "labels": self._labels[labeled].tolist(),
            "cycles": self._cycle[labeled].tolist(),
            "history": [dict(entry) for entry in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the state with ``state`` after validating all of it."""
        if state.get("version") != STATE_VERSION:
            raise PoolError(f"pool state version {state.get('version')!r}, expected {STATE_VERSION}")
        fresh = ActivePool(int(state["size"]), int(state["num_classes"]))
        if (fresh.size, fresh.num_classes) != (self.size, self.num_classes):
            raise PoolError(
                f"pool state is for size={fresh.size}, num_classes={fresh.num_classes}; this pool "
                f"has size={self.size}, num_classes={self.num_classes} (wrong dataset?)"
            )
        idx = _as_index_array(state["labeled"], "labeled")
        cycles = _as_index_array(state["cycles"], "cycles")
        if cycles.shape != idx.shape:
            raise PoolError("pool state: 'cycles' and 'labeled' differ in length")
        fresh.label(idx, state["labels"])
        fresh._cycle[idx] = cycles
        history = [{"cycle": int(h["cycle"]), "indices": list(map(int, h["indices"]))}
                   for h in state["history"]]
        in_history = np.sort(np.concatenate([np.asarray(h["indices"], dtype=np.int64)
                                             for h in history] or [np.empty(0, np.int64)]))
        if not np.array_equal(in_history, np.sort(idx)):
            raise PoolError("pool state: 'history' does not account for exactly the labeled ids")
        self._labels, self._cycle, self.history = fresh._labels, fresh._cycle, history

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically: temp file in the same folder, fsync, rename."""
        write_json_atomic(Path(path), self.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ActivePool":
        path = Path(path)
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise PoolError(f"no pool state at {path}") from None
        except json.JSONDecodeError as err:
            raise PoolError(f"{path} is not valid JSON ({err}); restore it from a backup") from None
        pool = cls(int(state["size"]), int(state["num_classes"]))
        pool.load_state_dict(state)
        return pool

    def __repr__(self) -> str:
        return (f"ActivePool(size={self.size}, labeled={self.num_labeled}, "
                f"num_classes={self.num_classes}, acquisitions={len(self.history)})")


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Readers see the old file or the new one, never a half-written one: ``write`` fills a temp
    file in the same folder, which is fsynced and renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomic(path: Path, payload: Any) -> None:
    write_atomic(path, lambda handle: json.dump(payload, codecs.getwriter("utf-8")(handle)))
