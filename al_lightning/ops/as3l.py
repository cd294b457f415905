"""AS3L's label-free selection pipeline and prior pseudo-labels (Wen, Pizarro, Williams; sections
4.3-4.4, 5.1.2, 5.3). No official AS3L code is public (searched for the paper title, "AS3L" and the
first author's repositories); where the paper is silent, the first author's ``constrain_kmeans``
(ZiTingW/asvp, ``samplings/sampling_strategy.py``) and our stated choices fill in.

1. Feature fine-tuning (Eq. 6): C k-means runs on the pre-computed self-supervised features f_self
   (K = the number of labels to select) give every sample one centre per run, fixed during
   training (section 5.3: this first set of k-means is on f_self; the next two are on f_fine). A
   linear layer of the features' width is trained to minimise
   ``1/(CN) sum_i sum_j ||f_fine,i - f_center,i,j||^2``; its output is f_fine.
2. Selection on f_fine: C further k-means runs; the stable clusters hold the samples co-assigned in
   all runs; the labeled set is the distinct sample nearest to each stable cluster's mean.
3. Prior pseudo-labels (PPL) on f_fine: constrained seed k-means for K in [C', 2C', ..., 6C'] (C'
   classes; CIFAR-10's 10..60), each cluster votes the label histogram of the labeled samples in it,
   and the votes are averaged over the runs.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import scipy.sparse as sp
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from al_lightning.ops.faiss_ops import as_float32, kmeans, knn_search, nearest_to_centres


def kmeans_runs(features: Any, k: int, runs: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``runs`` independent k-means runs (seeds ``seed, seed + 1, ...``): centres ``(runs, k, d)`` and
    assignments ``(n, runs)``."""
    x = as_float32(features)
    fits = [kmeans(x, k, seed=seed + r) for r in range(runs)]
    return np.stack([c for c, _ in fits]), np.stack([a for _, a in fits], axis=1)


def finetune_features(features: Any, num_clusters: int, runs: int = 6, epochs: int = 40, lr: float = 1e-3,
                      batch_size: int = 256, seed: int = 0, device: str | torch.device | None = None
                      ) -> tuple[torch.Tensor, np.ndarray]:
    """f_fine of every row (Eq. 6) and the loss history ``(epochs + 1,)``: Eq. 6 over all rows for
    the initial map, then after each epoch.

    The targets are the centres of ``runs`` k-means runs on the frozen ``features`` (f_self) with
    K = ``num_clusters``, fixed while training; a sample's centres from different runs all pull on
    it, so samples that change cluster between runs are drawn to no single centre (section 4.4).
    Since ``mean_j ||f - c_j||^2 = ||f - mean_j c_j||^2 + mean_j ||c_j - mean_j c_j||^2``, the loss
    is computed from each sample's mean centre and a constant spread: Eq. 6 exactly, in O(N d)
    memory instead of O(N C d).

    The paper fixes the layer (linear, the features' width) and the 40 epochs (section 5.1.2) but
    not the optimiser, initialisation or batch size, and no code is public. Ours: identity
    initialisation (W = I, b = 0: training starts from f_self, "retaining the approximate
    self-supervised feature structure"), Adam (lr 1e-3, no weight decay), mini-batches of 256 in a
    seeded shuffle. Adam is insensitive to the features' scale, whereas gradient descent on this
    least-squares loss diverges once its lr exceeds 1 / lambda_max(E[x x^T]) of unnormalised features.

    ``device``: where to train (default: the features' device, CPU for arrays).
    """
    if device is None:
        device = features.device if isinstance(features, torch.Tensor) else torch.device("cpu")
    x_np = as_float32(features)
    centres, assignments = kmeans_runs(x_np, num_clusters, runs, seed)
    x = torch.from_numpy(x_np).to(device)
    centres_t = torch.from_numpy(centres).to(device)
    assignments_t = torch.from_numpy(assignments).to(device)
    mean_centre = torch.zeros_like(x)
    for r in range(runs):  # one (N, d) gather at a time: the runs' centres are never all held
        mean_centre += centres_t[r][assignments_t[:, r]]
    mean_centre /= runs
    spread = torch.zeros(x.shape[0], device=device)
    for r in range(runs):
        spread += (centres_t[r][assignments_t[:, r]] - mean_centre).pow(2).sum(1)
    spread /= runs

    layer = torch.nn.Linear(x.shape[1], x.shape[1]).to(device)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(x.shape[1], device=device))
        layer.bias.zero_()
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)

    def eq6(rows: torch.Tensor | slice) -> torch.Tensor:
        return ((layer(x[rows]) - mean_centre[rows]).pow(2).sum(1) + spread[rows]).mean()

    history = []
    with torch.no_grad():
        history.append(float(eq6(slice(None))))
    shuffle = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(x.shape[0], generator=shuffle).to(device).split(batch_size):
            loss = eq6(rows)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            history.append(float(eq6(slice(None))))
    with torch.no_grad():
        return layer(x), np.asarray(history)


def match_clusters(reference: np.ndarray, other: np.ndarray, k: int) -> np.ndarray:
    """``other`` relabelled so that its clusters overlap ``reference``'s as much as possible: the
    maximum-overlap bijection between the two sets of ``k`` clusters (the assignment problem).

    Solved on the sparse overlap matrix (at most n nonzero pairs; K = 10,000 clusters would need a
    10^8-entry dense matrix): a min-weight perfect matching on 2K x 2K nodes where every edge costs
    ``M + 1`` (M the largest overlap) less its overlap. Cluster i of ``reference`` pairs with a
    cluster j of ``other`` (an overlapping pair), or with its own dummy (unmatched); a dummy of j
    pairs with j (unmatched) or, for an overlapping pair (i, j), with the dummy of i. Every perfect
    matching costs ``2K (M + 1)`` minus the overlap of its real pairs, so the cheapest maximises the
    overlap, exactly as the dense assignment would. Clusters left unmatched overlap nobody they
    could take, so how they are paired changes no sample's label; they are paired in index order.
    """
    reference, other = np.asarray(reference, dtype=np.int64), np.asarray(other, dtype=np.int64)
    pairs, overlap = np.unique(reference * k + other, return_counts=True)
    rows, cols = pairs // k, pairs % k
    cost = float(overlap.max(initial=0)) + 1.0
    identity = np.arange(k)
    edge_rows = np.concatenate([rows, identity, k + identity, k + cols])
    edge_cols = np.concatenate([cols, k + identity, identity, k + rows])
    weights = np.concatenate([cost - overlap, np.full(2 * k, cost), np.full(len(pairs), cost)])
    graph = sp.csr_matrix((weights, (edge_rows, edge_cols)), shape=(2 * k, 2 * k))
    _, partner = min_weight_full_bipartite_matching(graph)
    ref_of = np.full(k, -1, dtype=np.int64)  # other's cluster -> reference's
    matched = partner[:k] < k
    ref_of[partner[:k][matched]] = identity[matched]
    free_ref = np.setdiff1d(identity, ref_of[ref_of >= 0])
    ref_of[ref_of < 0] = free_ref
    return ref_of[other]


def stable_clusters(assignments: np.ndarray, k: int) -> np.ndarray:
    """The stable cluster of each sample ``(n,)``, as the id of its first-run cluster; -1 where the
    sample is not stable.

    Section 4.4 keeps "samples consistently assigned to the same class across all C clustering
    rounds" and takes K centres. Cluster ids are arbitrary per run, so every run's clusters are
    matched to the first run's (Hungarian matching on overlaps, our choice; the paper names no
    matching): a sample is stable when its matched cluster equals its first-run cluster in every
    run. As the matchings are bijections, two stable samples share a stable cluster exactly when
    they are co-assigned in every run, and a sample co-assigned in every run with a stable one is
    stable: each stable cluster is one class of the "same cluster in all C runs" relation, the one
    that the matching pairs with its first-run cluster.
    """
    reference = assignments[:, 0]
    stable = np.ones(len(reference), dtype=bool)
    for r in range(1, assignments.shape[1]):
        stable &= match_clusters(reference, assignments[:, r], k) == reference
    return np.where(stable, reference, -1)


def stable_cluster_select(features: Any, budget: int, runs: int = 6, seed: int = 0) -> np.ndarray:
    """``budget`` distinct rows: the nearest to the mean of each stable cluster of ``runs`` k-means
    runs with K = ``budget`` (section 4.4, K = the number of labels per section 5.1.2). A cluster with
    no stable sample falls back to its first-run centroid (the paper does not say)."""
    x = as_float32(features)
    budget = min(budget, x.shape[0])
    centres, assignments = kmeans_runs(x, budget, runs, seed)
    stable = stable_clusters(assignments, budget)
    keep = stable >= 0
    sums = cluster_sums(x[keep], stable[keep], budget)
    counts = np.bincount(stable[keep], minlength=budget)
    means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres[0])
    return nearest_to_centres(x, means.astype(np.float32))


def cluster_sums(x: np.ndarray | torch.Tensor, assignments: np.ndarray, num_clusters: int) -> np.ndarray:
    """Per-cluster sums of the rows of ``x`` in float64 (one scatter-add; ``np.add.at`` took
    seconds per k-means iteration on a 60,000 x 784 pool). Pass a float64 tensor to reuse it."""
    rows = x if isinstance(x, torch.Tensor) else torch.from_numpy(x).double()
    sums = torch.zeros(num_clusters, rows.shape[1], dtype=torch.float64)
    sums.index_add_(0, torch.from_numpy(np.asarray(assignments, dtype=np.int64)), rows)
    return sums.numpy()


def constrained_seed_kmeans(features: Any, labeled: np.ndarray, labels: np.ndarray, num_clusters: int,
                            max_iterations: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(assignments (n,), cluster_label (K,))``: every sample's nearest final centre, and the class
    that seeded each cluster (-1 for the others).

    Constrained seed k-means (Basu et al. 2002) as section 4.3 uses it, "using label information
    when updating cluster centers", following the first author's ``constrain_kmeans``: one cluster
    per labeled class starts at its labeled mean, the other K - C' start at distinct random
    unlabeled samples; each iteration assigns every sample (labeled ones included) to its nearest
    centre, then updates the centres with the labeled samples counted in their class's cluster
    wherever they were assigned; it stops when no assignment changes. So a labeled sample may end up
    in another cluster than its class's (which the paper's "clusters devoid of any labeled samples
    ... when K surpasses the number of labeled samples" presumes). An emptied cluster keeps its centre.
    """
    x = as_float32(features)
    labeled, labels = np.asarray(labeled, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    classes = np.unique(labels)
    if num_clusters < len(classes):
        raise ValueError(f"constrained seed k-means needs K >= the {len(classes)} labeled classes, got {num_clusters}")
    cluster_label = np.full(num_clusters, -1, dtype=np.int64)
    cluster_label[: len(classes)] = classes
    seed_cluster = np.searchsorted(classes, labels)
    centres = np.stack([x[labeled[labels == c]].mean(0) for c in classes])
    free = np.setdiff1d(np.arange(x.shape[0]), labeled)
    extra = np.random.default_rng(seed).choice(free, num_clusters - len(classes), replace=False)
    centres = np.concatenate([centres, x[np.sort(extra)]]).astype(np.float32)
    previous = None
    rows = torch.from_numpy(x).double()
    for _ in range(max_iterations):
        assignments = knn_search(centres, x, 1)[1][:, 0]
        if previous is not None and np.array_equal(assignments, previous):
            break
        members = assignments.copy()
        members[labeled] = seed_cluster
        sums = cluster_sums(rows, members, num_clusters)
        counts = np.bincount(members, minlength=num_clusters)
        centres = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres).astype(np.float32)
        previous = assignments
    return assignments, cluster_label


def prior_pseudo_labels(features: Any, labeled: np.ndarray, labels: np.ndarray, num_classes: int,
                        cluster_counts: Sequence[int] | None = None, seed: int = 0) -> np.ndarray:
    """PPL ``(n, num_classes)``, each row a distribution (section 4.3).

    Run r (K = ``cluster_counts[r]``, default C' x [1..6] as section 5.1.2, seed ``seed + r``) is a
    constrained seed k-means; a cluster's vote is the normalised histogram of the labels of the
    labeled samples assigned to it (a one-hot when they agree), a cluster without labeled samples
    votes uniform. PPL = the mean of a sample's votes over the runs, so a sample far from every
    label (in label-less clusters in the large-K runs) gets low confidence, as section 4.3 intends.
    The paper says only "propagated ... and then normalized"; uniform for "no vote" is our choice
    (it keeps rows distributions without changing their argmax). Rows of labeled samples are their
    labels' one-hots (PPL serves the unlabeled samples, section 4.2).
    """
    labeled, labels = np.asarray(labeled, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    cluster_counts = [num_classes * (r + 1) for r in range(6)] if cluster_counts is None else cluster_counts
    x = as_float32(features)
    prior = np.zeros((x.shape[0], num_classes))
    for r, k in enumerate(cluster_counts):
        assignments, _ = constrained_seed_kmeans(x, labeled, labels, k, seed=seed + r)
        histogram = np.zeros((k, num_classes))
        np.add.at(histogram, (assignments[labeled], labels), 1.0)
        totals = histogram.sum(1, keepdims=True)
        votes = np.where(totals > 0, histogram / np.maximum(totals, 1.0), 1.0 / num_classes)
        prior += votes[assignments]
    prior /= len(cluster_counts)
    prior[labeled] = np.eye(num_classes)[labels]
    return prior
