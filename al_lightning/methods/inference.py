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


def pool_inference(model: Backbone, loader_for: Callable[[np.ndarray], DataLoader], indices: Any,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings ``(n, d)`` and logits ``(n, C)`` of ``indices``, in that order, on every rank."""
    indices = np.asarray(indices)
    rank, size = world()
    features, logits = embed_and_classify(model, loader_for(indices[rank::size]), device)
    return gather_interleaved(features, len(indices), device), gather_interleaved(logits, len(indices), device)
