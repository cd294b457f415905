"""CoreSet (Sener & Savarese 2018): greedy k-center over EMA embeddings, the labeled samples as
the initial centres; see :func:`al_lightning.ops.k_center_greedy`."""

from __future__ import annotations

import numpy as np

from al_lightning.ops import k_center_greedy
from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy


@register_strategy("coreset")
class CoreSet(Strategy):
    model_outputs = ("embeddings",)

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        centres = context.labeled_embeddings if len(context.labeled) else None
        first = int(context.rng().integers(len(context.unlabeled)))
        rows = k_center_greedy(context.embeddings, budget, centres=centres, first=first)
        return context.unlabeled[rows]
