"""Max-entropy sampling (Wang & Shang 2014): the ``budget`` most uncertain EMA-model predictions."""

from __future__ import annotations

import numpy as np

from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy, top_k


@register_strategy("entropy")
class Entropy(Strategy):
    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        probs = context.probs
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)
        return top_k(context, entropy, budget)
