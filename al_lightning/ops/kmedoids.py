"""K-medoids (alternating Voronoi iteration, Park & Jun 2009), the single-shot baseline of AS3L
(Table 7) and of USL: k-means initialises the clusters, then medoids and assignments alternate."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from al_lightning.ops.faiss_ops import as_float32, kmeans, knn_search


def cluster_medoid(points: torch.Tensor, chunk: int = 2048) -> int:
    """Row minimising the summed Euclidean distance to the others (ties: smaller row)."""
    cost = torch.empty(len(points), dtype=torch.float64)
    for start in range(0, len(points), chunk):
        cost[start:start + chunk] = torch.cdist(points[start:start + chunk].double(), points.double()).sum(1)
    return int(torch.argmin(cost))


def k_medoids(features: Any, k: int, iterations: int = 10, seed: int = 0) -> np.ndarray:
    """``k`` distinct medoid rows."""
    x = as_float32(features)
    k = min(k, x.shape[0])
    _, assign = kmeans(x, k, seed=seed)
    xt = torch.from_numpy(x)
    medoids = np.full(k, -1, dtype=np.int64)
    for _ in range(iterations):
        updated = medoids.copy()
        order = np.argsort(assign, kind="stable")  # members of each cluster, grouped in one pass
        bounds = np.searchsorted(assign[order], np.arange(k + 1))
        for c in range(k):
            members = order[bounds[c]:bounds[c + 1]]
            if len(members):
                updated[c] = members[cluster_medoid(xt[members])]
        if np.array_equal(updated, medoids):
            break
        medoids = updated
        clusters = np.nonzero(medoids >= 0)[0]
        assign = clusters[knn_search(x[medoids[clusters]], x, 1)[1][:, 0]]
    medoids = medoids[medoids >= 0]
    if len(medoids) < k:  # empty k-means clusters: farthest-from-medoid rows fill the rest
        d2 = knn_search(x[medoids], x, 1)[0][:, 0]
        d2[medoids] = -1.0
        medoids = np.concatenate([medoids, np.argsort(-d2, kind="stable")[: k - len(medoids)]])
    return medoids
