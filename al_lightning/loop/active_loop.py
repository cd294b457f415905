"""The cycle controller: label -> fit -> test -> acquire, committed to the run directory after
every phase so a run killed at any moment continues where it stopped (:mod:`run_state`). A run makes
``rounds + 1`` fits: the initial fit, then one per acquisition round (ASSL's "10 acquisition rounds"
on CIFAR-10 are 11 fits ending at 100 + 10 x 100 = 1,100 labels).

Every rank runs the same loop on the same pool. Acquisition runs everywhere (inference is sharded
and gathered) and rank 0's picks are broadcast, the initial selection included; a digest of the
pool is compared across ranks after every labeling. Only rank 0 writes files.
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
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from al_lightning.data.datamodule import ActiveDataModule
from al_lightning.data.pool import ActivePool, PoolError, write_atomic, write_json_atomic
from al_lightning.data.distributed import world
from al_lightning.loop.figures import class_histogram_figure, confusion_matrix_figure
from al_lightning.loop.labeling import QueryBatch, contact_sheet
from al_lightning.loop.oracle import Oracle, SimulatedOracle
from al_lightning.loop.run_state import FitCheckpoint, RunDirectory, RunState, seed_fit
from al_lightning.methods.base import SSLMethod, TrainingDiverged
from al_lightning.methods.inference import pool_inference
from al_lightning.scoring.callbacks import OnlineScoring
from al_lightning.scoring.online import OnlineScoreState
from al_lightning.strategies import AcquisitionContext, BudgetAware, Strategy

log = logging.getLogger("al_lightning")

#: queried images shown per cycle in TensorBoard
QUERY_GRID_IMAGES = 64
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


def write_results_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, lambda handle: handle.write(buffer.getvalue().encode()))


def commit_files(directory: RunDirectory, state: RunState) -> None:
    """After ``state`` was committed: rewrite the files derived from it, drop what it no longer needs."""
    write_results_csv(directory.path / "results.csv", state.results)
    write_json_atomic(directory.path / "pool.json", state.pool)
    write_json_atomic(directory.path / "selections.json",
                      {str(h["cycle"]): h["indices"] for h in state.pool["history"]})
    if state.pseudo_labeled is not None:
        ids, labels = state.pseudo_labeled
        write_json_atomic(directory.path / "pseudo_labels" / f"for_cycle_{state.cycle}.json",
                          {"ids": ids, "labels": labels})
    if state.phase not in ("fit", "done"):
        return
    for checkpoint in (directory.path / "checkpoints").glob("cycle_*.ckpt"):
        if state.phase == "done" or checkpoint != directory.checkpoint_path(state.cycle):
            checkpoint.unlink()
    if state.phase == "done":  # the last fit's snapshot is the run's final model
        return
    keep = {state.initial_weights, state.start_weights}
    for path in (directory.path / "snapshots").glob("cycle_*_fitted.pt"):
        if str(path.relative_to(directory.path)) not in keep:
            path.unlink()


def tensorboard(trainer: L.Trainer) -> Any:
    """Rank 0's TensorBoard writer, or None (other ranks, other loggers)."""
    if not trainer.is_global_zero or not isinstance(trainer.logger, TensorBoardLogger):
        return None
    return trainer.logger.experiment


def log_queries(board: Any, batch: QueryBatch, labels: np.ndarray | None, step: int) -> None:
    """A cycle's queries in TensorBoard: a grid of the first :data:`QUERY_GRID_IMAGES` with the
    model's prediction, and the histogram of their classes (true labels from the simulated oracle,
    predictions while people label)."""
    shown = min(len(batch.pool_ids), QUERY_GRID_IMAGES)
    names = batch.class_names
    sheet = contact_sheet(batch.images[:shown], [batch.caption(i) for i in range(shown)])
    board.add_image("queries/images", np.asarray(sheet), step, dataformats="HWC")
    classes, kind = (labels, "labels") if labels is not None else (batch.predicted, "predicted classes")
    classes = np.asarray(classes, dtype=np.int64)
    counts = np.bincount(classes[classes >= 0], minlength=len(names))
    board.add_figure("queries/classes", class_histogram_figure(counts, names, f"cycle {batch.cycle} queries: {kind}"),
                     step)


def online_scoring(trainer: L.Trainer) -> OnlineScoring | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, OnlineScoring)), None)


def start_processes(trainer: L.Trainer) -> None:
    """Bring every rank up and join the process group before the first fit, so the run directory
    and the initial selection are agreed on like everything later. Lightning's own launcher starts
    the other ranks' processes (re-running the command) at the first ``fit``; this starts them now,
    and the fits find them running. torchrun and SLURM start them beforehand."""
    strategy = trainer.strategy
    launcher = strategy.launcher
    if launcher is None:
        strategy.setup_environment()
    elif isinstance(launcher, _SubprocessScriptLauncher):
        launcher.launch(strategy.setup_environment)
    else:
        raise PoolError(f"trainer.strategy: {type(strategy).__name__} restarts its processes at every fit, which "
                        f"would lose the pool between cycles; use ddp (Lightning's launcher, torchrun or SLURM)")


def default_run_dir(trainer: L.Trainer) -> Path:
    """The logger's version directory (``runs/<name>/version_<n>``); without a logger, the next free
    ``version_<n>`` under ``<default_root_dir>/runs``, never the working directory itself."""
    if trainer.logger is not None and trainer.logger.log_dir is not None:
        return Path(trainer.log_dir)  # a collective under DDP: every rank gets rank 0's directory
    root = Path(trainer.default_root_dir) / "runs"
    taken = [int(p.name.split("_")[1]) for p in root.glob("version_*") if p.name.split("_")[1].isdigit()]
    return root / f"version_{max(taken, default=-1) + 1}"


def query_batch(ids: np.ndarray, cycle: int, model: SSLMethod, datamodule: ActiveDataModule,
                device: torch.device, scores: OnlineScoreState | None, trained: bool) -> QueryBatch:
    """What a person sees of the queried ids: image, stable id, acquisition score, and the model's
    prediction once it was trained (the initial set is picked before any fit)."""
    ids = np.asarray(ids, dtype=np.int64)
    logits = pool_inference(model.inference_model, datamodule.inference_dataloader, ids, device,
                            outputs=("logits",))["logits"]
    probability, predicted = logits.float().softmax(dim=-1).max(dim=-1)
    if not trained:
        probability, predicted = torch.full_like(probability, float("nan")), torch.full_like(predicted, -1)
    acquisition = np.full(len(ids), np.nan) if scores is None else \
        scores.score[torch.as_tensor(ids, device=scores.score.device)].double().cpu().numpy()
    return QueryBatch(cycle=cycle, pool_ids=ids, sample_ids=datamodule.sample_ids(ids), scores=acquisition,
                      predicted=predicted.cpu().numpy().astype(np.int64),
                      probability=probability.double().cpu().numpy(),
                      images=datamodule.train_images_of(ids), class_names=tuple(datamodule.class_names))


def broadcast_from_zero(values: np.ndarray) -> np.ndarray:
    if world()[1] == 1:
        return values
    box = [values]
    dist.broadcast_object_list(box, src=0)
    return np.asarray(box[0], dtype=np.int64)


class ActiveLoop:
    """Active semi-supervised learning cycles, resumable from their run directory.

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
        strategy: the acquisition strategy (default: :class:`~al_lightning.strategies.BudgetAware`,
            typicality at a cold start, ASSL's online score once the model is trained; the paper
            configs name their paper's).
        weights: ``random_init`` reloads the same initial weights before every fit (RandInit);
            ``continue`` keeps the previous fit's weights (ConInit).
        oracle: who labels: the simulated oracle reading ground truth (default), or
            :class:`~al_lightning.loop.oracle.FileOracle` (people, between fits).
        seed: seed of the initial set, of the strategies' random draws and of every fit's RNGs.
        checkpoint_every_n_steps: a resumable checkpoint inside every fit this often (0: none;
            a resumed run then restarts an interrupted fit from its start).
    """

    def __init__(self, rounds: int = 10, budget: int = 100, initial_size: int = 100,
                 initial_per_class: int | None = None,
                 initial_index_file: str | None = None, initial_strategy: Strategy | None = None,
                 strategy: Strategy | None = None,
                 weights: Literal["random_init", "continue"] = "random_init",
                 oracle: Oracle | None = None, seed: int = 0, checkpoint_every_n_steps: int = 500) -> None:
        if rounds < 0 or budget < 0 or initial_size < 1 or (initial_per_class is not None and initial_per_class < 1):
            raise ValueError("loop.rounds and loop.budget must be >= 0, loop.initial_size and "
                             "loop.initial_per_class >= 1")
        if checkpoint_every_n_steps < 0:
            raise ValueError("loop.checkpoint_every_n_steps must be >= 0 (0 turns mid-fit checkpoints off)")
        self.rounds, self.budget, self.initial_size = rounds, budget, initial_size
        self.initial_per_class = initial_per_class
        self.initial_index_file, self.initial_strategy = initial_index_file, initial_strategy
        self.strategy = strategy if strategy is not None else BudgetAware()
        self.weights, self.seed = weights, seed
        self.oracle = oracle if oracle is not None else SimulatedOracle()
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self.results: list[dict[str, Any]] = []
        self.out_dir: Path | None = None
        #: set when the run stopped for people to label: ``(number of queries, cycle)``
        self.waiting_for_labels: tuple[int, int] | None = None
        #: what this process holds in memory, so snapshots are read back only when resuming (every
        #: rank reads them then: the run directory must be on a file system all nodes see)
        self._initial_weights: dict[str, Any] | None = None
        self._fitted: dict[str, Any] | None = None

    # -------------------------------------------------------------- top level
    def run(self, model: SSLMethod, datamodule: ActiveDataModule, make_trainer: Callable[[], L.Trainer],
            run_dir: str | Path | None = None, resume: bool = False, config: str | None = None) -> list[dict]:
        """Run (or, with ``resume``, continue) the cycles; files go to ``run_dir`` (default: the
        first trainer's log directory), ``config`` (YAML) becomes its ``config.yaml`` with the first
        commit. Returns the results rows of every finished cycle."""
        if os.environ.get("LOCAL_RANK", "0") == "0":
            datamodule.prepare_data()
        datamodule.setup("fit")
        pool = datamodule.pool
        assert pool is not None
        trainer = make_trainer()
        self._check_scoring(trainer, model)
        self._check_oracle(datamodule)
        start_processes(trainer)
        directory = RunDirectory(run_dir if run_dir is not None else default_run_dir(trainer))
        self.out_dir, self.waiting_for_labels, self._fitted = directory.path, None, None
        rank_zero = trainer.is_global_zero
        if rank_zero:
            directory.remove_partial_files()
        if resume:
            state = directory.load()
            pool.load_state_dict(state.pool)
            self._initial_weights = directory.load_snapshot(state.initial_weights)["model"]
        else:
            if directory.exists():
                raise PoolError(f"{directory.path} already holds a run; continue it with 'al-lightning fit "
                                f"--resume {directory.path}' or start a new one elsewhere")
            given = datamodule.splits.given_labels
            self._check_given(given)
            self._check_budget(pool, len(given))
            initial = None if len(given) else broadcast_from_zero(self._initial_ids(pool, model, datamodule))
            if config is not None and rank_zero:
                write_atomic(directory.path / "config.yaml", lambda handle: handle.write(config.encode()))
            model.reset_teacher()
            self._initial_weights = copy.deepcopy(model.state_dict())
            weights = self._save(directory, "initial_weights", {"model": self._initial_weights}, rank_zero)
            state = RunState(cycle=0, phase="fit", pool=pool.state_dict(), initial_weights=weights,
                             start_weights=weights)
            if initial is None:  # a person's project: the labels given with the images are there from the start
                pool.label(given, datamodule.ground_truth(given), cycle=0)
                state = replace(state, pool=pool.state_dict())
            else:
                state = self._buy(state, initial, 0, model, datamodule, directory, trainer, scores=None)
            self._commit(directory, state, pool, rank_zero)
        self.results = list(state.results)
        while state.phase != "done":
            if state.phase == "label":
                self.waiting_for_labels = (len(state.pending["pool_ids"]), state.cycle)
                return self.results
            trainer = trainer or make_trainer()
            if state.phase == "fit":
                state = self._fit(state, model, datamodule, trainer, directory)
            else:
                state = self._acquire(state, model, datamodule, trainer, directory)
                trainer = None  # every fit gets a fresh Trainer
            self._commit(directory, state, pool, rank_zero)
        return self.results

    # ---------------------------------------------------------------- phases
    def _fit(self, state: RunState, model: SSLMethod, datamodule: ActiveDataModule, trainer: L.Trainer,
             directory: RunDirectory) -> RunState:
        """Phase ``fit`` of cycle k: train (or continue from the fit's checkpoint), test, snapshot."""
        cycle, pool = state.cycle, datamodule.pool
        datamodule.cycle = cycle
        datamodule.pseudo_labeled = None if state.pseudo_labeled is None else \
            tuple(np.asarray(a, dtype=np.int64) for a in state.pseudo_labeled)
        if state.start_weights == state.initial_weights:
            model.load_state_dict(self._initial_weights)
        elif self._fitted is None:  # ConInit, resumed: the last fit's weights are on disk only
            model.load_state_dict(directory.load_snapshot(state.start_weights)["model"])
        model.step_offset = state.step_offset
        checkpoint = directory.checkpoint_path(cycle)
        resume_from = str(checkpoint) if checkpoint.exists() and model.resumable_mid_fit else None
        if self.checkpoint_every_n_steps and model.resumable_mid_fit:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            trainer.callbacks.append(FitCheckpoint(checkpoint, self.checkpoint_every_n_steps))
        seed_fit(self.seed, cycle)
        n_labeled = pool.num_labeled
        started = time.perf_counter()
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=False)
        except TrainingDiverged as err:
            if trainer.is_global_zero:  # it may hold weights past the divergence: restart the fit instead
                checkpoint.unlink(missing_ok=True)
            raise TrainingDiverged(f"cycle {cycle}: {err}; the finished cycles are kept: continue with "
                                   f"'al-lightning fit --resume {directory.path} <the changed setting>'") from None
        fit_seconds = time.perf_counter() - started
        device = trainer.strategy.root_device
        model.to(device)
        predictions = self.test_predictions(model, datamodule, device)
        targets = datamodule.test_targets()
        test_acc = float((predictions == targets).float().mean())
        board = tensorboard(trainer)
        if board is not None:
            board.add_figure("test/confusion_matrix", confusion_matrix_figure(
                targets.numpy(), predictions.numpy(), datamodule.class_names), global_step=n_labeled)
        scoring = online_scoring(trainer)
        snapshot = {"model": model.state_dict(),
                    "scores": scoring.state.state_dict() if scoring and scoring.state is not None else None,
                    "sample_state": model.sample_state()}
        self._fitted = snapshot
        fitted = {"n_labeled": n_labeled, "test_acc": round(test_acc, 6), "fit_seconds": round(fit_seconds, 3),
                  "class_coverage": round(float(np.count_nonzero(pool.class_counts())) / pool.num_classes, 4),
                  "snapshot": self._save(directory, f"cycle_{cycle}_fitted", snapshot, trainer.is_global_zero)}
        return replace(state, phase="acquire", fitted=fitted,
                       step_offset=state.step_offset + trainer.global_step)

    def _acquire(self, state: RunState, model: SSLMethod, datamodule: ActiveDataModule, trainer: L.Trainer,
                 directory: RunDirectory) -> RunState:
        """Phase ``acquire`` of cycle k: pick, buy the labels (or ask people), record the cycle."""
        cycle, pool, fitted = state.cycle, datamodule.pool, state.fitted
        snapshot = self._fitted
        if snapshot is None:  # resumed between the fit and the acquisition
            snapshot = self._fitted = directory.load_snapshot(fitted["snapshot"])
            model.load_state_dict(snapshot["model"])
        device = trainer.strategy.root_device
        model.to(device)
        scores = None
        if snapshot["scores"] is not None:
            scores = OnlineScoreState(pool.size, device=device)
            scores.load_state_dict(snapshot["scores"])
        rank_zero = trainer.is_global_zero
        self._write_cycle_files(directory, cycle, snapshot, rank_zero)
        row = {"cycle": cycle, **{k: fitted[k] for k in ("n_labeled", "test_acc", "fit_seconds")},
               "acquire_seconds": None, "class_coverage": fitted["class_coverage"]}
        if cycle >= self.rounds or self.budget == 0:
            self._log_cycle(row, trainer)
            return replace(state, phase="done", fitted=None, results=state.results + [row], pseudo_labeled=None)
        started = time.perf_counter()
        context = AcquisitionContext(pool, model.inference_model, datamodule.inference_dataloader, device, scores,
                                     cycle, self.seed, pretrained_features=model.pretrained_features())
        picks = broadcast_from_zero(self.strategy.select(context, self.budget))
        pseudo = self.strategy.pseudo_labels(context, picks)
        row["acquire_seconds"] = round(time.perf_counter() - started, 4)
        self._log_cycle(row, trainer, self.strategy.acquisition_note())
        pseudo_labeled = None if pseudo is None else [broadcast_from_zero(np.asarray(a)).tolist() for a in pseudo]
        following = replace(state, cycle=cycle + 1, phase="fit", fitted=None, results=state.results + [row],
                            pseudo_labeled=pseudo_labeled,
                            start_weights=fitted["snapshot"] if self.weights == "continue" else state.start_weights)
        return self._buy(following, picks, cycle + 1, model, datamodule, directory, trainer, scores)

    def _buy(self, state: RunState, ids: np.ndarray, cycle: int, model: SSLMethod, datamodule: ActiveDataModule,
             directory: RunDirectory, trainer: L.Trainer, scores: OnlineScoreState | None) -> RunState:
        """Labels for ``ids`` bought at ``cycle``: now from the simulated oracle, or later from people
        (the queries are written and the run stops in phase ``label``)."""
        pool = datamodule.pool
        device = trainer.strategy.root_device
        model.to(device)
        batch = query_batch(ids, cycle, model, datamodule, device, scores, trained=cycle > 0)
        labels = self.oracle.label(ids, datamodule)
        board = tensorboard(trainer)
        if board is not None:
            log_queries(board, batch, labels, step=pool.num_labeled + len(ids))
        if labels is not None:
            pool.label(ids, labels, cycle=cycle)
            self._check_ranks_agree(pool, cycle)
            return replace(state, pool=pool.state_dict())
        files = self.oracle.ask(batch, directory.path) if trainer.is_global_zero else {}
        pending = {"cycle": cycle, "pool_ids": batch.pool_ids.tolist(), "sample_ids": batch.sample_ids,
                   "class_names": list(batch.class_names), "files": {k: str(v) for k, v in files.items()}}
        return replace(state, phase="label", pending=pending)

    # ---------------------------------------------------------------- pieces
    def _check_budget(self, pool: ActivePool, given: int) -> None:
        """``given``: labels the data came with, the initial set instead of ``loop.initial_*``."""
        initial = given or (self.initial_per_class * pool.num_classes if self.initial_per_class else self.initial_size)
        needed = initial + self.rounds * self.budget
        if needed > pool.size:
            raise PoolError(f"the run needs {needed} labels (initial {initial} + loop.rounds {self.rounds} x "
                            f"loop.budget {self.budget}) but the pool holds {pool.size} samples; lower loop.budget "
                            f"or loop.rounds")

    def _check_given(self, given: np.ndarray) -> None:
        """Labels that came with the data are the initial set: a setting that picks another is refused."""
        chosen = [name for name, value in (("initial_strategy", self.initial_strategy),
                                           ("initial_index_file", self.initial_index_file),
                                           ("initial_per_class", self.initial_per_class)) if value is not None]
        if len(given) and chosen:
            raise PoolError(f"loop.{chosen[0]}: the data came with {len(given)} labeled images (train/<class>/ beside "
                            f"unlabeled/), which are the initial set; remove loop.{chosen[0]}")

    def _check_scoring(self, trainer: L.Trainer, model: SSLMethod) -> None:
        """A strategy that picks by the online scores needs the callback that records them (without
        it the run would fail at its first acquisition, after a whole fit) and a method with a
        strong view to score (without one every score stays 0 and the picks are the lowest ids)."""
        if not (self.rounds and self.strategy.needs_online_scores):
            return
        name = type(self.strategy).__name__
        if online_scoring(trainer) is None:
            raise PoolError(f"loop.strategy: {name} picks by the online ASSL score: add '- class_path: "
                            f"al_lightning.scoring.OnlineScoring' to trainer.callbacks, or choose a strategy that "
                            f"does not need it (e.g. TypiClust)")
        if "strong" not in model.unlabeled_views:
            raise PoolError(f"loop.strategy: {name} picks by the online ASSL score, which compares weak and strong "
                            f"views, and model {type(model).__name__} trains no strong view; use a FixMatch-family "
                            f"model.class_path or a strategy that does not need the score (e.g. TypiClust)")

    def _check_oracle(self, datamodule: ActiveDataModule) -> None:
        unknown = datamodule.splits.unknown_labels
        if len(unknown) and isinstance(self.oracle, SimulatedOracle):
            raise PoolError(f"loop.oracle: {len(unknown)} pool images have no label for the simulated oracle to "
                            f"read (e.g. {datamodule.sample_ids(unknown[:1])[0]}); people label them with "
                            f"--loop.oracle al_lightning.loop.FileOracle")

    @staticmethod
    def _save(directory: RunDirectory, name: str, payload: dict[str, Any], rank_zero: bool) -> str:
        return directory.save_snapshot(name, payload) if rank_zero else str(
            directory.snapshot_path(name).relative_to(directory.path))

    def _commit(self, directory: RunDirectory, state: RunState, pool: ActivePool, rank_zero: bool) -> None:
        """Make ``state`` the run's state (rank 0 writes), then rewrite the files derived from it."""
        self.results = list(state.results)
        if rank_zero:
            directory.commit(state)
            commit_files(directory, state)

    @staticmethod
    def _write_cycle_files(directory: RunDirectory, cycle: int, snapshot: dict[str, Any], rank_zero: bool) -> None:
        if not rank_zero:
            return
        if snapshot["scores"] is not None:
            write_atomic(directory.path / "scores" / f"cycle_{cycle}.pt",
                         lambda handle: torch.save(snapshot["scores"], handle))
        if snapshot["sample_state"]:
            write_atomic(directory.path / "method_state" / f"cycle_{cycle}.pt",
                         lambda handle: torch.save(snapshot["sample_state"], handle))

    @staticmethod
    def _log_cycle(row: dict[str, Any], trainer: L.Trainer, note: str | None = None) -> None:
        """The cycle's summary line (with the strategy's note on how it chose), and its test
        metrics in TensorBoard against the label count."""
        acquire = "" if row["acquire_seconds"] is None else f", acquire {row['acquire_seconds']:.3f}s"
        acquire += f"; {note}" if note else ""
        log.info("cycle %d: %d labels, test acc %.4f (fit %.1fs%s)", row["cycle"], row["n_labeled"],
                 row["test_acc"], row["fit_seconds"], acquire)
        if trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.log_metrics({"test/acc": row["test_acc"], "test/class_coverage": row["class_coverage"]},
                                       step=row["n_labeled"])
            trainer.logger.save()

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

    @staticmethod
    def evaluate(model: SSLMethod, datamodule: ActiveDataModule, device: torch.device) -> float:
        """Top-1 accuracy of the EMA model on the whole test split (sharded, exact under DDP)."""
        predictions = ActiveLoop.test_predictions(model, datamodule, device)
        return float((predictions == datamodule.test_targets()).float().mean())

    @staticmethod
    def test_predictions(model: SSLMethod, datamodule: ActiveDataModule, device: torch.device) -> torch.Tensor:
        """The EMA model's class for every test image, on the CPU, on every rank."""
        targets = datamodule.test_targets()
        logits = pool_inference(model.inference_model,
                                lambda ids: datamodule.inference_dataloader(ids, split="test"),
                                np.arange(len(targets)), device, outputs=("logits",))["logits"]
        return logits.argmax(dim=-1).cpu()

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
