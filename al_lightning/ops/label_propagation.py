"""Label propagation on a kNN graph (Zhou et al. 2003 as used by Iscen et al. 2019 and by
"Rethinking deep active learning", Simeoni et al., section 3 Eq. 8-10, and jLP, Eq. 11-12).

Graph: k nearest neighbours of the L2-normalised features (faiss, exact), affinities
s = [u . v]_+^gamma (gamma = 3) in A (row i holds the neighbours of i), then W symmetric with zero
diagonal, W_n = D^-1/2 W D^-1/2, all sparse. Two graphs (``graph``):

* ``union`` (default): W = A + A^T, an edge wherever either end lists the other. This is what the
  released code of both Iscen et al. (ahmetius/LP-DeepSSL, ``W = W + W.T``) and Simeoni et al.
  (osimeoni/RethinkingDeepActiveLearning, lib/label_propagation.py) builds, so published numbers
  come from it.
* ``mutual``: the reciprocal kNN graph Simeoni et al.'s text names (sections 4 and 6.1, citing
  Iscen et al.), an edge i-j only when each is among the other's k nearest neighbours
  (W = min(A, A^T); both entries are the same s(i, j), and a constant factor would cancel in W_n).

Both codes cube the raw inner product; the paper's clipping [.]_+ is followed (it only matters for
neighbours at negative cosine).

Propagation solves (I - alpha W_n) Z = Y by conjugate gradient, every column at once.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch

from al_lightning.ops.faiss_ops import l2_normalised, knn_search


Graph = Literal["union", "mutual"]


def knn_affinity(features: Any, k: int = 50, gamma: float = 3.0, graph: Graph = "union",
                 overwrite: bool = False) -> sp.csr_matrix:
    """The symmetrically normalised affinity ``W_n`` (n x n, sparse, zero diagonal) of the ``union``
    or ``mutual`` kNN graph (see the module docstring). ``overwrite``: normalise ``features`` in
    place (float32) instead of a copy."""
    if graph not in ("union", "mutual"):
        raise ValueError(f"graph must be 'union' or 'mutual', got {graph!r}")
    x = l2_normalised(features, overwrite=overwrite)
    n = x.shape[0]
    sims, nbrs = knn_search(x, x, min(k + 1, n), metric="ip")
    rows = np.repeat(np.arange(n), nbrs.shape[1])
    cols, vals = nbrs.ravel(), np.maximum(sims.ravel(), 0.0) ** gamma
    keep = (cols != rows) & (cols >= 0) & (vals > 0)
    a = sp.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n))
    w = (a + a.T if graph == "union" else a.minimum(a.T)).tocsr()
    w.setdiag(0.0)
    w.eliminate_zeros()
    degree = np.asarray(w.sum(axis=1), dtype=np.float64).ravel()
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-300)), 0.0)
    d = sp.diags(inv_sqrt)
    return (d @ w @ d).tocsr()


def conjugate_gradient(w_n: sp.spmatrix, y: np.ndarray, alpha: float = 0.99, tol: float = 1e-6,
                       max_iter: int = 20) -> np.ndarray:
    """Solve ``(I - alpha W_n) Z = Y`` for every column of ``Y`` at once (block of independent
    CG runs sharing each sparse product). ``max_iter`` 20 and ``tol`` 1e-6 are Iscen et al.'s."""
    y = np.asarray(y, dtype=np.float64)
    squeeze = y.ndim == 1
    b = y[:, None] if squeeze else y
    z = np.zeros_like(b)
    r = b.copy()
    p = r.copy()
    rs = (r * r).sum(0)
    stop = tol * tol * np.maximum((b * b).sum(0), 1e-300)
    for _ in range(max_iter):
        live = rs > stop
        if not live.any():
            break
        ap = p - alpha * (w_n @ p)
        step = np.where(live, rs / np.maximum((p * ap).sum(0), 1e-300), 0.0)
        z += step * p
        r -= step * ap
        rs_new = (r * r).sum(0)
        p = r + np.where(live, rs_new / np.maximum(rs, 1e-300), 0.0) * p
        rs = rs_new
    return z[:, 0] if squeeze else z


def conjugate_gradient_torch(w_n: torch.Tensor, y: torch.Tensor, alpha: float = 0.99, tol: float = 1e-6,
                             max_iter: int = 20) -> torch.Tensor:
    """:func:`conjugate_gradient` with a torch sparse ``w_n`` on its device (the GPU for large
    graphs: each step is one sparse product), columns of ``y`` solved at once."""
    squeeze = y.dim() == 1
    b = y[:, None] if squeeze else y
    z = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(0)
    stop = tol * tol * (b * b).sum(0).clamp_min(1e-300)
    for _ in range(max_iter):
        live = rs > stop
        if not bool(live.any()):
            break
        ap = p - alpha * (w_n @ p)
        step = torch.where(live, rs / (p * ap).sum(0).clamp_min(1e-300), torch.zeros_like(rs))
        z += step * p
        r -= step * ap
        rs_new = (r * r).sum(0)
        p = r + torch.where(live, rs_new / rs.clamp_min(1e-300), torch.zeros_like(rs)) * p
        rs = rs_new
    return z[:, 0] if squeeze else z


def torch_sparse(matrix: sp.csr_matrix, device: str | torch.device) -> torch.Tensor:
    """A scipy CSR matrix (valid by construction) as a float64 torch sparse CSR tensor on ``device``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(torch.from_numpy(matrix.indptr.astype(np.int64)),
                                       torch.from_numpy(matrix.indices.astype(np.int64)),
                                       torch.from_numpy(matrix.data.astype(np.float64)), matrix.shape,
                                       device=device, check_invariants=False)


def label_propagation(features: Any, labeled: np.ndarray, labels: np.ndarray, num_classes: int, k: int = 50,
                      alpha: float = 0.99, gamma: float = 3.0, max_iter: int = 20, graph: Graph = "union"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probs (n, C), pseudo_labels (n,), weights (n,))``: Y the zero-one label matrix (Eq. 8),
    Z = h(Y) with negatives clipped and rows l1-normalised (Eq. 9), pseudo-label argmax, weight
    1 - H(p) / log C (Eq. 10); a row nothing reaches gets the uniform p and weight 0. Labeled rows
    keep their true label with weight 1. The (1 - alpha) factor of Eq. 9 cancels in the l1
    normalisation. Both reference codes differ where the paper is explicit and the paper is
    followed: they scale Y's columns by 1 / |L_c| ("y_pooling mean") and divide the weights by
    their maximum (which cancels in sampling, where the weights are l1-normalised)."""
    w_n = knn_affinity(features, k, gamma, graph)
    n = w_n.shape[0]
    y = np.zeros((n, num_classes))
    y[np.asarray(labeled), np.asarray(labels)] = 1.0
    z = np.maximum(conjugate_gradient(w_n, y, alpha, max_iter=max_iter), 0.0)
    total = z.sum(1, keepdims=True)
    probs = np.where(total > 0, z / np.maximum(total, 1e-300), 1.0 / num_classes)
    entropy = -(probs * np.log(np.maximum(probs, 1e-300))).sum(1)
    weights = 1.0 - entropy / np.log(num_classes)
    pseudo = probs.argmax(1)
    pseudo[labeled], weights[labeled] = labels, 1.0
    return probs, pseudo, weights


def joint_label_propagation_select(features: Any, labeled: np.ndarray, candidates: np.ndarray, budget: int,
                                   k: int = 50, alpha: float = 0.99, gamma: float = 3.0, max_iter: int = 20,
                                   device: str | torch.device = "cpu", overwrite: bool = False) -> list[int]:
    """jLP (Eq. 12): greedily acquire the candidate least similar on the manifold to every labeled
    or already-acquired sample, ``argmin_i h(delta(L))_i``. h is linear, so adding a pick adds the
    propagation of its indicator: one CG solve per pick, none of the earlier ones repeated. On a
    CUDA ``device`` the solves run there (a 10,000-pick batch on a million-node graph is 200,000
    sparse products); on the CPU, scipy's. ``overwrite``: the graph normalises ``features`` in place."""
    w_n = knn_affinity(features, k, gamma, overwrite=overwrite)
    n = w_n.shape[0]
    if torch.device(device).type == "cuda":
        graph = torch_sparse(w_n, device)
        solve = lambda v: conjugate_gradient_torch(graph, v, alpha, max_iter=max_iter)  # noqa: E731
    else:
        solve = lambda v: torch.from_numpy(conjugate_gradient(w_n, v.numpy(), alpha, max_iter=max_iter))  # noqa: E731
    delta = torch.zeros(n, dtype=torch.float64, device=device)
    delta[torch.as_tensor(np.asarray(labeled, dtype=np.int64), device=device)] = 1.0
    similarity = solve(delta) if len(labeled) else torch.zeros_like(delta)
    candidates = torch.as_tensor(np.asarray(candidates, dtype=np.int64), device=device)
    values = similarity[candidates]
    picks: list[int] = []
    for _ in range(min(budget, len(candidates))):
        j = int(torch.argmin(values))
        picks.append(int(candidates[j]))
        e = torch.zeros_like(delta)
        e[picks[-1]] = 1.0
        values += solve(e)[candidates]
        values[j] = math.inf
    return picks
