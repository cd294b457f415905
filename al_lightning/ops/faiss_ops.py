"""kNN search and k-means through faiss: exact flat indexes, on the GPU when faiss-gpu sees one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
import torch

from al_lightning.ops.kmeanspp import kmeanspp


def as_float32(x: Any) -> np.ndarray:
    """A C-contiguous float32 numpy copy (or view) of a tensor or array, as faiss requires."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def l2_normalised(*parts: Any, chunk: int = 65_536, overwrite: bool = False) -> np.ndarray:
    """The rows of ``parts`` (tensors or arrays of equal width; None parts are skipped), stacked and
    scaled to unit length, as one new float32 array (the callers' data is left alone). Written
    ``chunk`` rows at a time: at 1,000,000 x 512 a whole-matrix norm and a concatenation each held
    another 2 GB copy. With ``overwrite`` and one part already float32 (a contiguous array or a CPU
    tensor), its rows are scaled where they lie and its storage is returned: no copy at all."""
    parts = tuple(part for part in parts if part is not None)
    if overwrite and len(parts) == 1:
        out = as_float32(parts[0])
        for start in range(0, len(out), chunk):
            block = out[start:start + chunk]
            block /= _row_norms(block)
        return out
    width = parts[-1].shape[1]
    out = np.empty((sum(len(part) for part in parts), width), dtype=np.float32)
    row = 0
    for part in parts:
        for start in range(0, len(part), chunk):
            block = as_float32(part[start:start + chunk])
            out[row:row + len(block)] = block / _row_norms(block)
            row += len(block)
    return out


def _row_norms(block: np.ndarray) -> np.ndarray:
    """Each row's L2 norm as a column, at least 1e-12 (a zero row stays zero)."""
    return np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_RESOURCES: list[Any] = []


def _on_device(index: faiss.Index) -> faiss.Index:
    if not gpu_available():
        return index
    if not _RESOURCES:
        _RESOURCES.append(faiss.StandardGpuResources())
    return faiss.index_cpu_to_gpu(_RESOURCES[0], 0, index)


class FlatIndex:
    """Exact (flat) kNN search over ``base``, searched as often as needed. On the CPU the base is
    searched where it lies (``faiss.knn``, the brute-force kernel a flat index runs): a faiss index
    would copy it, another 2 GB at a million rows of 512. With faiss-gpu and a GPU the base is
    copied to the device once, in a flat GPU index."""

    def __init__(self, base: Any, metric: str = "l2") -> None:
        if metric not in ("l2", "ip"):
            raise ValueError(f"metric must be 'l2' or 'ip', got {metric!r}")
        self.base = as_float32(base)
        self.size = self.base.shape[0]
        self.metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self.index = None
        if gpu_available():
            self.index = _on_device((faiss.IndexFlatL2 if metric == "l2" else faiss.IndexFlatIP)(self.base.shape[1]))
            self.index.add(self.base)
            self.base = None

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries, k = as_float32(queries), min(k, self.size)
        if self.index is not None:
            distances, indices = self.index.search(queries, k)
        else:
            distances, indices = faiss.knn(queries, self.base, k, metric=self.metric)
        return distances, indices.astype(np.int64)


def knn_search(base: Any, queries: Any | None = None, k: int = 1, metric: str = "l2"
               ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``base`` for every query row (``queries`` defaults to ``base``,
    whose own row then comes first). ``metric``: ``l2`` returns squared Euclidean distances,
    ``ip`` inner products (largest first). Exact search (flat index)."""
    base = as_float32(base)
    return FlatIndex(base, metric).search(base if queries is None else queries, k)


def kmeans(x: Any, k: int, seed: int = 0, restarts: int = 1, iterations: int = 20, init: str = "kmeans++"
           ) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means (faiss), the lowest-inertia of ``restarts`` seeded runs: ``(centroids (k, d),
    assignments (n,))``. ``init``: k-means++ seeding (default, as scikit-learn) or faiss's random
    sample. Every point is used (no sub-sampling)."""
    x = as_float32(x)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k-means needs 1 <= k <= n, got k={k} for n={x.shape[0]}")
    if init not in ("kmeans++", "random"):
        raise ValueError(f"k-means init must be 'kmeans++' or 'random', got {init!r}")
    best: tuple[float, np.ndarray] | None = None
    for r in range(restarts):
        clusterer = faiss.Kmeans(x.shape[1], k, niter=iterations, seed=seed + r, gpu=gpu_available(),
                                 max_points_per_centroid=max(256, -(-x.shape[0] // k)), min_points_per_centroid=1,
                                 verbose=False)
        if init == "kmeans++":  # seeded on the GPU when there is one: k sequential passes over x
            rows = torch.from_numpy(x).to("cuda" if torch.cuda.is_available() else "cpu")
            seeds = kmeanspp(rows, k, np.random.default_rng([seed, r]))
            clusterer.train(x, init_centroids=x[seeds])
        else:
            clusterer.train(x)
        inertia = float(clusterer.obj[-1]) if len(clusterer.obj) else 0.0
        if best is None or inertia < best[0]:
            best = (inertia, clusterer.centroids.copy())
    assert best is not None
    centroids = best[1]
    _, assignments = knn_search(centroids, x, 1)
    return centroids, assignments[:, 0]


def nearest_to_centres(x: Any, centres: Any, candidates: int = 16) -> np.ndarray:
    """One distinct row of ``x`` per centre: each centre takes its nearest row not already taken,
    centres served in order of how close their best row is (ties to the smaller index)."""
    x_np, centres_np = as_float32(x), as_float32(centres)
    n, m = x_np.shape[0], centres_np.shape[0]
    if m > n:
        raise ValueError(f"{m} centres but only {n} rows to pick from")
    k = min(n, max(candidates, 1))
    while True:
        dist, idx = knn_search(x_np, centres_np, k)
        taken = np.zeros(n, dtype=bool)
        picks = np.full(m, -1, dtype=np.int64)
        for c in np.lexsort((np.arange(m), dist[:, 0])):
            free = idx[c][~taken[idx[c]]]
            if len(free):
                picks[c] = free[0]
                taken[free[0]] = True
        if (picks >= 0).all() or k == n:
            return picks
        k = min(n, 4 * k)


def range_search(base: Any, radius: float, queries: Any | None = None, chunk: int = 4096
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Every row of ``base`` at Euclidean distance strictly below ``radius`` from each query row
    (``queries`` defaults to ``base``, where each row finds itself), as CSR arrays ``(indptr (q + 1,)
    int64, indices)``: the neighbours of query i are ``indices[indptr[i]:indptr[i + 1]]``, in no
    promised order. Exact, over query chunks so no q x n block is ever held; memory is the number of
    pairs found. On the CPU, faiss's brute-force kernel on the caller's arrays (the one a flat
    index runs, without copying the base into one); faiss has no GPU range search, so with a GPU
    the distances are torch blocks on the device (:func:`range_search_blocks`). Indices are int32
    when they fit."""
    base = as_float32(base)
    queries = base if queries is None else as_float32(queries)
    if torch.cuda.is_available():
        return range_search_blocks(base, radius, queries, torch.device("cuda"))
    dtype = np.int32 if base.shape[0] < 2**31 else np.int64
    counts, parts = [np.zeros(1, dtype=np.int64)], []
    if radius > 0:
        for start in range(0, queries.shape[0], chunk):
            block = queries[start:start + chunk]  # rows of a C-contiguous array: contiguous
            result = faiss.RangeSearchResult(len(block))
            faiss.range_search_L2sqr(faiss.swig_ptr(block), faiss.swig_ptr(base), base.shape[1], len(block),
                                     base.shape[0], float(radius) ** 2, result)
            lims = faiss.rev_swig_ptr(result.lims, len(block) + 1).astype(np.int64)
            counts.append(np.diff(lims))
            parts.append(faiss.rev_swig_ptr(result.labels, int(lims[-1])).astype(dtype))
    else:  # an empty ball: faiss could still report a self-distance rounded below zero
        counts.append(np.zeros(queries.shape[0], dtype=np.int64))
    return np.cumsum(np.concatenate(counts)), np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


#: the most squared distances a block of :func:`sq_distance_blocks` holds (1 GiB of float32)
BLOCK_DISTANCES = 2**28


def sq_distance_blocks(base: np.ndarray, queries: np.ndarray, device: torch.device,
                       block_distances: int = BLOCK_DISTANCES) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, d2)``: the squared distances ||q||^2 + ||b||^2 - 2 q.b (the expansion faiss's
    kernels use) of ``queries[start:start + len(d2)]`` to every row of ``base``, a block of queries
    at a time on ``device``, for the all-pairs searches faiss has no GPU route for. Matrix products
    run in full float32 (no TF32), so the values are the CPU kernels' up to float rounding."""
    b = torch.from_numpy(base).to(device)
    q = b if queries is base else torch.from_numpy(queries).to(device)
    b_sq = (b * b).sum(1)
    q_sq = b_sq if q is b else (q * q).sum(1)
    rows = max(1, block_distances // max(1, len(b)))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for start in range(0, len(q), rows):
            yield start, torch.addmm(b_sq[None, :], q[start:start + rows], b.T, alpha=-2.0).add_(
                q_sq[start:start + rows, None])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def range_search_blocks(base: np.ndarray, radius: float, queries: np.ndarray, device: torch.device,
                        block_distances: int = BLOCK_DISTANCES) -> tuple[np.ndarray, np.ndarray]:
    """:func:`range_search` from :func:`sq_distance_blocks` on ``device``: the pairs strictly
    below ``radius**2``, each query's neighbours in ascending order; the balls of the CPU kernel
    up to float rounding at the boundary."""
    index_dtype = np.int32 if base.shape[0] < 2**31 else np.int64
    dtype = torch.int32 if index_dtype is np.int32 else torch.int64
    counts, parts = [torch.zeros(1, dtype=torch.int64)], []
    if radius > 0:
        for _, d2 in sq_distance_blocks(base, queries, device, block_distances):
            inside = d2 < float(radius) ** 2
            counts.append(inside.sum(1).cpu())
            parts.append(inside.nonzero()[:, 1].to(dtype).cpu())
    else:
        counts.append(torch.zeros(len(queries), dtype=torch.int64))
    indptr = torch.cumsum(torch.cat(counts), 0).numpy()
    return indptr, torch.cat(parts).numpy() if parts else np.empty(0, dtype=index_dtype)
