"""Weak and strong augmentations of the FixMatch family on uint8 image tensors (C, H, W).

Weak: random crop with 12.5% reflect padding (+ horizontal flip where the dataset allows it).
Strong: weak + RandAugment with FixMatch's operation list and a random magnitude per operation
(Sohn et al. 2020, Table 12: two operations per image) + Cutout of up to half the side.
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
GEOMETRIC_FILL = 128
CUTOUT_FILL = 127


def _signed(value: float) -> float:
    return value if random.random() < 0.5 else -value


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * random.random()


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


def _translate(img: torch.Tensor, axis: int) -> torch.Tensor:
    shift = _signed(0.3 * random.random()) * img.shape[-1 - axis]
    return affine_nearest(img, (1, 0, shift, 0, 1, 0) if axis == 0 else (1, 0, 0, 0, 1, shift), GEOMETRIC_FILL)


def _shear(img: torch.Tensor, axis: int) -> torch.Tensor:
    rate = _signed(0.3 * random.random())
    return affine_nearest(img, (1, rate, 0, 0, 1, 0) if axis == 0 else (1, 0, 0, rate, 1, 0), GEOMETRIC_FILL)


def _rotate(img: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise about the centre, as PIL's ``Image.rotate``."""
    height, width = img.shape[-2:]
    angle = -math.radians(_signed(30.0 * random.random()))
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    return affine_nearest(img, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy),
                          GEOMETRIC_FILL)


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


def _solarize(img: torch.Tensor) -> torch.Tensor:
    return F.solarize(img, threshold=float(int(256 * random.random())))


def _color(img: torch.Tensor) -> torch.Tensor:
    if img.shape[-3] != 3:  # saturation is undefined for grey images
        return img
    return F.adjust_saturation(img, _uniform(0.05, 0.95))


#: FixMatch's RandAugment pool; each op draws its own magnitude uniformly from the paper's range.
FIXMATCH_OPS: dict[str, Transform] = {
    "identity": lambda img: img,
    "autocontrast": F.autocontrast,
    "equalize": equalize,
    "brightness": lambda img: F.adjust_brightness(img, _uniform(0.05, 0.95)),
    "color": _color,
    "contrast": lambda img: F.adjust_contrast(img, _uniform(0.05, 0.95)),
    "sharpness": lambda img: F.adjust_sharpness(img, _uniform(0.05, 0.95)),
    "posterize": lambda img: F.posterize(img, bits=random.randint(4, 8)),
    "solarize": _solarize,
    "rotate": _rotate,
    "shear_x": lambda img: _shear(img, 0),
    "shear_y": lambda img: _shear(img, 1),
    "translate_x": lambda img: _translate(img, 0),
    "translate_y": lambda img: _translate(img, 1),
}


class FixMatchRandAugment:
    """``num_ops`` operations drawn from :data:`FIXMATCH_OPS`, each with a random magnitude."""

    def __init__(self, num_ops: int = 2) -> None:
        self.num_ops = num_ops
        self.ops = list(FIXMATCH_OPS.values())

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for op in random.choices(self.ops, k=self.num_ops):
            img = op(img)
        return img


class Cutout:
    """Grey square of side ``U(0, max_fraction) * size`` at a uniform centre, clipped at borders."""

    def __init__(self, max_fraction: float = 0.5) -> None:
        self.max_fraction = max_fraction

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        height, width = img.shape[-2:]
        side = int(self.max_fraction * random.random() * min(height, width))
        if side == 0:
            return img
        cy, cx = random.randrange(height), random.randrange(width)
        y0, x0 = max(cy - side // 2, 0), max(cx - side // 2, 0)
        img = img.clone()
        img[..., y0:min(y0 + side, height), x0:min(x0 + side, width)] = CUTOUT_FILL
        return img


class Normalize:
    """uint8 -> float in [0, 1] -> per-channel standardised; plain tensor ops (v2's pair costs 10x)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))
        self.mean = self.mean * 255.0 * self.scale

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img.to(torch.float32).mul_(self.scale).sub_(self.mean)


class ReflectPadCrop:
    """Random ``size`` crop of the image reflect-padded by ``padding`` on each side (one gather)."""

    def __init__(self, size: int, padding: int) -> None:
        self.size, self.padding = size, padding
        padded = np.arange(-padding, size + padding)
        self.source = torch.from_numpy(np.abs(size - 1 - np.abs(size - 1 - np.abs(padded))))

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
