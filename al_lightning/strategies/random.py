"""Uniform random sampling of the unlabeled pool: the baseline every strategy must beat."""

from __future__ import annotations

import numpy as np

from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy


@register_strategy("random")
class Random(Strategy):
    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        return context.rng().choice(context.unlabeled, size=budget, replace=False)
