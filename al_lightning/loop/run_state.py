"""What a run needs to continue after a crash, kept in its run directory.

``state.json`` is the single commit point: the cycle and phase the run is in, the pool, the results
so far, the pseudo-labels handed to the next fit, the queries waiting for a person, and the names of
the snapshot files it relies on. Every file is written atomically (temp file, fsync, rename), and a
snapshot is always written before the ``state.json`` that names it, so a kill at any moment leaves
the previous consistent state or the next one, never a mix.

Phases of cycle ``k``:

* ``fit``: fit ``k`` has not finished. It starts from the initial weights (RandInit) or the last
  fitted weights (ConInit), or continues from ``checkpoints/cycle_<k>.ckpt``, a Lightning
  checkpoint written every ``checkpoint_every_n_steps`` inside the fit.
* ``acquire``: fit ``k`` finished and was tested; ``snapshots/cycle_<k>_fitted.pt`` holds the
  weights, the online scores and the method's per-sample state the acquisition reads.
* ``label``: cycle ``k``'s queries wait for a person (``al-lightning label RUN_DIR ANSWERS``).
* ``done``: every cycle finished.

Randomness is reseeded from (seed, cycle) at the start of every fit, and a mid-fit checkpoint holds
the RNG states of its moment, so a resumed run draws what an uninterrupted one draws.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch

from al_lightning.data.pool import PoolError, write_atomic, write_json_atomic

STATE_VERSION = 1
Phase = Literal["fit", "acquire", "label", "done"]
PHASES = ("fit", "acquire", "label", "done")


@dataclass
class RunState:
    """The committed state of a run (see the module docstring)."""

    cycle: int
    phase: Phase
    pool: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    #: ``(ids, labels)`` a strategy pseudo-labeled for fit ``cycle`` (CEAL)
    pseudo_labeled: list[list[int]] | None = None
    #: fit ``cycle``'s measurements and snapshot, once it finished (phases acquire and label)
    fitted: dict[str, Any] | None = None
    #: cycle ``cycle``'s queries waiting for a person (phase label)
    pending: dict[str, Any] | None = None
    step_offset: int = 0
    #: snapshot of the initial weights (RandInit reloads them before every fit)
    initial_weights: str = "snapshots/initial_weights.pt"
    #: snapshot fit ``cycle`` starts from: the initial weights, or the last fit's (ConInit)
    start_weights: str = "snapshots/initial_weights.pt"
    version: int = STATE_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any], where: Path) -> "RunState":
        if payload.get("version") != STATE_VERSION or payload.get("phase") not in PHASES:
            raise PoolError(f"{where}: not a run state of this version (version {payload.get('version')!r}, "
                            f"phase {payload.get('phase')!r}); resume it with the al-lightning that wrote it")
        known = {name: payload[name] for name in cls.__dataclass_fields__ if name in payload}
        return cls(**known)


class RunDirectory:
    """Paths and atomic reads/writes of one run directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    def exists(self) -> bool:
        return self.state_path.exists()

    def load(self) -> RunState:
        try:
            payload = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            raise PoolError(f"{self.path} holds no run to resume (no state.json); give the run directory "
                            f"an earlier 'al-lightning fit' printed") from None
        except json.JSONDecodeError as err:
            raise PoolError(f"{self.state_path} is not valid JSON ({err}); it was edited by hand or the disk "
                            f"failed: restore it from a backup") from None
        return RunState.from_json(payload, self.state_path)

    def commit(self, state: RunState) -> None:
        write_json_atomic(self.state_path, state.to_json())

    def remove_partial_files(self) -> None:
        """Temporary files of writes a kill interrupted (never read: the rename did not happen)."""
        for pattern in (".*.tmp", ".*.partial"):
            for path in self.path.rglob(pattern):
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------- snapshots
    def snapshot_path(self, name: str) -> Path:
        return self.path / "snapshots" / f"{name}.pt"

    def save_snapshot(self, name: str, payload: dict[str, Any]) -> str:
        path = self.snapshot_path(name)
        write_atomic(path, lambda handle: torch.save(payload, handle))
        return str(path.relative_to(self.path))

    def load_snapshot(self, relative: str) -> dict[str, Any]:
        path = self.path / relative
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise PoolError(f"{path} is missing; state.json needs it to resume: restore the run directory "
                            f"from a backup") from None

    def checkpoint_path(self, cycle: int) -> Path:
        return self.path / "checkpoints" / f"cycle_{cycle}.ckpt"


def rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_fit(seed: int, cycle: int) -> None:
    """Every fit starts from RNG states of (seed, cycle), however the run got there."""
    L.seed_everything(int(np.random.SeedSequence([seed, cycle]).generate_state(1)[0]), workers=True, verbose=False)


class FitCheckpoint(L.Callback):
    """A Lightning checkpoint of the running fit every ``every_n_steps`` optimizer steps, written
    atomically to ``path`` (all ranks take part, rank 0 writes), with the RNG states of its moment.

    It is taken inside an epoch only (a step due on an epoch's last batch moves to the next
    epoch's first): a mid-epoch checkpoint is resumed by skipping the epoch's consumed batches
    (:meth:`~al_lightning.data.datamodule.ActiveDataModule.resumed_batches`).
    """

    def __init__(self, path: Path, every_n_steps: int) -> None:
        self.path, self.every_n_steps = path, every_n_steps
        self._last_saved = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_saved = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.every_n_steps <= 0 or trainer.global_step - self._last_saved < self.every_n_steps:
            return
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        self._last_saved = trainer.global_step
        partial = self.path.with_name(f".{self.path.name}.partial")
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            with open(partial, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        trainer.strategy.barrier()

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            set_rng_states(state_dict["rng"])
