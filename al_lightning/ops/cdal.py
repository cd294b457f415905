"""CDAL (Agarwal et al., ECCV 2020) for classification, as compared in the ASSL paper: greedy
k-center over the predicted class distributions with the contextual-diversity distance, the
symmetric KL divergence  d(p, q) = (KL(p||q) + KL(q||p)) / 2.

With s_i = p_i . log p_i the distance is d(i, j) = (s_i + s_j - p_i . log p_j - p_j . log p_i) / 2,
so each greedy step is two matrix-vector products, O(n C), never an n x n matrix.
"""

from __future__ import annotations

import torch

EPS = 1e-12


def symmetric_kl_to(probs: torch.Tensor, log_probs: torch.Tensor, self_term: torch.Tensor,
                    q: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """d(p_i, q) for every row i."""
    return 0.5 * (self_term + (q * log_q).sum() - log_probs @ q - probs @ log_q)


def contextual_diversity_k_center(probs: torch.Tensor, budget: int, centre_probs: torch.Tensor | None = None,
                                  first: int = 0) -> list[int]:
    """Rows of ``probs`` picked greedily, each the farthest (symmetric KL) from every centre so far;
    ``centre_probs`` (the labeled predictions) start the cover, else row ``first`` does."""
    p = probs.double().clamp_min(EPS)
    p = p / p.sum(1, keepdim=True)
    log_p = p.log()
    self_term = (p * log_p).sum(1)
    n = len(p)
    budget = min(budget, n)
    min_d = torch.full((n,), float("inf"), dtype=torch.float64, device=p.device)
    picks: list[int] = []
    if centre_probs is not None and len(centre_probs):
        c = centre_probs.double().clamp_min(EPS)
        c = c / c.sum(1, keepdim=True)
        log_c = c.log()
        c_self = (c * log_c).sum(1)
        for start in range(0, n, 4096):
            rows = slice(start, start + 4096)
            d = 0.5 * (self_term[rows, None] + c_self[None, :] - log_p[rows] @ c.T - p[rows] @ log_c.T)
            min_d[rows] = d.min(1).values
    else:
        picks.append(first)
        min_d = symmetric_kl_to(p, log_p, self_term, p[first], log_p[first])
    min_d[picks] = 0.0
    while len(picks) < budget:
        i = int(torch.argmax(min_d))
        picks.append(i)
        min_d = torch.minimum(min_d, symmetric_kl_to(p, log_p, self_term, p[i], log_p[i]))
        min_d[i] = 0.0
    return picks
