"""ActiveFT (Xie et al., CVPR 2023; the FA paper's [53]): learnable centroids matched to the
distribution of frozen, L2-normalised features, one distinct unlabeled sample per centroid; the
labeled samples are fixed centroids. See :mod:`al_lightning.ops.active_ft` for the objective,
the defaults (official code) and how it scales.

Args:
    features: ``auto`` (pre-trained features if the model has a pre-training run, else the
        model's embedding; never a random network), ``pretrained``, ``embedding`` or ``pixels``.
    init: centroid initialisation from sample features, ``random`` (official default) or ``fps``.
    temperature: 0.07. balance: weight of the diversity regulariser (1.0).
    iterations: Adam steps (300). lr: 1e-3. batch_size: features per step (100 000).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from al_lightning.ops.active_ft import active_ft_select
from al_lightning.strategies.base import AcquisitionContext, FeatureKind, Strategy, register_strategy


@register_strategy("active_ft")
class ActiveFT(Strategy):
    model_outputs = ("embeddings",)

    def __init__(self, features: FeatureKind = "auto",
                 init: Literal["random", "fps"] = "random", temperature: float = 0.07, balance: float = 1.0,
                 iterations: int = 300, lr: float = 1e-3, batch_size: int = 100_000) -> None:
        self.features, self.init, self.temperature, self.balance = features, init, temperature, balance
        self.iterations, self.lr, self.batch_size = iterations, lr, batch_size

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        labeled = context.features(self.features, labeled=True) if len(context.labeled) else None
        unlabeled = context.owned_features(self.features)  # normalised in place: the pool is held once
        rows = active_ft_select(unlabeled, budget, labeled, context.rng(), init=self.init,
                                temperature=self.temperature, balance=self.balance, iterations=self.iterations,
                                lr=self.lr, batch_size=self.batch_size, overwrite=True)
        return context.unlabeled[rows]
