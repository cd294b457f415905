"""TypiClust (Hacohen, Dekel, Weinshall 2022): the most typical sample of the largest cluster that
holds the fewest labeled samples, clusters by k-means into min(|L| + b, 500); no label needed, so
it also serves as a run's initial selection (``loop.initial_strategy``); see
:mod:`al_lightning.ops.typiclust` for the reference-code choices it follows.

Args:
    features: ``auto`` (pre-trained features if the model has a pre-training run, else the
        model's embedding; never a random network), ``pretrained``, ``embedding`` or ``pixels``.
    k: neighbours of the typicality (20, fewer in clusters under 40 samples). max_clusters: the
    cluster cap (500; None: |L| + b). min_cluster_size: clusters of at most this many samples are
    skipped (5). distance: ``squared`` (the reference code, default) or ``euclidean`` (the paper).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from al_lightning.ops import typiclust_select
from al_lightning.strategies.base import AcquisitionContext, FeatureKind, Strategy, register_strategy


@register_strategy("typiclust")
class TypiClust(Strategy):
    model_outputs = ("embeddings",)

    def __init__(self, features: FeatureKind = "auto", k: int = 20, max_clusters: int | None = 500,
                 min_cluster_size: int = 5, distance: Literal["squared", "euclidean"] = "squared") -> None:
        self.features, self.k, self.max_clusters = features, k, max_clusters
        self.min_cluster_size, self.distance = min_cluster_size, distance

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        features, n_labeled = context.stacked_features(self.features)
        rows = typiclust_select(features, budget, n_labeled, k=self.k, max_clusters=self.max_clusters,
                                min_cluster_size=self.min_cluster_size, distance=self.distance,
                                seed=int(context.rng().integers(2**31)), overwrite=True)
        return context.unlabeled[rows]
