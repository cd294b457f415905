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
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from al_lightning.errors import UserError
from al_lightning.heap import RetainFreedMemory
from al_lightning.methods.ema import EMATeacher
from al_lightning.models import Backbone, create_backbone
from al_lightning.models.timm_backbone import TimmBackbone
from al_lightning.pretrain.outputs import load_backbone_state, load_pool_features


#: how often (optimizer steps) a fit checks that its loss stayed finite
FINITE_CHECK_STEPS = 50


class TrainingDiverged(UserError):
    """The loss of a fit became NaN or infinite."""


def load_pretrained_backbone(model: Backbone, pretrained: str) -> None:
    """Load ``backbone.pt`` of a pre-training run directory (or the file itself) into ``model``;
    a classifier head of another size is left at its initialisation (pre-training never trains it)."""
    path = Path(pretrained)
    if not path.exists():
        raise FileNotFoundError(f"model.init_args.pretrained: {path} does not exist; run 'al-lightning pretrain' "
                                f"and point at its run directory")
    state = load_backbone_state(path) if path.is_dir() else torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (k in own and own[k].shape != v.shape and k.startswith("fc."))}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"model.init_args.pretrained: {path} does not fit the backbone (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}); pre-train with the same model.init_args.backbone")


def cosine_factor(step: int, total_steps: int, cycles: float = 7.0 / 16.0) -> float:
    """FixMatch's schedule: ``lr * cos(7 pi k / (16 K))``, no warm-up."""
    return max(0.0, math.cos(math.pi * cycles * step / max(1, total_steps)))


def cosine_annealing_factor(step: int, anneal_steps: float) -> float:
    """Rethinking's schedule (Mean Teacher's ``cosine_rampdown``): ``0.5 (1 + cos(pi k / K'))``,
    zero at ``K'`` steps, which may lie past the end of the fit (210 of 200 epochs)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, anneal_steps) / anneal_steps))


def lr_factor(step: int, total_steps: int, scheduler: str, warmup_steps: int = 0,
              anneal_epochs_ratio: float = 1.0) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` of a fit of ``total_steps``:
    a linear warm-up over ``warmup_steps``, then the schedule over the remaining steps (USB's
    ``get_cosine_schedule_with_warmup``; without warm-up exactly FixMatch's)."""
    if step < warmup_steps:
        return step / warmup_steps
    step, total_steps = step - warmup_steps, total_steps - warmup_steps
    if scheduler == "cosine":
        return cosine_factor(step, total_steps)
    if scheduler == "cosine_annealing":
        return cosine_annealing_factor(step, max(1, total_steps) * anneal_epochs_ratio)
    return 1.0


class SSLMethod(L.LightningModule):
    """Base of all methods. Evaluation and acquisition always use the EMA teacher.

    Args:
        backbone: a registered backbone or ``timm:<name>``.
        num_classes: filled from the data module by the CLI.
        in_channels: filled from the data module by the CLI.
        backbone_kwargs: extra arguments of the backbone factory.
        lr: base learning rate.
        momentum: SGD momentum (Nesterov when ``nesterov``); unused by AdamW.
        weight_decay: applied to weights only, never to BatchNorm/LayerNorm parameters, biases
            (all 1-D parameters) or what the backbone exempts (a timm ViT's position embedding and
            class token).
        optimizer: ``sgd`` (the FixMatch family on CNNs) or ``adamw`` (USB's ViT settings; PyTorch's
            default betas 0.9/0.999 and eps, as USB).
        layer_decay: layer-wise learning-rate decay for a ``timm:`` backbone (USB's ViT configs use
            0.5): the head trains at ``lr``, the layer ``i`` steps below it at ``lr * layer_decay^i``,
            with layers grouped by timm's ``param_groups_layer_decay`` (for a ViT: patch embedding,
            each block, then the head). ``None``: one learning rate.
        scheduler: ``cosine`` (FixMatch's 7/16 cosine decay over the fit), ``cosine_annealing``
            (Rethinking's ``0.5 (1 + cos(pi k / K'))`` with ``K'`` = ``anneal_epochs_ratio`` times
            the fit) or ``none`` (ASSL).
        warmup_steps: linear learning-rate warm-up from 0 over this many steps before the schedule
            (USB's ``num_warmup_iter``; 5,120 in its ViT configs).
        anneal_epochs_ratio: for ``cosine_annealing``, where the cosine reaches zero relative to the
            fit's length (Rethinking: 210 / 200 epochs = 1.05, so the last step keeps a small rate).
        ema_decay: decay of the EMA teacher.
        ema_bias_correction: normalise the teacher by ``1 - decay^t`` so that after t steps it
            averages the student's iterates only (see :class:`EMATeacher`).
        pretrained: the run directory of an ``al-lightning pretrain`` run (or a ``backbone.pt``
            file): the backbone starts from its weights in every fit (RandInit reloads them), and
            the single-shot strategies select on its cached ``features.pt``.
        channels_last: keep the backbone's weights and the training views in channels-last memory
            layout (faster convolutions with tensor cores, e.g. with ``trainer.precision:
            bf16-mixed``); results are unchanged. None (default): channels-last when the fit runs
            on a CPU, whose convolutions (oneDNN) are fastest in it: a FixMatch step of every
            backbone measured ran 1.2-1.5x faster on 2 cores (README, "Training speed"); on a GPU
            the contiguous layout until the GPU figures say otherwise.
        compile_backbone: ``torch.compile`` the student's feature extractor at the start of the
            first fit (off by default: see the README's throughput figures for when it pays).
    """

    #: views of each labeled sample the method trains on
    labeled_views: tuple[str, ...] = ("weak",)
    #: views of each unlabeled sample the method trains on; empty means labeled data only
    unlabeled_views: tuple[str, ...] = ()
    #: whether a checkpoint taken inside a fit holds everything to continue it exactly (weights,
    #: optimizer, :meth:`sample_state`); otherwise a resumed run restarts the interrupted fit
    resumable_mid_fit: bool = True

    def __init__(self, backbone: str = "wrn28_2", num_classes: int = 10, in_channels: int = 3,
                 backbone_kwargs: dict[str, Any] | None = None, lr: float = 0.03, momentum: float = 0.9,
                 nesterov: bool = True, weight_decay: float = 5e-4,
                 optimizer: Literal["sgd", "adamw"] = "sgd", layer_decay: float | None = None,
                 scheduler: Literal["cosine", "cosine_annealing", "none"] = "cosine", warmup_steps: int = 0,
                 anneal_epochs_ratio: float = 1.0, ema_decay: float = 0.999,
                 ema_bias_correction: bool = True, pretrained: str | None = None,
                 channels_last: bool | None = None, compile_backbone: bool = False) -> None:
        super().__init__()
        if optimizer not in ("sgd", "adamw") or scheduler not in ("cosine", "cosine_annealing", "none"):
            raise ValueError(f"unknown optimizer {optimizer!r} or scheduler {scheduler!r}")
        if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        if warmup_steps < 0 or anneal_epochs_ratio < 1.0:
            raise ValueError("warmup_steps must be >= 0 and anneal_epochs_ratio >= 1 (the cosine may not "
                             "reach zero before the fit ends)")
        self.save_hyperparameters(ignore=["parts"])
        self.model: Backbone = create_backbone(backbone, num_classes, in_channels, **(backbone_kwargs or {}))
        if pretrained is not None:
            load_pretrained_backbone(self.model, pretrained)
        #: memory layout of the weights and of the training views the data module builds (with
        #: ``channels_last`` None, chosen by the fit's device in :meth:`on_fit_start`)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.ema = EMATeacher(self.model, ema_decay, ema_bias_correction)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.num_classes = num_classes
        #: steps taken in earlier cycles, so TensorBoard curves of all cycles share one x-axis
        self.step_offset = 0
        self._pretrained_features: torch.Tensor | None = None
        #: per-sample state read from a mid-fit checkpoint, applied after the fit's reset
        self._restored_sample_state: dict[str, Any] | None = None
        self._nonfinite: torch.Tensor | None = None

    def pretrained_features(self) -> torch.Tensor | None:
        """The pre-training run's cached features of the train split (row i = pool id i), if any."""
        run = self.hparams.get("pretrained")
        if run is None or not Path(run).is_dir():
            return None
        if self._pretrained_features is None:  # read once per model, however many strategies ask
            self._pretrained_features = load_pool_features(run, "model.init_args.pretrained")
        return self._pretrained_features

    @property
    def inference_model(self) -> Backbone:
        return self.ema.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ema(x)

    @property
    def logs_this_step(self) -> bool:
        """Whether the trainer hands this training step's values to the loggers (every
        ``trainer.log_every_n_steps``-th step, by the trainer's own rule). The ``on_step`` values
        of the other steps are overwritten unread, and each ``self.log`` costs about 0.6 ms of
        Python: five a step were a fifth of a small network's CPU step, so the methods log only
        when it is read. Outside a trainer, never (there is no logger to read it)."""
        connector = getattr(self._trainer, "_logger_connector", None)
        return connector is not None and bool(connector.should_update_logs)

    def log_train(self, name: str, value: Any) -> None:
        if self.logs_this_step:
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, prog_bar=name == "loss")

    def labeled_step(self, labeled: dict[str, Any]) -> torch.Tensor:
        """Cross-entropy on the labeled batch alone: Supervised's step, and any method's step
        without unlabeled data (uratio 0, a fully labeled pool, LP-SEMI's warm-up)."""
        loss = F.cross_entropy(self.model(labeled["weak"]), labeled["target"])
        self.log_train("loss_x", loss)
        self.log_train("loss", loss)
        return loss

    # ------------------------------------------------------------ per-sample state
    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` of every rank concatenated in rank order along dim 0 (no gradient); itself on
        one process. Ranks hold equal-sized batches (the data module drops last batches)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return tensor.detach()
        return self.all_gather(tensor.detach()).flatten(0, 1)

    def on_fit_start(self) -> None:
        if self.hparams.get("channels_last") is None:
            self.memory_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
            self.model.to(memory_format=self.memory_format)
            self.ema.module.to(memory_format=self.memory_format)
        if self.hparams.get("compile_backbone") and "embed" not in vars(self.model):
            self.model.embed = torch.compile(self.model.embed)  # the teacher and the weights stay plain
        pool = self.trainer.datamodule.pool
        self.reset_sample_state(pool.size, pool.unlabeled_indices)
        if self._restored_sample_state is not None:
            self.load_sample_state(self._restored_sample_state)
            self._restored_sample_state = None

    def configure_callbacks(self) -> list[L.Callback]:
        """On a CPU the steps' activation blocks are reused, not faulted in again (:mod:`al_lightning.heap`)."""
        return [RetainFreedMemory()]

    def reset_sample_state(self, pool_size: int, unlabeled: np.ndarray) -> None:
        """Start a fit's per-sample state over a pool of ``pool_size`` ids, ``unlabeled`` of them
        unlabeled. Stateless methods keep nothing."""

    def sample_state(self) -> dict[str, Any]:
        """The per-sample state to save with the cycle (tensors on the CPU); empty when stateless."""
        return {}

    def load_sample_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`sample_state` after :meth:`reset_sample_state` of the same pool."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sample_state"] = self.sample_state()
        checkpoint["step_offset"] = self.step_offset

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The state is applied in :meth:`on_fit_start`, after the reset every fit starts with."""
        self._restored_sample_state = checkpoint.get("sample_state") or None
        self.step_offset = int(checkpoint.get("step_offset", self.step_offset))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The teacher follows every optimizer step at once, so a checkpoint taken by a callback at
        the end of the batch holds the teacher of that step."""
        super().optimizer_step(*args, **kwargs)
        self.ema.update(self.model)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.logs_this_step:
            self.log("step", float(self.step_offset + self.global_step), on_step=True, on_epoch=False)
        self.check_finite_loss(outputs)

    def check_finite_loss(self, outputs: Any) -> None:
        """Stop a diverged fit with one clear line. The flag accumulates on the device and is read
        every :data:`FINITE_CHECK_STEPS` steps and at the fit's end, so a step never waits on it."""
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        last = self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if (self.global_step % FINITE_CHECK_STEPS == 0 or last) and bool(self._nonfinite):
            self._nonfinite = None
            raise TrainingDiverged(
                f"the training loss became NaN or infinite by step {self.global_step} of this fit; lower "
                f"model.init_args.lr (now {self.hparams.lr:g}) or check the data")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_acc(self.ema(x), y)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.log("step", float(self.step_offset + self.global_step))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer_class, options = (torch.optim.SGD, {"momentum": hp.momentum, "nesterov": hp.nesterov}) \
            if hp.optimizer == "sgd" else (torch.optim.AdamW, {})
        groups = self.layer_decay_groups() if hp.layer_decay is not None else self.weight_decay_groups()
        optimizer = optimizer_class(groups, lr=hp.lr, **options)
        if hp.scheduler == "none" and hp.warmup_steps == 0:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total, hp.scheduler, hp.warmup_steps, hp.anneal_epochs_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def weight_decay_groups(self) -> list[dict[str, Any]]:
        """``[decayed weights, exempt parameters]`` of the backbone (see ``weight_decay``)."""
        exempt = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            (decay if param.ndim > 1 and name not in exempt else no_decay).append(param)
        return [{"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def layer_decay_groups(self) -> list[dict[str, Any]]:
        """timm's layer-wise groups of the inner timm model (the head is part of it), each with its
        own ``lr`` (USB's ``param_groups_layer_decay``, the same BEiT rule)."""
        from timm.optim import param_groups_layer_decay

        if not isinstance(self.model, TimmBackbone):
            raise ValueError("layer_decay needs a timm: backbone (timm's group_matcher orders its layers)")
        inner = self.model.model
        groups = param_groups_layer_decay(
            inner, weight_decay=self.hparams.weight_decay, layer_decay=self.hparams.layer_decay,
            no_weight_decay_list=inner.no_weight_decay() if hasattr(inner, "no_weight_decay") else ())
        for group in groups:
            group["lr"] = self.hparams.lr * group.pop("lr_scale")
        return groups

    def reset_teacher(self) -> None:
        """Make the teacher equal to the student (start of a fit from fresh weights)."""
        self.ema.reset(self.model)
