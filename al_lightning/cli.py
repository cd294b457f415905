"""``al-lightning fit --config FILE``: LightningCLI with an extra ``loop`` section, and
``al-lightning pretrain --config FILE``: self-supervised pre-training over the same ``data`` section.

``fit`` runs the active loop instead of a single ``Trainer.fit``; every cycle gets a fresh Trainer
built from the same ``trainer`` section (same logger and callbacks), with the data module doing its
own sharding (``use_distributed_sampler`` is always off).

``pretrain`` has its own ``model`` section (a :class:`~al_lightning.pretrain.PretrainMethod`) and no
``loop``; it runs one ``Trainer.fit`` on :class:`~al_lightning.pretrain.PretrainDataModule`, which
reads the data section's splits but never the pool's labels, and leaves ``backbone.pt`` and
``features.pt`` in the run directory.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from al_lightning.data import DATASETS, ActiveDataModule
from al_lightning.loop import ActiveLoop
from al_lightning.methods import SSLMethod
from al_lightning.pretrain import PretrainDataModule, PretrainMethod


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
    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=SSLMethod, subclass_mode_model=True, datamodule_class=ActiveDataModule,
            save_config_kwargs={"overwrite": True}, parser_kwargs={
                "description": "Active semi-supervised learning cycles: fit (FixMatch family) -> "
                               "score online -> acquire -> label, on one CPU or many GPUs.",
                "fit": {"description": "Run active-learning cycles: per cycle a semi-supervised fit, a test "
                                       "with the EMA model, an acquisition and labeling. Sections: trainer "
                                       "(per-cycle Trainer), model (the SSL method), data (dataset and "
                                       "pool), loop (rounds, budget, strategy, weights)."},
                "pretrain": {"description": "Self-supervised pre-training (SimSiam, SimCLR, DeepCluster) on the "
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
        """A fresh Trainer from the config, sharing its logger and callback objects."""
        config = dict(self._trainer_config)
        callbacks = config.get("callbacks") or []
        config["callbacks"] = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        extra = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        return self._instantiate_trainer(config, extra)

    def fit(self, model: SSLMethod, datamodule: ActiveDataModule, **_: Any) -> None:
        first = [self.trainer]
        loop: ActiveLoop = self._get(self.config_init, "loop")
        results = loop.run(model, datamodule, lambda: first.pop() if first else self.build_trainer())
        if self.trainer.is_global_zero:
            print("\ncycle  labels  test_acc  fit_s   acquire_s")
            for row in results:
                print(f"{row['cycle']:>5}  {row['n_labeled']:>6}  {row['test_acc']:.4f}    "
                      f"{row['fit_seconds']:>6.1f}  {row['acquire_seconds']:.3f}")
            print(f"\nresults, pool and selections: {loop.out_dir}\n"
                  f"TensorBoard: tensorboard --logdir {loop.out_dir}")

    def pretrain(self, model: PretrainMethod, datamodule: ActiveDataModule) -> None:
        self.trainer.fit(model, datamodule=PretrainDataModule(datamodule))
        run_dir = self.trainer.log_dir  # a collective under DDP: every rank asks
        if self.trainer.is_global_zero:
            print(f"\nbackbone.pt, features.pt and TensorBoard logs: {run_dir}")


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    # the EMA teacher is in eval mode on purpose; the pytree notice is Lightning-internal
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    ActiveLearningCLI(args=args)
    # leave the process group before the interpreter exits: a gloo group torn down at exit
    # sometimes aborts the process ("terminate called without an active exception") after a
    # finished run, turning its exit status non-zero
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
