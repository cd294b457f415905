"""Shard-aware samplers: every rank draws its own slice of one seeded global stream.

The stream is the same on every rank (seeded by seed, cycle, epoch), so ranks never draw the
same position twice and the pool needs no broadcast to stay consistent.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class RepeatedPermutationSampler(Sampler[int]):
    """``num_samples`` positions per rank from back-to-back random permutations of ``range(n)``.

    Every item is drawn once before any is drawn twice, the epoch-filling scheme of the FixMatch
    reference code, so a labeled set smaller than the step budget is repeated evenly.
    """

    def __init__(self, n: int, num_samples: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty set")
        self.n, self.num_samples, self.seed = n, num_samples, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_stream(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.num_samples * self.world_size
        reps = -(-total // self.n)
        return torch.cat([torch.randperm(self.n, generator=generator) for _ in range(reps)])[:total]

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_stream()[self.rank::self.world_size].tolist())

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
