"""K-medoids (the single-shot baseline of AS3L and USL): ``budget`` medoids of the unlabeled
features; see :func:`al_lightning.ops.k_medoids`.

Args:
    features: ``auto`` (pre-trained features if the model has a pre-training run, else the
        model's embedding; never a random network), ``pretrained``, ``embedding`` or ``pixels``.
"""

from __future__ import annotations


import numpy as np

from al_lightning.ops import k_medoids
from al_lightning.strategies.base import AcquisitionContext, FeatureKind, Strategy, register_strategy


@register_strategy("kmedoids")
class KMedoids(Strategy):
    model_outputs = ("embeddings",)

    def __init__(self, features: FeatureKind = "auto", iterations: int = 10) -> None:
        self.features, self.iterations = features, iterations

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        rows = k_medoids(context.features(self.features), budget, self.iterations,
                         seed=int(context.rng().integers(2**31)))
        return context.unlabeled[rows]
