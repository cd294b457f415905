"""A small VGG-style CNN for 8x8 (digits) and 28x28 (MNIST) inputs: fast enough for a laptop CPU."""

from __future__ import annotations

import torch
from torch import nn

from al_lightning.models.base import Backbone, register_backbone


def _conv(c_in: int, c_out: int, bn_momentum: float) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out, momentum=bn_momentum),
            nn.LeakyReLU(0.1, inplace=True)]


class SmallCNN(Backbone):
    """Three stages of two 3x3 convs (widths w, 2w, 4w), max-pools between, global average pool."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32, bn_momentum: float = 0.1) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv(in_channels, w, bn_momentum), *_conv(w, w, bn_momentum), nn.MaxPool2d(2, ceil_mode=True),
            *_conv(w, 2 * w, bn_momentum), *_conv(2 * w, 2 * w, bn_momentum), nn.MaxPool2d(2, ceil_mode=True),
            *_conv(2 * w, 4 * w, bn_momentum), *_conv(4 * w, 4 * w, bn_momentum),
        )
        self.num_features = 4 * w
        self.fc = nn.Linear(4 * w, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


@register_backbone("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 1, width: int = 32, bn_momentum: float = 0.1) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, width, bn_momentum)
