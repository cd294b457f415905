"""Shared machinery of every SSL method: backbone, EMA teacher, optimizer and schedule, evaluation,
and the per-sample state contract.

A method subclass writes ``training_step`` and declares what it needs from the data (the views of
labeled and unlabeled samples, optionally sampling weights and the epoch length; see
:mod:`al_lightning.data.datamodule`); the data module serves it without asking which method runs.

Per-sample state (FlexMatch's ``selected_label``, FA's feature queues, LP-SEMI's pseudo-labels) is
reset at the start of every fit, because the pool changes between fits, and must be identical on
every rank: updates are computed from batches all-gathered in rank order (:meth:`gather`), which is
what a single process would see with the concatenated batch.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torchmetrics.classification import MulticlassAccuracy

from al_lightning.methods.ema import EMATeacher
from al_lightning.models import Backbone, create_backbone


def cosine_factor(step: int, total_steps: int, cycles: float = 7.0 / 16.0) -> float:
    """FixMatch's schedule: ``lr * cos(7 pi k / (16 K))``, no warm-up."""
    return max(0.0, math.cos(math.pi * cycles * step / max(1, total_steps)))


class SSLMethod(L.LightningModule):
    """Base of all methods. Evaluation and acquisition always use the EMA teacher.

    Args:
        backbone: a registered backbone or ``timm:<name>``.
        num_classes: filled from the data module by the CLI.
        in_channels: filled from the data module by the CLI.
        backbone_kwargs: extra arguments of the backbone factory.
        lr: SGD learning rate.
        momentum: SGD momentum (Nesterov when ``nesterov``).
        weight_decay: applied to weights only, never to BatchNorm parameters or biases.
        scheduler: ``cosine`` (FixMatch's 7/16 cosine decay over the fit) or ``none`` (ASSL).
        ema_decay: decay of the EMA teacher.
        ema_bias_correction: normalise the teacher by ``1 - decay^t`` so that after t steps it
            averages the student's iterates only (see :class:`EMATeacher`).
    """

    #: views of each labeled sample the method trains on
    labeled_views: tuple[str, ...] = ("weak",)
    #: views of each unlabeled sample the method trains on; empty means labeled data only
    unlabeled_views: tuple[str, ...] = ()

    def __init__(self, backbone: str = "wrn28_2", num_classes: int = 10, in_channels: int = 3,
                 backbone_kwargs: dict[str, Any] | None = None, lr: float = 0.03, momentum: float = 0.9,
                 nesterov: bool = True, weight_decay: float = 5e-4,
                 scheduler: Literal["cosine", "none"] = "cosine", ema_decay: float = 0.999,
                 ema_bias_correction: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["parts"])
        self.model: Backbone = create_backbone(backbone, num_classes, in_channels, **(backbone_kwargs or {}))
        self.ema = EMATeacher(self.model, ema_decay, ema_bias_correction)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.num_classes = num_classes
        #: steps taken in earlier cycles, so TensorBoard curves of all cycles share one x-axis
        self.step_offset = 0

    @property
    def inference_model(self) -> Backbone:
        return self.ema.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ema(x)

    def log_train(self, name: str, value: Any) -> None:
        self.log(f"train/{name}", value, on_step=True, on_epoch=False, prog_bar=name == "loss")

    # ------------------------------------------------------------ per-sample state
    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` of every rank concatenated in rank order along dim 0 (no gradient); itself on
        one process. Ranks hold equal-sized batches (the data module drops last batches)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return tensor.detach()
        return self.all_gather(tensor.detach()).flatten(0, 1)

    def on_fit_start(self) -> None:
        pool = self.trainer.datamodule.pool
        self.reset_sample_state(pool.size, pool.unlabeled_indices)

    def reset_sample_state(self, pool_size: int, unlabeled: np.ndarray) -> None:
        """Start a fit's per-sample state over a pool of ``pool_size`` ids, ``unlabeled`` of them
        unlabeled. Stateless methods keep nothing."""

    def sample_state(self) -> dict[str, Any]:
        """The per-sample state to save with the cycle (tensors on the CPU); empty when stateless."""
        return {}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update(self.model)
        self.log("step", float(self.step_offset + self.global_step), on_step=True, on_epoch=False)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_acc(self.ema(x), y)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.log("step", float(self.step_offset + self.global_step))

    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for param in self.model.parameters():
            (decay if param.ndim > 1 else no_decay).append(param)
        optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.hparams.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr, momentum=self.hparams.momentum, nesterov=self.hparams.nesterov)
        if self.hparams.scheduler == "none":
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_factor(step, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def reset_teacher(self) -> None:
        """Make the teacher equal to the student (start of a fit from fresh weights)."""
        self.ema.reset(self.model)
