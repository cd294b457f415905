import random

import numpy as np
import pytest
import torch

from al_lightning.data import ActiveDataModule, DatasetNotFound
from al_lightning.data.samplers import RepeatedPermutationSampler, ShardSampler
from al_lightning.data import transforms
from al_lightning.data.transforms import Cutout, FixMatchRandAugment, ReflectPadCrop, build_views


def test_digits_split_is_stratified_seeded_and_uint8(digits):
    splits = digits.splits
    assert splits.train_images.dtype == torch.uint8 and splits.train_images.shape[1:] == (1, 8, 8)
    n_train, n_test = len(splits.train_targets), len(splits.test_targets)
    assert n_train + n_test == 1797 and abs(n_test / 1797 - 0.2) < 0.01
    train_share = torch.bincount(splits.train_targets) / n_train
    test_share = torch.bincount(splits.test_targets) / n_test
    assert torch.allclose(train_share, test_share, atol=0.01)
    again = ActiveDataModule("digits")
    again.setup()
    assert torch.equal(again.splits.test_images, splits.test_images)


def device_batches(dm):
    """The training batches as a step sees them: loader output, then the on-device views."""
    for batch, _, _ in dm.train_dataloader():
        yield dm.on_after_batch_transfer(batch, 0)


def test_labeled_loader_reads_labels_from_the_pool_not_the_dataset(digits):
    # corrupt the ground truth after labeling: the learner must still see the pool's labels
    pool_labels = dict(zip(digits.pool.labeled_indices.tolist(),
                           digits.pool.labels_of(digits.pool.labeled_indices).tolist()))
    digits.splits.train_targets.fill_(-7)
    batch = next(device_batches(digits))
    labeled = batch["labeled"]
    x, y = labeled["weak"], labeled["target"]
    assert set(labeled) == {"weak", "target", "index"} and set(labeled["index"].tolist()) <= set(pool_labels)
    assert all(pool_labels[i] == t for i, t in zip(labeled["index"].tolist(), y.tolist()))
    assert x.dtype == torch.float32 and x.shape == (4, 1, 8, 8)
    assert set(y.tolist()) <= set(pool_labels.values()) and (y >= 0).all()


def test_unlabeled_batches_hold_views_and_pool_ids_but_no_labels(digits):
    batch = next(device_batches(digits))
    unlabeled = batch["unlabeled"]
    assert set(unlabeled) == {"weak", "strong", "index"}
    assert unlabeled["weak"].shape == (8, 1, 8, 8) and unlabeled["strong"].shape == (8, 1, 8, 8)
    ids = unlabeled["index"].numpy()
    assert not np.isin(ids, digits.pool.labeled_indices).any()


def test_labeled_ids_never_appear_in_the_unlabeled_stream(digits):
    seen = set()
    for batch, _, _ in digits.train_dataloader():
        seen.update(batch["unlabeled"]["index"].tolist())
    assert seen.isdisjoint(digits.pool.labeled_indices.tolist())


def test_loaders_hand_out_uint8_images_only_and_per_sample_mode_keeps_the_reference(digits):
    raw, _, _ = next(iter(digits.train_dataloader()))
    assert set(raw["unlabeled"]) == {"image", "index"} and raw["unlabeled"]["image"].dtype == torch.uint8
    assert set(raw["labeled"]) == {"image", "index", "target"}
    reference = ActiveDataModule("digits", batch_size=4, uratio=2, steps_per_epoch=3, num_workers=0,
                                 augmentation="per_sample")
    reference.setup()
    reference.pool.load_state_dict(digits.pool.state_dict())
    batch, _, _ = next(iter(reference.train_dataloader()))
    assert set(batch["unlabeled"]) == {"weak", "strong", "index"} and batch["unlabeled"]["weak"].dtype == torch.float32
    assert reference.on_after_batch_transfer(batch, 0) is batch


def test_each_rank_draws_its_own_augmentation_reproducibly_from_the_seed(digits):
    from types import SimpleNamespace
    images = digits.splits.train_images[:16]
    batch = lambda: {"labeled": {"image": images.clone(), "index": torch.arange(16),  # noqa: E731
                                 "target": torch.zeros(16, dtype=torch.long)}}

    def strong_views(rank, seed=0):
        digits.seed = seed
        digits.trainer = SimpleNamespace(lightning_module=SimpleNamespace(labeled_views=("weak", "strong")),
                                         global_rank=rank, world_size=2)
        digits.train_dataloader()
        out = digits.on_after_batch_transfer(batch(), 0)["labeled"]
        return torch.cat([out["weak"], out["strong"]])

    assert torch.equal(strong_views(0), strong_views(0)) and torch.equal(strong_views(1), strong_views(1))
    assert not torch.equal(strong_views(0), strong_views(1))
    assert not torch.equal(strong_views(0, seed=0), strong_views(0, seed=1))


def test_evaluation_and_pool_inference_standardise_uint8_like_the_reference(digits):
    x, y = next(iter(digits.val_dataloader()))
    assert x.dtype == torch.uint8
    x_norm, y_out = digits.on_after_batch_transfer([x, y], 0)
    reference = torch.stack([digits.views["plain"](img) for img in x])
    assert torch.allclose(x_norm, reference, atol=1e-6) and torch.equal(y_out, y)
    ids = np.array([5, 3, 900])
    batch = next(iter(digits.inference_dataloader(ids)))
    assert batch["index"].tolist() == ids.tolist()
    reference = torch.stack([digits.views["plain"](digits.splits.train_images[i]) for i in ids])
    assert torch.allclose(batch["plain"], reference, atol=1e-6)


def test_repeated_permutation_covers_every_item_before_repeating():
    stream = RepeatedPermutationSampler(5, 12, seed=3).global_stream().tolist()
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:10]) == list(range(5))


def test_rank_shards_are_disjoint_slices_of_one_stream():
    shards = [list(RepeatedPermutationSampler(10, 6, seed=1, rank=r, world_size=2)) for r in range(2)]
    stream = RepeatedPermutationSampler(10, 6, seed=1, world_size=2).global_stream().tolist()
    assert shards[0] == stream[0::2] and shards[1] == stream[1::2]
    assert sorted(shards[0] + shards[1]) == sorted(stream)
    assert sorted(list(ShardSampler(7, 0, 2)) + list(ShardSampler(7, 1, 2))) == list(range(7))


def test_strong_view_differs_from_weak_and_keeps_shape():
    views = build_views(32, True, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    weak, strong = views["weak"](img), views["strong"](img)
    assert weak.shape == strong.shape == (3, 32, 32) and weak.dtype == torch.float32
    grey = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8)
    for _ in range(50):  # every FixMatch op must accept a one-channel 8x8 image
        out = FixMatchRandAugment(2)(grey)
        assert out.shape == (1, 8, 8) and out.dtype == torch.uint8


def test_geometric_ops_match_pil_nearest_resampling():
    from PIL import Image
    rng = np.random.default_rng(0)
    mismatched = total = 0
    for h, w in [(8, 8), (32, 32), (7, 9)]:
        for _ in range(30):
            arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
            m = [1 + rng.uniform(-.3, .3), rng.uniform(-.3, .3), rng.uniform(-3, 3),
                 rng.uniform(-.3, .3), 1 + rng.uniform(-.3, .3), rng.uniform(-3, 3)]
            ref = np.asarray(Image.fromarray(arr).transform((w, h), Image.AFFINE, m, Image.NEAREST, fillcolor=128))
            ours = transforms.affine_nearest(torch.from_numpy(arr)[None], m, 128)[0].numpy()
            mismatched, total = mismatched + (ref != ours).sum(), total + ref.size
    assert mismatched <= 1e-3 * total  # only float ties at pixel boundaries may differ
    for seed in range(20):
        arr = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        magnitude = (seed % 9 + 1) / 10
        random.seed(seed)
        ours = transforms._rotate(torch.from_numpy(arr)[None], magnitude)[0].numpy()
        random.seed(seed)
        degrees = transforms._signed(int(30 * magnitude))
        assert np.array_equal(ours, np.asarray(Image.fromarray(arr).rotate(degrees)))


def test_equalize_matches_pil():
    from PIL import Image, ImageOps
    rng = np.random.default_rng(1)
    for divisor in [1, 3, 40, 255]:
        arr = rng.integers(0, 256, (8, 8), dtype=np.uint8) // np.uint8(divisor)
        ours = transforms.equalize(torch.from_numpy(arr)[None])[0].numpy()
        assert np.array_equal(ours, np.asarray(ImageOps.equalize(Image.fromarray(arr))))


def test_reflect_pad_crop_is_one_of_the_padded_crops_and_reaches_all():
    img = torch.randint(0, 256, (1, 8, 8), dtype=torch.uint8)
    padded = torch.nn.functional.pad(img.float()[None], (1, 1, 1, 1), mode="reflect")[0].byte()
    offsets = set()
    for _ in range(300):
        out = ReflectPadCrop(8, 1)(img)
        hits = [(t, l) for t in range(3) for l in range(3) if torch.equal(padded[..., t:t + 8, l:l + 8], out)]
        assert hits
        offsets.update(hits)
    assert len(offsets) == 9


def test_cutout_paints_a_half_side_square_clipped_at_the_borders():
    img = torch.zeros(1, 16, 16, dtype=torch.uint8)
    areas = set()
    for _ in range(200):
        painted = Cutout(0.5)(img) == 127
        rows, cols = painted.any(-1).sum().item(), painted.any(-2).sum().item()
        assert painted.sum().item() == rows * cols and 4 <= rows <= 8 and 4 <= cols <= 8
        areas.add(rows * cols)
    assert 64 in areas and min(areas) < 64


def test_randaugment_applies_each_op_with_probability_half_at_levels_one_to_nine():
    magnitudes = []
    augment = FixMatchRandAugment(num_ops=1)
    augment.ops = [lambda img, m: magnitudes.append(m) or img.flip(-1)]
    img = torch.arange(64, dtype=torch.uint8).view(1, 8, 8)
    random.seed(0)
    changed = sum(not torch.equal(augment(img), img) for _ in range(4000))
    assert abs(changed / 4000 - 0.5) < 0.03
    assert sorted(set(magnitudes)) == [k / 10 for k in range(1, 10)]


def test_missing_torchvision_dataset_fails_with_one_line_naming_files(tmp_path):
    dm = ActiveDataModule("cifar10", root=str(tmp_path))
    with pytest.raises(DatasetNotFound) as err:
        dm.setup()
    message = str(err.value)
    assert "\n" not in message and "cifar-10-batches-py" in message and str(tmp_path) in message
    assert "data.download" in message


def test_mnist_loads_offline_from_the_raw_files(tmp_path):
    from pathlib import Path
    source = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    if not source.is_dir():
        pytest.skip("shared MNIST files not present")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in source.glob("*.gz"):
        (raw / f.name).symlink_to(f)
    dm = ActiveDataModule("mnist", root=str(tmp_path), download=True)
    dm.prepare_data()
    dm.setup()
    assert dm.splits.train_images.shape == (60000, 1, 28, 28) and dm.pool.size == 60000


def test_unknown_dataset_names_the_choices():
    with pytest.raises(KeyError, match="choose one of: cifar10"):
        ActiveDataModule("imagenet")


def test_image_folder(tmp_path):
    from PIL import Image
    for split in ("train", "test"):
        for name, color in (("cat", 30), ("dog", 200)):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for k in range(3):
                Image.new("RGB", (20, 20), (color, k, 0)).save(folder / f"{k}.png")
    dm = ActiveDataModule("image_folder", root=str(tmp_path), dataset_options={"image_size": 16})
    assert (dm.num_classes, dm.in_channels) == (2, 3)
    dm.setup()
    assert dm.splits.train_images.shape == (6, 3, 16, 16) and dm.splits.train_targets.tolist() == [0] * 3 + [1] * 3
    with pytest.raises(DatasetNotFound, match="no folder"):
        ActiveDataModule("image_folder", root=str(tmp_path / "nowhere"))
