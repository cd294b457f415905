"""ActiveFT (Xie et al., CVPR 2023, "Active Finetuning"): learnable centroids on frozen,
L2-normalised features, pulled towards the feature distribution and pushed apart, then one
distinct sample per centroid.

Objective, as the official code computes it (yichen928/ActiveFT, ``sample_tools/ActiveFT_*.py``,
``SampleModel.get_loss``): every feature f_i is assigned its most similar centroid c(i), and

    J = mean_i  log( e^{f_i.c_(i)/tau} + lambda * sum_k e^{c_k.c_(i)/tau} ) - f_i.c_(i)/tau

(-log of the softmax-like ratio), i.e. the paper's alignment term (f_i towards its centroid) with
its log-sum-exp diversity regulariser between centroids, tau = 0.07, balance lambda = 1. In the
regulariser sum the other centroids are detached (only c_(i) is pushed) and k runs over every
centroid, c_(i) itself included, as in that code. Adam, lr 1e-3, 300 iterations (the CIFAR script's
defaults), random init from sample features (``fps``: farthest-point, the script's other option).

Scale: each iteration uses a random subset of ``batch_size`` features (the ImageNet script's
100 000; all of them when fewer, as the CIFAR script), gathered from the pool and the labeled rows
without concatenating them, and the ``subset x centroids`` and
``centroids x centroids`` similarities are formed ``chunk`` rows at a time with the gradient
accumulated chunk by chunk (exact), so memory is O(chunk x centroids), never N x N.

Across cycles the labeled samples' features are fixed (not learned) centroids and stay in the
feature set: they cover their neighbourhood and repel the learnable centroids, so new picks go
where the labeled set is thin. This follows the multi-round adaptation of the official code that
keeps the already-selected features as frozen centroids ("hybrid" init); the official scripts
themselves select once. Only the learnable centroids pick, among unlabeled samples.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from al_lightning.ops.faiss_ops import nearest_to_centres
from al_lightning.ops.kcenter import k_center_greedy


def active_ft_gradient(features: torch.Tensor, learnable: torch.Tensor, fixed: torch.Tensor,
                       temperature: float = 0.07, balance: float = 1.0, chunk: int = 4096
                       ) -> tuple[float, torch.Tensor]:
    """The objective J on unit ``features`` with centroids ``[fixed; normalise(learnable)]``, and
    dJ/d``learnable`` in closed form (the autograd of J, checked in the tests): with
    a_i = f_i.c_(i)/tau, b_j = log lambda + log sum_k e^{c_j.c_k/tau} and w_i = sigmoid(b_(i) - a_i),

        dJ/dc_j = (1/n) [ -sum_{i -> j} w_i f_i / tau + (sum_{i -> j} w_i) sum_k softmax_k(c_j.c_k/tau) c_k / tau ]

    then through the normalisation. Chunked (O(chunk x centroids) memory) and free of atomics,
    so the same on every run."""
    n, n_fixed = features.shape[0], fixed.shape[0]
    norms = learnable.norm(dim=1, keepdim=True).clamp_min(1e-12)
    centroids = torch.cat([fixed, learnable / norms])
    m = centroids.shape[0]
    log_repulsion = torch.cat([torch.logsumexp(centroids[start:start + chunk] @ centroids.T / temperature, dim=1)
                               for start in range(0, m, chunk)])
    log_balance = math.log(balance) if balance > 0 else -math.inf
    grad = torch.zeros_like(centroids)
    pull = centroids.new_zeros(m)
    total = 0.0
    for start in range(0, n, chunk):
        rows = features[start:start + chunk]
        similarity = rows @ centroids.T / temperature
        best, assigned = similarity.max(dim=1)
        repulsion = log_balance + log_repulsion[assigned]
        total += float((torch.logaddexp(best, repulsion) - best).sum())
        weights = torch.zeros_like(similarity).scatter_(1, assigned[:, None], torch.sigmoid(repulsion - best)[:, None])
        grad -= weights.T @ rows / temperature
        pull += weights.sum(dim=0)
    for start in range(n_fixed, m, chunk):
        softmax = torch.softmax(centroids[start:start + chunk] @ centroids.T / temperature, dim=1)
        grad[start:start + chunk] += pull[start:start + chunk, None] * (softmax @ centroids) / temperature
    grad, unit = grad[n_fixed:] / n, centroids[n_fixed:]
    return total / n, (grad - unit * (unit * grad).sum(dim=1, keepdim=True)) / norms


def optimise_centroids(features: torch.Tensor, init: torch.Tensor, fixed: torch.Tensor, generator: torch.Generator,
                       temperature: float = 0.07, balance: float = 1.0, iterations: int = 300, lr: float = 1e-3,
                       batch_size: int = 100_000, chunk: int = 4096) -> tuple[torch.Tensor, list[float]]:
    """Adam on the learnable centroids (rows of ``init``); returns them L2-normalised and J per
    iteration. The feature set is the rows of ``features`` followed by those of ``fixed`` (the
    labeled samples), both already unit rows; a step's random subset is gathered from the two in
    that order, so the pool is never concatenated with the labeled rows (another n x d copy)."""
    learnable = init.detach().clone().float()
    optimiser = torch.optim.Adam([learnable], lr=lr)
    n, total = features.shape[0], features.shape[0] + fixed.shape[0]
    everything = torch.cat([features, fixed]) if total <= batch_size else None
    losses = []
    for _ in range(iterations):
        batch = everything
        if batch is None:
            rows = torch.randperm(total, generator=generator)[:batch_size].to(features.device)
            batch = features.new_empty(len(rows), features.shape[1])
            own = rows < n
            batch[own] = features[rows[own]]
            batch[~own] = fixed[rows[~own] - n]
        loss, learnable.grad = active_ft_gradient(batch, learnable, fixed, temperature, balance, chunk)
        losses.append(loss)
        optimiser.step()
    return F.normalize(learnable, dim=1), losses


def active_ft_select(unlabeled: torch.Tensor, budget: int, labeled: torch.Tensor | None, rng: np.random.Generator,
                     init: str = "random", temperature: float = 0.07, balance: float = 1.0, iterations: int = 300,
                     lr: float = 1e-3, batch_size: int = 100_000, chunk: int = 4096, overwrite: bool = False
                     ) -> np.ndarray:
    """``budget`` distinct rows of ``unlabeled``: one per learned centroid, each centroid taking
    its most similar row not yet taken (:func:`nearest_to_centres`). With ``overwrite`` (and
    float32 features) ``unlabeled`` is normalised in place: at a million rows of 512 one 2 GB
    copy less."""
    if init not in ("random", "fps"):
        raise ValueError(f"ActiveFT init must be 'random' or 'fps', got {init!r}")
    if overwrite and unlabeled.dtype == torch.float32:
        candidates = F.normalize(unlabeled, dim=1, out=unlabeled)
    else:
        candidates = F.normalize(unlabeled.float(), dim=1)
    fixed = candidates.new_zeros(0, candidates.shape[1])
    if labeled is not None and len(labeled):
        fixed = F.normalize(labeled.float().to(candidates.device), dim=1)
    if init == "random":
        rows = rng.choice(len(candidates), size=budget, replace=False)
    else:
        rows = k_center_greedy(candidates, budget, centres=fixed if len(fixed) else None,
                               first=int(rng.integers(len(candidates))))
    generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
    centroids, _ = optimise_centroids(candidates, candidates[torch.as_tensor(rows)], fixed,
                                      generator, temperature, balance, iterations, lr, batch_size, chunk)
    return nearest_to_centres(candidates, centroids)
