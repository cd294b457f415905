"""ASSL's "Ours-Div" (Lim, Na, Kwak, section 4): each unlabeled embedding scaled by its online
score u_UCB x i_UCB, then k-means++ seeding picks a batch that is both uncertain and diverse. The
first seed is the largest weighted embedding, as in BADGE's seeding that the reference code shares."""

from __future__ import annotations

import numpy as np
import torch

from al_lightning.ops import kmeanspp, row_sq_norms
from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy


@register_strategy("assl_div")
class ASSLDiv(Strategy):
    needs_online_scores = True
    model_outputs = ("embeddings",)

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        weighted = context.owned_features("embedding")  # weighted in place: the pool is held once
        score = context.scores.score[torch.as_tensor(context.unlabeled, device=context.scores.score.device)]
        weighted.mul_(score.to(weighted.device, torch.float32)[:, None])
        first = int(row_sq_norms(weighted).argmax())
        return context.unlabeled[kmeanspp(weighted, budget, context.rng(), first=first)]
