"""ProbCover (Yehuda, Dekel, Hacohen, Weinshall, NeurIPS 2022, section 4 and Alg. 1): on
L2-normalised features, the delta-ball graph has an edge i -> j when ||x_i - x_j|| < delta (self
loops included); the labeled samples' balls cover their points first, then the greedy Max Coverage
step adds the sample whose ball covers the most not-yet-covered points and removes the covered
points, ``budget`` times.

As the reference code (avihu111/TypiClust, ``deep-al/pycls/al/prob_cover.py``): the graph spans
the labeled and the unlabeled samples, strict ``<``, Euclidean distance on normalised features;
ties go to the first row (its ``degrees.argmax()``; the paper's randomised top-5 choice is commented
out there). Stored here as CSR (rows: sources) plus its transpose, so covering a point decrements,
in one vectorised step, the out-degree of every node with an edge to it; memory is O(edges), never
N x N. One departure: once every point is covered (all degrees 0) the reference's ``argmax``
returns row 0 again, a labeled or an already picked sample; here the rest of the budget is drawn
uniformly (seeded) from the unlabeled rows not yet picked, so the picks stay distinct and unlabeled.

The choice of delta (the paper's heuristic): k-means with K = number of classes on the same
features gives pseudo-labels; the purity of delta is the fraction of points whose delta-ball holds
only points of their own pseudo-label, and delta is the largest with purity >= alpha = 0.95. The
reference code has no search: delta is an argument (its usage notes run CIFAR-10 with 0.75). Ours is
exact, neither a grid nor a bisection: a ball is pure exactly when delta <= d_i, the distance from
x_i to the nearest point of another pseudo-label, so purity(delta) = mean(d >= delta) is a step
function and its largest feasible delta is an order statistic of d (the limit a bisection converges
to). ``grid`` restricts the answer to given values instead, for round deltas such as 0.75.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from al_lightning.ops.faiss_ops import (BLOCK_DISTANCES, as_float32, kmeans, knn_search, l2_normalised,
                                       range_search, sq_distance_blocks)


def ball_graph(x: Any, delta: float, chunk: int = 4096) -> sp.csr_matrix:
    """The delta-ball graph as a boolean CSR matrix: row i holds every j with ||x_i - x_j|| < delta."""
    x = as_float32(x)
    n = x.shape[0]
    indptr, indices = range_search(x, delta, chunk=chunk)
    return sp.csr_matrix((np.ones(len(indices), dtype=bool), indices, indptr), shape=(n, n))


def _rows(graph: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """Column indices of the given rows, concatenated (vectorised CSR gather)."""
    starts, ends = graph.indptr[rows].astype(np.int64), graph.indptr[rows + 1].astype(np.int64)
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return graph.indices[offsets + np.arange(total)]


def probcover_greedy(graph: sp.csr_matrix, n_labeled: int, budget: int, rng: np.random.Generator | None = None
                     ) -> np.ndarray:
    """Alg. 1 on a ball graph whose first ``n_labeled`` nodes are labeled: ``budget`` distinct
    unlabeled rows (0-based among the unlabeled), in pick order. Ties: the smallest row; once
    everything is covered, the rest uniformly from the unpicked unlabeled rows (``rng``)."""
    graph = graph.tocsr()
    n = graph.shape[0]
    budget = min(budget, n - n_labeled)
    transpose = graph.T.tocsr()  # row j: every node whose ball holds j
    degree = np.diff(graph.indptr).astype(np.int64)
    covered = np.zeros(n, dtype=bool)

    def cover(points: np.ndarray) -> None:
        fresh = np.unique(points)
        fresh = fresh[~covered[fresh]]
        covered[fresh] = True
        np.subtract.at(degree, _rows(transpose, fresh), 1)

    cover(_rows(graph, np.arange(n_labeled)))
    picks: list[int] = []
    while len(picks) < budget:
        best = n_labeled + int(np.argmax(degree[n_labeled:]))
        if degree[best] <= 0:
            break
        picks.append(best)
        cover(_rows(graph, np.array([best])))
    chosen = np.asarray(picks, dtype=np.int64) - n_labeled
    if len(chosen) < budget:
        rng = np.random.default_rng(0) if rng is None else rng
        rest = np.setdiff1d(np.arange(n - n_labeled), chosen)
        chosen = np.concatenate([chosen, rng.choice(rest, budget - len(chosen), replace=False)])
    return chosen


def nearest_other_label_distance(x: Any, labels: np.ndarray) -> np.ndarray:
    """Euclidean distance from every row to the nearest row of a different label (inf if none):
    one flat index per label, searched by all rows (no copy of the queries), each row keeping the
    minimum over the labels other than its own. O(N) extra memory; the compute of one exact kNN pass.
    Where torch sees a GPU, all pairs in device blocks instead (:func:`nearest_other_label_blocks`):
    one search per label is one pass over the pool per class, on the CPU without faiss-gpu."""
    x = as_float32(x)
    labels = np.asarray(labels)
    if torch.cuda.is_available():
        return nearest_other_label_blocks(x, labels, torch.device("cuda"))
    best = np.full(x.shape[0], np.inf)
    for label in np.unique(labels):
        members = labels == label
        if members.all():
            continue
        sq, _ = knn_search(x[members], x, 1)
        d = np.sqrt(np.maximum(sq[:, 0].astype(np.float64), 0.0))
        best = np.where(members, best, np.minimum(best, d))
    return best


def nearest_other_label_blocks(x: np.ndarray, labels: np.ndarray, device: torch.device,
                               block_distances: int = BLOCK_DISTANCES) -> np.ndarray:
    """:func:`nearest_other_label_distance` from :func:`sq_distance_blocks` on ``device``: each
    block's pairs of one label masked out, the row minimum of the rest."""
    on_device = torch.as_tensor(labels, device=device)
    best = np.empty(len(x))
    for start, d2 in sq_distance_blocks(x, x, device, block_distances):
        d2.masked_fill_(on_device[start:start + len(d2), None] == on_device[None, :], float("inf"))
        best[start:start + len(d2)] = d2.amin(1).clamp_min_(0.0).double().sqrt_().cpu().numpy()
    return best


def ball_purity(d_other: np.ndarray, delta: float) -> float:
    """Fraction of points whose open delta-ball is pure, from :func:`nearest_other_label_distance`."""
    return float(np.mean(np.asarray(d_other) >= delta))


def purity_delta(x: Any, pseudo_labels: np.ndarray, alpha: float = 0.95, grid: Sequence[float] | None = None
                 ) -> float:
    """The largest delta with purity >= ``alpha`` (exact; or the largest such value of ``grid``,
    the smallest grid value if none qualifies). Inf when every point shares one pseudo-label."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"purity alpha must be in (0, 1], got {alpha}")
    d = np.sort(nearest_other_label_distance(x, pseudo_labels))
    need = math.ceil(alpha * len(d) - 1e-9)  # pure balls needed
    if grid is None:
        return float(d[len(d) - need])
    values = np.sort(np.asarray(grid, dtype=np.float64))
    pure = len(d) - np.searchsorted(d, values, side="left")  # count of d >= value
    feasible = values[pure >= need]
    return float(feasible[-1]) if len(feasible) else float(values[0])


def probcover_delta(features: Any, num_classes: int, alpha: float = 0.95, seed: int = 0,
                    grid: Sequence[float] | None = None) -> float:
    """The paper's delta: k-means (K = ``num_classes``) pseudo-labels of the L2-normalised
    ``features``, then :func:`purity_delta`."""
    return _purity_delta_of_normalised(l2_normalised(features), num_classes, alpha, seed, grid)


def _purity_delta_of_normalised(x: np.ndarray, num_classes: int, alpha: float, seed: int,
                                grid: Sequence[float] | None) -> float:
    if num_classes < 2:
        raise ValueError(f"choosing delta by purity needs at least 2 classes, got {num_classes}")
    _, pseudo = kmeans(x, min(num_classes, x.shape[0]), seed=seed)
    return purity_delta(x, pseudo, alpha, grid)


def probcover_select(features: Any, budget: int, n_labeled: int = 0, delta: float | None = None,
                     num_classes: int | None = None, alpha: float = 0.95, seed: int = 0,
                     grid: Sequence[float] | None = None, overwrite: bool = False) -> tuple[np.ndarray, float]:
    """``(rows, delta)``: ``budget`` distinct unlabeled rows (0-based among the unlabeled) by Alg. 1
    on the ball graph of the L2-normalised ``features``, whose first ``n_labeled`` rows are the
    labeled samples', and the delta used (given, or by purity with ``num_classes`` k-means
    clusters). ``overwrite``: normalise ``features`` in place (float32) instead of a copy."""
    x = l2_normalised(features, overwrite=overwrite)
    rng = np.random.default_rng(seed)
    if delta is None:
        if num_classes is None:
            raise ValueError("ProbCover needs delta or num_classes (to choose delta by purity)")
        delta = _purity_delta_of_normalised(x, num_classes, alpha, int(rng.integers(2**31)), grid)
    delta = min(float(delta), 2.0 + 1e-6)  # unit vectors: a ball of radius > 2 already holds everything
    return probcover_greedy(ball_graph(x, delta), n_labeled, budget, rng), delta
