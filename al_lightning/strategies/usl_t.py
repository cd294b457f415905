"""USL-T (Wang, Lian, Yu 2022, section 2.3): a learnable k-means head with m = budget clusters,
trained on the frozen features with the global and local losses (Eq. 8-15), then the most confident
sample of each cluster. No label needed, so it also serves as a run's initial selection
(``loop.initial_strategy``); see :mod:`al_lightning.ops.usl_t` for the equations and for what
comes from the released code.

Defaults: the frozen-backbone recipe (Table 9's ImageNet column and the released ImageNet-100
config), since we train on frozen features without augmentations; the CIFAR column (alpha 5,
temperature 0.25, lam 5, threshold 0.95) can be set through the arguments.

Args:
    features: ``auto`` (pre-trained features if the model has a pre-training run, else the
        model's embedding; never a random network), ``pretrained``, ``embedding`` or ``pixels``.
    k: neighbours of the local loss (20). lam: local-loss weight lambda (0.5). alpha: logit
    adjustment (2.5). temperature: sharpening t (0.5). momentum: mu of the cluster prior (0.5).
    threshold: confidence tau of the global loss (0: every sample). balanced: class-balanced
    global loss (the released code) instead of Eq. 10's plain mean.
    heads: cluster heads (3). scale: cosine-head logit scale (40). epochs (100), batch_size (2048),
    lr (1e-4): Adam, as the released code; weight_decay: 0 (the code's 1e-4 collapses the cosine
    head's centroid norms, see :mod:`al_lightning.ops.usl_t`). Small pools get few steps per
    epoch: raise ``epochs`` or ``lr`` there.
"""

from __future__ import annotations


import numpy as np

from al_lightning.ops.usl_t import usl_t_select
from al_lightning.strategies.base import AcquisitionContext, FeatureKind, Strategy, register_strategy


@register_strategy("usl_t")
class USLT(Strategy):
    model_outputs = ("embeddings",)

    def __init__(self, features: FeatureKind = "auto", k: int = 20, lam: float = 0.5,
                 alpha: float = 2.5, temperature: float = 0.5, momentum: float = 0.5, threshold: float = 0.0,
                 balanced: bool = True, heads: int = 3, scale: float = 40.0, epochs: int = 100,
                 batch_size: int = 2048, lr: float = 1e-4, weight_decay: float = 0.0) -> None:
        self.features = features
        self.hyper = dict(k=k, lam=lam, alpha=alpha, temperature=temperature, momentum=momentum,
                          threshold=threshold, balanced=balanced, heads=heads, scale=scale, epochs=epochs,
                          batch_size=batch_size, lr=lr, weight_decay=weight_decay)

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        x = context.features(self.features)
        hyper = dict(self.hyper, k=min(self.hyper["k"], len(x) - 1))
        rows = usl_t_select(x, budget, seed=int(context.rng().integers(2**31)), **hyper)
        return context.unlabeled[rows]
