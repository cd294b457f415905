"""Kernels against brute force on small random inputs."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from al_lightning import ops
from al_lightning.ops.as3l import match_clusters
from al_lightning.ops.usl import usl_regularised_picks


def brute_k_center(x: np.ndarray, budget: int, centres: np.ndarray | None, first: int) -> list[int]:
    chosen = [] if centres is not None else [first]
    cover = list(centres) if centres is not None else [x[first]]
    while len(chosen) < budget:
        d = np.array([[np.sum((p - c) ** 2) for c in cover] for p in x]).min(1)
        i = int(np.argmax(d))
        chosen.append(i)
        cover.append(x[i])
    return chosen


@pytest.mark.parametrize("with_centres", [False, True])
def test_k_center_greedy_equals_exhaustive_greedy(with_centres):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float64)
    centres = rng.normal(size=(7, 6)) if with_centres else None
    fast = ops.k_center_greedy(torch.from_numpy(x), 40, None if centres is None else torch.from_numpy(centres),
                               first=5)
    assert fast == brute_k_center(x, 40, centres, first=5)


def test_k_center_greedy_on_clustered_data_where_pruning_matters():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(loc=10 * c, size=(80, 3)) for c in range(5)])
    assert ops.k_center_greedy(torch.from_numpy(x), 30, first=0) == brute_k_center(x, 30, None, first=0)


@pytest.mark.parametrize("dense_share", [2.0, 0.0], ids=["gathered-in-blocks", "every-row-in-place"])
def test_k_center_greedy_updates_distances_either_way_with_the_same_picks(monkeypatch, dense_share):
    """Touched rows gathered in blocks of 7 (every update spans many), or every row's distance
    computed in place: the same picks as the exhaustive greedy."""
    monkeypatch.setattr(ops.kcenter, "BLOCK_VALUES", 7 * 6)
    monkeypatch.setattr(ops.kcenter, "DENSE_SHARE", dense_share)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 6))
    assert ops.k_center_greedy(torch.from_numpy(x), 25, first=3) == brute_k_center(x, 25, None, first=3)
    assert ops.k_center_greedy(torch.from_numpy(x), 25, torch.zeros(1, 6)) == brute_k_center(x, 25, np.zeros((1, 6)), 0)


def materialised_badge(probs: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """BADGE's gradient embedding written out: (p - onehot(argmax p)) outer h, flattened."""
    a = probs.clone()
    a[torch.arange(len(a)), a.argmax(1)] -= 1
    return (a[:, :, None] * h[:, None, :]).reshape(len(a), -1)


def test_l2_normalised_stacks_parts_in_chunks_as_one_unit_length_copy():
    rng = np.random.default_rng(5)
    labeled, unlabeled = rng.normal(size=(3, 4)), torch.from_numpy(rng.normal(size=(11, 4)))
    unlabeled[2] = 0.0  # a zero row stays zero
    whole = np.concatenate([labeled, unlabeled.numpy()])
    out = ops.faiss_ops.l2_normalised(labeled, unlabeled, chunk=4)
    expected = whole / np.maximum(np.linalg.norm(whole, axis=1, keepdims=True), 1e-12)
    assert out.dtype == np.float32 and out.shape == (14, 4)
    assert np.allclose(out, expected, atol=1e-6) and not out[5].any()
    assert np.array_equal(unlabeled.numpy(), whole[3:]) and np.array_equal(labeled, whole[:3])  # inputs untouched


def test_l2_normalised_overwrite_scales_a_float32_part_where_it_lies():
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(11, 4)).astype(np.float32)
    rows[2] = 0.0
    copy = ops.faiss_ops.l2_normalised(rows, chunk=4)
    for given in (rows.copy(), torch.from_numpy(rows.copy())):
        out = ops.faiss_ops.l2_normalised(given, chunk=4, overwrite=True)
        assert np.shares_memory(out, np.asarray(given)) and np.array_equal(out, copy)
    doubles = rows.astype(np.float64)  # not float32: normalised into a copy, the input untouched
    out = ops.faiss_ops.l2_normalised(doubles, overwrite=True)
    assert not np.shares_memory(out, doubles) and np.array_equal(doubles, rows.astype(np.float64))


def test_row_sq_norms_cover_every_block_and_the_empty_matrix(monkeypatch):
    monkeypatch.setattr(ops.kcenter, "BLOCK_VALUES", 12)  # 3 rows of 4 per block: 11 rows make 4 blocks
    x = torch.from_numpy(np.random.default_rng(6).normal(size=(11, 4)))
    assert torch.allclose(ops.row_sq_norms(x), (x * x).sum(1), rtol=1e-12)
    assert ops.row_sq_norms(x[:0]).shape == (0,)


def test_badge_low_rank_distances_equal_the_materialised_embedding():
    rng = np.random.default_rng(2)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(50, 7))), 1)
    h = torch.from_numpy(rng.normal(size=(50, 11)))
    g = materialised_badge(probs, h)
    dense = torch.cdist(g, g) ** 2
    rows, cols = torch.arange(50), torch.arange(50)
    assert torch.allclose(ops.badge_pairwise_sq_distances(probs, h, rows, cols).double(), dense, atol=1e-8)


def test_badge_kmeanspp_follows_d2_sampling_on_the_materialised_embedding():
    rng = np.random.default_rng(3)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(80, 5))), 1)
    h = torch.from_numpy(rng.normal(size=(80, 9)))
    g = materialised_badge(probs, h)
    fast = ops.badge_kmeanspp(probs, h, 12, np.random.default_rng(7))
    # replay k-means++ on the dense embedding with the same random draws
    draw = np.random.default_rng(7)
    picks = [int(torch.argmax((g * g).sum(1)))]
    d2 = ((g - g[picks[0]]) ** 2).sum(1).numpy()
    d2[picks] = 0
    while len(picks) < 12:
        cumulative = np.cumsum(d2)
        i = int(np.searchsorted(cumulative, draw.random() * cumulative[-1]))
        picks.append(i)
        d2 = np.minimum(d2, ((g - g[i]) ** 2).sum(1).numpy())
        d2[picks] = 0
    assert fast == picks and len(set(fast)) == 12


def test_label_propagation_equals_a_dense_solve():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    w_n = ops.knn_affinity(x, k=10)
    dense_w = w_n.toarray()
    assert np.allclose(dense_w, dense_w.T) and np.all(np.diag(dense_w) == 0)
    labeled, labels = np.array([0, 5, 9, 30, 77]), np.array([0, 1, 2, 0, 1])
    y = np.zeros((200, 3))
    y[labeled, labels] = 1
    exact = np.linalg.solve(np.eye(200) - 0.99 * dense_w, y)
    cg = ops.conjugate_gradient(w_n, y, 0.99, tol=1e-12, max_iter=2000)
    assert np.allclose(cg, exact, atol=1e-6 * np.abs(exact).max())
    from al_lightning.ops.label_propagation import conjugate_gradient_torch, torch_sparse
    for iterations in (20, 2000):  # the torch solver (jLP's on a GPU) takes the same steps as scipy's
        on_torch = conjugate_gradient_torch(torch_sparse(w_n, "cpu"), torch.from_numpy(y), 0.99, tol=1e-12,
                                            max_iter=iterations).numpy()
        assert np.allclose(on_torch, ops.conjugate_gradient(w_n, y, 0.99, tol=1e-12, max_iter=iterations),
                           rtol=1e-9, atol=1e-12)
    probs, pseudo, weights = ops.label_propagation(x, labeled, labels, 3, k=10, max_iter=2000)
    clipped = np.maximum(exact, 0)
    expected = clipped / clipped.sum(1, keepdims=True)
    assert np.allclose(probs, expected, atol=1e-5)
    assert np.array_equal(pseudo[labeled], labels) and np.all(weights[labeled] == 1)
    entropy = -(expected * np.log(np.maximum(expected, 1e-300))).sum(1)
    free = np.setdiff1d(np.arange(200), labeled)
    assert np.allclose(weights[free], 1 - entropy[free] / np.log(3), atol=1e-5)


def test_knn_affinity_uses_cubed_clipped_cosine_and_is_symmetric():
    x = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32)
    w = ops.knn_affinity(x, k=1).toarray()
    # 1-NN: 0<->1 (cos 0.8), 2->1 (cos 0.6), 3->? (cos 0 with 2, -1 with 0): zero weight dropped
    raw = np.zeros((4, 4))
    raw[0, 1] = raw[1, 0] = 0.8 ** 3
    raw[2, 1] = 0.6 ** 3
    w_sym = raw + raw.T
    d = w_sym.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1e-300)), 0)
    assert np.allclose(w, inv[:, None] * w_sym * inv[None, :], atol=1e-6)


def brute_knn_graph(x: np.ndarray, k: int, graph: str) -> np.ndarray:
    """Dense W_n written out: each row's k most cosine-similar other rows, s = [cos]_+^3, then the
    union (A + A^T) or the reciprocal graph (edge only where both ends list each other)."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = u @ u.T
    n = len(x)
    lists = np.zeros((n, n), dtype=bool)
    for i in range(n):
        others = [j for j in np.argsort(-cos[i], kind="stable") if j != i]
        lists[i, others[:k]] = True
    s = np.maximum(cos, 0) ** 3
    a = np.where(lists, s, 0.0)
    w = a + a.T if graph == "union" else np.where(lists & lists.T, s, 0.0)
    d = w.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1e-300)), 0)
    return inv[:, None] * w * inv[None, :]


@pytest.mark.parametrize("graph", ["union", "mutual"])
def test_knn_graphs_equal_brute_force_and_mutual_keeps_only_reciprocal_edges(graph):
    rng = np.random.default_rng(14)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    dense = brute_knn_graph(x.astype(np.float64), 6, graph)
    assert np.allclose(ops.knn_affinity(x, k=6, graph=graph).toarray(), dense, atol=1e-5)
    union, mutual = (brute_knn_graph(x.astype(np.float64), 6, g) > 0 for g in ("union", "mutual"))
    assert (mutual <= union).all() and mutual.sum() < union.sum()  # some edges are one-sided
    # the option reaches the propagation: Z solves (I - alpha W_n) Z = Y on that graph
    labeled, labels = np.array([0, 7, 21, 40]), np.array([0, 1, 2, 1])
    y = np.zeros((60, 3))
    y[labeled, labels] = 1
    z = np.maximum(np.linalg.solve(np.eye(60) - 0.99 * dense, y), 0)
    reached = z.sum(1) > 0
    probs, _, _ = ops.label_propagation(x, labeled, labels, 3, k=6, max_iter=3000, graph=graph)
    assert np.allclose(probs[reached], z[reached] / z[reached].sum(1, keepdims=True), atol=1e-4)
    with pytest.raises(ValueError, match="graph"):
        ops.knn_affinity(x, k=6, graph="reciprocal")


def test_jlp_picks_the_least_manifold_similar_one_at_a_time():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    labeled, candidates = np.arange(10), np.arange(10, 120)
    picks = ops.joint_label_propagation_select(x, labeled, candidates, 4, k=8, max_iter=3000)
    dense = ops.knn_affinity(x, k=8).toarray()
    inverse = np.linalg.inv(np.eye(120) - 0.99 * dense)
    chosen: list[int] = []
    for _ in range(4):
        delta = np.zeros(120)
        delta[np.concatenate([labeled, chosen]).astype(int)] = 1
        sim = inverse @ delta
        order = [c for c in candidates if c not in chosen]
        chosen.append(int(min(order, key=lambda c: sim[c])))
    assert picks == chosen


def test_usl_one_pick_per_cluster_each_the_regularised_argmax():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(150, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assign = rng.integers(0, 6, size=150)
    utility = rng.random(150)
    picks = usl_regularised_picks(x, utility, assign, 6, lam=0.5, alpha=0.5, m_reg=0.9, iterations=10,
                                  distance="euclidean")
    # brute force Alg. 1
    best = [int(np.flatnonzero(assign == c)[np.argmax(utility[assign == c])]) for c in range(6)]
    reg_bar = np.zeros(150)
    for _ in range(10):
        reg = np.array([sum(1 / np.linalg.norm(x[i] - x[best[c]]) ** 0.5 for c in range(6) if c != assign[i])
                        for i in range(150)])
        reg_bar = 0.9 * reg_bar + 0.1 * reg
        value = utility - 0.5 * reg_bar
        best = [int(np.flatnonzero(assign == c)[np.argmax(value[assign == c])]) for c in range(6)]
    assert picks.tolist() == best
    assert sorted(assign[picks].tolist()) == list(range(6))


def test_usl_select_returns_m_distinct_rows_one_per_kmeans_cluster():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(loc=5 * c, size=(40, 3)) for c in range(8)]).astype(np.float32)
    picks = ops.usl_select(x, 8, k=10, seed=0)
    assert len(set(picks.tolist())) == 8
    _, assign = ops.kmeans(x / np.linalg.norm(x, axis=1, keepdims=True), 8, seed=0)
    assert len(set(assign[picks].tolist())) == 8


def test_knn_density_is_inverse_mean_distance_to_the_k_nearest():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    expected = 1 / np.sort(d, 1)[:, :5].mean(1)
    assert np.allclose(ops.knn_density(x, 5, distance="euclidean"), expected, rtol=1e-4)


def test_constrained_seed_kmeans_lets_labels_steer_the_centres_not_pin_the_samples():
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.normal(loc=4 * c, size=(50, 2)) for c in range(3)]).astype(np.float32)
    labeled = np.array([0, 1, 60, 61, 120, 2])
    labels = np.array([0, 0, 1, 1, 2, 1])  # row 2 is "mislabeled": it lands in blob 0's cluster
    for k in (3, 6, 9):
        assign, cluster_label = ops.constrained_seed_kmeans(x, labeled, labels, k, seed=0)
        assert (cluster_label >= 0).sum() == 3
        if k == 3:
            assert cluster_label[assign[labeled]].tolist() == [0, 0, 1, 1, 2, 0]
    ppl = ops.prior_pseudo_labels(x, labeled, labels, 3, cluster_counts=[3, 6], seed=0)
    assert np.allclose(ppl.sum(1), 1) and ppl.shape == (150, 3)
    assert (ppl[130:150].argmax(1) == 2).mean() > 0.9


def test_match_clusters_recovers_a_permutation():
    a = np.array([0, 0, 1, 1, 2, 2, 2])
    assert np.array_equal(match_clusters(a, np.array([2, 2, 0, 0, 1, 1, 1]), 3), a)


@pytest.mark.parametrize("seed", range(6))
def test_match_clusters_reaches_the_dense_assignment_optimum(seed):
    """The sparse matching is a bijection with the overlap of the dense Hungarian solution, also
    when clusters overlap nobody they could take (few samples, many clusters)."""
    from scipy.optimize import linear_sum_assignment
    rng = np.random.default_rng(seed)
    k, n = (7, 60) if seed % 2 else (12, 15)
    reference, other = rng.integers(0, k, n), rng.integers(0, k, n)
    other[: n // 3] = (reference[: n // 3] + 3) % k  # a partly permuted copy
    overlap = np.zeros((k, k), dtype=np.int64)
    np.add.at(overlap, (reference, other), 1)
    rows, cols = linear_sum_assignment(-overlap)
    relabelled = match_clusters(reference, other, k)
    mapping = {o: int(r) for o, r in zip(other, relabelled)}
    assert len(set(mapping.values())) == len(mapping)  # a bijection on the clusters that occur
    assert int(np.sum(relabelled == reference)) == int(overlap[rows, cols].sum())


def test_stable_cluster_select_and_kmedoids_return_distinct_rows():
    rng = np.random.default_rng(10)
    x = np.concatenate([rng.normal(loc=6 * c, size=(30, 4)) for c in range(5)]).astype(np.float32)
    for picks in (ops.stable_cluster_select(x, 5, runs=3, seed=0), ops.k_medoids(x, 5, seed=0)):
        assert len(set(picks.tolist())) == 5
        assert sorted((picks // 30).tolist()) == [0, 1, 2, 3, 4]  # one per well-separated blob


def test_k_medoids_medoid_minimises_summed_distance():
    rng = np.random.default_rng(11)
    pts = torch.from_numpy(rng.normal(size=(25, 3)))
    brute = int(torch.cdist(pts, pts).sum(1).argmin())
    assert ops.kmedoids.cluster_medoid(pts) == brute


@pytest.mark.parametrize("overwrite, blocks", [(False, False), (True, False), (False, True)])
def test_symmetric_kl_k_center_equals_brute_force(overwrite, blocks, monkeypatch):
    if blocks:  # the 60 rows' entropies and divergences to the centres in blocks of 7
        monkeypatch.setattr(ops.cdal, "CENTRE_BLOCK_ROWS", 7)
        monkeypatch.setattr(ops.cdal, "CHUNK_ROWS", 7)
    rng = np.random.default_rng(12)
    p = torch.softmax(torch.from_numpy(rng.normal(size=(60, 4)) * 2), 1)
    p[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # a zero probability: clamped to 1e-12, then renormalised
    centres = torch.softmax(torch.from_numpy(rng.normal(size=(3, 4))), 1)
    given = p.clone()
    picks = ops.contextual_diversity_k_center(given, 8, centres, overwrite=overwrite)
    clamped = p.clamp_min(1e-12) / p.clamp_min(1e-12).sum(1, keepdim=True)
    assert torch.equal(given, clamped if overwrite else p)
    p = clamped

    def skl(a, b):
        return 0.5 * float((a * (a / b).log()).sum() + (b * (b / a).log()).sum())
    cover, chosen = list(centres), []
    for _ in range(8):
        d = [min(skl(row, c) for c in cover) for row in p]
        i = int(np.argmax(d))
        chosen.append(i)
        cover.append(p[i])
    assert picks == chosen


def test_alfamix_candidates_are_exactly_the_prediction_flips():
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 3).double()
    z = torch.randn(100, 6, dtype=torch.float64)
    anchors = torch.randn(3, 6, dtype=torch.float64)
    mask = ops.alfamix_candidates(z, head, anchors, budget=1000, mode="closed_form")
    # budget above n: the cap climbs to 1; brute force over the same alphas
    pred = head(z).argmax(1)
    zv = z.clone().requires_grad_(True)
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(head(zv), pred, reduction="sum"), zv)[0]
    expected = torch.zeros(100, dtype=torch.bool)
    cap = 0.0
    while cap < 1.0:
        cap += 1 / 32
        eps = cap / np.sqrt(6)
        for anchor in anchors:
            gap = anchor - z
            alpha = eps * gap.norm(dim=1, keepdim=True) / grads.norm(dim=1, keepdim=True) * grads / (gap + 1e-8)
            expected |= head((1 - alpha) * z + alpha * anchor).argmax(1) != pred
    assert torch.equal(mask, expected)
    assert mask.any() and not mask.all()
    general = ops.alfamix_candidates(z, lambda v: head(v), anchors, budget=1000, mode="closed_form")
    assert torch.equal(general, expected)  # the per-cap loop for heads that are not affine
    for classify in (head, lambda v: head(v)):  # rows in blocks give the same mask
        assert torch.equal(ops.alfamix_candidates(z, classify, anchors, budget=1000, chunk=7), expected)
    picks = ops.alfamix_select(z, head, anchors, 10, np.random.default_rng(0))
    assert len(set(picks.tolist())) == 10


def test_nearest_to_centres_is_distinct():
    x = np.array([[0.0], [0.1], [5.0]], dtype=np.float32)
    picks = ops.nearest_to_centres(x, np.array([[0.0], [0.05]], dtype=np.float32))
    assert sorted(picks.tolist()) == [0, 1]


def test_knn_search_is_exact():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    dist, idx = ops.knn_search(x, x, 4)
    brute = ((x[:, None] - x[None]) ** 2).sum(-1)
    assert np.array_equal(idx, np.argsort(brute, 1, kind="stable")[:, :4])
    assert np.allclose(dist, np.sort(brute, 1)[:, :4], atol=1e-4)
    assert sp.issparse(ops.knn_affinity(x, k=3))


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_flat_search_without_an_index_equals_a_faiss_flat_index_and_copies_nothing(metric):
    """The CPU search runs on the caller's array (no 2 GB copy of a million-row base) and returns
    what a faiss flat index over a copy returns, ties (duplicate rows) included."""
    import faiss
    from al_lightning.ops.faiss_ops import FlatIndex
    rng = np.random.default_rng(15)
    base = rng.normal(size=(3000, 24)).astype(np.float32)
    base[1500:1600] = base[:100]  # exact ties, between far-apart rows
    queries = np.concatenate([base[:50], rng.normal(size=(50, 24)).astype(np.float32)])
    index = FlatIndex(base, metric)
    assert np.shares_memory(index.base, base)
    reference = (faiss.IndexFlatL2 if metric == "l2" else faiss.IndexFlatIP)(24)
    reference.add(base)
    expected_d, expected_i = reference.search(queries, 7)
    found_d, found_i = index.search(queries, 7)
    assert np.array_equal(found_i, expected_i) and np.array_equal(found_d, expected_d)
    assert found_i.dtype == np.int64 and index.search(queries, 5000)[1].shape == (100, 3000)


def test_usl_horizon_over_all_other_clusters_equals_the_full_regulariser():
    rng = np.random.default_rng(14)
    x = rng.normal(size=(90, 3)).astype(np.float32)
    assign = rng.integers(0, 5, size=90)
    utility = rng.random(90)
    everyone = np.array([[c for c in range(5) if c != own] for own in range(5)])
    full = usl_regularised_picks(x, utility, assign, 5, 1.0, 1.0)
    assert np.array_equal(usl_regularised_picks(x, utility, assign, 5, 1.0, 1.0, neighbours=everyone), full)


def test_alfamix_optimised_alpha_flags_only_samples_a_small_mix_can_flip():
    head = torch.nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        head.bias.zero_()
    near = torch.tensor([[0.01, 0.0]]).repeat(10, 1)  # class 0, at the boundary
    far = torch.tensor([[50.0, 0.0]]).repeat(10, 1)  # class 0, a mix of 1/32 cannot flip it
    anchors = torch.tensor([[5.0, 0.0], [-5.0, 0.0]])
    mask = ops.alfamix_candidates(torch.cat([near, far]), head, anchors, budget=5, mode="optimised")
    assert mask[:10].all() and not mask[10:].any()


@pytest.mark.parametrize("centres", [None, torch.zeros(1, 3)])
def test_k_center_never_picks_a_row_twice_on_duplicates(centres):
    """Every row on the same point (or on the only centre): all distances are 0, yet the picks
    are ``budget`` distinct rows, smallest first."""
    x = torch.zeros(9, 3)
    assert ops.k_center_greedy(x, 5, centres=centres, first=4) == ([4, 0, 1, 2, 3] if centres is None
                                                                  else [0, 1, 2, 3, 4])
