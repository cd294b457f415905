"""Unsupervised Selective Labeling (USL; Wang, Lian, Yu, ECCV 2022, section 2.2 and Alg. 1).

On L2-normalised features: utility U = kNN density 1 / mean distance to the k nearest neighbours
(Eq. 3, k = 400); k-means into m clusters; the densest sample of each cluster; then ``iterations``
rounds of the inter-cluster regulariser

    Reg(V_i, t)    = sum over the other clusters' picks j of 1 / D(V_i, V_j^(t-1))^alpha      (Eq. 5)
    Reg_bar(V_i,t) = m_reg Reg_bar(V_i, t-1) + (1 - m_reg) Reg(V_i, t)                       (Eq. 6)
    U'(V_i, t)     = U(V_i) - lambda Reg_bar(V_i, t), argmax within each cluster              (Eq. 7)

with (lambda, alpha) = (0.5, 0.5) for at most 100 picks, (1.0, 1.0) above (Table 14). With a
``horizon`` only the picks of the ``horizon`` nearest clusters count (the paper's large-scale mode).

Distance convention D (``distance``). The paper writes the Euclidean distance (Eq. 1, 3, 5); the
released code (TonyLianLong/UnsupervisedSelectiveLabeling, ``usl-cifar.py`` and
``get_selection_with_reg``) uses the *squared* Euclidean distance in both places: U = 1 / mean of
squared kNN distances, Reg = sum of 1 / (squared distance)^alpha. Our default is ``squared``,
the code's: it produced the paper's results and Table 14's alpha and lambda were tuned with it
(alpha = 0.5 on squared distances is exactly the 1 / d the appendix, section 6.6, argues for).
``euclidean`` gives the paper's equations literally. Two smaller differences from the code that
we keep as the paper states them: the code's K = 400 neighbours include the sample itself (399
others, sum divided by 400: the same ranking as k = 399 here); and its loop returns after
``iterations - 1`` regularised re-selections where Alg. 1 performs ``iterations``.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from al_lightning.ops.faiss_ops import FlatIndex, l2_normalised, kmeans, knn_search


Distance = Literal["squared", "euclidean"]


def distance_power(distance: Distance) -> float:
    """Exponent that turns a Euclidean distance into the convention's distance."""
    if distance not in ("squared", "euclidean"):
        raise ValueError(f"distance must be 'squared' or 'euclidean', got {distance!r}")
    return 2.0 if distance == "squared" else 1.0


def knn_density(x: np.ndarray, k: int = 400, distance: Distance = "squared", chunk: int = 16_384) -> np.ndarray:
    """1 / mean distance to the ``k`` nearest other samples (Eq. 3 up to a constant; squared
    distances by default, as the released code). Queries go ``chunk`` at a time against one index,
    so the neighbour lists (n x k) are never held at once."""
    power = distance_power(distance)
    index = FlatIndex(x)
    density = np.empty(x.shape[0])
    for start in range(0, x.shape[0], chunk):
        sq, _ = index.search(x[start:start + chunk], min(k + 1, x.shape[0]))
        mean_distance = (np.maximum(sq[:, 1:], 0.0) ** (power / 2)).mean(1)
        density[start:start + chunk] = 1.0 / np.maximum(mean_distance, 1e-12)
    return density


def argmax_per_cluster(values: np.ndarray, assign: np.ndarray, m: int) -> np.ndarray:
    """Row of the largest value in each of the ``m`` clusters (ties: smaller row), -1 if empty."""
    order = np.lexsort((np.arange(len(values)), -values, assign))
    first = np.ones(len(order), dtype=bool)
    first[1:] = assign[order[1:]] != assign[order[:-1]]
    best = np.full(m, -1, dtype=np.int64)
    best[assign[order[first]]] = order[first]
    return best


def usl_regulariser(x: torch.Tensor, assign: torch.Tensor, picks: torch.Tensor, alpha: float,
                    neighbours: torch.Tensor | None, distance: Distance = "squared", chunk: int = 2048
                    ) -> torch.Tensor:
    """Eq. 5 for every sample: sum of 1 / D^alpha to the picks of the other clusters (of the
    ``neighbours`` clusters of its own, when a horizon is set); D squared or Euclidean."""
    exponent = -alpha * distance_power(distance)
    out = torch.empty(len(x), dtype=torch.float64, device=x.device)
    chosen = x[picks.clamp_min(0)]
    valid = picks >= 0
    for start in range(0, len(x), chunk):
        xs, own = x[start:start + chunk], assign[start:start + chunk]
        if neighbours is None:
            d = torch.cdist(xs, chosen).double()
            mask = valid[None, :].expand(len(xs), -1).clone()
            mask[torch.arange(len(xs), device=x.device), own] = False
        else:
            others = neighbours[own]  # (b, H) cluster ids, own cluster excluded
            d = (xs[:, None, :] - chosen[others]).norm(dim=-1).double()
            mask = valid[others]
        inv = d.clamp_min(1e-12).pow(exponent)
        out[start:start + chunk] = (inv * mask).sum(1)
    return out


def usl_regularised_picks(x: np.ndarray, utility: np.ndarray, assign: np.ndarray, m: int, lam: float,
                          alpha: float, m_reg: float = 0.9, iterations: int = 10,
                          neighbours: np.ndarray | None = None, distance: Distance = "squared",
                          device: str | torch.device = "cpu") -> np.ndarray:
    """Alg. 1: per-cluster argmax of U, then ``iterations`` regularised re-selections (-1: empty);
    the regulariser (n x m distances per iteration, in blocks) runs on ``device``."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    at = torch.from_numpy(assign).to(device)
    nbrs = None if neighbours is None else torch.from_numpy(neighbours).to(device)
    picks = argmax_per_cluster(utility, assign, m)
    reg_bar = np.zeros(len(x))
    for _ in range(iterations):
        reg = usl_regulariser(xt, at, torch.from_numpy(picks).to(device), alpha, nbrs, distance).cpu().numpy()
        reg_bar = m_reg * reg_bar + (1.0 - m_reg) * reg
        picks = argmax_per_cluster(utility - lam * reg_bar, assign, m)
    return picks


def usl_select(features: Any, m: int, k: int = 400, lam: float | None = None, alpha: float | None = None,
               m_reg: float = 0.9, iterations: int = 10, horizon: int | None = None, seed: int = 0,
               kmeans_restarts: int = 1, distance: Distance = "squared", device: str | torch.device = "cpu",
               overwrite: bool = False) -> np.ndarray:
    """``m`` rows, one per k-means cluster, each the argmax of the regularised utility, on the
    L2-normalised ``features`` (``overwrite``: normalised in place instead of a copy)."""
    x = l2_normalised(features, overwrite=overwrite)
    n = x.shape[0]
    m = min(m, n)
    lam = (0.5 if m <= 100 else 1.0) if lam is None else lam
    alpha = (0.5 if m <= 100 else 1.0) if alpha is None else alpha
    utility = knn_density(x, k, distance)
    centroids, assign = kmeans(x, m, seed=seed, restarts=kmeans_restarts)
    neighbours = None
    if horizon is not None and horizon < m - 1:
        neighbours = knn_search(centroids, centroids, horizon + 1)[1][:, 1:]
    picks = usl_regularised_picks(x, utility, assign, m, lam, alpha, m_reg, iterations, neighbours, distance,
                                  device)
    picks = picks[picks >= 0]
    if len(picks) < m:  # empty clusters: top up with the densest samples not yet picked
        rest = np.argsort(-utility, kind="stable")
        rest = rest[~np.isin(rest, picks)]
        picks = np.concatenate([picks, rest[: m - len(picks)]])
    return picks
