"""Stream a set of pool ids through a backbone in batches, sharded over DDP ranks and gathered.

Rank ``r`` embeds ids ``r, r + world, ...``; an all-gather puts the rows back in the given order
on every rank, so strategies see identical tensors everywhere without a second pass. Only the
outputs a caller asks for are computed and kept: at a million samples and a thousand classes the
logits alone are 3.7 GiB that an embedding-only strategy would never read.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from al_lightning.data.distributed import gather_interleaved, world
from al_lightning.models import Backbone


#: what a pass over the pool can return
PoolOutput = Literal["embeddings", "logits"]
BOTH: tuple[PoolOutput, ...] = ("embeddings", "logits")


class PoolOutputs(NamedTuple):
    """Embeddings ``(n, d)`` and logits ``(n, C)``, float32; an output not asked for is None."""

    embeddings: torch.Tensor | None
    logits: torch.Tensor | None


def _check_outputs(outputs: Collection[str]) -> None:
    unknown = set(outputs) - set(BOTH)
    if unknown or not outputs:
        raise ValueError(f"pool inference outputs: {sorted(unknown) or 'none'} given, choose among {list(BOTH)}")


@torch.no_grad()
def embed_and_classify(model: Backbone, loader: DataLoader, device: torch.device, total: int,
                       outputs: Collection[PoolOutput] = BOTH) -> PoolOutputs:
    """The ``outputs`` (float32) of the ``total`` items of ``loader``, written batch by batch into
    tensors allocated once on ``device``: the peak is the outputs plus one batch, never a list of
    batches and their concatenation (2x the outputs). The head runs only when logits are asked for."""
    _check_outputs(outputs)
    was_training = model.training
    model.eval()
    kept: dict[str, torch.Tensor] = {}
    start = 0
    for batch in loader:
        z = model.embed(batch["plain"].to(device, non_blocking=True))
        rows = {"embeddings": z} if "embeddings" in outputs else {}
        if "logits" in outputs:
            rows["logits"] = model.classify(z)
        for name, values in rows.items():
            if start == 0:
                kept[name] = torch.empty(total, values.shape[1], device=device)
            kept[name][start:start + len(z)] = values.float()
        start += len(z)
    model.train(was_training)
    if start != total:
        raise RuntimeError(f"the pool loader gave {start} items for a dataset of {total}")
    empty = torch.empty(0, device=device)
    return PoolOutputs(*(kept.get(name, empty) if name in outputs else None for name in BOTH))


def pool_inference(model: Backbone, loader_for: Callable[[np.ndarray], DataLoader], indices: Any,
                   device: torch.device, outputs: Collection[PoolOutput] = BOTH) -> PoolOutputs:
    """The ``outputs`` of ``indices`` (embeddings ``(n, d)``, logits ``(n, C)``), rows in that order,
    on every rank."""
    indices = np.asarray(indices)
    rank, size = world()
    mine = indices[rank::size]
    local = embed_and_classify(model, loader_for(mine), device, len(mine), outputs)
    return PoolOutputs(*(None if rows is None else gather_interleaved(rows, len(indices), device) for rows in local))
