"""Stream a set of pool ids through a backbone in batches, sharded over DDP ranks and gathered.

Rank ``r`` embeds ids ``r, r + world, ...``; an all-gather puts the rows back in the given order
on every rank, so strategies see identical tensors everywhere without a second pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from al_lightning.data.distributed import gather_interleaved, world
from al_lightning.models import Backbone


@torch.no_grad()
def embed_and_classify(model: Backbone, loader: DataLoader, device: torch.device, total: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and logits (float32) of the ``total`` items of ``loader``, written batch by batch into
    tensors allocated once on ``device``: the peak is the outputs plus one batch, never a list of
    batches and their concatenation (2x the outputs)."""
    was_training = model.training
    model.eval()
    features = logits = torch.empty(0, device=device)
    start = 0
    for batch in loader:
        z = model.embed(batch["plain"].to(device, non_blocking=True))
        out = model.classify(z)
        if start == 0:
            features = torch.empty(total, z.shape[1], device=device)
            logits = torch.empty(total, out.shape[1], device=device)
        features[start:start + len(z)] = z.float()
        logits[start:start + len(z)] = out.float()
        start += len(z)
    model.train(was_training)
    if start != total:
        raise RuntimeError(f"the pool loader gave {start} items for a dataset of {total}")
    return features, logits


def pool_inference(model: Backbone, loader_for: Callable[[np.ndarray], DataLoader], indices: Any,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``(n, d)`` and logits ``(n, C)`` of ``indices``, in that order, on every rank."""
    indices = np.asarray(indices)
    rank, size = world()
    mine = indices[rank::size]
    features, logits = embed_and_classify(model, loader_for(mine), device, len(mine))
    return gather_interleaved(features, len(indices), device), gather_interleaved(logits, len(indices), device)
