"""ALFA-Mix (Parvaneh et al. 2022): unlabeled samples whose prediction flips when mixed with a
labeled class anchor, diversified by k-means; see :mod:`al_lightning.ops.alfamix`.

Args:
    alpha: ``closed_form`` (first-order optimum) or ``optimised`` (a few Adam steps).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from al_lightning.ops import alfamix_select
from al_lightning.ops.alfamix import class_anchors
from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy


@register_strategy("alfamix")
class ALFAMix(Strategy):
    model_outputs = ("embeddings",)

    def __init__(self, alpha: Literal["closed_form", "optimised"] = "closed_form") -> None:
        self.alpha = alpha

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        if not len(context.labeled):
            raise ValueError("ALFA-Mix needs labeled samples for its anchors; use it after the initial set")
        labels = torch.as_tensor(context.labeled_labels, device=context.labeled_embeddings.device)
        anchors = class_anchors(context.labeled_embeddings, labels, context.num_classes)
        rng = context.rng()
        rows = alfamix_select(context.embeddings, context.classifier, anchors, budget, rng, mode=self.alpha,
                              seed=int(rng.integers(2**31)))
        return context.unlabeled[rows]
