"""CDAL (Agarwal et al., ECCV 2020) for classification, as compared in the ASSL paper: greedy
k-center over the predicted class distributions with the contextual-diversity distance, the
symmetric KL divergence  d(p, q) = (KL(p||q) + KL(q||p)) / 2.

With s_i = p_i . log p_i the distance is d(i, j) = (s_i + s_j - p_i . log p_j - p_j . log p_i) / 2,
so each greedy step is two matrix-vector products, O(n C), never an n x n matrix. The distances
are computed in the probabilities' precision (float32 from pool inference, at least float32): a
million-sample, thousand-class pool needs two matrices of its size (clamped p and log p), one of
them the probabilities themselves when the caller lets them be overwritten.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-12
#: rows clamped and logged at once (65,536 x C values)
CHUNK_ROWS = 65_536
#: rows whose divergences to the starting centres are computed at once (4096 x |L| values)
CENTRE_BLOCK_ROWS = 4096
Distributions = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _log_distributions(probs: torch.Tensor, overwrite: bool = False) -> Distributions:
    """``(p, log p, p . log p)`` with p clamped away from zero (1e-12) and renormalised, built
    :data:`CHUNK_ROWS` rows at a time into two new matrices, or into ``probs`` itself and one new
    matrix with ``overwrite`` (when ``probs`` is at least float32)."""
    dtype = torch.promote_types(probs.dtype, torch.float32)
    p = probs if overwrite and probs.dtype == dtype else torch.empty(probs.shape, dtype=dtype, device=probs.device)
    log_p = torch.empty_like(p)
    entropy = p.new_empty(len(p))
    for start in range(0, len(probs), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        block = probs[rows].to(dtype).clamp_min(EPS)
        p[rows] = block / block.sum(1, keepdim=True)
        log_p[rows] = p[rows].log()
        torch.sum(p[rows] * log_p[rows], 1, out=entropy[rows])
    return p, log_p, entropy


def _rows(d: Distributions, rows: slice) -> Distributions:
    return d[0][rows], d[1][rows], d[2][rows]


def symmetric_kl(a: Distributions, b: Distributions) -> torch.Tensor:
    """``(len(a), len(b))`` symmetric KL divergences."""
    (p, log_p, s_p), (q, log_q, s_q) = a, b
    return 0.5 * (s_p[:, None] + s_q[None, :] - log_p @ q.T - p @ log_q.T)


def contextual_diversity_k_center(probs: torch.Tensor, budget: int, centre_probs: torch.Tensor | None = None,
                                  first: int = 0, overwrite: bool = False) -> list[int]:
    """Rows of ``probs`` picked greedily, each the farthest (symmetric KL) from every centre so far;
    ``centre_probs`` (the labeled predictions) start the cover, else row ``first`` does. With
    ``overwrite``, ``probs`` becomes the clamped, renormalised distributions: one matrix of its
    size less (3.7 GiB at a million samples and a thousand classes)."""
    dists = _log_distributions(probs, overwrite=overwrite)
    n = len(probs)
    budget = min(budget, n)
    picks: list[int] = []
    if centre_probs is not None and len(centre_probs):
        centres = _log_distributions(centre_probs.to(probs.device))
        # the minima go straight into one vector: no per-block results kept between the blocks'
        # temporaries, the pattern that grew glibc's heap by a block a step in row_sq_norms
        min_d = dists[0].new_empty(n)
        for start in range(0, n, CENTRE_BLOCK_ROWS):
            rows = slice(start, start + CENTRE_BLOCK_ROWS)
            torch.amin(symmetric_kl(_rows(dists, rows), centres), 1, out=min_d[rows])
    else:
        picks.append(first)
        min_d = symmetric_kl(dists, _rows(dists, slice(first, first + 1)))[:, 0]
    # divergences are clamped at 0 (float rounding can push near-identical rows below it) and picked
    # rows leave the race, so no row is picked twice however flat the predictions are
    min_d = min_d.clamp_min(0.0)
    min_d[picks] = -math.inf
    while len(picks) < budget:
        i = int(torch.argmax(min_d))
        picks.append(i)
        torch.minimum(min_d, symmetric_kl(dists, _rows(dists, slice(i, i + 1)))[:, 0].clamp_min(0.0), out=min_d)
        min_d[i] = -math.inf
    return picks
