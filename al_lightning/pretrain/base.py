"""Shared machinery of the self-supervised pre-training methods: backbone, optimizer and schedule, the
kNN monitor and the outputs of a run.

A method subclass declares the augmented views it trains on (``view_transforms``) and writes
``pretext_loss(views, index)``; optionally ``cluster_assignments()`` (DeepCluster) switches the epoch's
sampling to uniform over clusters (see :mod:`al_lightning.pretrain.data`). The backbone is any
registered backbone, built exactly as a fit builds it, so ``backbone.pt`` loads into the fit's model.

Outputs, in the run directory (the logger's ``log_dir``), written by rank 0 at the end of training:

* ``backbone.pt``: the backbone's state dict (CPU tensors; ``torch.load(path, weights_only=True)``).
  Its classifier head is left untouched by pre-training (frozen at its initialisation) and is kept so
  that the state dict loads strictly.
* one ``<name>.pt`` per pre-training head (``projector.pt``, SimSiam's ``predictor.pt``);
* ``features.pt``: ``{"ids": int64 (N,), "features": float32 (N, d)}``, the un-augmented train split
  through the trained backbone's ``embed`` (ids are pool ids ``0..N-1``).

TensorBoard gets ``pretrain/loss`` every logged step and ``pretrain/knn_acc`` (see
:mod:`al_lightning.pretrain.knn`) after every epoch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightly.utils.lars import LARS
from torch import nn

from al_lightning.data import ImageSplits
from al_lightning.heap import RetainFreedMemory
from al_lightning.models import Backbone, create_backbone
from al_lightning.pretrain.features import embed_split
from al_lightning.pretrain.knn import knn_monitor_accuracy
from al_lightning.pretrain.outputs import BACKBONE_FILE, FEATURES_FILE, save_features, save_state


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, scheduler: str) -> float:
    """Multiplier of the learning rate: linear warm-up over ``warmup_steps`` (SimCLR: 10 epochs),
    then ``0.5 (1 + cos(pi k / K))`` over the remaining steps (SimSiam, SimCLR) or constant."""
    if step < warmup_steps:
        return step / warmup_steps
    if scheduler == "none":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class PretrainMethod(L.LightningModule):
    """Base of the pre-training methods.

    Args:
        backbone: a registered backbone or ``timm:<name>``; the same as the fit that will load it.
        num_classes: size of the backbone's (unused, frozen) classifier; filled from the data by the CLI.
        in_channels: filled from the data by the CLI.
        backbone_kwargs: extra arguments of the backbone factory.
        base_lr: learning rate, times ``global batch / 256`` when ``lr_batch_scaling`` (SimSiam and
            SimCLR's linear scaling rule).
        lr_batch_scaling: scale ``base_lr`` by the global batch size over 256.
        momentum: momentum of SGD or LARS.
        nesterov: Nesterov momentum.
        weight_decay: L2 penalty.
        decay_all_parameters: apply the weight decay to every parameter (SimSiam, DeepCluster); when
            false, 1-D parameters (BatchNorm, biases) are exempt, and LARS also exempts them from its
            trust-ratio scaling (SimCLR).
        optimizer: ``sgd`` or ``lars`` (lightly's LARS, SimCLR's optimizer).
        scheduler: ``cosine`` (half-cosine to zero over the run, per step) or ``none``.
        warmup_epochs: linear learning-rate warm-up, in epochs.
        knn_k: neighbours of the kNN monitor.
        knn_temperature: temperature of the kNN monitor's ``exp(s / T)`` vote weights.
    """

    def __init__(self, backbone: str = "wrn28_2", num_classes: int = 10, in_channels: int = 3,
                 backbone_kwargs: dict[str, Any] | None = None, base_lr: float = 0.03,
                 lr_batch_scaling: bool = True, momentum: float = 0.9, nesterov: bool = False,
                 weight_decay: float = 5e-4, decay_all_parameters: bool = True,
                 optimizer: Literal["sgd", "lars"] = "sgd", scheduler: Literal["cosine", "none"] = "cosine",
                 warmup_epochs: int = 0, knn_k: int = 200, knn_temperature: float = 0.1) -> None:
        super().__init__()
        if optimizer not in ("sgd", "lars") or scheduler not in ("cosine", "none"):
            raise ValueError(f"unknown optimizer {optimizer!r} or scheduler {scheduler!r}")
        if warmup_epochs < 0 or knn_k < 1 or knn_temperature <= 0:
            raise ValueError("warmup_epochs must be >= 0, knn_k >= 1 and knn_temperature > 0")
        self.save_hyperparameters()
        self.backbone: Backbone = create_backbone(backbone, num_classes, in_channels, **(backbone_kwargs or {}))
        self.backbone.head().requires_grad_(False)  # no pre-training loss reaches it (and DDP needs none unused)
        self.num_classes = num_classes

    # ------------------------------------------------------------------ method contract
    def view_transforms(self, splits: ImageSplits) -> list:
        """One transform per augmented view of a train image the loss needs."""
        raise NotImplementedError

    def pretext_loss(self, views: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def heads(self) -> dict[str, nn.Module]:
        """Pre-training heads written next to the backbone as ``<name>.pt``."""
        return {}

    def fixed_lr_modules(self) -> list[nn.Module]:
        """Modules whose learning rate the schedule leaves alone (SimSiam's predictor)."""
        return []

    # ------------------------------------------------------------------ training
    def configure_callbacks(self) -> list[L.Callback]:
        """On a CPU the steps' activation blocks are reused, not faulted in again (:mod:`al_lightning.heap`)."""
        return [RetainFreedMemory()]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.pretext_loss(batch["views"], batch["index"])
        self.log("pretrain/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def embed_split(self, split: str) -> torch.Tensor:
        """Features of the whole un-augmented ``split`` on every rank, in id order."""
        datamodule = self.trainer.datamodule
        return embed_split(self.backbone.embed, self.backbone,
                           lambda ids: datamodule.embedding_loader(ids, split),
                           datamodule.split_size(split), self.device)

    def on_train_epoch_end(self) -> None:
        features = self.embed_split("test")
        accuracy = knn_monitor_accuracy(features, self.trainer.datamodule.test_targets(), self.num_classes,
                                        self.hparams.knn_k, self.hparams.knn_temperature)
        self.log("pretrain/knn_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)

    def on_train_end(self) -> None:
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective under DDP
        features = self.embed_split("train")
        if self.trainer.is_global_zero:
            save_state(run_dir / BACKBONE_FILE, self.backbone.state_dict())
            for name, head in self.heads().items():
                save_state(run_dir / f"{name}.pt", head.state_dict())
            save_features(run_dir / FEATURES_FILE, features)
        self.trainer.strategy.barrier("pretrain outputs")

    # ------------------------------------------------------------------ optimisation
    def learning_rate(self) -> float:
        hp = self.hparams
        if not hp.lr_batch_scaling:
            return hp.base_lr
        return hp.base_lr * self.trainer.datamodule.batch_size * self.trainer.world_size / 256

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters grouped by (fixed learning rate, weight decay)."""
        fixed = {id(p) for module in self.fixed_lr_modules() for p in module.parameters()}
        groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
        for param in self.parameters():
            if param.requires_grad:
                decay = self.hparams.weight_decay if self.hparams.decay_all_parameters or param.ndim > 1 else 0.0
                groups.setdefault((id(param) in fixed, decay), []).append(param)
        return [{"params": params, "weight_decay": decay, "fixed_lr": is_fixed}
                for (is_fixed, decay), params in groups.items()]

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = self.parameter_groups()
        if hp.optimizer == "lars":
            optimizer = LARS(groups, lr=self.learning_rate(), momentum=hp.momentum, nesterov=hp.nesterov)
        else:
            optimizer = torch.optim.SGD(groups, lr=self.learning_rate(), momentum=hp.momentum, nesterov=hp.nesterov)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        warmup = hp.warmup_epochs * total // epochs
        schedule = lambda step: warmup_cosine_factor(step, total, warmup, hp.scheduler)  # noqa: E731
        lambdas = [(lambda step: 1.0) if group["fixed_lr"] else schedule for group in groups]
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
