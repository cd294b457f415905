"""ResNet-18 for small images (3x3 stem, no max-pool), the ASSL paper's and ALFA-Mix's model."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from al_lightning.models.base import Backbone, register_backbone


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(Backbone):
    def __init__(self, num_classes: int, in_channels: int = 3, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True))
        layers, c_in = [], 64
        for stage, count in enumerate(blocks):
            c_out = 64 * 2**stage
            for i in range(count):
                layers.append(_BasicBlock(c_in, c_out, 2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.num_features = c_in
        self.fc = nn.Linear(c_in, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x)).mean(dim=(2, 3))


@register_backbone("resnet18_cifar")
def resnet18_cifar(num_classes: int, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(num_classes, in_channels, (2, 2, 2, 2))
