"""ProbCover (Yehuda, Dekel, Hacohen, Weinshall 2022): greedy Max Coverage of delta-balls on
L2-normalised features, the labeled samples' balls covering first; no label needed, so it also
serves as a run's initial selection (``loop.initial_strategy``); see :mod:`al_lightning.ops.probcover`.

Args:
    features: ``auto`` (pre-trained features if the model has a pre-training run, else the
        model's embedding; never a random network), ``pretrained``, ``embedding`` or ``pixels``.
    delta: the ball radius (the paper: 0.75 on CIFAR-10 SimCLR features); None: the largest delta
    whose balls are pure for a fraction ``purity`` of the points under k-means pseudo-labels with
    K = the number of classes (the paper's heuristic, alpha = 0.95).
"""

from __future__ import annotations

import numpy as np

from al_lightning.ops import probcover_select
from al_lightning.strategies.base import AcquisitionContext, FeatureKind, Strategy, register_strategy


@register_strategy("probcover")
class ProbCover(Strategy):
    model_outputs = ("embeddings",)

    def __init__(self, features: FeatureKind = "auto", delta: float | None = None, purity: float = 0.95) -> None:
        self.features, self.delta, self.purity = features, delta, purity
        #: the delta of the last selection (chosen by purity when ``delta`` is None)
        self.last_delta: float | None = None

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        features, n_labeled = context.stacked_features(self.features)
        rows, self.last_delta = probcover_select(features, budget, n_labeled, delta=self.delta,
                                                 num_classes=context.num_classes, alpha=self.purity,
                                                 seed=int(context.rng().integers(2**31)), overwrite=True)
        return context.unlabeled[rows]
