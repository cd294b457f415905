"""CDAL (Agarwal et al. 2020): greedy k-center under the contextual-diversity (symmetric KL)
distance between predicted class distributions; see :mod:`al_lightning.ops.cdal`."""

from __future__ import annotations

import numpy as np

from al_lightning.ops import contextual_diversity_k_center
from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy


@register_strategy("cdal")
class CDAL(Strategy):
    model_outputs = ("logits",)

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        centres = context.labeled_probs if len(context.labeled) else None
        first = int(context.rng().integers(len(context.unlabeled)))
        probs = context.probs
        context.release("logits")  # overwritten by the clamped distributions: not held twice
        rows = contextual_diversity_k_center(probs, budget, centres, first=first, overwrite=True)
        return context.unlabeled[rows]
