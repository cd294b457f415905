"""WideResNet-28-k as in FixMatch's reference code: pre-activation blocks, LeakyReLU(0.1),
BatchNorm momentum 0.001, shortcut fed the activated input only in the first group."""

from __future__ import annotations

import torch
from torch import nn

from al_lightning.models.base import Backbone, register_backbone

BN_MOMENTUM = 0.001
SLOPE = 0.1


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, activate_before_residual: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=BN_MOMENTUM)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.act = nn.LeakyReLU(SLOPE, inplace=True)
        self.activate_before_residual = activate_before_residual
        self.shortcut = None if c_in == c_out and stride == 1 else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(x))
        residual = out if self.activate_before_residual else x
        out = self.conv2(self.act(self.bn2(self.conv1(out))))
        return out + (residual if self.shortcut is None else self.shortcut(residual))


class WideResNet(Backbone):
    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 28, widen: int = 2) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WideResNet depth must be 6n + 4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers = []
        for group, stride in enumerate((1, 2, 2)):
            for i in range(n):
                layers.append(_Block(widths[group] if i == 0 else widths[group + 1], widths[group + 1],
                                     stride if i == 0 else 1,
                                     activate_before_residual=group == 0 and i == 0))
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(widths[3], momentum=BN_MOMENTUM)
        self.act = nn.LeakyReLU(SLOPE, inplace=True)
        self.num_features = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn(self.blocks(self.conv(x))))
        return out.mean(dim=(2, 3))


@register_backbone("wrn28_2")
def wrn28_2(num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(num_classes, in_channels, depth=28, widen=2)


@register_backbone("wrn28_8")
def wrn28_8(num_classes: int, in_channels: int = 3) -> WideResNet:
    return WideResNet(num_classes, in_channels, depth=28, widen=8)
