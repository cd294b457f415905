"""Features of a whole split through the backbone, sharded over DDP ranks and gathered, and DeepCluster's
PCA whitening of them.

The split is cut like :func:`al_lightning.methods.inference.pool_inference` cuts the pool (rank ``r``
embeds ids ``r, r + world, ...``, an all-gather interleaves the rows back), so every rank ends with
the same ``(N, d)`` tensor in id order; pre-training cannot import the methods layer, so it has its
own copy for features only. Before embedding, the backbone's BatchNorm statistics are taken from
rank 0: each rank's running statistics moved with its own last batches, and the written features must
be those of the one backbone that rank 0 saves.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from al_lightning.data.distributed import gather_interleaved, world


def broadcast_buffers(module: nn.Module) -> None:
    """Overwrite every buffer (BatchNorm running statistics) with rank 0's."""
    if world()[1] > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


@torch.no_grad()
def embed_split(embed: Callable[[torch.Tensor], torch.Tensor], module: nn.Module,
                loader_for: Callable[[np.ndarray], DataLoader], size: int, device: torch.device) -> torch.Tensor:
    """``embed(x)`` of ids ``0..size-1`` of a split, float32 ``(size, d)`` on every rank, in id order.
    ``module`` (the backbone) is put in eval mode for it and gets rank 0's buffers."""
    rank, ranks = world()
    broadcast_buffers(module)
    was_training = module.training
    module.eval()
    rows = [embed(batch["plain"].to(device, non_blocking=True)).float()
            for batch in loader_for(np.arange(rank, size, ranks))]
    module.train(was_training)
    local = torch.cat(rows) if rows else torch.empty(0, 0, device=device)
    return gather_interleaved(local, size, device)


def pca_whiten(x: torch.Tensor, dim: int | None, rank_tolerance: float = 1e-6) -> torch.Tensor:
    """Rows of ``x`` centred, projected on the ``dim`` principal axes of largest variance and divided
    by the square root of that variance, so the output covariance (normalised by N) is the identity:
    DeepCluster's ``PCAMatrix(d, dim, eigen_power=-0.5)`` (Caron et al. 2018, section 3.3: "PCA-reduced
    to 256 dimensions, whitened"). Axes whose variance is below ``rank_tolerance`` times the largest
    (a rank-deficient feature matrix) are dropped rather than blown up to noise. ``dim=None``: all."""
    x64 = x.double()
    centred = x64 - x64.mean(0, keepdim=True)
    variances, axes = torch.linalg.eigh(centred.T @ centred / x.shape[0])
    order = torch.argsort(variances, descending=True)
    order = order[variances[order] > rank_tolerance * variances.max().clamp_min(1e-300)]
    order = order[:dim] if dim is not None else order
    return (centred @ axes[:, order] / variances[order].sqrt()).to(x.dtype)
