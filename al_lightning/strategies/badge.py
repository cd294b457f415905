"""BADGE (Ash et al. 2020): k-means++ seeds on gradient embeddings, computed low-rank; see
:func:`al_lightning.ops.badge_kmeanspp`."""

from __future__ import annotations

import numpy as np

from al_lightning.ops import badge_kmeanspp
from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy


@register_strategy("badge")
class BADGE(Strategy):
    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        rows = badge_kmeanspp(context.probs, context.embeddings, budget, context.rng())
        return context.unlabeled[rows]
