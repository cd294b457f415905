"""TypiClust against brute-force re-implementations on small inputs (dense distance
matrices, plain Python loops), and its promises: exactly ``budget`` distinct unlabeled picks,
the same for the same seed."""

import numpy as np
import pytest
import torch

from al_lightning import ops
from al_lightning.strategies import TypiClust


def dense_distances(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.sqrt(np.maximum(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1), 0.0))


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_typicality(x: np.ndarray, k: int, power: int) -> np.ndarray:
    d = dense_distances(x)
    out = []
    for i in range(len(x)):
        nearest = sorted(d[i, j] for j in range(len(x)) if j != i)[:k]
        out.append(1.0 / (np.mean([v ** power for v in nearest]) + 1e-5))
    return np.array(out)


def most_typical_member(x: np.ndarray, members: np.ndarray) -> int:
    """The reference's pick in a cluster: argmax typicality of the normalised members, squared
    distances, k = min(20, members // 2)."""
    return int(members[np.argmax(brute_typicality(unit(x[members]), min(20, len(members) // 2), 2))])


def blobs(sizes, dim=8, spread=0.3, seed=0):
    """Well separated blobs (around 10 e_b, so they stay apart once normalised) and their labels."""
    rng = np.random.default_rng(seed)
    parts = [10.0 * np.eye(dim)[b] + spread * rng.normal(size=(n, dim)) for b, n in enumerate(sizes)]
    return np.concatenate(parts).astype(np.float32), np.repeat(np.arange(len(sizes)), sizes)


class FakeContext:
    """What the strategies read from an AcquisitionContext."""

    def __init__(self, features: np.ndarray, labeled: np.ndarray, num_classes: int = 3, seed: int = 0) -> None:
        self.all, self.num_classes, self.seed = torch.from_numpy(features), num_classes, seed
        self.labeled = np.asarray(labeled, dtype=np.int64)
        self.unlabeled = np.setdiff1d(np.arange(len(features)), self.labeled)

    def features(self, kind: str, labeled: bool = False) -> torch.Tensor:
        assert kind == "pixels"
        return self.all[torch.as_tensor(self.labeled if labeled else self.unlabeled)]

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0])


# ----------------------------------------------------------------------------------------------- TypiClust

@pytest.mark.parametrize("distance,power", [("squared", 2), ("euclidean", 1)])
def test_typicality_is_the_inverse_mean_distance_to_the_k_nearest_others(distance, power):
    x = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
    assert np.allclose(ops.typicality(x, 20, distance), brute_typicality(x, 20, power), rtol=1e-4)


def test_the_default_typicality_is_the_reference_codes_squared_distance():
    x = np.random.default_rng(1).normal(size=(60, 5)).astype(np.float32)
    assert np.allclose(ops.typicality(x, 20), brute_typicality(x, 20, 2), rtol=1e-4)
    assert not np.allclose(ops.typicality(x, 20), brute_typicality(x, 20, 1), rtol=1e-2)


def brute_typiclust(x, assign, n_labeled, budget, k=20, min_size=5):
    """The reference's loop literally: rank once by (labeled count, -size), drop clusters of at most
    ``min_size``, pick ``i`` from cluster ``order[i % len(order)]``: the most typical of its remaining
    unlabeled members (squared distances, k = min(20, remaining // 2)), which then leaves it."""
    clusters = sorted(set(assign.tolist()))
    size = {c: int((assign == c).sum()) for c in clusters}
    labeled = {c: int((assign[:n_labeled] == c).sum()) for c in clusters}
    order = [c for c in sorted(clusters, key=lambda c: (labeled[c], -size[c], c)) if size[c] > min_size]
    free = [r for r in range(n_labeled, len(x))]
    picks = []
    for i in range(budget):
        c = order[i % len(order)]
        members = [r for r in free if assign[r] == c]
        score = brute_typicality(x[members], min(k, len(members) // 2), 2)
        best = members[int(np.argmax(score))]
        picks.append(best - n_labeled)
        free.remove(best)
    return picks


def test_typiclust_from_clusters_follows_the_reference_rule_by_brute_force():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(150, 4)).astype(np.float32)
    assign = rng.choice(6, size=150, p=[0.3, 0.25, 0.2, 0.15, 0.08, 0.02])
    assign[:12] = [0, 0, 0, 1, 1, 2, 3, 0, 1, 2, 0, 5]  # 12 labeled rows first, uneven per cluster
    assign[12:16] = 5  # and one cluster small enough to be skipped
    assign[16:] = np.where(assign[16:] == 5, 4, assign[16:])
    n_labeled, budget = 12, 23  # several rounds of the cycle, no cluster exhausted
    got = ops.typiclust_from_clusters(x, assign, n_labeled, budget)
    assert got.tolist() == brute_typiclust(x, assign, n_labeled, budget)
    assert 5 not in assign[n_labeled + got]


def test_first_pick_is_the_most_typical_point_of_the_biggest_blob_without_a_labeled_sample():
    x, blob = blobs([61, 40, 20])
    labeled_row = 0  # a member of the biggest blob
    unlabeled = np.arange(1, len(x))
    picks = ops.typiclust_select(x[unlabeled], 2, x[[labeled_row]], seed=0)
    rows = unlabeled[picks]
    assert blob[rows].tolist() == [1, 2]  # the 40-blob, then the 20-blob; the labeled 61-blob last
    for b, row in zip([1, 2], rows):  # k = min(20, half the cluster): 20 in the 40-blob, 10 in the 20-blob
        assert row == most_typical_member(x, np.flatnonzero(blob == b))
    # capped at 3 clusters, a budget of 4 wraps around: the labeled blob, then the 40-blob again,
    # whose typicality is recomputed without the first pick (and the labeled sample never counts)
    rows4 = unlabeled[ops.typiclust_select(x[unlabeled], 4, x[[labeled_row]], max_clusters=3, seed=0)]
    assert rows4[:2].tolist() == rows.tolist() and blob[rows4].tolist() == [1, 2, 0, 1]
    assert rows4[2] == most_typical_member(x, np.flatnonzero(blob == 0)[1:])
    assert rows4[3] == most_typical_member(x, np.setdiff1d(np.flatnonzero(blob == 1), rows[:1]))


def test_typiclust_picks_exactly_budget_distinct_unlabeled_ids_the_same_for_a_seed():
    x, _ = blobs([50, 30, 12, 4], dim=6, spread=2.0, seed=3)
    labeled = np.array([0, 1, 60, 95])
    for budget in (5, 40, len(x) - len(labeled)):  # the last exhausts every cluster, small ones too
        strategy = TypiClust(features="pixels")
        picks = strategy.select(FakeContext(x, labeled, seed=7), budget)
        assert len(picks) == budget and len(set(picks.tolist())) == budget
        assert not set(picks.tolist()) & set(labeled.tolist())
        assert np.array_equal(picks, strategy.select(FakeContext(x, labeled, seed=7), budget))
