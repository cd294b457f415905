"""Composable parts of a pseudo-label method (FixMatch, FlexMatch, FreeMatch, ...).

Where a paper adds a piece to "any" pseudo-label method (FA's re-alignment losses, AS3L's prior
pseudo-labels), the piece is a :class:`MethodPart` passed in the method's ``parts`` list, so it
composes with every method of the family without a copy of any of them:

    model:
      class_path: al_lightning.methods.FreeMatch
      init_args:
        parts:
          - class_path: al_lightning.methods.parts.FeatureRealignment

A part hooks into the step at two points, both optional: :meth:`guide` rewrites the weak-view
target distribution before the method thresholds it, :meth:`losses` adds loss terms computed from
the step's features and outputs. It declares the extra views it needs, and keeps its own
per-sample state, reset at every fit and identical on every rank (gather through ``method.gather``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class PseudoLabelStep:
    """What one training step of a pseudo-label method computed, in the order of the local batch.

    ``features_*`` are backbone embeddings (with gradient), ``probs_weak`` the detached weak-view
    prediction, ``targets`` the distribution the pseudo-labels are taken from (``probs_weak`` after
    every part's :meth:`MethodPart.guide`), ``step`` the optimizer steps already taken in this fit.
    ``features_labeled_strong`` is present when a part asks for the labeled ``strong`` view.
    """

    index_labeled: torch.Tensor
    targets_labeled: torch.Tensor
    features_labeled: torch.Tensor
    features_labeled_strong: torch.Tensor | None
    index_unlabeled: torch.Tensor
    features_weak: torch.Tensor
    features_strong: torch.Tensor
    logits_weak: torch.Tensor
    logits_strong: torch.Tensor
    probs_weak: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    step: int


class MethodPart(nn.Module):
    """Base of the composable parts; every hook defaults to doing nothing."""

    #: extra views of labeled / unlabeled samples this part needs served
    labeled_views: tuple[str, ...] = ()
    unlabeled_views: tuple[str, ...] = ()

    def reset(self, method: Any, pool_size: int, unlabeled: np.ndarray) -> None:
        """Start of a fit: (re)build per-sample state for a pool of ``pool_size`` ids."""

    def guide(self, targets: torch.Tensor, index: torch.Tensor, step: int) -> torch.Tensor:
        """The weak-view target distribution the method thresholds; identity by default."""
        return targets

    def losses(self, method: Any, step: PseudoLabelStep) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms added to the method's loss."""
        return {}

    def state(self) -> dict[str, Any]:
        """Per-sample state to save with the cycle (CPU tensors)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state` after :meth:`reset` of the same pool (a mid-fit checkpoint)."""
