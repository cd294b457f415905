"""K-medoids (the single-shot baseline of AS3L and USL): ``budget`` medoids of the unlabeled
features; see :func:`al_lightning.ops.k_medoids`.

Args:
    features: ``embedding`` or ``pixels``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from al_lightning.ops import k_medoids
from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy


@register_strategy("kmedoids")
class KMedoids(Strategy):
    def __init__(self, features: Literal["embedding", "pixels"] = "embedding", iterations: int = 10) -> None:
        self.features, self.iterations = features, iterations

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        rows = k_medoids(context.features(self.features), budget, self.iterations,
                         seed=int(context.rng().integers(2**31)))
        return context.unlabeled[rows]
