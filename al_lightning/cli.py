"""``al-lightning fit --config FILE``: LightningCLI with an extra ``loop`` section.

``fit`` runs the active loop instead of a single ``Trainer.fit``; every cycle gets a fresh Trainer
built from the same ``trainer`` section (same logger and callbacks), with the data module doing its
own sharding (``use_distributed_sampler`` is always off).
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI

from al_lightning.data import DATASETS, ActiveDataModule
from al_lightning.loop import ActiveLoop
from al_lightning.methods import SSLMethod


def dataset_shape(name: str, root: str, options: dict | None) -> tuple[int, int]:
    """``(num_classes, in_channels)`` of a dataset, so the model never repeats what the data says."""
    return DATASETS.get(name).shape(root, **(options or {}))


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
                                       "pool), loop (rounds, budget, strategy, weights)."}},
            trainer_defaults={"num_sanity_val_steps": 0}, args=args, run=run)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(ActiveLoop, "loop")
        sources = ("data.dataset", "data.root", "data.dataset_options")
        for position, attribute in enumerate(("num_classes", "in_channels")):
            parser.link_arguments(sources, f"model.init_args.{attribute}", apply_on="parse",
                                  compute_fn=lambda name, root, options, k=position: dataset_shape(name, root, options)[k])

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


def main(args: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    # the EMA teacher is in eval mode on purpose; the pytree notice is Lightning-internal
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
    ActiveLearningCLI(args=args)


if __name__ == "__main__":
    main()
