"""Callbacks that read what a method's ``training_step`` hands over for its unlabeled samples.

A method returns ``{"loss": ..., "unlabeled": {"index", "probs_weak", "probs_strong", "mask"}}``
(all detached); these callbacks turn that stream into per-sample scores and diagnostics.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from al_lightning.data.datasets import UNKNOWN
from al_lightning.scoring.online import OnlineScoreState, pseudo_el2n, symmetric_kl


def unlabeled_outputs(outputs: Any) -> dict[str, torch.Tensor] | None:
    return outputs.get("unlabeled") if isinstance(outputs, dict) else None


class OnlineScoring(L.Callback):
    """Accumulates ASSL's online scores for every unlabeled sample during each fit.

    Under DDP every step all-gathers (index, u, i, prediction, confidence) from all ranks in rank
    order, so every rank replays the same stream and holds the identical state.

    Args:
        alpha: EMA rate (weight of the newest observation).
        c_u: UCB confidence of the uncertainty.
        c_i: UCB confidence of the inconsistency.
        threshold: confidence counted as "pseudo-labeled".
        record_stream: keep the gathered stream on the CPU (for replay checks; costs memory).
    """

    def __init__(self, alpha: float = 0.8, c_u: float = 0.5, c_i: float = 2.0, threshold: float = 0.95,
                 record_stream: bool = False) -> None:
        self.alpha, self.c_u, self.c_i, self.threshold = alpha, c_u, c_i, threshold
        self.record_stream = record_stream
        self.state: OnlineScoreState | None = None
        self.stream: list[dict[str, torch.Tensor]] = []
        #: scores read from a mid-fit checkpoint, applied after the fit's reset
        self._restored: dict[str, Any] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pool = trainer.datamodule.pool
        self.state = OnlineScoreState(pool.size, self.alpha, self.c_u, self.c_i, self.threshold,
                                      device=pl_module.device)
        if self._restored is not None:
            self.state.load_state_dict(self._restored)
            self._restored = None
        self.stream = []

    def state_dict(self) -> dict[str, Any]:
        """Saved in mid-fit checkpoints, so a resumed fit continues the same scores."""
        return {} if self.state is None else {"scores": self.state.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict.get("scores")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        out = unlabeled_outputs(outputs)
        if out is None or self.state is None:
            return
        probs_w, probs_s = out["probs_weak"], out["probs_strong"]
        confidence, pred = probs_w.max(dim=-1)
        fields = {"index": out["index"].long(), "u": pseudo_el2n(probs_w), "i": symmetric_kl(probs_w, probs_s),
                  "pred": pred, "confidence": confidence}
        if trainer.world_size > 1:
            fields = {k: pl_module.all_gather(v).reshape(-1) for k, v in fields.items()}
        if self.record_stream:
            self.stream.append({k: v.detach().cpu() for k, v in fields.items()})
        self.state.update(fields["index"], fields["u"], fields["i"], fields["pred"], fields["confidence"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        if self.state is None or not trainer.is_global_zero or not isinstance(logger, TensorBoardLogger):
            return
        pool = trainer.datamodule.pool
        ids = torch.as_tensor(pool.unlabeled_indices, device=self.state.score.device)
        ids = ids[self.state.seen[ids] > 0]
        if ids.numel() == 0:
            return
        for name, values in (("u_ucb", self.state.u_ucb), ("i_ucb", self.state.i_ucb),
                             ("score", self.state.score), ("temporal_instability", self.state.flips)):
            logger.experiment.add_histogram(f"scores/{name}", values[ids].cpu(), global_step=pool.num_labeled)


class PseudoLabelAccuracy(L.Callback):
    """Logs how often confident pseudo-labels are right: a diagnostics path that reads ground
    truth from the data module; the method itself never sees an unlabeled sample's label."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        out = unlabeled_outputs(outputs)
        if out is None:
            return
        truth = torch.as_tensor(trainer.datamodule.ground_truth(out["index"].cpu()), device=out["mask"].device)
        mask = (out["mask"] > 0) & (truth != UNKNOWN)  # an image nobody labeled has no truth to compare
        if not bool(mask.any()):
            return
        correct = (out["probs_weak"][mask].argmax(dim=-1) == truth[mask]).float().mean()
        pl_module.log("train/pseudo_acc", correct, on_step=True, on_epoch=False)
