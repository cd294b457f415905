"""Rank bookkeeping shared by every layer that shards work over DDP ranks and gathers it back.

The convention: of ``n`` ordered items, rank ``r`` of ``w`` handles items ``r, r + w, ...``; an
all-gather interleaves the ranks' rows back into the original order on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_interleaved(local: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """All ``total`` rows (``(total, d)``, or ``(total,)`` for one value per item) in item order on
    every rank, from each rank's rows of its items ``r::world`` (``local``, possibly empty), in
    ``local``'s dtype. Blocks are padded to the longest to all-gather."""
    rank, size = world()
    if size == 1:
        return local
    if local.dim() == 1:
        return gather_interleaved(local[:, None], total, device)[:, 0]
    width = torch.tensor([local.shape[-1] if local.numel() else 0], device=device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    d = int(width)
    counts = [len(range(r, total, size)) for r in range(size)]
    padded = torch.zeros(max(counts), d, device=device, dtype=local.dtype)
    padded[: local.shape[0]] = local.reshape(local.shape[0], d)
    blocks = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(blocks, padded)
    out = torch.empty(total, d, device=device, dtype=local.dtype)
    for r, block in enumerate(blocks):
        out[r::size] = block[: counts[r]]
    return out
