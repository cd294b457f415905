"""Margin sampling (Scheffer et al. 2001): the smallest gap between the two most probable classes."""

from __future__ import annotations

import numpy as np

from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy, top_k


@register_strategy("margin")
class Margin(Strategy):
    model_outputs = ("margin",)

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        return top_k(context, -context.output("margin"), budget)
