"""k-means++ seeding (Arthur & Vassilvitskii 2007) as a batch picker: BADGE (Ash et al. 2020)
on gradient embeddings, and ASSL's "Ours-Div" on score-weighted embeddings.

BADGE's embedding of sample i is g_i = a_i (outer) h_i with a_i = p_i - onehot(argmax p_i) (the
last-layer gradient for the hypothesised label) and h_i the penultimate features. Its C*d
dimensions are never materialised: for a rank-one pair,

    ||g_i - g_j||^2 = ||a_i||^2 ||h_i||^2 + ||a_j||^2 ||h_j||^2 - 2 (a_i . a_j)(h_i . h_j),

so one k-means++ step costs O(n (C + d)) instead of O(n C d).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def kmeanspp_from_distances(sq_distance_to: Callable[[int], torch.Tensor], n: int, budget: int, first: int,
                            rng: np.random.Generator) -> list[int]:
    """``budget`` rows by D^2 sampling; ``sq_distance_to(j)`` gives every row's squared distance
    to row ``j``. Rows already picked have distance 0 and are never drawn twice; when every
    remaining distance is 0 (duplicates), the rest are drawn uniformly from the unpicked rows."""
    budget = min(budget, n)
    picks = [first]
    taken = torch.zeros(n, dtype=torch.bool)
    taken[first] = True
    min_d2 = sq_distance_to(first).double().clamp_min(0.0).cpu()
    min_d2[taken] = 0.0
    while len(picks) < budget:
        total = float(min_d2.sum())
        if total > 0.0:
            cumulative = torch.cumsum(min_d2, 0)
            i = int(torch.searchsorted(cumulative, torch.tensor([rng.random() * total], dtype=torch.float64)))
            i = min(i, n - 1)
            if taken[i]:  # a zero-width bucket can only be hit by rounding; step to a live one
                i = int(torch.nonzero((min_d2 > 0) & ~taken)[0, 0])
        else:
            i = int(rng.choice(torch.nonzero(~taken)[:, 0].numpy()))
        picks.append(i)
        taken[i] = True
        min_d2 = torch.minimum(min_d2, sq_distance_to(i).double().clamp_min(0.0).cpu())
        min_d2[taken] = 0.0
    return picks


def kmeanspp(features: torch.Tensor, budget: int, rng: np.random.Generator, first: int | None = None) -> list[int]:
    """k-means++ seeds on dense ``features`` (first seed uniform unless given)."""
    x = features.float()
    x_sq = (x * x).sum(1)
    first = int(rng.integers(len(x))) if first is None else first
    return kmeanspp_from_distances(lambda j: x_sq + x_sq[j] - 2.0 * (x @ x[j]), len(x), budget, first, rng)


def _badge_factors(probs: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = torch.promote_types(torch.promote_types(probs.dtype, features.dtype), torch.float32)
    a = probs.to(dtype).clone()
    a[torch.arange(len(a)), a.argmax(1)] -= 1.0
    return a, features.to(dtype)


def badge_pairwise_sq_distances(probs: torch.Tensor, features: torch.Tensor, rows: torch.Tensor,
                                cols: torch.Tensor) -> torch.Tensor:
    """``||g_i - g_j||^2`` for i in ``rows``, j in ``cols`` from the rank-one factors."""
    a, h = _badge_factors(probs, features)
    g_sq = (a * a).sum(1) * (h * h).sum(1)
    cross = (a[rows] @ a[cols].T) * (h[rows] @ h[cols].T)
    return g_sq[rows][:, None] + g_sq[cols][None, :] - 2.0 * cross


def badge_kmeanspp(probs: torch.Tensor, features: torch.Tensor, budget: int, rng: np.random.Generator
                   ) -> list[int]:
    """BADGE's batch: k-means++ on gradient embeddings, first seed the largest ||g_i|| (as BADGE)."""
    a, h = _badge_factors(probs, features)
    g_sq = (a * a).sum(1) * (h * h).sum(1)
    first = int(torch.argmax(g_sq))
    return kmeanspp_from_distances(lambda j: g_sq + g_sq[j] - 2.0 * (a @ a[j]) * (h @ h[j]), len(a), budget,
                                   first, rng)
