"""USL (Wang, Lian, Yu 2022): density peaks per k-means cluster with inter-cluster regularisation,
no label needed, so it also serves as a run's initial selection (``loop.initial_strategy``); see
:func:`al_lightning.ops.usl_select`.

Args:
    features: ``auto`` (pre-trained features if the model has a pre-training run, else the
        model's embedding; never a random network), ``pretrained``, ``embedding`` or ``pixels``.
    k: kNN of the density estimate (400). lam, alpha: regulariser weight and exponent (None: the
    paper's 0.5/0.5 up to 100 picks, 1.0/1.0 above). m_reg: momentum (0.9). iterations: 10.
    horizon: only the picks of this many nearest clusters regularise (large pools).
    distance: ``squared`` (the released code's density and regulariser, default) or ``euclidean``
    (the paper's Eq. 1-5 literally); see :mod:`al_lightning.ops.usl`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from al_lightning.ops import usl_select
from al_lightning.strategies.base import AcquisitionContext, FeatureKind, Strategy, register_strategy


@register_strategy("usl")
class USL(Strategy):
    model_outputs = ("embeddings",)

    def __init__(self, features: FeatureKind = "auto", k: int = 400,
                 lam: float | None = None, alpha: float | None = None, m_reg: float = 0.9,
                 iterations: int = 10, horizon: int | None = None,
                 distance: Literal["squared", "euclidean"] = "squared") -> None:
        self.features, self.k, self.lam, self.alpha = features, k, lam, alpha
        self.m_reg, self.iterations, self.horizon, self.distance = m_reg, iterations, horizon, distance

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        x = context.owned_features(self.features)
        rows = usl_select(x, budget, k=min(self.k, len(x) - 1), lam=self.lam, alpha=self.alpha, m_reg=self.m_reg,
                          iterations=self.iterations, horizon=self.horizon, seed=int(context.rng().integers(2**31)),
                          distance=self.distance, device=context.device, overwrite=True)
        return context.unlabeled[rows]
