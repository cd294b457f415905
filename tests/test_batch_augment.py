"""The batched, on-device views against the per-sample reference (the specification)."""

import random

import numpy as np
import pytest
import torch
from scipy import stats

from al_lightning.data import batch_augment as B
from al_lightning.data import transforms as T

SHAPES = [(3, 32, 32), (1, 8, 8), (1, 28, 28), (3, 7, 9)]
BLENDS = {"color", "contrast", "sharpness"}  # float rounding before the uint8 cast: +-1 allowed
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _images(shape, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    images[0] = 77  # a flat image: autocontrast's and equalize's degenerate case
    images[1] = images[1] // 60  # a few grey levels only
    return images


def _reference(name, image, level, sign, monkeypatch):
    monkeypatch.setattr(T, "_signed", lambda value: sign * value)
    return T.FIXMATCH_OPS[name](image, level / 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", B.OP_NAMES)
def test_each_op_equals_the_reference_op_for_the_same_parameters(name, device, monkeypatch):
    differing = total = 0
    for shape in SHAPES:
        images = _images(shape, seed=len(shape) + shape[-1])
        n = len(images)
        for sign in (-1, 1):
            for level in range(1, 10):
                levels = torch.full((n,), level, dtype=torch.long, device=device)
                signs = torch.full((n,), sign, dtype=torch.long, device=device)
                ours = B.BATCH_OPS[name](images.to(device), levels, signs).cpu()
                assert ours.dtype == torch.uint8 and ours.shape == images.shape
                ref = torch.stack([_reference(name, img, level, sign, monkeypatch) for img in images])
                diff = (ours.int() - ref.int()).abs()
                if name in BLENDS:
                    assert diff.max() <= 1, (name, shape, level)
                    differing, total = differing + int((diff > 0).sum()), total + diff.numel()
                else:
                    assert torch.equal(ours, ref), (name, shape, level, sign)
    if name in BLENDS:
        assert differing <= 0.01 * total


@pytest.mark.parametrize("device", DEVICES)
def test_crop_and_flip_equal_the_reflect_padded_crop_of_each_image(device):
    images = _images((3, 32, 32), n=20)
    padding = 4
    g = torch.Generator(device).manual_seed(3)
    params = B.sample_crop(len(images), padding, True, g)
    ours = B.crop_flip(images.to(device), params, padding).cpu()
    padded = torch.nn.functional.pad(images.float(), (padding,) * 4, mode="reflect").byte()
    for i in range(len(images)):
        top, left = int(params.top[i]), int(params.left[i])
        expected = padded[i, :, top:top + 32, left:left + 32]
        if params.flip[i]:
            expected = expected.flip(-1)
        assert torch.equal(ours[i], expected)
    # and the reference's own crop with the same offsets
    crop = T.ReflectPadCrop(32, padding)
    for i in range(len(images)):
        rows = crop.source[int(params.top[i]):int(params.top[i]) + 32]
        cols = crop.source[int(params.left[i]):int(params.left[i]) + 32]
        expected = images[i][..., rows[:, None], cols[None, :]]
        assert torch.equal(ours[i], expected.flip(-1) if params.flip[i] else expected)


@pytest.mark.parametrize("device", DEVICES)
def test_cutout_equals_the_reference_cutout_at_the_same_centre(device, monkeypatch):
    images = _images((1, 16, 16), n=30)
    g = torch.Generator(device).manual_seed(5)
    params = B.sample_cutout(len(images), 16, 16, g)
    ours = B.cutout(images.to(device), params, 0.5).cpu()
    for i in range(len(images)):
        centre = iter([int(params.centre_y[i]), int(params.centre_x[i])])
        monkeypatch.setattr(T.random, "randrange", lambda stop: next(centre))
        assert torch.equal(ours[i], T.Cutout(0.5)(images[i]))


def test_op_level_gate_and_sign_frequencies_match_the_reference_policy():
    """Chi-square and binomial tests against the reference policy (uniform ops with replacement,
    uniform levels 1..9, gate probability 0.5, uniform sign); a wrong sampler fails them."""
    n = 40_000
    params = B.sample_rand_augment(n, 2, 0.5, torch.Generator().manual_seed(11))
    ops = np.bincount(params.ops.flatten().numpy(), minlength=len(B.OP_NAMES))
    assert len(ops) == len(B.OP_NAMES) and stats.chisquare(ops).pvalue > 1e-4
    levels = params.levels.flatten().numpy()
    assert levels.min() == 1 and levels.max() == 9
    assert stats.chisquare(np.bincount(levels)[1:]).pvalue > 1e-4
    for flags in (params.applied.flatten().numpy(), (params.signs.flatten() > 0).numpy()):
        assert stats.binomtest(int(flags.sum()), flags.size, 0.5).pvalue > 1e-4
    # the two slots and the gate are drawn independently of each other
    table = np.histogram2d(params.ops[:, 0].numpy(), params.ops[:, 1].numpy(), bins=len(B.OP_NAMES))[0]
    assert stats.chi2_contingency(table).pvalue > 1e-4
    # and the reference draws from the same policy: its level and gate frequencies agree with ours
    random.seed(0)
    magnitudes = []
    augment = T.FixMatchRandAugment(num_ops=1)
    augment.ops = [lambda img, m: magnitudes.append(m) or img]
    for _ in range(5000):
        augment(torch.zeros(1, 2, 2, dtype=torch.uint8))
    ref_levels = np.bincount(np.rint(np.array(magnitudes) * 10).astype(int), minlength=10)
    assert ref_levels[0] == 0 and stats.chi2_contingency(
        np.stack([ref_levels[1:], np.bincount(levels)[1:]])).pvalue > 1e-4
    assert stats.binomtest(len(magnitudes), 5000, 0.5).pvalue > 1e-4  # the reference's gate


def test_identical_images_in_one_batch_get_different_views():
    image = _images((3, 32, 32), n=3)[2]
    batch = image.expand(64, -1, -1, -1).contiguous()
    views = B.BatchViews(32, True, (0.5,) * 3, (0.25,) * 3)
    g = torch.Generator().manual_seed(0)
    for name in ("weak", "strong"):
        out = views(name, batch, g)
        assert out.dtype == torch.float32 and out.shape == batch.shape
        assert len({tuple(row.tolist()) for row in out.flatten(1)}) >= 40, name


def test_views_are_reproducible_from_the_generator_seed_and_differ_between_seeds():
    batch = _images((1, 28, 28), n=32)
    views = B.BatchViews(28, False, (0.13,), (0.31,))
    run = lambda seed: views("strong", batch, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(run(4), run(4)) and not torch.equal(run(4), run(5))


def test_plain_view_is_the_reference_normalisation():
    batch = _images((3, 8, 8), n=5)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    ours = B.BatchViews(8, True, mean, std)("plain", batch, torch.Generator())
    ref = torch.stack([T.Normalize(mean, std)(img) for img in batch])
    assert torch.allclose(ours, ref, atol=1e-6)


def test_strong_view_applies_randaugment_and_cutout_to_every_image():
    """Every strong view carries the Cutout square (grey 127 over half the side, clipped)."""
    batch = torch.zeros(200, 1, 16, 16, dtype=torch.uint8)
    out = B.BatchViews(16, False, (0.0,), (1.0,)).strong_uint8(batch, torch.Generator().manual_seed(2))
    grey = (out == T.CUTOUT_FILL).flatten(1).sum(1)
    assert (grey >= 16).all() and (grey <= 64).all() and (grey == 64).any()


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_and_select_slots_give_the_same_images(device):
    images = _images((3, 32, 32), n=300, seed=9).to(device)
    params = B.sample_rand_augment(len(images), 1, 0.5, torch.Generator(device).manual_seed(1))
    args = (images, params.ops[:, 0], params.levels[:, 0], params.applied[:, 0], params.signs[:, 0])
    grouped, select = B.apply_slot(*args, grouped=True), B.apply_slot(*args, grouped=False)
    assert (grouped.int() - select.int()).abs().max() <= 1
    assert (grouped != select).float().mean() < 1e-3
    assert not torch.equal(grouped, images)
