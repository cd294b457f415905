"""AS3L's single-shot selection and prior pseudo-labels (Wen, Pizarro, Williams; sections 4.3-4.4).

Selection: C runs of k-means with K = budget; clusters of each run are matched to the first run's
(Hungarian matching on overlaps); samples assigned to the same matched cluster in every run are
"stable"; each cluster's centre is the mean of its stable samples; the labeled set is the distinct
sample nearest to each centre.

Prior pseudo-labels (PPL): constrained seed k-means (Basu et al. 2002) for each K in a list
(default [C, 2C, ..., 6C] for C classes: the paper's 10..60 on CIFAR-10): one cluster per labeled
class starts at its labeled mean and keeps its labeled samples; the other K - C clusters start by
k-means++. A sample's vote in a run is the label of its cluster, none for a cluster without labels.
PPL = (votes + uniform share of the runs without a vote) / runs: a distribution whose confidence
drops for samples far from every label.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from al_lightning.ops.faiss_ops import as_float32, kmeans, knn_search, nearest_to_centres
from al_lightning.ops.kmeanspp import kmeanspp


def match_clusters(reference: np.ndarray, other: np.ndarray, k: int) -> np.ndarray:
    """``other`` relabelled so that its clusters overlap ``reference``'s as much as possible."""
    overlap = np.bincount(reference * k + other, minlength=k * k).reshape(k, k)
    ref_ids, other_ids = linear_sum_assignment(-overlap)
    mapping = np.empty(k, dtype=np.int64)
    mapping[other_ids] = ref_ids
    return mapping[other]


def stable_cluster_select(features: Any, budget: int, runs: int = 6, seed: int = 0) -> np.ndarray:
    """``budget`` distinct rows nearest to the centres of the stable clusters."""
    x = as_float32(features)
    budget = min(budget, x.shape[0])
    first_centroids, reference = kmeans(x, budget, seed=seed)
    stable = np.ones(x.shape[0], dtype=bool)
    for r in range(1, runs):
        _, assign = kmeans(x, budget, seed=seed + r)
        stable &= match_clusters(reference, assign, budget) == reference
    sums = np.zeros_like(first_centroids, dtype=np.float64)
    np.add.at(sums, reference[stable], x[stable])
    counts = np.bincount(reference[stable], minlength=budget)
    centres = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], first_centroids)
    return nearest_to_centres(x, centres.astype(np.float32))


def constrained_seed_kmeans(features: Any, labeled: np.ndarray, labels: np.ndarray, num_clusters: int,
                            iterations: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(assignments (n,), cluster_label (K,))``; ``cluster_label`` is -1 for unlabeled clusters.
    Labeled samples stay in their class's cluster throughout (the seeds' constraint)."""
    x = as_float32(features)
    labeled, labels = np.asarray(labeled, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    if num_clusters < len(classes):
        raise ValueError(f"constrained seed k-means needs K >= the {len(classes)} labeled classes, got {num_clusters}")
    cluster_label = np.full(num_clusters, -1, dtype=np.int64)
    cluster_label[: len(classes)] = classes
    seed_cluster = np.searchsorted(classes, labels)
    centres = np.stack([x[labeled[labels == c]].mean(0) for c in classes])
    if num_clusters > len(classes):
        free = np.setdiff1d(np.arange(x.shape[0]), labeled)
        extra = kmeanspp(torch.from_numpy(x[free]), num_clusters - len(classes), np.random.default_rng(seed))
        centres = np.concatenate([centres, x[free[extra]]])
    centres = centres.astype(np.float32)
    assign = np.zeros(x.shape[0], dtype=np.int64)
    for _ in range(iterations):
        assign = knn_search(centres, x, 1)[1][:, 0]
        assign[labeled] = seed_cluster
        sums = np.zeros((num_clusters, x.shape[1]))
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=num_clusters)
        updated = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres).astype(np.float32)
        if np.allclose(updated, centres):
            break
        centres = updated
    return assign, cluster_label


def prior_pseudo_labels(features: Any, labeled: np.ndarray, labels: np.ndarray, num_classes: int,
                        cluster_counts: Sequence[int] | None = None, seed: int = 0) -> np.ndarray:
    """PPL ``(n, num_classes)``, each row a distribution (see the module docstring)."""
    cluster_counts = [num_classes * (r + 1) for r in range(6)] if cluster_counts is None else cluster_counts
    n = as_float32(features).shape[0]
    votes = np.zeros((n, num_classes))
    for r, k in enumerate(cluster_counts):
        assign, cluster_label = constrained_seed_kmeans(features, labeled, labels, k, seed=seed + r)
        vote = cluster_label[assign]
        has = vote >= 0
        votes[np.nonzero(has)[0], vote[has]] += 1.0
    runs = len(cluster_counts)
    return (votes + (runs - votes.sum(1, keepdims=True)) / num_classes) / runs
