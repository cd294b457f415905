"""AS3L's single-shot selection (Wen, Pizarro, Williams, section 4.4): the samples nearest to the
centres of clusters that stay together over ``runs`` k-means runs; see
:func:`al_lightning.ops.stable_cluster_select`. The paper runs it on fine-tuned self-supervised
features (Eq. 6); here on whatever ``features`` the context provides.

Args:
    features: ``embedding`` or ``pixels``.
    runs: k-means runs C (6 in the paper).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from al_lightning.ops import stable_cluster_select
from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy


@register_strategy("as3l")
class AS3L(Strategy):
    def __init__(self, features: Literal["embedding", "pixels"] = "embedding", runs: int = 6) -> None:
        self.features, self.runs = features, runs

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        rows = stable_cluster_select(context.features(self.features), budget, self.runs,
                                     seed=int(context.rng().integers(2**31)))
        return context.unlabeled[rows]
