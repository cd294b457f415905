"""AS3L's single-shot selection (Wen, Pizarro, Williams, section 4.4): fine-tune the features on C
k-means runs (Eq. 6, :func:`al_lightning.ops.as3l.finetune_features`), then pick the samples nearest
to the centres of the clusters that stay together over C more runs on the fine-tuned features
(:func:`al_lightning.ops.as3l.stable_cluster_select`). Every k-means uses K = the budget (section
5.1.2). The paper runs it on self-supervised (SimSiam) features; here on whatever ``features`` the
context provides.

Args:
    features: ``auto`` (pre-trained features if the model has a pre-training run, else the
        model's embedding; never a random network), ``pretrained``, ``embedding`` or ``pixels``.
    runs: k-means runs C (6 in the paper), for both fine-tuning and selection.
    finetune: fine-tune the features first (the paper's method); False selects on the raw features
        (Table 6's "Multi-cluster on f_self" ablation).
    finetune_epochs: epochs of the fine-tuning (40 in the paper).
"""

from __future__ import annotations


import numpy as np

from al_lightning.ops.as3l import finetune_features, stable_cluster_select
from al_lightning.strategies.base import AcquisitionContext, FeatureKind, Strategy, register_strategy


@register_strategy("as3l")
class AS3L(Strategy):
    model_outputs = ("embeddings",)

    def __init__(self, features: FeatureKind = "auto", runs: int = 6,
                 finetune: bool = True, finetune_epochs: int = 40) -> None:
        self.features, self.runs, self.finetune, self.finetune_epochs = features, runs, finetune, finetune_epochs

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        features = context.features(self.features)
        seed = int(context.rng().integers(2**31))
        if self.finetune:
            features, _ = finetune_features(features, budget, self.runs, self.finetune_epochs, seed=seed,
                                            device=context.device)
        rows = stable_cluster_select(features, budget, self.runs, seed=seed)
        return context.unlabeled[rows]
