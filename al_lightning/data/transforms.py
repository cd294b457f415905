"""Weak and strong augmentations of the FixMatch family on uint8 image tensors (C, H, W).

Weak: random crop with 12.5% reflect padding (+ horizontal flip where the dataset allows it).
Strong: weak + RandAugment with FixMatch's operation list and a random magnitude per operation
(Sohn et al. 2020, Table 12: two operations per image) + Cutout of up to half the side.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

GEOMETRIC_FILL = 128
CUTOUT_FILL = 127


def _signed(value: float) -> float:
    return value if random.random() < 0.5 else -value


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * random.random()


def _translate(img: torch.Tensor, axis: int) -> torch.Tensor:
    shift = [0.0, 0.0]
    shift[axis] = _signed(0.3 * random.random()) * img.shape[-1 - axis]
    return F.affine(img, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], fill=GEOMETRIC_FILL)


def _shear(img: torch.Tensor, axis: int) -> torch.Tensor:
    degrees = [0.0, 0.0]
    degrees[axis] = math.degrees(math.atan(_signed(0.3 * random.random())))
    return F.affine(img, angle=0.0, translate=[0.0, 0.0], scale=1.0, shear=degrees, fill=GEOMETRIC_FILL)


def _solarize(img: torch.Tensor) -> torch.Tensor:
    return F.solarize(img, threshold=float(int(256 * random.random())))


def _color(img: torch.Tensor) -> torch.Tensor:
    if img.shape[-3] != 3:  # saturation is undefined for grey images
        return img
    return F.adjust_saturation(img, _uniform(0.05, 0.95))


#: FixMatch's RandAugment pool; each op draws its own magnitude uniformly from the paper's range.
FIXMATCH_OPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda img: img,
    "autocontrast": F.autocontrast,
    "equalize": F.equalize,
    "brightness": lambda img: F.adjust_brightness(img, _uniform(0.05, 0.95)),
    "color": _color,
    "contrast": lambda img: F.adjust_contrast(img, _uniform(0.05, 0.95)),
    "sharpness": lambda img: F.adjust_sharpness(img, _uniform(0.05, 0.95)),
    "posterize": lambda img: F.posterize(img, bits=random.randint(4, 8)),
    "solarize": _solarize,
    "rotate": lambda img: F.rotate(img, angle=_signed(30.0 * random.random()), fill=GEOMETRIC_FILL),
    "shear_x": lambda img: _shear(img, 0),
    "shear_y": lambda img: _shear(img, 1),
    "translate_x": lambda img: _translate(img, 0),
    "translate_y": lambda img: _translate(img, 1),
}


class FixMatchRandAugment(v2.Transform):
    """``num_ops`` operations drawn from :data:`FIXMATCH_OPS`, each with a random magnitude."""

    def __init__(self, num_ops: int = 2) -> None:
        super().__init__()
        self.num_ops = num_ops
        self.ops = list(FIXMATCH_OPS.values())

    def forward(self, img: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for op in random.choices(self.ops, k=self.num_ops):
            img = op(img)
        return img


class Cutout(v2.Transform):
    """Grey square of side ``U(0, max_fraction) * size`` at a uniform centre, clipped at borders."""

    def __init__(self, max_fraction: float = 0.5) -> None:
        super().__init__()
        self.max_fraction = max_fraction

    def forward(self, img: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        height, width = img.shape[-2:]
        side = int(self.max_fraction * random.random() * min(height, width))
        if side == 0:
            return img
        cy, cx = random.randrange(height), random.randrange(width)
        y0, x0 = max(cy - side // 2, 0), max(cx - side // 2, 0)
        img = img.clone()
        img[..., y0:min(y0 + side, height), x0:min(x0 + side, width)] = CUTOUT_FILL
        return img


def normalize(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def weak_augment(size: int, hflip: bool) -> list[v2.Transform]:
    ops: list[v2.Transform] = [v2.RandomCrop(size, padding=int(0.125 * size + 0.5),
                                             padding_mode="reflect")]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    return ops


def build_views(size: int, hflip: bool, mean: Sequence[float], std: Sequence[float]
                ) -> dict[str, v2.Compose]:
    """The named views a method may ask for: ``plain``, ``weak`` and ``strong``."""
    norm = normalize(mean, std)
    weak = weak_augment(size, hflip)
    return {
        "plain": norm,
        "weak": v2.Compose([*weak, norm]),
        "strong": v2.Compose([*weak, FixMatchRandAugment(2), Cutout(0.5), norm]),
    }
