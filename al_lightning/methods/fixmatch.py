"""FixMatch (Sohn et al., NeurIPS 2020): hard pseudo-labels from the weak view, above a
confidence threshold, supervise the strong view.

    loss = CE(p(x_l), y) + lambda_u * mean_b[ 1(max p(x_w) >= tau) * CE(p(x_s), argmax p(x_w)) ]

Labeled, weak and strong images go through the network in one concatenated forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F
from torchmetrics import MeanMetric

from al_lightning.methods.base import SSLMethod
from al_lightning.methods.registry import register_method


def fixmatch_loss(logits_x: torch.Tensor, targets: torch.Tensor, logits_w: torch.Tensor,
                  logits_s: torch.Tensor, threshold: float, lambda_u: float) -> dict[str, torch.Tensor]:
    """FixMatch's losses; ``mask`` marks the unlabeled samples whose pseudo-label is used."""
    loss_x = F.cross_entropy(logits_x, targets)
    probs_w = torch.softmax(logits_w.detach(), dim=-1)
    confidence, pseudo_label = probs_w.max(dim=-1)
    mask = (confidence >= threshold).float()
    loss_u = (F.cross_entropy(logits_s, pseudo_label, reduction="none") * mask).mean()
    return {"loss": loss_x + lambda_u * loss_u, "loss_x": loss_x, "loss_u": loss_u, "mask": mask,
            "probs_weak": probs_w, "pseudo_label": pseudo_label}


@register_method("fixmatch")
class FixMatch(SSLMethod):
    """Args (besides :class:`SSLMethod`'s):
        threshold: confidence tau above which a pseudo-label is used.
        lambda_u: weight of the unlabeled loss.
    """

    unlabeled_views = ("weak", "strong")

    def __init__(self, threshold: float = 0.95, lambda_u: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold, self.lambda_u = threshold, lambda_u
        self.mask_rate = MeanMetric()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        x, y = batch["labeled"]
        unlabeled = batch["unlabeled"]
        n_x, n_u = x.shape[0], unlabeled["weak"].shape[0]
        logits = self.model(torch.cat([x, unlabeled["weak"], unlabeled["strong"]]))
        logits_x, logits_w, logits_s = logits.split([n_x, n_u, n_u])
        out = fixmatch_loss(logits_x, y, logits_w, logits_s, self.threshold, self.lambda_u)
        self.mask_rate(out["mask"])
        for name in ("loss", "loss_x", "loss_u"):
            self.log_train(name, out[name])
        self.log("train/mask_rate", self.mask_rate, on_step=True, on_epoch=False)
        return {"loss": out["loss"],
                "unlabeled": {"index": unlabeled["index"], "probs_weak": out["probs_weak"],
                              "probs_strong": torch.softmax(logits_s.detach(), dim=-1),
                              "mask": out["mask"]}}
