"""The cycle controller: fit -> test -> acquire -> label -> persist. A run makes ``rounds + 1`` fits:
the initial fit, then one per acquisition round (ASSL's "10 acquisition rounds" on CIFAR-10 are
11 fits ending at 100 + 10 x 100 = 1,100 labels).

Every rank runs the same loop on the same pool. Acquisition runs everywhere (inference is sharded
and gathered) and rank 0's picks are broadcast; a digest of the pool is compared across ranks after
every cycle. Only rank 0 writes files.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

from al_lightning.data.datamodule import ActiveDataModule
from al_lightning.data.pool import ActivePool, PoolError, write_atomic, write_json_atomic
from al_lightning.loop.oracle import Oracle, SimulatedOracle
from al_lightning.methods.base import SSLMethod
from al_lightning.data.distributed import world
from al_lightning.methods.inference import pool_inference
from al_lightning.scoring.callbacks import OnlineScoring
from al_lightning.strategies import ASSL, AcquisitionContext, Strategy

log = logging.getLogger("al_lightning")

RESULT_COLUMNS = ("cycle", "n_labeled", "test_acc", "fit_seconds", "acquire_seconds", "class_coverage")


def pool_digest(pool: ActivePool) -> str:
    return hashlib.sha1(json.dumps(pool.state_dict(), sort_keys=True).encode()).hexdigest()[:16]


def read_index_file(path: str, pool_size: int) -> np.ndarray:
    """A JSON list or whitespace/comma-separated ids."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise PoolError(f"loop.initial_index_file: cannot read {path} ({err.strerror})") from None
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else text.replace(",", " ").split()
        ids = np.asarray([int(v) for v in values], dtype=np.int64)
    except ValueError as err:
        raise PoolError(f"loop.initial_index_file: {path} must list integer ids ({err})") from None
    bad = ids[(ids < 0) | (ids >= pool_size)]
    if bad.size:
        raise PoolError(f"loop.initial_index_file: ids out of range [0, {pool_size}) in {path}: {bad[:10].tolist()}")
    return ids


def broadcast_from_zero(values: np.ndarray) -> np.ndarray:
    if world()[1] == 1:
        return values
    box = [values]
    dist.broadcast_object_list(box, src=0)
    return np.asarray(box[0], dtype=np.int64)


class ActiveLoop:
    """Active semi-supervised learning cycles.

    Args:
        rounds: acquisition rounds after the initial fit; the run makes ``rounds + 1`` fits (cycles
            ``0..rounds``) and ends with ``initial_size + rounds * budget`` labels. 0 is a single
            fit on the initial labels (the label-free pipelines).
        budget: labels bought per acquisition.
        initial_size: size of the random initial labeled set.
        initial_per_class: draw the random initial set class-balanced, this many per class (the
            SSL benchmarks' protocol, e.g. 1 per class in FA's CIFAR-100 #100). It reads the
            ground truth, so it only exists for the simulated oracle; overrides ``initial_size``.
        initial_index_file: ids of the initial labeled set instead (JSON list or plain text).
        initial_strategy: a single-shot strategy (USL, KMedoids, AS3L, ...) that picks the
            ``initial_size`` initial labels with the untrained model, instead of random.
        strategy: the acquisition strategy (default: ASSL's online score).
        weights: ``random_init`` reloads the same initial weights before every fit (RandInit);
            ``continue`` keeps the previous fit's weights (ConInit).
        oracle: who labels (default: the simulated oracle reading ground truth).
        seed: seed of the initial set and of the strategies' random draws.
    """

    def __init__(self, rounds: int = 10, budget: int = 100, initial_size: int = 100,
                 initial_per_class: int | None = None,
                 initial_index_file: str | None = None, initial_strategy: Strategy | None = None,
                 strategy: Strategy | None = None,
                 weights: Literal["random_init", "continue"] = "random_init",
                 oracle: Oracle | None = None, seed: int = 0) -> None:
        if rounds < 0 or budget < 0 or initial_size < 1 or (initial_per_class is not None and initial_per_class < 1):
            raise ValueError("loop.rounds and loop.budget must be >= 0, loop.initial_size and "
                             "loop.initial_per_class >= 1")
        self.rounds, self.budget, self.initial_size = rounds, budget, initial_size
        self.initial_per_class = initial_per_class
        self.initial_index_file, self.initial_strategy = initial_index_file, initial_strategy
        self.strategy = strategy if strategy is not None else ASSL()
        self.weights, self.seed = weights, seed
        self.oracle = oracle if oracle is not None else SimulatedOracle()
        self.results: list[dict[str, Any]] = []
        self.out_dir: Path | None = None

    # -------------------------------------------------------------- top level
    def run(self, model: SSLMethod, datamodule: ActiveDataModule, make_trainer: Callable[[], L.Trainer]) -> list[dict]:
        if os.environ.get("LOCAL_RANK", "0") == "0":
            datamodule.prepare_data()
        datamodule.setup("fit")
        pool = datamodule.pool
        assert pool is not None
        if pool.num_labeled == 0:
            self._label(datamodule, self._initial_ids(pool, model, datamodule), cycle=0)
        pretrained = model.pretrained_features()
        initial_weights = copy.deepcopy(model.state_dict())
        model.reset_teacher()
        for cycle in range(self.rounds + 1):
            trainer = make_trainer()
            self.out_dir = Path(trainer.logger.log_dir if trainer.logger else trainer.default_root_dir)
            datamodule.cycle = cycle
            if self.weights == "random_init" and cycle > 0:
                model.load_state_dict(initial_weights)
            n_labeled = pool.num_labeled
            coverage = float(np.count_nonzero(pool.class_counts())) / pool.num_classes
            started = time.perf_counter()
            trainer.fit(model, datamodule=datamodule)
            fit_seconds = time.perf_counter() - started
            model.step_offset += trainer.global_step
            device = trainer.strategy.root_device
            model.to(device)
            test_acc = self.evaluate(model, datamodule, device)
            scoring = next((cb for cb in trainer.callbacks if isinstance(cb, OnlineScoring)), None)
            acquire_seconds = float("nan")
            sample_state = model.sample_state()
            pseudo = None
            if cycle < self.rounds and self.budget > 0:
                started = time.perf_counter()
                context = AcquisitionContext(pool, model.inference_model, datamodule.inference_dataloader,
                                             device, scoring.state if scoring else None, cycle, self.seed,
                                             pretrained_features=pretrained)
                picks = broadcast_from_zero(self.strategy.select(context, self.budget))
                pseudo = self.strategy.pseudo_labels(context, picks)
                acquire_seconds = time.perf_counter() - started
                self._label(datamodule, picks, cycle=cycle + 1)
            datamodule.pseudo_labeled = None if pseudo is None else \
                tuple(broadcast_from_zero(np.asarray(a)) for a in pseudo)
            self._check_ranks_agree(pool, cycle)
            row = {"cycle": cycle, "n_labeled": n_labeled, "test_acc": round(test_acc, 6),
                   "fit_seconds": round(fit_seconds, 3), "acquire_seconds": round(acquire_seconds, 4),
                   "class_coverage": round(coverage, 4)}
            self.results.append(row)
            log.info("cycle %d: %d labels, test acc %.4f (fit %.1fs, acquire %.3fs)", cycle, n_labeled,
                     test_acc, fit_seconds, acquire_seconds)
            if trainer.is_global_zero:
                self._persist(trainer, datamodule, scoring, sample_state, row)
        return self.results

    # ---------------------------------------------------------------- pieces
    def _initial_ids(self, pool: ActivePool, model: SSLMethod, datamodule: ActiveDataModule) -> np.ndarray:
        if self.initial_index_file:
            return read_index_file(self.initial_index_file, pool.size)
        if self.initial_per_class is not None:
            return self._balanced_initial_ids(pool, datamodule)
        if self.initial_size > pool.size:
            raise PoolError(f"loop.initial_size {self.initial_size} exceeds the pool size {pool.size}")
        if self.initial_strategy is not None:
            context = AcquisitionContext(pool, model.inference_model, datamodule.inference_dataloader,
                                         torch.device("cpu"), None, cycle=0, seed=self.seed,
                                         pretrained_features=model.pretrained_features(),
                                         model_is_random=model.hparams.get("pretrained") is None)
            return self.initial_strategy.select(context, self.initial_size)
        return np.random.default_rng(self.seed).choice(pool.size, size=self.initial_size, replace=False)

    def _balanced_initial_ids(self, pool: ActivePool, datamodule: ActiveDataModule) -> np.ndarray:
        if not isinstance(self.oracle, SimulatedOracle):
            raise PoolError("loop.initial_per_class reads the ground truth and needs the simulated oracle; "
                            "use loop.initial_size or loop.initial_index_file with people labeling")
        truth = datamodule.ground_truth(np.arange(pool.size))
        rng = np.random.default_rng(self.seed)
        picks = []
        for c in range(pool.num_classes):
            members = np.flatnonzero(truth == c)
            if len(members) < self.initial_per_class:
                raise PoolError(f"loop.initial_per_class {self.initial_per_class}: class {c} has only "
                                f"{len(members)} samples in the pool")
            picks.append(rng.choice(members, size=self.initial_per_class, replace=False))
        return np.concatenate(picks)

    def _label(self, datamodule: ActiveDataModule, ids: np.ndarray, cycle: int) -> None:
        labels = self.oracle.label(ids, datamodule)
        datamodule.pool.label(ids, labels, cycle=cycle)

    @staticmethod
    def evaluate(model: SSLMethod, datamodule: ActiveDataModule, device: torch.device) -> float:
        """Top-1 accuracy of the EMA model on the whole test split (sharded, exact under DDP)."""
        targets = datamodule.test_targets()
        _, logits = pool_inference(model.inference_model,
                                   lambda ids: datamodule.inference_dataloader(ids, split="test"),
                                   np.arange(len(targets)), device)
        return float((logits.argmax(dim=-1).cpu() == targets).float().mean())

    @staticmethod
    def _check_ranks_agree(pool: ActivePool, cycle: int) -> None:
        rank, size = world()
        digest = pool_digest(pool)
        if size == 1:
            return
        digests: list[Any] = [None] * size
        dist.all_gather_object(digests, digest)
        print(f"[rank {rank}] cycle {cycle} pool digest {digest}", flush=True)
        if len(set(digests)) != 1:
            raise RuntimeError(f"cycle {cycle}: ranks disagree on the pool state: {digests}")

    def _persist(self, trainer: L.Trainer, datamodule: ActiveDataModule, scoring: OnlineScoring | None,
                 sample_state: dict[str, Any], row: dict[str, Any]) -> None:
        out = self.out_dir
        assert out is not None and datamodule.pool is not None
        out.mkdir(parents=True, exist_ok=True)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(self.results)
        write_atomic(out / "results.csv", lambda handle: handle.write(buffer.getvalue().encode()))
        datamodule.pool.save(out / "pool.json")
        write_json_atomic(out / "selections.json",
                          {str(h["cycle"]): h["indices"] for h in datamodule.pool.history})
        if scoring is not None and scoring.state is not None:
            state = scoring.state.state_dict()
            write_atomic(out / "scores" / f"cycle_{row['cycle']}.pt", lambda handle: torch.save(state, handle))
        if sample_state:
            write_atomic(out / "method_state" / f"cycle_{row['cycle']}.pt",
                         lambda handle: torch.save(sample_state, handle))
        if datamodule.pseudo_labeled is not None:
            ids, labels = datamodule.pseudo_labeled
            write_json_atomic(out / "pseudo_labels" / f"for_cycle_{row['cycle'] + 1}.json",
                              {"ids": np.asarray(ids).tolist(), "labels": np.asarray(labels).tolist()})
        if trainer.logger is not None:
            trainer.logger.log_metrics({"test/acc": row["test_acc"], "test/class_coverage": row["class_coverage"]},
                                       step=row["n_labeled"])
            trainer.logger.save()

