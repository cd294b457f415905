"""Max-entropy sampling (Wang & Shang 2014): the ``budget`` most uncertain EMA-model predictions."""

from __future__ import annotations

import numpy as np

from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy, top_k


@register_strategy("entropy")
class Entropy(Strategy):
    model_outputs = ("entropy",)

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        return top_k(context, context.output("entropy"), budget)
