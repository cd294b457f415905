"""TypiClust (Hacohen, Dekel, Weinshall, ICML 2022, section 3): cluster the pool into |L| + b
clusters for diversity, then label the most *typical* sample of the largest cluster that holds
the fewest labeled samples, typicality being the inverse mean distance to the K = 20 nearest
neighbours (the paper's typicality equation).

Where the paper is loose we follow the reference code (avihu111/TypiClust,
``deep-al/pycls/al/typiclust.py``):

* features are L2-normalised (its ``load_features(normalized=True)``); the clustering covers the
  labeled and the unlabeled samples together;
* the cluster count is capped: ``min(|L| + b, MAX_NUM_CLUSTERS = 500)``, so with a large budget
  each cluster is visited several times;
* clusters of at most ``MIN_CLUSTER_SIZE = 5`` samples (labeled ones included) are never visited;
* the clusters are ranked once, by labeled count ascending, then size descending, and visited
  round-robin in that fixed order: pick i goes to the ``i mod (number of clusters)``-th. A pick is
  not added to the cluster's labeled count (the ranking is not recomputed); while every pick lands
  in a cluster with no labeled sample (no cap reached, no cluster dropped) this is the same as
  re-ranking after each pick;
* labeled samples only count (their cluster ranks lower); they and the earlier picks are taken
  out of the cluster, as candidates and as neighbours: typicality is recomputed at every visit
  *within* the cluster, among its remaining unlabeled members, with K = min(20, remaining // 2)
  (its "density among half of the cluster" for small clusters); here from neighbour lists kept
  between visits (:class:`ClusterMembers`), not a new search each time;
* typicality = 1 / (mean + 1e-5), where the mean is over the *squared* Euclidean distances that
  faiss returns (``distance="squared"``, the default); ``distance="euclidean"`` gives the paper's
  equation literally; ties go to the first row (its ``argmax``).

Ours differ from it in: faiss k-means with k-means++ seeding (it uses scikit-learn's ``KMeans``, or
``MiniBatchKMeans`` above 50 clusters), ties between equally ranked clusters going to the smaller
cluster id, and two cases where it fails: an exhausted cluster is skipped (the next in the cycle is
used), and once every visited cluster is exhausted the small clusters are visited in the same
ranking, so exactly ``budget`` distinct unlabeled rows always come back.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from al_lightning.ops.faiss_ops import as_float32, kmeans, knn_search, l2_normalised

Distance = Literal["squared", "euclidean"]

#: the reference code's constants (``TypiClust.K_NN``, ``MAX_NUM_CLUSTERS``, ``MIN_CLUSTER_SIZE``)
K_NN, MAX_NUM_CLUSTERS, MIN_CLUSTER_SIZE = 20, 500, 5


def typicality(x: Any, k: int, distance: Distance = "squared") -> np.ndarray:
    """``1 / (mean distance to the k nearest other rows + 1e-5)``, distances squared (the
    reference code) or Euclidean (the paper). With ``k = 0`` (a single row) every row gets
    ``1 / 1e-5``: there is nothing to compare it with."""
    _check_distance(distance)
    x = as_float32(x)
    k = min(k, x.shape[0] - 1)
    if k <= 0:
        return np.full(x.shape[0], 1e5)
    sq, _ = knn_search(x, x, k + 1)  # the row itself comes first (distance 0) and is dropped
    return _inverse_mean_distance(sq[:, 1:], distance)


def _check_distance(distance: str) -> None:
    if distance not in ("squared", "euclidean"):
        raise ValueError(f"distance must be 'squared' or 'euclidean', got {distance!r}")


def _inverse_mean_distance(sq: np.ndarray, distance: Distance) -> np.ndarray:
    """``1 / (mean + 1e-5)`` per row of the squared distances ``sq``, or of their roots."""
    d = np.maximum(sq.astype(np.float64), 0.0)
    if distance == "euclidean":
        d = np.sqrt(d)
    return 1.0 / (d.mean(1) + 1e-5)


def cluster_visit_order(assign: np.ndarray, n_labeled: int, m: int, min_cluster_size: int = MIN_CLUSTER_SIZE
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The reference's ranking of the ``m`` clusters of ``assign`` (labeled rows first): labeled
    count ascending, then size descending, then cluster id. Returns ``(visited, small)``: the
    clusters of more than ``min_cluster_size`` samples in that order, and the other non-empty ones."""
    sizes = np.bincount(assign, minlength=m)
    labeled = np.bincount(assign[:n_labeled], minlength=m)
    order = np.lexsort((np.arange(m), -sizes, labeled))
    return order[sizes[order] > min_cluster_size], order[(sizes[order] > 0) & (sizes[order] <= min_cluster_size)]


class ClusterMembers:
    """One cluster's unlabeled rows across its visits, with each row's nearest neighbours among
    them kept from one kNN search to the next visit.

    The reference searches a visited cluster again every time (its typicality among the remaining
    members). Taking a pick out removes one row from the others' lists, so the k nearest
    *remaining* neighbours of a row are the first k of its list still present: the same distances,
    without the search (at 1,000,000 rows in 500 clusters a budget of 10,000 visits each cluster 20
    times). A list is searched for ``k + spare`` neighbours (``spare``: the cluster's visits
    left), one that runs short is searched again: O(n (k + spare)) memory over all clusters, never
    n x n. The distances are those of the first search, so a score can differ from a fresh
    search's in float rounding; picks were identical at 100,000 and 300,000 rows.
    """

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.present = np.ones(len(rows), dtype=bool)
        self._neighbours: np.ndarray | None = None  # (len(rows), K) positions in rows, nearest first
        self._sq: np.ndarray | None = None  # (len(rows), K) their squared distances

    def __len__(self) -> int:
        return int(self.present.sum())

    def remaining(self) -> np.ndarray:
        return self.rows[self.present]

    def remove(self, i: int) -> int:
        """Take the ``i``-th remaining row out; returns it."""
        position = int(np.flatnonzero(self.present)[i])
        self.present[position] = False
        return int(self.rows[position])

    def _search(self, x: np.ndarray, live: np.ndarray, k: int) -> None:
        sq, idx = knn_search(x[self.rows[live]], None, k + 1)
        own = idx == np.arange(len(live))[:, None]
        own[~own.any(1), -1] = True  # duplicates can push a row out of its own list: drop the last instead
        first = ~own
        self._neighbours = np.zeros((len(self.rows), k), dtype=np.int32)
        self._sq = np.zeros((len(self.rows), k), dtype=np.float32)
        self._neighbours[live] = live[idx[first].reshape(len(live), k)]
        self._sq[live] = sq[first].reshape(len(live), k)

    def typicality(self, x: np.ndarray, k: int, distance: Distance = "squared", spare: int = 0) -> np.ndarray:
        """:func:`typicality` of the remaining rows among themselves (``x`` holds every row).
        ``spare``: further removals the kept lists should survive without a new search."""
        live = np.flatnonzero(self.present)
        k = min(k, len(live) - 1)
        if k <= 0:
            return np.full(len(live), 1e5)
        for searched in (False, True):
            if searched or self._neighbours is None:
                self._search(x, live, min(len(live) - 1, k + spare))
            there = self.present[self._neighbours[live]]  # a list's entries still in the cluster
            rank = np.cumsum(there, axis=1)
            if rank[:, -1].min() >= k:
                break
        first_k = np.argsort(~(there & (rank <= k)), axis=1, kind="stable")[:, :k]
        return _inverse_mean_distance(np.take_along_axis(self._sq[live], first_k, 1), distance)


def typiclust_from_clusters(x: Any, assign: np.ndarray, n_labeled: int, budget: int, k: int = K_NN,
                            min_cluster_size: int = MIN_CLUSTER_SIZE, distance: Distance = "squared",
                            within: np.ndarray | None = None) -> np.ndarray:
    """TypiClust's picks given the clustering: ``x`` and ``assign`` cover the labeled rows first,
    then the unlabeled ones; returns ``budget`` distinct unlabeled rows (0-based among the
    unlabeled), in pick order. ``within`` (one value per unlabeled row) replaces typicality as the
    choice inside a visited cluster: its largest remaining value (ties: the smaller row)."""
    _check_distance(distance)
    x = as_float32(x)
    assign = np.asarray(assign, dtype=np.int64)
    n_unlabeled = x.shape[0] - n_labeled
    budget = min(budget, n_unlabeled)
    m = int(assign.max()) + 1 if len(assign) else 0
    visited, small = cluster_visit_order(assign, n_labeled, m, min_cluster_size)
    unlabeled_assign = assign[n_labeled:]
    grouped = np.argsort(unlabeled_assign, kind="stable")  # each cluster's unlabeled rows, ascending
    bounds = np.searchsorted(unlabeled_assign[grouped], np.arange(m + 1))
    clusters = {int(c): ClusterMembers(grouped[bounds[c]:bounds[c + 1]]) for c in range(m)}
    unlabeled_x = x[n_labeled:]
    picks: list[int] = []
    for cycle in (visited, small):
        alive = [int(c) for c in cycle if len(clusters[c])]
        slot = 0
        while alive and len(picks) < budget:
            slot %= len(alive)
            members = clusters[alive[slot]]
            if within is None:
                visits_left = -(-(budget - len(picks)) // len(alive))
                score = members.typicality(unlabeled_x, min(k, len(members) // 2), distance, spare=visits_left)
            else:
                score = within[members.remaining()]
            picks.append(members.remove(int(np.argmax(score))))
            if len(members):
                slot += 1
            else:  # exhausted: drop it, the next cluster moves into this slot
                alive.pop(slot)
    return np.asarray(picks, dtype=np.int64)


def typiclust_select(features: Any, budget: int, n_labeled: int = 0, k: int = K_NN,
                     max_clusters: int | None = MAX_NUM_CLUSTERS, min_cluster_size: int = MIN_CLUSTER_SIZE,
                     distance: Distance = "squared", seed: int = 0, kmeans_iterations: int = 20,
                     within: np.ndarray | None = None, overwrite: bool = False) -> np.ndarray:
    """``budget`` distinct unlabeled rows (0-based among the unlabeled) of ``features``, whose first
    ``n_labeled`` rows are the labeled samples': k-means of the L2-normalised rows into
    ``min(|L| + budget, max_clusters)`` clusters (``None``: no cap), then
    :func:`typiclust_from_clusters` (``within``: its in-cluster choice). ``overwrite``: normalise
    ``features`` in place (float32) instead of a copy of the pool."""
    x = l2_normalised(features, overwrite=overwrite)
    budget = min(budget, len(x) - n_labeled)
    if budget <= 0:
        return np.empty(0, dtype=np.int64)
    m = n_labeled + budget if max_clusters is None else min(n_labeled + budget, max_clusters)
    _, assign = kmeans(x, min(m, x.shape[0]), seed=seed, iterations=kmeans_iterations)
    return typiclust_from_clusters(x, assign, n_labeled, budget, k, min_cluster_size, distance, within)
