"""``al-lightning fit --config FILE``: LightningCLI with an extra ``loop`` section, and
``al-lightning pretrain --config FILE``: self-supervised pre-training over the same ``data`` section.

``fit`` runs the active loop instead of a single ``Trainer.fit``; every cycle gets a fresh Trainer
built from the same ``trainer`` section (same logger and callbacks), with the data module doing its
own sharding (``use_distributed_sampler`` is always off).

``pretrain`` has its own ``model`` section (a :class:`~al_lightning.pretrain.PretrainMethod`) and no
``loop``; it runs one ``Trainer.fit`` on :class:`~al_lightning.pretrain.PretrainDataModule`, which
reads the data section's splits but never the pool's labels, and leaves ``backbone.pt`` and
``features.pt`` in the run directory.

``fit --resume RUN_DIR`` continues a run from its run directory (its ``config.yaml`` unless
``--config`` is given); ``label RUN_DIR ANSWERS`` imports people's answers to a run's queries;
``report RUN_DIR ...`` draws learning curves. A user error prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from al_lightning.data import DATASETS, ActiveDataModule
from al_lightning.data.pool import ActivePool, write_atomic
from al_lightning.errors import UserError
from al_lightning.loop import ActiveLoop
from al_lightning.loop.active_loop import commit_files, default_run_dir, start_processes
from al_lightning.loop.labeling import read_answers
from al_lightning.loop.run_state import RunDirectory
from al_lightning.methods import SSLMethod
from al_lightning.pretrain import PretrainDataModule, PretrainMethod
from al_lightning.report import report_main


def dataset_shape(name: str, root: str, options: dict | None) -> tuple[int, int]:
    """``(num_classes, in_channels)`` of a dataset, so the model never repeats what the data says."""
    return DATASETS.get(name).shape(root, **(options or {}))


def link_data_shape(parser) -> None:
    """The model's ``num_classes`` and ``in_channels`` follow the data section."""
    sources = ("data.dataset", "data.root", "data.dataset_options")
    for position, attribute in enumerate(("num_classes", "in_channels")):
        parser.link_arguments(sources, f"model.init_args.{attribute}", apply_on="parse",
                              compute_fn=lambda name, root, options, k=position: dataset_shape(name, root, options)[k])


class ActiveLearningCLI(LightningCLI):
    """Args (besides LightningCLI's):
        resume: the run directory ``fit`` continues (``fit --resume RUN_DIR``), or None for a new run.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True, resume: Path | None = None) -> None:
        self.resume = resume
        self._trainers_built = 0
        super().__init__(
            model_class=SSLMethod, subclass_mode_model=True, datamodule_class=ActiveDataModule,
            save_config_callback=None, parser_kwargs={
                "exit_on_error": False,
                "description": "Active semi-supervised learning cycles: fit (FixMatch family) -> "
                               "score online -> acquire -> label, on one CPU or many GPUs.",
                "fit": {"exit_on_error": False, "description": "Run active-learning cycles: per cycle a semi-supervised fit, a test "
                                       "with the EMA model, an acquisition and labeling. Sections: trainer "
                                       "(per-cycle Trainer), model (the SSL method), data (dataset and "
                                       "pool), loop (rounds, budget, strategy, weights)."},
                "pretrain": {"exit_on_error": False, "description": "Self-supervised pre-training (SimSiam, SimCLR, DeepCluster) on the "
                                            "train split without labels; writes backbone.pt and features.pt to "
                                            "the run directory. Sections: trainer, model (the pre-training "
                                            "method), data (as for fit; the pool is not used)."}},
            trainer_defaults={"num_sanity_val_steps": 0}, args=args, run=run)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
                "pretrain": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(ActiveLoop, "loop")
        link_data_shape(parser)

    def _add_subcommands(self, parser, **kwargs: Any) -> None:
        """Lightning's subcommands are Trainer methods; ``pretrain`` is not, so its parser is built here."""
        self._subcommand_parsers = {}
        subcommands = parser.add_subcommands()
        for name in self.subcommands():
            options = dict(kwargs.get(name, {}))
            if name == "pretrain":
                subparser = self._pretrain_parser(**options)
                self._subcommand_method_arguments[name] = []
            else:
                subparser = self._prepare_subcommand_parser(Trainer, name, **options)
            self._subcommand_parsers[name] = subparser
            subcommands.add_subcommand(name, subparser, help=options.get("description"))

    def _pretrain_parser(self, **kwargs: Any):
        parser = self.init_parser(**kwargs)
        self.add_default_arguments_to_parser(parser)
        parser.add_lightning_class_args(Trainer, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(PretrainMethod, "model", subclass_mode=True)
        parser.add_lightning_class_args(ActiveDataModule, "data")
        link_data_shape(parser)
        return parser

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand == "pretrain":
            self.pretrain(self.model, self.datamodule)
        else:
            super()._run_subcommand(subcommand)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        self._trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs,
                                "use_distributed_sampler": False}
        return self.build_trainer()

    def build_trainer(self) -> Trainer:
        """A fresh Trainer from the config, sharing its logger and callback objects. Only the first
        one prints the model summary and Lightning's banners: a run builds one per fit."""
        config = dict(self._trainer_config)
        callbacks = config.get("callbacks") or []
        config["callbacks"] = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if self._trainers_built:
            config["enable_model_summary"] = False
            logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
        self._trainers_built += 1
        extra = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        return self._instantiate_trainer(config, extra)

    def instantiate_classes(self) -> None:
        """A config value a class refuses (``ValueError``) is the user's to fix: one line."""
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            if isinstance(err, UserError):
                raise
            raise UserError(f"{err} (check the config and --print_config)") from None

    def fit(self, model: SSLMethod, datamodule: ActiveDataModule, **_: Any) -> None:
        first = [self.trainer]
        loop: ActiveLoop = self._get(self.config_init, "loop")
        start_processes(self.trainer)
        run_dir = self.resume if self.resume is not None else default_run_dir(self.trainer)
        results = loop.run(model, datamodule, lambda: first.pop() if first else self.build_trainer(),
                           run_dir=run_dir, resume=self.resume is not None,
                           config=None if self.resume is not None else self.config_yaml())
        if not self.trainer.is_global_zero:
            return
        if results:
            print(results_table(results))
        if loop.waiting_for_labels is not None:
            count, cycle = loop.waiting_for_labels
            print(f"\n{count} images to label for cycle {cycle}: fill the label column of "
                  f"{run_dir}/queries/cycle_{cycle}.csv (or label {run_dir}/queries/cycle_{cycle}_label_studio.json "
                  f"in Label Studio and export JSON), then run\n"
                  f"  al-lightning label {run_dir} ANSWERS && al-lightning fit --resume {run_dir}")
        else:
            print(f"\nresults, pool and selections: {run_dir}\nTensorBoard: tensorboard --logdir {run_dir}")

    def config_yaml(self) -> str:
        """The run's full config (what ``--print_config`` shows)."""
        return self._parser(self.subcommand).dump(self.config.get(str(self.subcommand), self.config),
                                                  skip_none=False)

    def pretrain(self, model: PretrainMethod, datamodule: ActiveDataModule) -> None:
        self.trainer.fit(model, datamodule=PretrainDataModule(datamodule))
        run_dir = self.trainer.log_dir  # a collective under DDP: every rank asks
        if self.trainer.is_global_zero:
            write_atomic(Path(run_dir) / "config.yaml", lambda handle: handle.write(self.config_yaml().encode()))
            print(f"\nbackbone.pt, features.pt and TensorBoard logs: {run_dir}")


def results_table(results: list[dict[str, Any]]) -> str:
    lines = ["\ncycle  labels  test_acc  fit_s   acquire_s"]
    for row in results:
        acquire = "" if row["acquire_seconds"] in (None, "") else f"{float(row['acquire_seconds']):.3f}"
        lines.append(f"{row['cycle']:>5}  {row['n_labeled']:>6}  {row['test_acc']:.4f}    "
                     f"{row['fit_seconds']:>6.1f}  {acquire}")
    return "\n".join(lines)


def resume_arguments(argv: list[str]) -> tuple[list[str], Path | None]:
    """``fit --resume RUN_DIR [...]`` -> the fit arguments that continue RUN_DIR: its saved config
    (unless ``--config`` is given) and its logger directory pinned to RUN_DIR."""
    if not argv or argv[0] != "fit" or not any(a == "--resume" or a.startswith("--resume=") for a in argv):
        return argv, None
    rest, run_dir = [], None
    items = iter(argv[1:])
    for item in items:
        if item == "--resume" or item.startswith("--resume="):
            run_dir = item.split("=", 1)[1] if "=" in item else next(items, None)
        else:
            rest.append(item)
    if not run_dir:
        raise UserError("fit --resume needs the run directory, e.g. --resume runs/assl_digits/version_0")
    run = Path(run_dir)
    saved = run / "config.yaml"
    if not (run / "state.json").exists() or not saved.exists():
        raise UserError(f"--resume {run}: no run to continue there (state.json and config.yaml are missing); "
                        f"give the directory 'al-lightning fit' printed")
    if "--config" not in rest and not any(a.startswith("--config=") for a in rest):
        rest = ["--config", str(saved)] + rest
    logger = (yaml.safe_load(saved.read_text()).get("trainer") or {}).get("logger")
    if isinstance(logger, dict) and "init_args" in logger:
        resolved = run.resolve()
        rest += [f"--trainer.logger.init_args.save_dir={resolved.parent.parent}",
                 f"--trainer.logger.init_args.name={resolved.parent.name}",
                 f"--trainer.logger.init_args.version={resolved.name}"]
    return ["fit"] + rest, run


def label_main(argv: list[str]) -> int:
    """``al-lightning label RUN_DIR ANSWERS [--allow-missing]``: validate every answer, then label
    the pool in one atomic commit; nothing changes when any answer is wrong."""
    parser = argparse.ArgumentParser(prog="al-lightning label", description=label_main.__doc__)
    parser.add_argument("run_dir", type=Path, help="the run directory that stopped for labels")
    parser.add_argument("answers", type=Path, help="a CSV (id,label) or a Label Studio JSON export")
    parser.add_argument("--allow-missing", action="store_true",
                        help="queried ids without an answer go back to the unlabeled pool")
    args = parser.parse_args(argv)
    directory = RunDirectory(args.run_dir)
    state = directory.load()
    if state.phase != "label" or state.pending is None:
        raise UserError(f"{args.run_dir} is not waiting for labels (phase {state.phase}, cycle {state.cycle}); "
                        f"continue it with 'al-lightning fit --resume {args.run_dir}'")
    pending = state.pending
    pool = ActivePool(int(state.pool["size"]), int(state.pool["num_classes"]))
    pool.load_state_dict(state.pool)
    labeled = pool.labeled_indices
    answers = read_answers(args.answers, np.asarray(pending["pool_ids"], dtype=np.int64), pending["sample_ids"],
                           tuple(pending["class_names"]), labeled, pool.labels_of(labeled),
                           allow_missing=args.allow_missing)
    if len(answers.pool_ids):
        pool.label(answers.pool_ids, answers.labels, cycle=int(pending["cycle"]))
    state.pool, state.pending, state.phase = pool.state_dict(), None, "fit"
    directory.commit(state)
    commit_files(directory, state)
    print(f"{len(answers.pool_ids)} labels imported for cycle {state.cycle}"
          f"{f', {len(answers.unanswered)} queries returned to the pool' if len(answers.unanswered) else ''}; "
          f"continue with: al-lightning fit --resume {args.run_dir}")
    return 0


class DropAdvertisements(logging.Filter):
    """Lightning's tip to install its cloud logger says nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(DropAdvertisements())
    # the EMA teacher is in eval mode on purpose; the pytree notice is Lightning-internal
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    # the samplers continue a resumed epoch where it stopped (ActiveDataModule.resumed_batches)
    warnings.filterwarnings("ignore", message=r".*resuming from a checkpoint that ended before the epoch ended.*")
    # main() always hands LightningCLI its (possibly rewritten) arguments
    warnings.filterwarnings("ignore", message=r".*args parameter is intended to run from within Python.*")
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv[:1] == ["report"]:
            status = report_main(argv[1:])
            if status:
                raise SystemExit(status)
            return
        if argv[:1] == ["label"]:
            label_main(argv[1:])
            return
        argv, resume = resume_arguments(argv)
        ActiveLearningCLI(args=argv, resume=resume)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except ArgumentError as err:
        command = " ".join(argv[:1]) or "fit"
        print(f"error: {err} (al-lightning {command} --help lists every option)", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        # leave the process group before the interpreter exits: a gloo group torn down at exit
        # sometimes aborts the process ("terminate called without an active exception") after a
        # finished run, turning its exit status non-zero
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
