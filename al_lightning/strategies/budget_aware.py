"""The budget-aware default: coverage while labels are few or the model is unsure of most of the
pool, ASSL's online score once neither holds.

Every acquisition clusters the pool as TypiClust does (k-means of the L2-normalised labeled and
unlabeled features into min(|L| + b, 500) clusters) and visits the clusters in TypiClust's order
(fewest labeled samples first, then the largest), one pick per visit
(:func:`al_lightning.ops.typiclust_select`). Inside a visited cluster the pick is

* its most typical unlabeled sample (TypiClust) while the pool holds fewer than
  ``min_per_class`` labels per class on average, or while the EMA teacher predicts less than
  ``switch`` of the unlabeled pool with confidence of at least ``threshold``: its uncertainty is
  not yet informative (the cold start, where ASSL and entropy sampling lose to random picks and
  leave classes unlabeled), and what labels buy is coverage of the feature space (the low-budget
  regime of Hacohen et al., ICML 2022);
* its largest online ASSL score u_UCB x i_UCB (ASSL Eq. 6) once both are passed: a trained
  model's uncertainty and weak/strong inconsistency point at what it still gets wrong, and one
  pick per cluster keeps the batch diverse.

``min_per_class`` 10 is the fewest labels per class any of ASSL's experiments starts from (100
on CIFAR-10 and SVHN, 1,000 on CIFAR-100 and MiniImageNet, section 4.1): the score is not
evaluated below it. The labels-per-class condition is there because the confidence alone fails at
the cold start: FixMatch is confident before it is right (on MNIST with 10 labels the teacher was
confident on 52-62% of the pool at 34-43% test accuracy, and the score's picks then lost to random
ones at 20 labels in all three seeds run so: the README's learning curves). ``threshold`` 0.95 is
FixMatch's pseudo-label threshold, so the confident share is the part of the pool FixMatch learns
from; ``switch`` 0.5 is a majority of it. None of the three was tuned to a data set.

Args:
    features: ``auto`` (pre-trained features if the model has a pre-training run, else the
        model's embedding; never a random network), ``pretrained``, ``embedding``, ``pixels`` or a
        pre-training run directory.
    min_per_class: labels per class (|L| / number of classes) from which ASSL's score may pick (10).
    threshold: confidence a prediction needs to count as confident (0.95).
    switch: confident share of the unlabeled pool from which ASSL's score picks (0.5).
    k, max_clusters, min_cluster_size, distance: TypiClust's (20, 500, 5, ``squared``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from al_lightning.ops import typiclust_select
from al_lightning.strategies.base import AcquisitionContext, FeatureKind, PoolOutput, Strategy, register_strategy


@register_strategy("budget_aware")
class BudgetAware(Strategy):
    needs_online_scores = True

    def __init__(self, features: FeatureKind = "auto", min_per_class: float = 10.0, threshold: float = 0.95,
                 switch: float = 0.5, k: int = 20, max_clusters: int | None = 500, min_cluster_size: int = 5,
                 distance: Literal["squared", "euclidean"] = "squared") -> None:
        if not 0.0 <= switch <= 1.0 or not 0.0 < threshold <= 1.0 or min_per_class < 0:
            raise ValueError("BudgetAware needs min_per_class >= 0, 0 <= switch <= 1 and 0 < threshold <= 1")
        self.features, self.min_per_class, self.threshold, self.switch = features, min_per_class, threshold, switch
        self.k, self.max_clusters, self.min_cluster_size, self.distance = k, max_clusters, min_cluster_size, distance
        #: the last acquisition's labels per class, confident share (None when below
        #: ``min_per_class``) and rule (``typicality`` or ``assl``), for the logs
        self.last_per_class: float | None = None
        self.last_confident_share: float | None = None
        self.last_rule: str | None = None

    def acquisition_note(self) -> str | None:
        if self.last_rule is None:
            return None
        if self.last_confident_share is None:
            return f"{self.last_rule}, {self.last_per_class:.1f} labels per class (below {self.min_per_class:g})"
        return (f"{self.last_rule}, {self.last_per_class:.1f} labels per class, "
                f"confident share {self.last_confident_share:.2f}")

    @property
    def model_outputs(self) -> tuple[PoolOutput, ...]:
        """The top-class probability for the confident share, with the embedding when the clustering
        may read it."""
        return ("embeddings", "max_probability") if self.features in ("auto", "embedding") else ("max_probability",)

    def confident_share(self, context: AcquisitionContext) -> float:
        """Share of the unlabeled pool the EMA teacher predicts with confidence >= ``threshold``;
        0 before any fit (a random network is confident about nothing worth trusting)."""
        if context.model_is_random:
            return 0.0
        return float((context.output("max_probability") >= self.threshold).double().mean())

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        self.last_per_class = len(context.labeled) / context.num_classes
        # below min_per_class the share decides nothing: no pass over the pool for it (with
        # pre-trained features it would be the acquisition's only inference)
        enough_labels = self.last_per_class >= self.min_per_class
        # first: with the model's embedding, its pass over the pool also takes the top-class probability
        features, n_labeled = context.stacked_features(self.features)
        self.last_confident_share = self.confident_share(context) if enough_labels else None
        within = None
        self.last_rule = "typicality"
        if enough_labels and self.last_confident_share >= self.switch:
            score = context.scores.score
            within = score[torch.as_tensor(context.unlabeled, device=score.device)].double().cpu().numpy()
            self.last_rule = "assl"
        rows = typiclust_select(features, budget, n_labeled, k=self.k, max_clusters=self.max_clusters,
                                min_cluster_size=self.min_cluster_size, distance=self.distance,
                                seed=int(context.rng().integers(2**31)), within=within, overwrite=True)
        return context.unlabeled[rows]
