"""AS3L's label-free pipeline (Wen, Pizarro, Williams, sections 4.3-4.4): Eq. 6 fine-tuning, stable
cluster selection and prior pseudo-labels, against brute force and hand-computed values."""

import itertools

import faiss
import numpy as np
import pytest
import torch

from al_lightning.ops.as3l import (finetune_features, kmeans_runs, prior_pseudo_labels, stable_cluster_select,
                                   stable_clusters)
from al_lightning.strategies import AS3L, AcquisitionContext


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """OpenMP threads fighting over the shared cores make these tiny k-means runs 100x slower."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def blobs(seed: int, per_blob: int, dim: int, spacing: float, count: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(loc=spacing * c, size=(per_blob, dim)) for c in range(count)]).astype(np.float32)


UNIFORM = np.random.default_rng(4).uniform(size=(45, 2)).astype(np.float32)  # no true clusters: k-means runs disagree


def brute_eq6(f: np.ndarray, centres: np.ndarray, assignments: np.ndarray) -> float:
    """Eq. 6 term by term: 1/(CN) sum_i sum_j ||f_i - centre of i in run j||^2."""
    n, runs = assignments.shape
    total = sum(float(np.sum((f[i].astype(np.float64) - centres[j, assignments[i, j]]) ** 2))
                for i in range(n) for j in range(runs))
    return total / (runs * n)


def test_finetuning_lowers_eq6_below_the_identity_map_and_reports_it_exactly():
    x = blobs(0, 40, 6, 2.5, 4)
    f_fine, history = finetune_features(x, 5, runs=6, epochs=40, seed=3)
    centres, assignments = kmeans_runs(x, 5, 6, seed=3)  # the same runs the kernel trained on
    assert f_fine.shape == x.shape and len(history) == 41
    identity = brute_eq6(x, centres, assignments)
    assert history[0] == pytest.approx(identity, rel=1e-5)  # training starts at W = I, b = 0
    assert history[-1] == pytest.approx(brute_eq6(f_fine.numpy(), centres, assignments), rel=1e-5)
    assert history[-1] < history[1] < history[0]
    assert history[-1] < 0.95 * identity
    # no affine map beats the least-squares fit of every (sample, run) pair to its centre
    inputs = np.hstack([np.repeat(x, 6, axis=0), np.ones((len(x) * 6, 1))]).astype(np.float64)
    targets = centres[np.tile(np.arange(6), len(x)), assignments.reshape(-1)].astype(np.float64)
    weights = np.linalg.lstsq(inputs, targets, rcond=None)[0]
    optimum = float(np.sum((inputs @ weights - targets) ** 2)) / len(inputs)
    assert optimum < history[-1]
    _, trained_longer = finetune_features(x, 5, runs=6, epochs=100, lr=0.05, batch_size=len(x), seed=3)
    assert trained_longer[-1] == pytest.approx(optimum, rel=1e-3)  # what it minimises is Eq. 6


def best_permutation(reference: np.ndarray, other: np.ndarray, k: int) -> dict[int, int]:
    """other's cluster -> reference's, maximising the overlap, by enumeration; the maximum must be unique."""
    scored = sorted(((sum(int(np.sum((reference == perm[o]) & (other == o))) for o in range(k)), perm)
                     for perm in itertools.permutations(range(k))), reverse=True)
    assert scored[0][0] > scored[1][0], "tied matchings: pick another input"
    return dict(enumerate(scored[0][1]))


@pytest.mark.parametrize("seed", [0, 2])  # 4 and 3 (of 4) clusters with stable samples
def test_stable_clusters_are_exactly_the_classes_co_assigned_in_every_run(seed):
    x = UNIFORM
    k, runs = 4, 6
    _, assignments = kmeans_runs(x, k, runs, seed=seed)
    stable = stable_clusters(assignments, k)

    n = len(x)
    co_assigned = np.array([[all(assignments[i, r] == assignments[j, r] for r in range(runs)) for j in range(n)]
                            for i in range(n)])
    matchings = [best_permutation(assignments[:, 0], assignments[:, r], k) for r in range(1, runs)]
    expected = [all(m[assignments[i, r + 1]] == assignments[i, 0] for r, m in enumerate(matchings)) for i in range(n)]
    assert np.array_equal(stable >= 0, expected)
    assert 0 < sum(expected) < n and len(set(stable[stable >= 0].tolist())) >= 2  # a non-trivial case
    for i in np.flatnonzero(stable >= 0):
        assert stable[i] == assignments[i, 0]
        assert np.array_equal(stable == stable[i], co_assigned[i])  # its stable cluster is its co-assignment class


@pytest.mark.parametrize("x", [blobs(5, 25, 3, 4.0, 4), UNIFORM], ids=["blobs", "uniform"])
def test_selection_is_the_nearest_sample_to_each_stable_mean(x):
    centres, assignments = kmeans_runs(x, 4, 6, seed=2)
    stable = stable_clusters(assignments, 4)
    means = [x[stable == c].astype(np.float64).mean(0) if (stable == c).any() else centres[0, c] for c in range(4)]
    nearest = [int(np.argmin(((x - m) ** 2).sum(1))) for m in means]
    assert len(set(nearest)) == 4 and len(set(stable[stable >= 0].tolist())) == (4 if x is not UNIFORM else 3)
    assert stable_cluster_select(x, 4, runs=6, seed=2).tolist() == nearest


def brute_constrained_seed_kmeans(x: np.ndarray, labeled: list[int], labels: list[int], k: int, seed: int) -> list[int]:
    """Section 4.3's constrained seed k-means, one sample at a time (sharing only the kernel's random draw
    of the initial free centres)."""
    x = x.astype(np.float64)
    classes = sorted(set(labels))
    centres = [x[[i for i, y in zip(labeled, labels) if y == c]].mean(0) for c in classes]
    free = np.array([i for i in range(len(x)) if i not in labeled])
    centres += [x[i] for i in sorted(np.random.default_rng(seed).choice(free, k - len(classes), replace=False))]
    previous = None
    while True:
        assignment = [int(np.argmin([np.sum((p - c) ** 2) for c in centres])) for p in x]
        if assignment == previous:
            return assignment
        members = {c: [i for i in range(len(x)) if assignment[i] == c and i not in labeled] for c in range(k)}
        for i, y in zip(labeled, labels):
            members[classes.index(y)].append(i)  # labels constrain the centre updates only
        centres = [x[members[c]].mean(0) if members[c] else centres[c] for c in range(k)]
        previous = assignment


def brute_prior(x, labeled, labels, num_classes, cluster_counts, seed):
    prior = np.zeros((len(x), num_classes))
    for r, k in enumerate(cluster_counts):
        assignment = brute_constrained_seed_kmeans(x, labeled, labels, k, seed + r)
        for i in range(len(x)):
            in_cluster = [y for j, y in zip(labeled, labels) if assignment[j] == assignment[i]]
            vote = np.bincount(in_cluster, minlength=num_classes) / len(in_cluster) if in_cluster \
                else np.full(num_classes, 1 / num_classes)
            prior[i] += vote / len(cluster_counts)
    for i, y in zip(labeled, labels):
        prior[i] = np.eye(num_classes)[y]
    return prior


def test_prior_pseudo_labels_equal_a_brute_force_recomputation():
    x = blobs(6, 20, 2, 2.0, 3)  # overlapping blobs
    labeled, labels = [0, 1, 20, 21, 40, 2], [0, 0, 1, 1, 2, 1]
    prior = prior_pseudo_labels(x, np.array(labeled), np.array(labels), 3, cluster_counts=[3, 6, 12], seed=7)
    assert (prior >= 0).all() and np.allclose(prior.sum(1), 1)
    assert np.allclose(prior, brute_prior(x, labeled, labels, 3, [3, 6, 12], seed=7))
    assert 0.4 < prior.max(1).mean() < 0.95  # label-less clusters in the K=12 run lower confidence


def test_a_mislabeled_seed_votes_in_the_cluster_it_lands_in():
    x = blobs(8, 20, 2, 10.0, 3)  # far-apart blobs
    labeled, labels = np.array([0, 1, 20, 21, 40, 2]), np.array([0, 0, 1, 1, 2, 1])  # row 2 sits in blob 0
    prior = prior_pseudo_labels(x, labeled, labels, 3, cluster_counts=[3], seed=0)
    # blob 0's cluster holds labeled rows 0, 1 (class 0) and 2 (class 1): its vote is (2/3, 1/3, 0)
    assert np.allclose(prior[3:20], [2 / 3, 1 / 3, 0])
    assert np.allclose(prior[22:40], [0, 1, 0]) and np.allclose(prior[41:60], [0, 0, 1])
    assert np.allclose(prior[labeled], np.eye(3)[labels])  # labeled rows keep their own labels


def test_as3l_fine_tunes_then_selects_distinct_unlabeled_ids_deterministically(digits):
    def context():
        return AcquisitionContext(digits.pool, None, digits.inference_dataloader, torch.device("cpu"), seed=3)

    strategy = AS3L(features="pixels", finetune=True)
    first, second = strategy.select(context(), 10), strategy.select(context(), 10)
    assert np.array_equal(first, second)
    assert len(set(first.tolist())) == 10 and not np.isin(first, digits.pool.labeled_indices).any()
    ctx = context()
    seed = int(ctx.rng().integers(2**31))
    f_fine, _ = finetune_features(ctx.pixels(ctx.unlabeled), 10, seed=seed)
    assert np.array_equal(first, ctx.unlabeled[stable_cluster_select(f_fine, 10, seed=seed)])
