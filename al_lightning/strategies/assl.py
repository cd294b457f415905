"""ASSL's acquisition (Lim, Na, Kwak, Eq. 6): the top-``budget`` unlabeled samples by
u_UCB x i_UCB accumulated online during the fit; no inference pass at acquisition time."""

from __future__ import annotations

import numpy as np
import torch

from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy, top_k


@register_strategy("assl")
class ASSL(Strategy):
    needs_online_scores = True

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        score = context.scores.score
        ids = torch.as_tensor(context.unlabeled, device=score.device)
        return top_k(context, score[ids], budget)
