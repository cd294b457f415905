"""Shard-aware samplers: every rank draws its own slice of one seeded global stream.

The stream is the same on every rank (seeded by seed, cycle, epoch), so ranks never draw the
same position twice and the pool needs no broadcast to stay consistent. ``skip()``, when given, is
asked at the start of each iteration how many of the epoch's positions were already consumed (a fit
resumed from a mid-epoch checkpoint continues the epoch's stream instead of restarting it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler


def skipped(skip: Callable[[], int] | None) -> int:
    return 0 if skip is None else int(skip())


class RepeatedPermutationSampler(Sampler[int]):
    """``num_samples`` positions per rank from back-to-back random permutations of ``range(n)``.

    Every item is drawn once before any is drawn twice, the epoch-filling scheme of the FixMatch
    reference code, so a labeled set smaller than the step budget is repeated evenly.
    """

    def __init__(self, n: int, num_samples: int, seed: int, rank: int = 0, world_size: int = 1,
                 skip: Callable[[], int] | None = None) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty set")
        self.n, self.num_samples, self.seed = n, num_samples, seed
        self.rank, self.world_size, self.skip = rank, world_size, skip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_stream(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.num_samples * self.world_size
        reps = -(-total // self.n)
        return torch.cat([torch.randperm(self.n, generator=generator) for _ in range(reps)])[:total]

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_stream()[self.rank::self.world_size][skipped(self.skip):].tolist())

    def __len__(self) -> int:
        return self.num_samples


class WeightedReplacementSampler(Sampler[int]):
    """``num_samples`` positions per rank drawn with replacement in proportion to ``weights()``
    (the l1-normalised weights of "Rethinking deep active learning", section 4).

    ``weights`` is called when iteration starts, so an epoch uses the weights of that moment; the
    global stream is seeded by (seed, epoch) and drawn in float64, so ranks holding identical
    weights draw identical streams and take disjoint slices of it.
    """

    def __init__(self, n: int, num_samples: int, seed: int, rank: int = 0, world_size: int = 1,
                 weights: Callable[[], object] | None = None, skip: Callable[[], int] | None = None) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty set")
        self.n, self.num_samples, self.seed = n, num_samples, seed
        self.rank, self.world_size, self.weights, self.skip = rank, world_size, weights, skip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_stream(self) -> torch.Tensor:
        weights = torch.ones(self.n, dtype=torch.float64) if self.weights is None else \
            torch.as_tensor(self.weights(), dtype=torch.float64).cpu().reshape(-1)
        if weights.shape[0] != self.n or bool((weights < 0).any()) or not bool(torch.isfinite(weights).all()):
            raise ValueError(f"sampling weights must be {self.n} finite non-negative values")
        if float(weights.sum()) <= 0:
            weights = torch.ones(self.n, dtype=torch.float64)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.multinomial(weights, self.num_samples * self.world_size, replacement=True,
                                 generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_stream()[self.rank::self.world_size][skipped(self.skip):].tolist())

    def __len__(self) -> int:
        return self.num_samples


class ShardSampler(Sampler[int]):
    """Rank ``r`` takes positions ``r, r + world, ...`` in order: no padding, no duplicates."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))
