"""Stream a set of pool ids through a backbone in batches, sharded over DDP ranks and gathered.

Rank ``r`` embeds ids ``r, r + world, ...``; an all-gather puts the rows back in the given order
on every rank, so strategies see identical tensors everywhere without a second pass. Only the
outputs a caller asks for are computed and kept: at a million samples and a thousand classes the
logits alone are 3.7 GiB that an embedding-only strategy would never read, and a strategy that ranks
by the entropy (or the top-class probability, the margin, the predicted class) gets it reduced from
each batch's probabilities inside the pass, 8 MB instead of the 3.7 GiB.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from al_lightning.data.distributed import gather_interleaved, world
from al_lightning.heap import release_freed_memory, retain_freed_memory
from al_lightning.models import Backbone


#: what a pass over the pool can return: the embeddings ``(n, d)`` and logits ``(n, C)`` (float32), or
#: one value per sample reduced from the class probabilities p = softmax(logits) batch by batch
PoolOutput = Literal["embeddings", "logits", "entropy", "max_probability", "margin", "predicted_class"]
BOTH: tuple[PoolOutput, ...] = ("embeddings", "logits")


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.double()  # float64: CEAL thresholds values near 0.1 log C
    return -(p * p.clamp_min(1e-12).log()).sum(dim=-1)


def _margin(p: torch.Tensor) -> torch.Tensor:
    top2 = p.topk(2, dim=-1).values
    return top2[:, 0] - top2[:, 1]


#: the per-sample statistics of the probabilities: a strategy that ranks by one of them keeps n
#: values instead of the n x C probabilities (3.7 GiB at a million samples and a thousand classes)
PROBABILITY_STATISTICS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "entropy": _entropy,  # Shannon entropy in nats, float64
    "max_probability": lambda p: p.max(dim=-1).values,
    "margin": _margin,  # top-1 minus top-2 probability
    "predicted_class": lambda p: p.argmax(dim=-1),  # int64
}
OUTPUTS: tuple[PoolOutput, ...] = (*BOTH, *PROBABILITY_STATISTICS)  # type: ignore[assignment]


def _check_outputs(outputs: Collection[str]) -> None:
    unknown = set(outputs) - set(OUTPUTS)
    if unknown or not outputs:
        raise ValueError(f"pool inference outputs: {sorted(unknown) or 'none'} given, choose among {list(OUTPUTS)}")


def _batch_outputs(model: Backbone, images: torch.Tensor, outputs: Collection[PoolOutput]) -> dict[str, torch.Tensor]:
    z = model.embed(images)
    rows = {"embeddings": z.float()} if "embeddings" in outputs else {}
    if set(outputs) - {"embeddings"}:
        logits = model.classify(z).float()
        if "logits" in outputs:
            rows["logits"] = logits
        statistics = [name for name in outputs if name in PROBABILITY_STATISTICS]
        if statistics:
            p = logits.softmax(dim=-1)
            rows.update({name: PROBABILITY_STATISTICS[name](p) for name in statistics})
    return rows


@torch.no_grad()
def embed_and_classify(model: Backbone, loader: DataLoader, device: torch.device, total: int,
                       outputs: Collection[PoolOutput] = BOTH) -> dict[str, torch.Tensor]:
    """The ``outputs`` of the ``total`` items of ``loader``, written batch by batch into tensors
    allocated once on ``device``: the peak is the outputs plus one batch, never a list of batches
    and their concatenation (2x the outputs). The head runs only when an output other than the
    embeddings is asked for, and the probabilities of a batch live only while its statistics are
    taken. On a CPU the batches after the first reuse its freed blocks (:mod:`al_lightning.heap`;
    1.8x faster a batch of 1,024 28x28 images through small_cnn on 2 cores), while the outputs,
    allocated before, stay out of the kept heap."""
    _check_outputs(outputs)
    was_training = model.training
    model.eval()
    kept: dict[str, torch.Tensor] = {}
    start = 0
    on_cpu = torch.device(device).type == "cpu"
    retained = False
    try:
        for batch in loader:
            rows = _batch_outputs(model, batch["plain"].to(device, non_blocking=True), outputs)
            count = len(next(iter(rows.values())))
            for name, values in rows.items():
                if start == 0:
                    kept[name] = torch.empty(total, *values.shape[1:], dtype=values.dtype, device=device)
                kept[name][start:start + count] = values
            start += count
            if on_cpu and not retained:  # after the first batch has freed its blocks
                retained = retain_freed_memory()
    finally:
        if retained:
            release_freed_memory()
    model.train(was_training)
    if start != total:
        raise RuntimeError(f"the pool loader gave {start} items for a dataset of {total}")
    return {name: kept[name] if name in kept else _no_rows(name, device) for name in outputs}


def _no_rows(name: str, device: torch.device) -> torch.Tensor:
    """An output of no items (a rank of a short id list) in the rank and dtype the gather expects:
    a statistic's own, taken of no probabilities."""
    if name in PROBABILITY_STATISTICS:
        return PROBABILITY_STATISTICS[name](torch.empty(0, 2, device=device))
    return torch.empty(0, 0, device=device)


def pool_inference(model: Backbone, loader_for: Callable[[np.ndarray], DataLoader], indices: Any,
                   device: torch.device, outputs: Collection[PoolOutput] = BOTH) -> dict[str, torch.Tensor]:
    """``{output: rows}`` for each of ``outputs`` (:data:`OUTPUTS`), rows in the order of
    ``indices``, identical on every rank."""
    indices = np.asarray(indices)
    rank, size = world()
    mine = indices[rank::size]
    local = embed_and_classify(model, loader_for(mine), device, len(mine), outputs)
    return {name: gather_interleaved(rows, len(indices), device) for name, rows in local.items()}
