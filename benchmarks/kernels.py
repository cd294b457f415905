"""Selection and propagation kernels at CIFAR scale against straightforward references.

One line per case: ``kernel n d classes budget seconds reference_seconds speedup``. A reference is
a plain implementation timed in the same run; where it cannot afford the full size it runs on a
subsample (or fewer picks) and is scaled by its complexity, as the ``note`` column says.
Synthetic features are a mixture of Gaussian clusters (trained embeddings are clustered).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from al_lightning import ops


def clustered(n: int, d: int, clusters: int, seed: int, spread: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, size=n)] + spread * rng.normal(size=(n, d)).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def line(kernel: str, n: int, d: int, classes: int | str, budget: int | str, seconds: float,
         reference: float | None, goal: str, note: str = "") -> None:
    ref = f"{reference:.2f}" if reference is not None else "-"
    speed = f"{reference / seconds:.1f}x" if reference is not None else "-"
    print(f"{kernel:<18} {n:>6} {d:>4} {classes!s:>7} {budget!s:>6} {seconds:>8.3f} {ref:>9} {speed:>8}"
          f"   goal: {goal}{'  (' + note + ')' if note else ''}", flush=True)


# ----------------------------------------------------------------------------- references
def reference_kmeanspp_dense(g: np.ndarray, picks: int, rng: np.random.Generator) -> None:
    chosen = [int(np.argmax((g * g).sum(1)))]
    d2 = ((g - g[chosen[0]]) ** 2).sum(1)
    while len(chosen) < picks:
        i = int(rng.choice(len(g), p=d2 / d2.sum()))
        chosen.append(i)
        d2 = np.minimum(d2, ((g - g[i]) ** 2).sum(1))


def reference_k_center(x: np.ndarray, centres: np.ndarray, picks: int) -> None:
    """Sener & Savarese's loop: full distance recomputation of every point to each new centre."""
    x_sq = (x * x).sum(1)
    min_d = np.full(len(x), np.inf, dtype=np.float32)
    for start in range(0, len(centres), 256):
        c = centres[start:start + 256]
        min_d = np.minimum(min_d, (x_sq[:, None] + (c * c).sum(1)[None] - 2 * x @ c.T).min(1))
    for _ in range(picks):
        i = int(np.argmax(min_d))
        min_d = np.minimum(min_d, ((x - x[i]) ** 2).sum(1))


def reference_lp_dense(x: np.ndarray, labeled: np.ndarray, labels: np.ndarray, classes: int) -> None:
    w = ops.knn_affinity(x, k=50).toarray()
    y = np.zeros((len(x), classes))
    y[labeled, labels] = 1
    np.linalg.solve(np.eye(len(x)) - 0.99 * w, y)


def reference_knn_density(x: np.ndarray, k: int) -> None:
    """Brute force in numpy: every distance row, then a partial sort."""
    x_sq = (x * x).sum(1)
    for start in range(0, len(x), 1024):
        d = x_sq[start:start + 1024, None] + x_sq[None] - 2 * x[start:start + 1024] @ x.T
        np.partition(d, k, axis=1)[:, 1:k + 1]


# ----------------------------------------------------------------------------- cases
def bench_badge(n: int, d: int, classes: int, budget: int) -> None:
    x = torch.from_numpy(clustered(n, d, classes, seed=0))
    head = torch.randn(d, classes) / d ** 0.5
    probs = torch.softmax(x @ head * 4, dim=1)
    seconds, _ = timed(ops.badge_kmeanspp, probs, x, budget, np.random.default_rng(0))
    n_ref, b_ref = 2000, 50
    a = probs[:n_ref].clone()
    a[torch.arange(n_ref), a.argmax(1)] -= 1
    g = (a[:, :, None] * x[:n_ref, None, :]).reshape(n_ref, -1).numpy()
    ref, _ = timed(reference_kmeanspp_dense, g, b_ref, np.random.default_rng(0))
    line("badge", n, d, classes, budget, seconds, ref * (n / n_ref) * (budget / b_ref), "<= 60 s, >= 20x",
         f"reference: materialised {n_ref} x {classes * d} embedding, {b_ref} picks, scaled linearly in n and b")


def bench_coreset(n: int, d: int, budget: int, labeled: int) -> None:
    x = clustered(n + labeled, d, 100, seed=1)
    pool, centres = x[:n], x[n:]
    seconds, _ = timed(ops.k_center_greedy, torch.from_numpy(pool), budget, torch.from_numpy(centres))
    b_ref = 100
    ref, _ = timed(reference_k_center, pool, centres, b_ref)
    init, _ = timed(reference_k_center, pool, centres, 0)
    line("coreset", n, d, "-", budget, seconds, init + (ref - init) * budget / b_ref, "<= 10 s, >= 10x",
         f"reference: numpy, {labeled} labeled centres, {b_ref} picks scaled to {budget}")


def bench_alfamix(n: int, d: int, classes: int, budget: int, labeled: int) -> None:
    x = clustered(n + labeled, d, classes, seed=2)
    rng = np.random.default_rng(2)
    head = torch.nn.Linear(d, classes)
    z = torch.from_numpy(x)
    with torch.no_grad():  # a head that separates the clusters, as after training
        centres = torch.stack([z[n:][i::classes].mean(0) for i in range(classes)])
        head.weight.copy_(centres / centres.norm(dim=1, keepdim=True) * 3)
        head.bias.zero_()
    labels = head(z[n:]).argmax(1)
    anchors = ops.alfamix.class_anchors(z[n:], labels, classes)
    head.requires_grad_(False)
    seconds, _ = timed(ops.alfamix_select, z[:n], head, anchors, budget, rng)
    line("alfamix", n, d, classes, budget, seconds, None, "<= 60 s", "closed-form alpha")


def bench_usl(n: int, d: int, budget: int, k: int) -> None:
    x = clustered(n, d, 50, seed=3)
    seconds, _ = timed(ops.usl_select, x, budget, k=k)
    n_ref = 10000
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref, _ = timed(reference_knn_density, xn[:n_ref], k)
    line("usl", n, d, "-", budget, seconds, None, "<= 60 s",
         f"numpy brute-force density alone would take {ref * (n / n_ref) ** 2:.1f} s (timed on {n_ref}, scaled n^2)")


def bench_label_propagation(n: int, d: int, classes: int) -> None:
    x = clustered(n, d, classes, seed=4)
    rng = np.random.default_rng(4)
    labeled = rng.choice(n, 100, replace=False)
    labels = rng.integers(0, classes, 100)
    seconds, _ = timed(ops.label_propagation, x, labeled, labels, classes, k=50)
    n_ref = 3000
    ref, _ = timed(reference_lp_dense, x[:n_ref], np.arange(10), np.arange(10) % classes, classes)
    line("label_propagation", n, d, classes, "-", seconds, ref * (n / n_ref) ** 3, "<= 20 s",
         f"reference: dense solve on {n_ref}, scaled n^3")


def bench_assl_topk(n: int, budget: int) -> None:
    score = torch.rand(n, dtype=torch.float64)
    unlabeled = np.arange(n)

    def fast() -> np.ndarray:
        order = np.lexsort((unlabeled, -score.numpy()))
        return unlabeled[order[:budget]]

    seconds, _ = timed(fast)
    ref, _ = timed(lambda: sorted(range(n), key=lambda i: (-float(score[i]), i))[:budget])
    line("assl_topk", n, 1, "-", budget, seconds, ref, "<= 0.1 s", "reference: Python sort")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the CIFAR-scale sizes")
    args = parser.parse_args()
    s = args.scale
    print(f"torch threads {torch.get_num_threads()}, faiss gpu {ops.faiss_ops.gpu_available()}")
    print(f"{'kernel':<18} {'n':>6} {'d':>4} {'classes':>7} {'budget':>6} {'seconds':>8} {'reference':>9} {'speedup':>8}")
    bench_assl_topk(int(50_000 * s), int(1000 * s))
    bench_coreset(int(50_000 * s), 512, int(1000 * s), int(1000 * s))
    bench_badge(int(50_000 * s), 512, 100, int(1000 * s))
    bench_label_propagation(int(60_000 * s), 128, 10)
    bench_usl(int(60_000 * s), 128, int(1000 * s), 400)
    bench_alfamix(int(50_000 * s), 512, 100, int(1000 * s), int(1000 * s))


if __name__ == "__main__":
    main()
