"""Index bookkeeping for per-sample state updated from a stream of (possibly repeated) pool ids.

A step's ids can repeat (a small pool drawn with replacement, a labeled set smaller than the
batch, the batches of several ranks gathered into one). Scatter-assignment with repeated ids is
unordered in torch, so every stateful update resolves repeats explicitly with these helpers, which
makes a gathered stream replay exactly as one process would have applied it, entry by entry.
"""

from __future__ import annotations

import torch


def occurrence_rank(index: torch.Tensor) -> torch.Tensor:
    """How many earlier entries of ``index`` carry the same id (0 for a first occurrence)."""
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    positions = torch.arange(len(index), device=index.device)
    starts = torch.ones_like(sorted_index, dtype=torch.bool)
    starts[1:] = sorted_index[1:] != sorted_index[:-1]
    group_start = torch.cummax(torch.where(starts, positions, torch.zeros_like(positions)), dim=0).values
    rank = torch.empty_like(positions)
    rank[order] = positions - group_start
    return rank


def last_occurrence(index: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the entries that are the last occurrence of their id: assigning only those
    gives "the latest write wins", the result of applying the entries one after another."""
    return occurrence_rank(index.flip(0)).flip(0) == 0
