"""The two-view augmentation of SimSiam and SimCLR on uint8 image tensors (C, H, W).

One view = random resized crop (area fraction ``(min_scale, 1)``, aspect ratio (3/4, 4/3), resized
back to the input side: 8, 28 or 32 pixels), horizontal flip where the dataset allows it (never on
digits), colour jitter (brightness, contrast, saturation 0.4, hue 0.1, in random order) with
probability 0.8, grayscale with probability 0.2, then per-channel standardisation. These follow
SimSiam (Chen & He 2021; its code's crop scale (0.2, 1), jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale
p 0.2) and SimCLR's CIFAR-10 setting (Chen et al. 2020, appendix B.9 and the CIFAR-10 command of
google-research/simclr: colour-jitter strength 0.5, i.e. the same 0.4/0.4/0.4/0.1, and no Gaussian
blur on 32x32 images; its crop area range is (0.08, 1)). Saturation, hue and grayscale do not exist
for one channel, so grey images only get brightness and contrast jitter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from al_lightning.data.transforms import Normalize

ASPECT_RATIOS = (3.0 / 4.0, 4.0 / 3.0)


def _uniform(low: float, high: float) -> float:
    return float(torch.empty(()).uniform_(low, high))


class ColorJitter:
    """torchvision's ``ColorJitter`` on uint8 tensors without v2's input inspection: each factor is
    drawn uniformly from ``[max(0, 1 - s), 1 + s]`` (hue: ``[-h, h]``) and the four adjustments
    run in a random order."""

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float) -> None:
        self.ops = [
            lambda img: F.adjust_brightness(img, _uniform(max(0.0, 1 - brightness), 1 + brightness)),
            lambda img: F.adjust_contrast(img, _uniform(max(0.0, 1 - contrast), 1 + contrast)),
            lambda img: F.adjust_saturation(img, _uniform(max(0.0, 1 - saturation), 1 + saturation)),
            lambda img: F.adjust_hue(img, _uniform(-hue, hue)),
        ]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        ops = self.ops if img.shape[-3] == 3 else self.ops[:2]
        for i in torch.randperm(len(ops)).tolist():
            img = ops[i](img)
        return img


class ContrastiveView:
    """One random view of an image for SimSiam / SimCLR (see the module docstring)."""

    def __init__(self, size: int, hflip: bool, mean: Sequence[float], std: Sequence[float],
                 min_scale: float = 0.2, jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
                 jitter_prob: float = 0.8, grayscale_prob: float = 0.2) -> None:
        self.size, self.hflip, self.scale = size, hflip, (min_scale, 1.0)
        self.jitter, self.jitter_prob, self.grayscale_prob = ColorJitter(*jitter), jitter_prob, grayscale_prob
        self.normalize = Normalize(mean, std)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        top, left, height, width = RandomResizedCrop.get_params(img, list(self.scale), list(ASPECT_RATIOS))
        img = F.resized_crop(img, top, left, height, width, [self.size, self.size], antialias=True)
        if self.hflip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        if torch.rand(()) < self.jitter_prob:
            img = self.jitter(img)
        if img.shape[-3] == 3 and torch.rand(()) < self.grayscale_prob:
            img = F.rgb_to_grayscale(img, num_output_channels=3)
        return self.normalize(img)
