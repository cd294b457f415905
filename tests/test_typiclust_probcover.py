"""TypiClust and ProbCover against brute-force re-implementations on small inputs (dense distance
matrices, plain Python loops), and their promises: exactly ``budget`` distinct unlabeled picks,
the same for the same seed."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from al_lightning import ops
from al_lightning.strategies import ProbCover, TypiClust


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
    """What the two strategies read from an AcquisitionContext."""

    def __init__(self, features: np.ndarray, labeled: np.ndarray, num_classes: int = 3, seed: int = 0) -> None:
        self.all, self.num_classes, self.seed = torch.from_numpy(features), num_classes, seed
        self.labeled = np.asarray(labeled, dtype=np.int64)
        self.unlabeled = np.setdiff1d(np.arange(len(features)), self.labeled)

    def features(self, kind: str, labeled: bool = False) -> torch.Tensor:
        assert kind == "pixels"
        return self.all[torch.as_tensor(self.labeled if labeled else self.unlabeled)]

    def stacked_features(self, kind: str) -> tuple[torch.Tensor, int]:
        return torch.cat([self.features(kind, labeled=True), self.features(kind)]), len(self.labeled)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0])


# ----------------------------------------------------------------------------------------------- TypiClust

@pytest.mark.parametrize("distance,power", [("squared", 2), ("euclidean", 1)])
def test_typicality_is_the_inverse_mean_distance_to_the_k_nearest_others(distance, power):
    x = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32)
    assert np.allclose(ops.typicality(x, 20, distance), brute_typicality(x, 20, power), rtol=1e-4)


@pytest.mark.parametrize("spare", [0, 2, 100], ids=["searched-every-visit", "some-searches", "one-search"])
@pytest.mark.parametrize("distance,power", [("squared", 2), ("euclidean", 1)])
def test_kept_neighbour_lists_give_the_typicality_of_the_remaining_members(spare, distance, power):
    """A cluster's kept kNN lists, thinned by each removal, against a brute-force typicality of
    the rows still there (duplicates included, k shrinking with the cluster as the reference's
    min(20, remaining // 2)); a list that runs short (spare 0) is searched again."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(90, 5)).astype(np.float32)
    x[10:14] = x[3]  # four duplicates of row 3
    members = ops.typiclust.ClusterMembers(np.union1d([3, 10, 11, 12, 13], rng.choice(90, size=44, replace=False)))
    for _ in range(40):
        remaining = members.remaining()
        k = min(20, len(remaining) // 2)
        expected = brute_typicality(x[remaining], k, power) if k > 0 else np.full(len(remaining), 1e5)
        assert np.allclose(members.typicality(x, k, distance, spare=spare), expected, rtol=1e-4)
        members.remove(int(rng.integers(len(remaining))))


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
    picks = ops.typiclust_select(x, 2, n_labeled=1, seed=0)  # row 0 first: the labeled one
    rows = unlabeled[picks]
    assert blob[rows].tolist() == [1, 2]  # the 40-blob, then the 20-blob; the labeled 61-blob last
    for b, row in zip([1, 2], rows):  # k = min(20, half the cluster): 20 in the 40-blob, 10 in the 20-blob
        assert row == most_typical_member(x, np.flatnonzero(blob == b))
    # capped at 3 clusters, a budget of 4 wraps around: the labeled blob, then the 40-blob again,
    # whose typicality is recomputed without the first pick (and the labeled sample never counts)
    rows4 = unlabeled[ops.typiclust_select(x, 4, n_labeled=1, max_clusters=3, seed=0)]
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


# ----------------------------------------------------------------------------------------------- ProbCover

def gap_delta(d: np.ndarray, near: float) -> float:
    """A delta near ``near`` halfway between two consecutive pair distances (no pair on the edge)."""
    values = np.unique(d[np.triu_indices(len(d), 1)])
    i = int(np.searchsorted(values, near))
    return float((values[i - 1] + values[i]) / 2)


def brute_probcover(x, n_labeled, budget, delta):
    """Alg. 1 on the dense ball matrix, in plain Python; stops when nothing new can be covered."""
    inside = dense_distances(x) < delta
    n = len(x)
    covered = set()
    for i in range(n_labeled):
        covered |= set(np.flatnonzero(inside[i]).tolist())
    picks = []
    for _ in range(budget):
        gain = [len(set(np.flatnonzero(inside[i]).tolist()) - covered) if i >= n_labeled else -1 for i in range(n)]
        best = int(np.argmax(gain))  # the first of the largest
        if gain[best] == 0:
            break
        picks.append(best - n_labeled)
        covered |= set(np.flatnonzero(inside[best]).tolist())
    return picks


def test_ball_graph_holds_exactly_the_pairs_strictly_within_delta():
    x = unit(np.random.default_rng(4).normal(size=(90, 3))).astype(np.float32)
    d = dense_distances(x)
    delta = gap_delta(d, 0.5)
    graph = ops.ball_graph(x, delta, chunk=16)  # several query chunks
    assert np.array_equal(graph.toarray(), d < delta)
    assert graph.diagonal().all()  # every ball holds its centre


def test_range_search_on_the_callers_array_equals_a_faiss_flat_index():
    """The CPU search runs faiss's kernel on the caller's base without copying it into an index,
    and returns what a flat index over a copy returns: lists, order and exact ties included."""
    import faiss
    rng = np.random.default_rng(12)
    base = unit(rng.normal(size=(1500, 16))).astype(np.float32)
    base[700:760] = base[:60]  # duplicates: equal distances from every query
    queries = np.concatenate([base[:40], unit(rng.normal(size=(40, 16))).astype(np.float32)])
    index = faiss.IndexFlatL2(16)
    index.add(base)
    for radius in (0.9, 1.2):
        lims, _, found = index.range_search(queries, radius**2)
        indptr, indices = ops.range_search(base, radius, queries, chunk=32)  # several query chunks
        assert np.array_equal(indptr, lims) and np.array_equal(indices, found)
    indptr, indices = ops.range_search(base, 0.0)
    assert not indptr.any() and len(indptr) == 1501 and len(indices) == 0


@pytest.mark.parametrize("block_distances", [90 * 90, 90 * 7, 1], ids=["one-block", "7-queries", "1-query"])
def test_range_search_blocks_hold_exactly_the_pairs_strictly_within_delta(block_distances):
    """The device route (torch blocks; faiss has no GPU range search), run on the CPU: the balls of
    the dense distances, each query's neighbours ascending, for queries apart from the base too."""
    from al_lightning.ops.faiss_ops import range_search_blocks
    rng = np.random.default_rng(13)
    x = unit(rng.normal(size=(90, 3))).astype(np.float32)
    d = dense_distances(x)
    delta = gap_delta(d, 0.5)
    indptr, indices = range_search_blocks(x, delta, x, torch.device("cpu"), block_distances)
    graph = sp.csr_matrix((np.ones(len(indices), dtype=bool), indices, indptr), shape=(90, 90))
    assert np.array_equal(graph.toarray(), d < delta)
    assert all((np.diff(indices[indptr[i]:indptr[i + 1]]) > 0).all() for i in range(90))
    queries = unit(rng.normal(size=(11, 3))).astype(np.float32)
    far = np.sqrt(((queries[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    radius = float(np.median(far))
    assert np.abs(far - radius).min() > 1e-4  # no pair on the edge
    indptr, indices = range_search_blocks(x, radius, queries, torch.device("cpu"), block_distances)
    assert [sorted(indices[indptr[i]:indptr[i + 1]].tolist()) for i in range(11)] == \
        [np.flatnonzero(row < radius).tolist() for row in far]
    indptr, indices = range_search_blocks(x, 0.0, x, torch.device("cpu"), block_distances)
    assert not indptr.any() and len(indptr) == 91 and len(indices) == 0


def test_with_a_gpu_the_ball_graph_is_built_on_the_device(monkeypatch):
    """faiss has no GPU range search: where torch sees a GPU the blocks run there (replayed here on
    the CPU), and the graph is the same."""
    from al_lightning.ops import faiss_ops
    x = unit(np.random.default_rng(14).normal(size=(60, 3))).astype(np.float32)
    delta = gap_delta(dense_distances(x), 0.5)
    expected = ops.ball_graph(x, delta).toarray()
    devices = []
    real = faiss_ops.range_search_blocks

    def on_device(base, radius, queries, device, *args):
        devices.append(device.type)
        return real(base, radius, queries, torch.device("cpu"), *args)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(faiss_ops, "range_search_blocks", on_device)
    assert np.array_equal(ops.ball_graph(x, delta).toarray(), expected) and devices == ["cuda"]


@pytest.mark.parametrize("n_labeled", [0, 6])
def test_greedy_coverage_matches_a_brute_force_max_coverage(n_labeled):
    x = unit(np.random.default_rng(5).normal(size=(120, 3))).astype(np.float32)
    delta = gap_delta(dense_distances(x), 0.45)
    expected = brute_probcover(x, n_labeled, 60, delta)
    assert 5 < len(expected) < 60  # the greedy runs a while, then everything is covered
    got = ops.probcover_greedy(ops.ball_graph(x, delta), n_labeled, 60, np.random.default_rng(0))
    assert got[:len(expected)].tolist() == expected
    assert len(got) == 60 and len(set(got.tolist())) == 60 and got.max() < len(x) - n_labeled
    rows, used = ops.probcover_select(x, 10, n_labeled, delta=delta)
    assert used == delta and rows.tolist() == expected[:10]


def test_labeled_samples_cover_their_balls_first():
    x, blob = blobs([30, 20, 10], dim=4, spread=0.05)
    delta = 0.2  # a ball holds its own blob, nothing of the others (normalised blobs are ~1.41 apart)
    # unlabeled only: the biggest blob's ball covers the most
    first = ops.probcover_select(x, 1, delta=delta)[0]
    assert blob[first].tolist() == [0]
    # a labeled sample in the biggest blob covers it: the 20-blob, then the 10-blob are next
    rows = 1 + ops.probcover_select(x, 2, n_labeled=1, delta=delta)[0]
    assert blob[rows].tolist() == [1, 2]


def test_once_everything_is_covered_the_rest_is_random_distinct_unlabeled_and_seeded():
    x = unit(np.random.default_rng(6).normal(size=(40, 3))).astype(np.float32)
    # one ball holds everything: the first row covers all (ties go to the smallest row), then random
    rows, _ = ops.probcover_select(x, 10, delta=2.5, seed=1)
    assert rows[0] == 0 and len(set(rows.tolist())) == 10
    assert np.array_equal(rows, ops.probcover_select(x, 10, delta=2.5, seed=1)[0])
    assert not np.array_equal(rows, ops.probcover_select(x, 10, delta=2.5, seed=2)[0])
    # labeled samples that already cover everything: every pick is random, none of them labeled
    rows, _ = ops.probcover_select(x, 35, n_labeled=5, delta=2.5, seed=1)
    assert sorted(rows.tolist()) == list(range(35))


@pytest.mark.parametrize("block_distances", [70 * 70, 70 * 3, 1], ids=["one-block", "3-queries", "1-query"])
def test_nearest_other_label_distance_in_device_blocks_equals_the_per_label_search(block_distances):
    """The device route of the purity search (all pairs in blocks, same-label pairs masked), run on
    the CPU, against the per-label faiss searches and a dense brute force; inf with one label."""
    from al_lightning.ops.probcover import nearest_other_label_blocks
    rng = np.random.default_rng(15)
    x = unit(rng.normal(size=(70, 3))).astype(np.float32)
    labels = rng.integers(0, 4, size=70)
    d = dense_distances(x)
    brute = np.array([d[i, labels != labels[i]].min() for i in range(70)])
    blocks = nearest_other_label_blocks(x, labels, torch.device("cpu"), block_distances)
    assert np.allclose(blocks, brute, atol=1e-5)
    assert np.allclose(blocks, ops.nearest_other_label_distance(x, labels), atol=1e-5)
    assert np.isinf(nearest_other_label_blocks(x, np.zeros(70, dtype=int), torch.device("cpu"), block_distances)).all()


def test_with_a_gpu_the_purity_search_runs_on_the_device(monkeypatch):
    from al_lightning.ops import probcover
    x = unit(np.random.default_rng(16).normal(size=(40, 3))).astype(np.float32)
    labels = np.arange(40) % 3
    expected = ops.nearest_other_label_distance(x, labels)
    devices = []
    real = probcover.nearest_other_label_blocks

    def on_device(points, point_labels, device, *args):
        devices.append(device.type)
        return real(points, point_labels, torch.device("cpu"), *args)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(probcover, "nearest_other_label_blocks", on_device)
    assert np.allclose(ops.nearest_other_label_distance(x, labels), expected, atol=1e-5) and devices == ["cuda"]


def brute_purity(d, labels, delta):
    return np.mean([all(labels[j] == labels[i] for j in np.flatnonzero(d[i] < delta)) for i in range(len(d))])


@pytest.mark.parametrize("alpha", [0.95, 0.8])
def test_purity_delta_is_the_largest_delta_whose_balls_are_pure_often_enough(alpha):
    rng = np.random.default_rng(7)
    x = unit(rng.normal(size=(70, 3))).astype(np.float32)
    labels = (x[:, 0] > 0).astype(int)  # two half-spheres, with noise on the border
    labels[rng.choice(70, 4, replace=False)] ^= 1
    d = dense_distances(x)
    candidates = np.unique(d[np.triu_indices(70, 1)])  # purity only changes just above a pair distance
    feasible = [v for v in candidates if brute_purity(d, labels, v) >= alpha]
    got = ops.purity_delta(x, labels, alpha)
    assert got == pytest.approx(max(feasible), abs=1e-5)
    assert brute_purity(d, labels, got - 1e-6) >= alpha > brute_purity(d, labels, got + 1e-5)
    assert ops.ball_purity(ops.nearest_other_label_distance(x, labels), got - 1e-6) == \
        pytest.approx(brute_purity(d, labels, got - 1e-6))
    grid = np.round(np.arange(0.05, 2.01, 0.05), 2)
    best_on_grid = max(v for v in grid if brute_purity(d, labels, v) >= alpha)
    assert ops.purity_delta(x, labels, alpha, grid=grid) == pytest.approx(best_on_grid)


def test_probcover_delta_uses_kmeans_pseudo_labels_with_k_the_number_of_classes():
    x, blob = blobs([40, 25, 15], dim=4, spread=1.5, seed=8)  # k-means recovers these blobs
    _, pseudo = ops.kmeans(ops.faiss_ops.l2_normalised(x), 3, seed=0)
    assert len({(a, b) for a, b in zip(pseudo, blob)}) == 3
    d = dense_distances(unit(x))
    need = math.ceil(0.95 * len(x))
    pure_until = sorted(min(d[i, blob != blob[i]]) for i in range(len(x)))  # ball pure while delta <= this
    assert ops.probcover_delta(x, 3, 0.95, seed=0) == pytest.approx(pure_until[len(x) - need], abs=1e-5)


def test_probcover_strategy_picks_exactly_budget_distinct_unlabeled_ids_the_same_for_a_seed():
    x, _ = blobs([50, 30, 20], dim=6, spread=2.0, seed=9)
    labeled = np.array([3, 55, 90])
    for budget in (4, 60):
        strategy = ProbCover(features="pixels")
        picks = strategy.select(FakeContext(x, labeled, seed=3), budget)
        assert len(picks) == budget and len(set(picks.tolist())) == budget
        assert not set(picks.tolist()) & set(labeled.tolist())
        assert strategy.last_delta is not None and 0 < strategy.last_delta < 2
        assert np.array_equal(picks, ProbCover(features="pixels").select(FakeContext(x, labeled, seed=3), budget))
    fixed = ProbCover(features="pixels", delta=0.3)
    fixed.select(FakeContext(x, labeled), 4)
    assert fixed.last_delta == 0.3
