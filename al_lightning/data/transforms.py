"""Weak and strong augmentations of the FixMatch family on uint8 image tensors (C, H, W).

Weak: random crop with 12.5% reflect padding (+ horizontal flip where the dataset allows it).
Strong: weak + RandAugment with FixMatch's operation list and ranges (Sohn et al. 2020, Table 12),
two operations per image at random magnitudes, + Cutout of half the side. Where the paper leaves
the variant open, the reference code's choices hold: each operation is applied with probability
0.5 at a magnitude level drawn from 1..9 of 10, and the Cutout square is fixed at half the side.

Fill colours follow the reference codes (kekmodel/FixMatch-pytorch, which USB's FixMatch
augmentation also derives from): the geometric ops call PIL's ``rotate``/``transform`` without a
fill colour, so uncovered pixels are black (0); Cutout paints grey (127, 127, 127).

This per-sample pipeline is the specification; :mod:`al_lightning.data.batch_augment` builds the
same views on a whole batch where the batch is, and is tested op by op against it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.transforms import Compose  # a plain loop; v2.Compose inspects every input
from torchvision.transforms.v2 import functional as F

Transform = Callable[[torch.Tensor], torch.Tensor]
GEOMETRIC_FILL = 0
CUTOUT_FILL = 127


def _signed(value: float) -> float:
    return value if random.random() < 0.5 else -value


_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def affine_nearest(img: torch.Tensor, matrix: Sequence[float], fill: int) -> torch.Tensor:
    """PIL's ``Image.transform(AFFINE, matrix)`` with nearest resampling: output pixel (x, y) takes
    input pixel ``floor(a x + b y + c, d x + e y + f)`` (pixel centres at +0.5), else ``fill``.
    Index arithmetic in numpy: on small images torch's per-op overhead would dominate."""
    height, width = img.shape[-2:]
    if (height, width) not in _GRIDS:
        ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
        _GRIDS[height, width] = xs.ravel(), ys.ravel()
    xs, ys = _GRIDS[height, width]
    a, b, c, d, e, f = matrix
    src_x = np.floor(a * xs + b * ys + c).astype(np.int64)
    src_y = np.floor(d * xs + e * ys + f).astype(np.int64)
    inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    flat = img.numpy().reshape(*img.shape[:-2], height * width)
    out = np.where(inside, flat[..., np.where(inside, src_y * width + src_x, 0)], fill)
    return torch.from_numpy(out.astype(np.uint8).reshape(img.shape))


def translate_matrix(shift: int, axis: int) -> tuple[float, ...]:
    return (1, 0, shift, 0, 1, 0) if axis == 0 else (1, 0, 0, 0, 1, shift)


def shear_matrix(rate: float, axis: int) -> tuple[float, ...]:
    return (1, rate, 0, 0, 1, 0) if axis == 0 else (1, 0, 0, rate, 1, 0)


def rotate_matrix(degrees: int, height: int, width: int) -> tuple[float, ...]:
    """PIL's ``Image.rotate(degrees)``: counter-clockwise about the centre, as an inverse affine map."""
    angle = -math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    return (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def translate_shift(signed_fraction: float, side: int) -> int:
    """Translation of ``signed_fraction`` (``+-0.3 m``) of the side, truncated toward zero."""
    return int(signed_fraction * side)


def _translate(img: torch.Tensor, m: float, axis: int) -> torch.Tensor:
    shift = translate_shift(_signed(0.3 * m), img.shape[-1 - axis])
    return affine_nearest(img, translate_matrix(shift, axis), GEOMETRIC_FILL)


def _shear(img: torch.Tensor, m: float, axis: int) -> torch.Tensor:
    return affine_nearest(img, shear_matrix(_signed(0.3 * m), axis), GEOMETRIC_FILL)


def _rotate(img: torch.Tensor, m: float) -> torch.Tensor:
    """Rotation by ``+-int(30 m)`` whole degrees, as PIL's ``Image.rotate``."""
    return affine_nearest(img, rotate_matrix(_signed(int(30 * m)), *img.shape[-2:]), GEOMETRIC_FILL)


def equalize(img: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.equalize`` per channel: a lookup table from the cumulative histogram."""
    out = torch.empty_like(img)
    for ch in range(img.shape[-3]):
        values = img[..., ch, :, :].reshape(-1).long()
        hist = torch.bincount(values, minlength=256)
        step = (values.numel() - int(hist[hist.nonzero()[-1]])) // 255
        if step == 0:
            out[..., ch, :, :] = img[..., ch, :, :]
            continue
        lut = ((torch.cumsum(hist, 0) - hist + step // 2) // step).clamp_(max=255).to(img.dtype)
        out[..., ch, :, :] = lut[values].view(img.shape[-2:])
    return out


def enhance_factor(m: float) -> float:
    """Brightness, colour, contrast and sharpness factor in [0.05, 0.95] (FixMatch's Table 12)."""
    return 0.05 + 0.9 * m


def posterize_bits(m: float) -> int:
    return 4 + int(4 * m)


def solarize_threshold(m: float) -> float:
    return float(256 - int(256 * m))


def _color(img: torch.Tensor, m: float) -> torch.Tensor:
    if img.shape[-3] != 3:  # saturation is undefined for grey images
        return img
    return F.adjust_saturation(img, enhance_factor(m))


#: FixMatch's RandAugment pool: ``op(img, m)`` with the magnitude ``m`` in (0, 1) scaling each op's range.
FIXMATCH_OPS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "identity": lambda img, m: img,
    "autocontrast": lambda img, m: F.autocontrast(img),
    "equalize": lambda img, m: equalize(img),
    "brightness": lambda img, m: F.adjust_brightness(img, enhance_factor(m)),
    "color": _color,
    "contrast": lambda img, m: F.adjust_contrast(img, enhance_factor(m)),
    "sharpness": lambda img, m: F.adjust_sharpness(img, enhance_factor(m)),
    "posterize": lambda img, m: F.posterize(img, bits=posterize_bits(m)),
    "solarize": lambda img, m: F.solarize(img, threshold=solarize_threshold(m)),
    "rotate": _rotate,
    "shear_x": lambda img, m: _shear(img, m, 0),
    "shear_y": lambda img, m: _shear(img, m, 1),
    "translate_x": lambda img, m: _translate(img, m, 0),
    "translate_y": lambda img, m: _translate(img, m, 1),
}


class FixMatchRandAugment:
    """``num_ops`` operations drawn with replacement from :data:`FIXMATCH_OPS`; as in the reference
    code, each is applied with probability ``apply_prob`` at a magnitude drawn from {0.1, ..., 0.9}."""

    def __init__(self, num_ops: int = 2, apply_prob: float = 0.5) -> None:
        self.num_ops, self.apply_prob = num_ops, apply_prob
        self.ops = list(FIXMATCH_OPS.values())

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for op in random.choices(self.ops, k=self.num_ops):
            magnitude = random.randint(1, 9) / 10
            if random.random() < self.apply_prob:
                img = op(img, magnitude)
        return img


class Cutout:
    """Grey square of side ``fraction * size`` at a uniform centre, clipped at the borders (the
    reference code's fixed half-side square after RandAugment)."""

    def __init__(self, fraction: float = 0.5) -> None:
        self.fraction = fraction

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        height, width = img.shape[-2:]
        half = int(self.fraction * min(height, width)) // 2
        if half == 0:
            return img
        cy, cx = random.randrange(height), random.randrange(width)
        img = img.clone()
        img[..., max(cy - half, 0):cy + half, max(cx - half, 0):cx + half] = CUTOUT_FILL
        return img


class Normalize:
    """uint8 -> float in [0, 1] -> per-channel standardised, for one image (C, H, W) or a batch
    (B, C, H, W) on any device; plain tensor ops (v2's pair costs 10x)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))
        self.mean = self.mean * 255.0 * self.scale

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.scale.device != img.device:  # moved once, to where the batches are
            self.scale, self.mean = self.scale.to(img.device), self.mean.to(img.device)
        return img.to(torch.float32).mul_(self.scale).sub_(self.mean)


def reflect_source(size: int, padding: int) -> torch.Tensor:
    """Source row (column) of each row of a side reflect-padded by ``padding``."""
    padded = np.arange(-padding, size + padding)
    return torch.from_numpy(np.abs(size - 1 - np.abs(size - 1 - np.abs(padded))))


class ReflectPadCrop:
    """Random ``size`` crop of the image reflect-padded by ``padding`` on each side (one gather)."""

    def __init__(self, size: int, padding: int) -> None:
        self.size, self.padding = size, padding
        self.source = reflect_source(size, padding)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        top, left = random.randint(0, 2 * self.padding), random.randint(0, 2 * self.padding)
        rows, cols = self.source[top:top + self.size], self.source[left:left + self.size]
        return img[..., rows[:, None], cols[None, :]]


def random_hflip(img: torch.Tensor) -> torch.Tensor:
    return img.flip(-1) if random.random() < 0.5 else img


def weak_augment(size: int, hflip: bool) -> list[Transform]:
    ops: list[Transform] = [ReflectPadCrop(size, int(0.125 * size + 0.5))]
    if hflip:
        ops.append(random_hflip)
    return ops


def build_views(size: int, hflip: bool, mean: Sequence[float], std: Sequence[float]) -> dict[str, Transform]:
    """The named views a method may ask for: ``plain``, ``weak`` and ``strong``."""
    norm = Normalize(mean, std)
    weak = weak_augment(size, hflip)
    return {
        "plain": norm,
        "weak": Compose([*weak, norm]),
        "strong": Compose([*weak, FixMatchRandAugment(2), Cutout(0.5), norm]),
    }
