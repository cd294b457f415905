"""Noise stability (Li et al., AAAI 2024; the FA paper's [54]): k-center greedy, from the origin,
on the EMA model's probability changes under K weight perturbations; see
:mod:`al_lightning.ops.noise_stability` for the rule and the official code it follows.

The unlabeled pool is sharded over the ranks like :func:`pool_inference` and the change vectors
all-gathered; the perturbation seeds come from ``context.rng()``, so every rank applies the same K
perturbations and holds the same vectors.

Args:
    perturbations: K (30, the paper's runs). noise_scale: ||noise|| / ||W|| per weight (0.001).
    max_exact_gib: the largest change matrix (n x K x C float32) held exactly; above it the changes
        are randomly projected to ``projection_dim`` dimensions batch by batch (see
        :mod:`al_lightning.ops.noise_stability`). 4 GiB is a pool of 35,000 at K = 30, C = 1,000.
"""

from __future__ import annotations

import numpy as np
import torch

from al_lightning.data.distributed import gather_interleaved, world
from al_lightning.ops import k_center_greedy
from al_lightning.ops.noise_stability import output_changes, random_projection
from al_lightning.strategies.base import AcquisitionContext, Strategy, register_strategy


@register_strategy("noise_stability")
class NoiseStability(Strategy):
    def __init__(self, perturbations: int = 30, noise_scale: float = 1e-3, max_exact_gib: float = 4.0,
                 projection_dim: int = 1024) -> None:
        self.perturbations, self.noise_scale = perturbations, noise_scale
        self.max_exact_gib, self.projection_dim = max_exact_gib, projection_dim

    def change_vectors(self, context: AcquisitionContext) -> torch.Tensor:
        """``(n_unlabeled, K * C)`` normalised probability changes, aligned with ``context.unlabeled``
        (``(n_unlabeled, projection_dim)`` projected ones above ``max_exact_gib``)."""
        rng = context.rng()
        seeds = rng.integers(2**63 - 1, size=self.perturbations)
        rank, size = world()
        ids = context.unlabeled
        width = self.perturbations * context.num_classes
        projection = None
        if 4 * len(ids) * width > self.max_exact_gib * 2**30:
            projection = random_projection(width, self.projection_dim, int(rng.integers(2**63 - 1)), context.device)
            width = self.projection_dim
        mine = ids[rank::size]
        batches = (batch["plain"].to(context.device) for batch in context.loader_for(mine))
        local = output_changes(context.model, batches, seeds, self.noise_scale, projection, total=len(mine))
        return gather_interleaved(local.reshape(-1, width), len(ids), context.device)

    def rank_select(self, context: AcquisitionContext, budget: int) -> np.ndarray:
        changes = self.change_vectors(context)
        origin = changes.new_zeros(1, changes.shape[1])
        return context.unlabeled[k_center_greedy(changes, budget, centres=origin)]
