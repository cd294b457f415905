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

from al_lightning.ops.kcenter import row_sq_norms


def kmeanspp_from_distances(sq_distance_to: Callable[[int], torch.Tensor], n: int, budget: int, first: int,
                            rng: np.random.Generator) -> list[int]:
    """``budget`` rows by D^2 sampling; ``sq_distance_to(j)`` gives every row's squared distance
    to row ``j`` (on any device: the running minimum stays there, float64). Rows already picked
    have distance 0 and are never drawn twice; when every remaining distance is 0 (duplicates),
    the rest are drawn uniformly from the unpicked rows."""
    budget = min(budget, n)
    picks = [first]
    min_d2 = sq_distance_to(first).double().clamp_min(0.0)
    taken = torch.zeros(n, dtype=torch.bool, device=min_d2.device)
    taken[first] = True
    min_d2[taken] = 0.0
    while len(picks) < budget:
        total = float(min_d2.sum())
        if total > 0.0:
            cumulative = torch.cumsum(min_d2, 0)
            draw = torch.tensor([rng.random() * total], dtype=torch.float64, device=min_d2.device)
            i = min(int(torch.searchsorted(cumulative, draw)), n - 1)
            if taken[i]:  # a zero-width bucket can only be hit by rounding; step to a live one
                i = int(torch.nonzero((min_d2 > 0) & ~taken)[0, 0])
        else:
            i = int(rng.choice(torch.nonzero(~taken)[:, 0].cpu().numpy()))
        picks.append(i)
        taken[i] = True
        torch.minimum(min_d2, sq_distance_to(i).double().clamp_min(0.0), out=min_d2)
        min_d2[taken] = 0.0
    return picks


def kmeanspp(features: torch.Tensor, budget: int, rng: np.random.Generator, first: int | None = None) -> list[int]:
    """k-means++ seeds on dense ``features`` (first seed uniform unless given), on their device."""
    x = features.float()
    x_sq = row_sq_norms(x)
    first = int(rng.integers(len(x))) if first is None else first
    return kmeanspp_from_distances(lambda j: x_sq + x_sq[j] - 2.0 * (x @ x[j]), len(x), budget, first, rng)


class BadgeFactors:
    """BADGE's gradient embeddings g_i = a_i (outer) h_i as their factors, without a copy of the
    probabilities: with y_i = argmax p_i, a_i = p_i - e_(y_i),

        a_i . a_j = p_i . p_j - p_i[y_j] - p_j[y_i] + [y_i = y_j],   ||a_i||^2 = ||p_i||^2 - 2 p_i[y_i] + 1,

    so a million-sample, thousand-class pool needs its probabilities and features and O(n) more."""

    def __init__(self, probs: torch.Tensor, features: torch.Tensor) -> None:
        dtype = torch.promote_types(torch.promote_types(probs.dtype, features.dtype), torch.float32)
        self.p, self.h = probs.to(dtype), features.to(dtype).to(probs.device)
        self.y = self.p.argmax(1)
        self.g_sq = (row_sq_norms(self.p) - 2.0 * self.p.gather(1, self.y[:, None])[:, 0] + 1.0) * row_sq_norms(self.h)

    def a_dot(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``(len(rows), len(cols))`` products a_i . a_j."""
        p_r, p_c, y_r, y_c = self.p[rows], self.p[cols], self.y[rows], self.y[cols]
        return (p_r @ p_c.T - p_r.gather(1, y_c[None, :].expand(len(rows), -1))
                - p_c.gather(1, y_r[None, :].expand(len(cols), -1)).T + (y_r[:, None] == y_c[None, :]).to(p_r.dtype))

    def sq_distances_to(self, j: int) -> torch.Tensor:
        """``||g_i - g_j||^2`` for every row i: two matrix-vector products."""
        p_j, y_j = self.p[j], self.y[j]
        a_dot = self.p @ p_j - self.p[:, y_j] - p_j[self.y] + (self.y == y_j).to(self.p.dtype)
        return self.g_sq + self.g_sq[j] - 2.0 * a_dot * (self.h @ self.h[j])


def badge_pairwise_sq_distances(probs: torch.Tensor, features: torch.Tensor, rows: torch.Tensor,
                                cols: torch.Tensor) -> torch.Tensor:
    """``||g_i - g_j||^2`` for i in ``rows``, j in ``cols`` from the rank-one factors."""
    g = BadgeFactors(probs, features)
    cross = g.a_dot(rows, cols) * (g.h[rows] @ g.h[cols].T)
    return g.g_sq[rows][:, None] + g.g_sq[cols][None, :] - 2.0 * cross


def badge_kmeanspp(probs: torch.Tensor, features: torch.Tensor, budget: int, rng: np.random.Generator
                   ) -> list[int]:
    """BADGE's batch: k-means++ on gradient embeddings, first seed the largest ||g_i|| (as BADGE),
    on the probabilities' device."""
    g = BadgeFactors(probs, features)
    return kmeanspp_from_distances(g.sq_distances_to, len(g.p), budget, int(torch.argmax(g.g_sq)), rng)
