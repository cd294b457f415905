"""USL's two distance conventions (paper: Euclidean, Eq. 1-5; released code: squared) against brute force."""

import numpy as np
import pytest
import torch

from al_lightning import ops
from al_lightning.ops.usl import usl_regulariser

POWER = {"euclidean": 1, "squared": 2}


def brute_density(x: np.ndarray, k: int, distance: str) -> np.ndarray:
    out = []
    for i in range(len(x)):
        d = sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)[:k]
        out.append(1 / np.mean([v ** POWER[distance] for v in d]))
    return np.array(out)


def brute_usl_picks(x, utility, assign, m, lam, alpha, distance, m_reg=0.9, iterations=10):
    """Alg. 1 with Reg = sum of 1 / D^alpha, D = ||.|| or ||.||^2."""
    best = [int(np.flatnonzero(assign == c)[np.argmax(utility[assign == c])]) for c in range(m)]
    reg_bar = np.zeros(len(x))
    for _ in range(iterations):
        reg = np.array([sum(1 / (np.linalg.norm(x[i] - x[best[c]]) ** POWER[distance]) ** alpha
                            for c in range(m) if c != assign[i]) for i in range(len(x))])
        reg_bar = m_reg * reg_bar + (1 - m_reg) * reg
        value = utility - lam * reg_bar
        best = [int(np.flatnonzero(assign == c)[np.argmax(value[assign == c])]) for c in range(m)]
    return best


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_knn_density_is_the_inverse_mean_distance_of_the_convention(distance):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    assert np.allclose(ops.knn_density(x, 6, distance=distance), brute_density(x, 6, distance), rtol=1e-4)


def test_the_default_convention_is_the_released_codes_squared_distance():
    x = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    assert np.allclose(ops.knn_density(x, 5), brute_density(x, 5, "squared"), rtol=1e-4)
    assert not np.allclose(ops.knn_density(x, 5), brute_density(x, 5, "euclidean"), rtol=1e-2)


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
@pytest.mark.parametrize("horizon", [False, True])
def test_regulariser_sums_inverse_powered_distances_to_other_clusters_picks(distance, horizon):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    assign = rng.integers(0, 5, size=30)
    picks = np.array([int(np.flatnonzero(assign == c)[0]) for c in range(5)])
    neighbours = np.array([[(c + 1) % 5, (c + 2) % 5] for c in range(5)]) if horizon else None
    got = usl_regulariser(torch.from_numpy(x), torch.from_numpy(assign), torch.from_numpy(picks), 0.7,
                          None if neighbours is None else torch.from_numpy(neighbours), distance).numpy()
    for i in range(30):
        others = neighbours[assign[i]] if horizon else [c for c in range(5) if c != assign[i]]
        expected = sum(1 / np.linalg.norm(x[i] - x[picks[c]]) ** (POWER[distance] * 0.7) for c in others)
        assert got[i] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_usl_select_is_density_kmeans_and_alg1_in_the_chosen_convention(distance):
    rng = np.random.default_rng(3)
    raw = np.concatenate([rng.normal(loc=rng.normal(size=3) * 2, size=(25, 3)) for _ in range(5)]).astype(np.float32)
    picks = ops.usl_select(raw, 5, k=8, seed=4, distance=distance)
    x = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    _, assign = ops.kmeans(x, 5, seed=4)
    assert len(np.unique(assign)) == 5  # no empty cluster: no top-up in play
    expected = brute_usl_picks(x, brute_density(x, 8, distance), assign, 5, 0.5, 0.5, distance)
    assert picks.tolist() == expected


def test_the_two_conventions_pick_differently_on_the_same_input():
    """The convention matters: on this input Alg. 1 ends on different picks (so the tests above can tell)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(80, 3))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assign = rng.integers(0, 6, size=80)
    utility = brute_density(x, 8, "squared")
    squared = brute_usl_picks(x, utility, assign, 6, 0.5, 0.5, "squared")
    euclidean = brute_usl_picks(x, utility, assign, 6, 0.5, 0.5, "euclidean")
    assert squared != euclidean
    got = ops.usl.usl_regularised_picks(x.astype(np.float32), utility, assign, 6, 0.5, 0.5)
    assert got.tolist() == squared
