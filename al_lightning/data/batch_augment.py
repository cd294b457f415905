"""FixMatch's weak and strong views built on a whole uint8 batch where the batch is (CUDA or CPU).

The per-sample pipeline of :mod:`al_lightning.data.transforms` is the specification; this module
draws the same parameters per image (its own crop offset, flip, RandAugment ops, levels, apply
gates, signs and Cutout centre) from a ``torch.Generator`` on the batch's device and applies them to
the batch at once, so a GPU never waits for per-image Python in loader workers. For the same
parameters every op equals its reference op pixel for pixel, except the three blends (colour,
contrast, sharpness), whose float rounding before the uint8 cast may differ by one grey level
(``tests/test_batch_augment.py`` checks both). Geometric ops share the reference's own matrix
functions, evaluated once per level and sign, so their float64 arithmetic is the reference's.

On the CPU a RandAugment slot groups the batch by operation and runs each operation on its own
images; on a GPU it runs every operation on the whole batch and selects, which needs no host sync
(:func:`apply_slot`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.nn import functional as TF

from al_lightning.data.transforms import (
    CUTOUT_FILL,
    FIXMATCH_OPS,
    GEOMETRIC_FILL,
    Normalize,
    enhance_factor,
    posterize_bits,
    reflect_source,
    rotate_matrix,
    shear_matrix,
    solarize_threshold,
    translate_matrix,
    translate_shift,
)

#: the reference's operation pool, in its order (an op id indexes this tuple)
OP_NAMES: tuple[str, ...] = tuple(FIXMATCH_OPS)
LEVELS = 9  # magnitudes m = level / 10, level in 1..9


def _level_table(fn: Callable[[float], float]) -> list[float]:
    """``fn(level / 10)`` for level 0..9, with the reference's Python arithmetic."""
    return [fn(level / 10) for level in range(LEVELS + 1)]


# ------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class CropParams:
    top: torch.Tensor  # (B,) offsets into the reflect-padded image, 0..2 padding
    left: torch.Tensor
    flip: torch.Tensor  # (B,) bool


@dataclass(frozen=True)
class RandAugmentParams:
    ops: torch.Tensor  # (B, K) op ids into OP_NAMES, drawn with replacement
    levels: torch.Tensor  # (B, K) in 1..9
    applied: torch.Tensor  # (B, K) bool, each True with probability apply_prob
    signs: torch.Tensor  # (B, K) +-1 (used by the signed ops only)


@dataclass(frozen=True)
class CutoutParams:
    centre_y: torch.Tensor  # (B,) uniform over rows
    centre_x: torch.Tensor  # (B,) uniform over columns


def sample_crop(batch: int, padding: int, hflip: bool, generator: torch.Generator) -> CropParams:
    device = generator.device
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
    flip = torch.rand(batch, generator=generator, device=device) < 0.5 if hflip \
        else torch.zeros(batch, dtype=torch.bool, device=device)
    return CropParams(top, left, flip)


def sample_rand_augment(batch: int, num_ops: int, apply_prob: float, generator: torch.Generator
                        ) -> RandAugmentParams:
    """The reference policy: ops uniform with replacement, levels uniform on 1..9, each op applied
    with probability ``apply_prob``, signs uniform."""
    device, shape = generator.device, (batch, num_ops)
    ops = torch.randint(0, len(OP_NAMES), shape, generator=generator, device=device)
    levels = torch.randint(1, LEVELS + 1, shape, generator=generator, device=device)
    applied = torch.rand(shape, generator=generator, device=device) < apply_prob
    signs = torch.where(torch.rand(shape, generator=generator, device=device) < 0.5, 1, -1)
    return RandAugmentParams(ops, levels, applied, signs)


def sample_cutout(batch: int, height: int, width: int, generator: torch.Generator) -> CutoutParams:
    device = generator.device
    return CutoutParams(torch.randint(0, height, (batch,), generator=generator, device=device),
                        torch.randint(0, width, (batch,), generator=generator, device=device))


# ------------------------------------------------------------------------ weak view and Cutout
@lru_cache(maxsize=None)
def reflect_index(size: int, padding: int, device: torch.device) -> torch.Tensor:
    """:func:`~al_lightning.data.transforms.reflect_source` on ``device``, built once."""
    return reflect_source(size, padding).to(device)


def crop_flip(images: torch.Tensor, params: CropParams, padding: int) -> torch.Tensor:
    """Each image's ``size`` crop of itself reflect-padded by ``padding``, mirrored where ``flip``
    (one gather for the whole batch)."""
    height, width = images.shape[-2:]
    steps_y = torch.arange(height, device=images.device)
    steps_x = torch.arange(width, device=images.device)
    rows = reflect_index(height, padding, images.device)[params.top[:, None] + steps_y]  # (B, H)
    cols_at = torch.where(params.flip[:, None], width - 1 - steps_x, steps_x)
    cols = reflect_index(width, padding, images.device)[params.left[:, None] + cols_at]  # (B, W)
    batch = torch.arange(len(images), device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def cutout(images: torch.Tensor, params: CutoutParams, fraction: float = 0.5) -> torch.Tensor:
    """Grey square of side ``fraction * min(H, W)`` at each image's centre, clipped at the borders."""
    height, width = images.shape[-2:]
    half = int(fraction * min(height, width)) // 2
    if half == 0:
        return images
    ys = torch.arange(height, device=images.device)
    xs = torch.arange(width, device=images.device)
    cy, cx = params.centre_y[:, None], params.centre_x[:, None]
    inside = (((ys >= cy - half) & (ys < cy + half))[:, :, None]
              & ((xs >= cx - half) & (xs < cx + half))[:, None, :])
    return images.masked_fill(inside[:, None], CUTOUT_FILL)


# ------------------------------------------------------------------------ RandAugment operations
def affine_nearest(images: torch.Tensor, matrices: torch.Tensor, fill: int) -> torch.Tensor:
    """:func:`al_lightning.data.transforms.affine_nearest` with one float64 matrix per image."""
    n, channels, height, width = images.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64, device=images.device) + 0.5,
                            torch.arange(width, dtype=torch.float64, device=images.device) + 0.5, indexing="ij")
    xs, ys = xs.reshape(1, -1), ys.reshape(1, -1)
    a, b, c, d, e, f = (matrices[:, i:i + 1] for i in range(6))
    src_x = torch.floor(a * xs + b * ys + c).long()
    src_y = torch.floor(d * xs + e * ys + f).long()
    inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    source = torch.where(inside, src_y * width + src_x, 0)  # (n, HW)
    flat = images.reshape(n, channels, height * width)
    out = flat.gather(2, source[:, None, :].expand(n, channels, -1))
    return out.masked_fill(~inside[:, None, :], fill).view_as(images)


def _reference_matrix(name: str, sign: int, m: float, height: int, width: int) -> tuple[float, ...]:
    if name == "rotate":
        return rotate_matrix(sign * int(30 * m), height, width)
    if name.startswith("shear"):
        return shear_matrix(sign * (0.3 * m), 0 if name == "shear_x" else 1)
    axis = 0 if name == "translate_x" else 1
    return translate_matrix(translate_shift(sign * (0.3 * m), (width, height)[axis]), axis)


@lru_cache(maxsize=None)
def _geometric_table(name: str, height: int, width: int, device: torch.device) -> torch.Tensor:
    """The reference's affine matrices ``(sign -/+, level 0..9, 6)``, per image size and device."""
    rows = [_reference_matrix(name, sign, level / 10, height, width)
            for sign in (-1, 1) for level in range(LEVELS + 1)]
    return torch.tensor(rows, dtype=torch.float64, device=device).view(2, LEVELS + 1, 6)


def _geometric(name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    def op(images: torch.Tensor, levels: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        table = _geometric_table(name, *images.shape[-2:], images.device)
        return affine_nearest(images, table[(signs > 0).long(), levels], GEOMETRIC_FILL)
    return op


@lru_cache(maxsize=None)
def _level_values(values: Callable[[float], float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(_level_table(values), dtype=dtype, device=device)


def _per_image(values: Callable[[float], float], levels: torch.Tensor, dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
    """``values(level / 10)`` of each image's level, shaped to broadcast over (C, H, W); the
    per-level table is built once per device (no host-to-device copy per batch)."""
    return _level_values(values, dtype, levels.device)[levels].view(-1, 1, 1, 1)


def _complement_factor(m: float) -> float:
    return 1.0 - enhance_factor(m)


def _posterize_mask(m: float) -> int:
    bits = posterize_bits(m)
    return ((1 << bits) - 1) << (8 - bits)


def _blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's uint8 ``_blend`` with one ratio per image."""
    factor, alpha = _per_image(enhance_factor, ratio), _per_image(_complement_factor, ratio)
    return images.mul(factor).add_(other * alpha).clamp_(0, 255).to(torch.uint8)


def _luma(images: torch.Tensor) -> torch.Tensor:
    """torchvision's float grey image of uint8 RGB (ITU-R 601-2 luma), floored."""
    r, g, b = images.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor_()


def brightness(images: torch.Tensor, levels: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    return images.mul(_per_image(enhance_factor, levels)).clamp_(0, 255).to(torch.uint8)


def color(images: torch.Tensor, levels: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    if images.shape[-3] != 3:  # saturation is undefined for grey images (as PIL and the reference)
        return images
    return _blend(images, _luma(images), levels)


def contrast(images: torch.Tensor, levels: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    grey = _luma(images) if images.shape[-3] == 3 else images.to(torch.float32)
    return _blend(images, grey.mean(dim=(-3, -2, -1), keepdim=True), levels)


def sharpness(images: torch.Tensor, levels: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Interior pixels blended with the 3x3 smoothing (1s around a 5, over 13) rounded; borders kept."""
    n, channels, height, width = images.shape
    if height <= 2 or width <= 2:
        return images
    kernel = torch.full((3, 3), 1.0 / 13.0, device=images.device)
    kernel[1, 1] = 5.0 / 13.0
    out = images.to(torch.float32)
    smooth = TF.conv2d(out, kernel.expand(channels, 1, 3, 3), groups=channels).round_()
    alpha = _per_image(_complement_factor, levels)
    interior = out[..., 1:-1, 1:-1]
    interior.add_(smooth.sub_(interior).mul_(alpha))
    return out.clamp_(0, 255).to(torch.uint8)


def autocontrast(images: torch.Tensor, levels: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Each channel stretched to 0..255 (torchvision's tensor autocontrast, per image)."""
    x = images.to(torch.float32)
    low, high = x.amin(dim=(-2, -1), keepdim=True), x.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    inv_scale = (high - low).mul_(1.0 / 255).masked_fill_(flat, 1.0)
    return x.sub_(low.masked_fill(flat, 0.0)).div_(inv_scale).clamp_(0, 255).to(torch.uint8)


def equalize(images: torch.Tensor, levels: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """PIL's ``ImageOps.equalize`` per image and channel: all histograms at once in one scatter."""
    n, channels, height, width = images.shape
    values = images.reshape(n * channels, height * width).long()
    hist = torch.zeros(n * channels, 256, dtype=torch.long, device=images.device)
    hist.scatter_add_(1, values, torch.ones_like(values))
    top_value = torch.where(hist > 0, torch.arange(256, device=images.device), 0).amax(dim=1, keepdim=True)
    step = (height * width - hist.gather(1, top_value)) // 255  # (n C, 1)
    safe = step.clamp(min=1)
    lut = ((hist.cumsum(1) - hist + safe // 2) // safe).clamp_(max=255)
    out = torch.where(step > 0, lut.gather(1, values), values)
    return out.to(torch.uint8).view_as(images)


def posterize(images: torch.Tensor, levels: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    return images & _per_image(_posterize_mask, levels, torch.uint8)


def solarize(images: torch.Tensor, levels: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    threshold = _per_image(solarize_threshold, levels)
    return torch.where(images >= threshold, 255 - images, images)


def identity(images: torch.Tensor, levels: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    return images


#: batched twin of every reference op: ``op(images (n,C,H,W) uint8, levels (n,), signs (n,))``
BATCH_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "identity": identity, "autocontrast": autocontrast, "equalize": equalize, "brightness": brightness,
    "color": color, "contrast": contrast, "sharpness": sharpness, "posterize": posterize,
    "solarize": solarize, "rotate": _geometric("rotate"), "shear_x": _geometric("shear_x"),
    "shear_y": _geometric("shear_y"), "translate_x": _geometric("translate_x"),
    "translate_y": _geometric("translate_y"),
}
assert tuple(BATCH_OPS) == OP_NAMES, "BATCH_OPS must list the reference ops in the reference order"
_OPS = [BATCH_OPS[name] for name in OP_NAMES]


def apply_slot(images: torch.Tensor, ops: torch.Tensor, levels: torch.Tensor, applied: torch.Tensor,
               signs: torch.Tensor, grouped: bool | None = None) -> torch.Tensor:
    """One RandAugment slot: image ``i`` goes through op ``ops[i]`` at ``levels[i]`` if ``applied[i]``.

    ``grouped`` (the default on the CPU): images are sorted by op and each op runs on its own
    images only; the op counts are one host sync. Otherwise (the default on a GPU) every op runs on
    the whole batch and a select keeps each image's own result: 14x the arithmetic of cheap
    element-wise kernels, but no sync, so the host keeps queueing work ahead of the device.
    Every op is per image, so both give the same images."""
    chosen = torch.where(applied, ops, -1)
    if grouped is None:
        grouped = images.device.type == "cpu"
    if not grouped:
        out = images
        for k, op in enumerate(_OPS):
            if op is not identity:
                out = torch.where((chosen == k).view(-1, 1, 1, 1), op(images, levels, signs), out)
        return out
    order = torch.argsort(chosen, stable=True)
    counts = torch.bincount(chosen + 1, minlength=len(_OPS) + 1).tolist()
    out = images.clone()
    start = counts[0]
    for op, count in zip(_OPS, counts[1:]):
        if count and op is not identity:
            rows = order[start:start + count]
            out[rows] = op(images[rows], levels[rows], signs[rows])
        start += count
    return out


def rand_augment(images: torch.Tensor, params: RandAugmentParams) -> torch.Tensor:
    for slot in range(params.ops.shape[1]):
        images = apply_slot(images, params.ops[:, slot], params.levels[:, slot], params.applied[:, slot],
                            params.signs[:, slot])
    return images


# ------------------------------------------------------------------------ the views
class BatchViews:
    """The named views a method may ask for (``plain``, ``weak``, ``strong``), built on a uint8
    batch ``(B, C, H, W)`` on its device and returned as standardised float32.

    ``weak``: reflect-pad crop (12.5% of the side) + flip where allowed; ``strong``: an independent
    weak draw + RandAugment (``num_ops`` ops, each applied with ``apply_prob``) + Cutout
    (``cutout_fraction`` of the side), exactly the per-sample reference's policy.
    """

    def __init__(self, size: int, hflip: bool, mean: Sequence[float], std: Sequence[float],
                 num_ops: int = 2, apply_prob: float = 0.5, cutout_fraction: float = 0.5) -> None:
        self.size, self.hflip, self.padding = size, hflip, int(0.125 * size + 0.5)
        self.num_ops, self.apply_prob, self.cutout_fraction = num_ops, apply_prob, cutout_fraction
        #: the reference's standardisation, applied to the whole batch
        self.normalize = Normalize(mean, std)

    def weak_uint8(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return crop_flip(images, sample_crop(len(images), self.padding, self.hflip, generator), self.padding)

    def strong_uint8(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out = self.weak_uint8(images, generator)
        out = rand_augment(out, sample_rand_augment(len(images), self.num_ops, self.apply_prob, generator))
        return cutout(out, sample_cutout(len(images), *images.shape[-2:], generator), self.cutout_fraction)

    def __call__(self, name: str, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if name == "plain":
            return self.normalize(images)
        if name == "weak":
            return self.normalize(self.weak_uint8(images, generator))
        if name == "strong":
            return self.normalize(self.strong_uint8(images, generator))
        raise KeyError(f"unknown view {name!r}; the views are plain, weak and strong")
