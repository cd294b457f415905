"""Labeled data only: the baseline every SSL method must beat at the same labels."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from al_lightning.methods.base import SSLMethod
from al_lightning.methods.registry import register_method


@register_method("supervised")
class Supervised(SSLMethod):
    unlabeled_views = ()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        labeled = batch["labeled"]
        loss = F.cross_entropy(self.model(labeled["weak"]), labeled["target"])
        self.log_train("loss_x", loss)
        self.log_train("loss", loss)
        return loss
