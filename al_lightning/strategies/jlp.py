"""jLP, joint label propagation (Simeoni et al., Rethinking deep active learning, Eq. 12): acquire,
one at a time, the unlabeled sample least similar on the kNN manifold to all labeled and already
acquired samples; see :func:`al_lightning.ops.joint_label_propagation_select`.

Args:
    k: neighbours per node of the graph (50 in the paper).
    alpha: propagation weight (0.99).
    gamma: affinity exponent, s = [u . v]_+^gamma (3).
"""

from __future__ import annotations

import numpy as np

from al_lightning.ops import joint_label_propagation_select
from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy


@register_strategy("jlp")
class JLP(Strategy):
    model_outputs = ("embeddings",)

    def __init__(self, k: int = 50, alpha: float = 0.99, gamma: float = 3.0) -> None:
        self.k, self.alpha, self.gamma = k, alpha, gamma

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        features, n_labeled = context.stacked_features("embedding")
        rows = joint_label_propagation_select(features.cpu(), np.arange(n_labeled),
                                              np.arange(n_labeled, len(features)), budget, self.k, self.alpha,
                                              self.gamma, device=context.device, overwrite=True)
        return context.unlabeled[np.asarray(rows) - n_labeled]
