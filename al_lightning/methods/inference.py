"""Stream a set of pool ids through a backbone in batches, sharded over DDP ranks and gathered.

Rank ``r`` embeds ids ``r, r + world, ...``; an all-gather puts the rows back in the given order
on every rank, so strategies see identical tensors everywhere without a second pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from al_lightning.models import Backbone


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def embed_and_classify(model: Backbone, loader: DataLoader, device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = model.training
    model.eval()
    features, logits = [], []
    for batch in loader:
        z = model.embed(batch["plain"].to(device, non_blocking=True))
        features.append(z.float())
        logits.append(model.classify(z).float())
    model.train(was_training)
    empty = torch.empty(0, device=device)
    return (torch.cat(features) if features else empty), (torch.cat(logits) if logits else empty)


def _gather_rows(local: torch.Tensor, counts: list[int], width: int, device: torch.device) -> torch.Tensor:
    """All-gather variable-length row blocks (padded to the longest) and interleave them back."""
    rank, size = world()
    longest = max(counts)
    padded = torch.zeros(longest, width, device=device, dtype=torch.float32)
    padded[: local.shape[0]] = local.reshape(local.shape[0], width)
    blocks = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(blocks, padded)
    out = torch.empty(sum(counts), width, device=device, dtype=torch.float32)
    for r, block in enumerate(blocks):
        out[r::size] = block[: counts[r]]
    return out


def pool_inference(model: Backbone, loader_for: Callable[[np.ndarray], DataLoader], indices: Any,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``(n, d)`` and logits ``(n, C)`` of ``indices``, in that order, on every rank."""
    indices = np.asarray(indices)
    rank, size = world()
    features, logits = embed_and_classify(model, loader_for(indices[rank::size]), device)
    if size == 1:
        return features, logits
    counts = [len(range(r, len(indices), size)) for r in range(size)]
    dims = torch.tensor([features.shape[-1] if features.numel() else 0,
                         logits.shape[-1] if logits.numel() else 0], device=device)
    dist.all_reduce(dims, op=dist.ReduceOp.MAX)
    d, c = int(dims[0]), int(dims[1])
    return (_gather_rows(features, counts, d, device), _gather_rows(logits, counts, c, device))
