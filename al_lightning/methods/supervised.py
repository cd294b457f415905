"""Labeled data only: the baseline every SSL method must beat at the same labels."""

from __future__ import annotations

from typing import Any

import torch

from al_lightning.methods.base import SSLMethod
from al_lightning.methods.registry import register_method


@register_method("supervised")
class Supervised(SSLMethod):
    unlabeled_views = ()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self.labeled_step(batch["labeled"])
