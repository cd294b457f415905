"""Least-confidence sampling (Lewis & Gale 1994): the lowest top-class probability."""

from __future__ import annotations

import numpy as np

from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy, top_k


@register_strategy("least_confidence")
class LeastConfidence(Strategy):
    model_outputs = ("max_probability",)

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        return top_k(context, 1.0 - context.output("max_probability"), budget)
