"""The 13-layer CNN of "Rethinking deep active learning" (section 6.1: "the 13-layer convolutional
network used previously in [18]", the ConvLarge of Laine & Aila's Pi-model and of Mean Teacher).

Layers follow the paper's code (``CNN`` in lib/architectures.py of osimeoni/RethinkingDeepActiveLearning,
the ``cifar_cnn`` default):

    3 x [conv3x3 128 (pad 1) - BN - LeakyReLU 0.1], maxpool 2, dropout 0.5
    3 x [conv3x3 256 (pad 1) - BN - LeakyReLU 0.1], maxpool 2, dropout 0.5
    conv3x3 512 (valid) - BN - LReLU, conv1x1 256 - BN - LReLU, conv1x1 128 - BN - LReLU
    global average pool -> 128-d features -> L2 normalisation -> fc

Choices taken from that code: weight normalisation on every convolution and on the classifier
(``g`` per output unit), convolution biases kept in front of BatchNorm, PyTorch default
initialisation, dropout 0.5 after both max-pools, no input Gaussian noise (defined there but not
applied by ``cifar_cnn``), features L2-normalised before the classifier (its ``isL2`` default;
they are also what label propagation and CoreSet read). Its fixed 6x6 average pool is the global
average on 32x32 inputs; a global mean is used here so that 28x28 inputs (a 5x5 map) work too.
It has two classifier heads of which only one is used; this has one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from al_lightning.models.base import Backbone, register_backbone

SLOPE = 0.1


def _conv(c_in: int, c_out: int, kernel: int, padding: int) -> list[nn.Module]:
    return [weight_norm(nn.Conv2d(c_in, c_out, kernel, padding=padding)), nn.BatchNorm2d(c_out),
            nn.LeakyReLU(SLOPE)]


class CNN13(Backbone):
    """Args:
        num_classes: classifier outputs.
        in_channels: input channels (3 for CIFAR/SVHN, 1 for MNIST).
        dropout: dropout probability after each max-pool (0.5 in the reference).
        l2_normalize: L2-normalise the 128-d features before the classifier (the reference's default).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.5, l2_normalize: bool = True) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv(in_channels, 128, 3, 1), *_conv(128, 128, 3, 1), *_conv(128, 128, 3, 1),
            nn.MaxPool2d(2, 2), nn.Dropout(dropout),
            *_conv(128, 256, 3, 1), *_conv(256, 256, 3, 1), *_conv(256, 256, 3, 1),
            nn.MaxPool2d(2, 2), nn.Dropout(dropout),
            *_conv(256, 512, 3, 0), *_conv(512, 256, 1, 0), *_conv(256, 128, 1, 0),
        )
        self.l2_normalize = l2_normalize
        self.num_features = 128
        self.fc = weight_norm(nn.Linear(128, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x).mean(dim=(2, 3))
        return F.normalize(features, dim=1) if self.l2_normalize else features


@register_backbone("cnn13")
def cnn13(num_classes: int, in_channels: int = 3, dropout: float = 0.5, l2_normalize: bool = True) -> CNN13:
    return CNN13(num_classes, in_channels, dropout, l2_normalize)
