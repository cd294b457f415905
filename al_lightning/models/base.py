"""The backbone contract: ``embed(x) -> (N, d)`` features and ``classify(z) -> logits``.

Strategies need the embedding (CoreSet, BADGE, ALFA-Mix) as much as the logits, so every
backbone exposes both; ``forward`` is their composition.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from al_lightning.registry import Registry


class Backbone(nn.Module):
    num_features: int

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head()(features)

    def head(self) -> nn.Module:
        """The classifier ``classify`` applies to features (an ``nn.Linear`` in every registered
        backbone: ALFA-Mix exploits that it is affine)."""
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(x))


BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone")
register_backbone = BACKBONES.register

TIMM_PREFIX = "timm:"


def create_backbone(name: str, num_classes: int, in_channels: int = 3, **kwargs) -> Backbone:
    """``name`` is a registered backbone, or ``timm:<model>`` for any timm model."""
    if name.startswith(TIMM_PREFIX):
        return BACKBONES.get("timm")(num_classes=num_classes, in_channels=in_channels,
                                     model_name=name[len(TIMM_PREFIX):], **kwargs)
    return BACKBONES.get(name)(num_classes=num_classes, in_channels=in_channels, **kwargs)
