"""Dataset registry: each entry loads a train and test split once into uint8 tensors (N, C, H, W).

Images stay in memory as uint8 and every view is made from them, so nothing is decoded twice.
Offline and missing, a torchvision dataset fails with one line naming the files it expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from al_lightning.errors import UserError
from al_lightning.registry import Registry


class DatasetNotFound(UserError, FileNotFoundError):
    """A dataset's files are missing and could not be downloaded."""


#: label of a pool image whose class nobody knows yet (``image_folder``'s ``unlabeled/``)
UNKNOWN = -1


@dataclass(frozen=True)
class ImageSplits:
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_targets: torch.Tensor  # int64 (N,); UNKNOWN where nobody has labeled the image
    test_images: torch.Tensor
    test_targets: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool  # False for digits: a mirrored digit is another glyph
    #: the names people read; "0".."C-1" when the dataset has none
    class_names: tuple[str, ...] = ()
    #: a stable id per train image where the index is not one (``image_folder``: the path
    #: relative to the root); None: the index is the id
    train_names: tuple[str, ...] | None = None

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    @property
    def names_of_classes(self) -> tuple[str, ...]:
        return self.class_names or tuple(str(c) for c in range(self.num_classes))

    @property
    def given_labels(self) -> np.ndarray:
        """Train ids whose labels came with the data for the learner to use from the start: the
        known ones where some are :data:`UNKNOWN` (a person's own project). None in a benchmark,
        whose labels stay hidden until the simulated oracle sells them."""
        if not len(self.unknown_labels):
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(self.train_targets.numpy() != UNKNOWN).astype(np.int64)

    @property
    def unknown_labels(self) -> np.ndarray:
        """Train ids nobody has labeled yet: only people can answer for them."""
        return np.flatnonzero(self.train_targets.numpy() == UNKNOWN).astype(np.int64)


@dataclass(frozen=True)
class DatasetSpec:
    """``loader(root, download, split_seed, **options)`` loads; ``shape(root, **options)`` returns
    ``(num_classes, in_channels)`` cheaply, so a model can be built before the data is loaded."""

    loader: Callable[..., ImageSplits]
    shape: Callable[..., tuple[int, int]]


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(name: str, num_classes: int = 0, in_channels: int = 0,
                     shape: Callable[..., tuple[int, int]] | None = None):
    def decorator(loader: Callable[..., ImageSplits]) -> Callable[..., ImageSplits]:
        fixed = lambda root, **options: (num_classes, in_channels)  # noqa: E731
        DATASETS.register(name)(DatasetSpec(loader, shape or fixed))
        return loader

    return decorator


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    scaled = images.double().div_(255.0)
    dims = (0, 2, 3)
    return tuple(scaled.mean(dims).tolist()), tuple(scaled.std(dims).clamp_min(1e-3).tolist())


def _nchw(array: np.ndarray | torch.Tensor, layout: str) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(array), dtype=torch.uint8)
    if layout == "NHW":
        return tensor.unsqueeze(1).contiguous()
    if layout == "NHWC":
        return tensor.permute(0, 3, 1, 2).contiguous()
    return tensor.contiguous()


def _missing(name: str, root: Path, expected: list[str], err: Exception) -> DatasetNotFound:
    files = ", ".join(str(root / f) for f in expected)
    return DatasetNotFound(
        f"{name}: data not found ({type(err).__name__}); expected {files} - put the files there, "
        f"or set data.download: true on a machine with internet"
    )


def _torchvision_splits(name: str, cls_name: str, root: str, download: bool, expected: list[str],
                        split_kw: Callable[[bool], dict], layout: str, label_attr: str
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Train images, targets, test images, targets, and the dataset's own class names (its
    ``classes`` attribute; empty where it has none, e.g. SVHN)."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    out = []
    for train in (True, False):
        try:
            ds = cls(root, download=download, **split_kw(train))
        except (RuntimeError, OSError, ValueError) as err:
            raise _missing(name, Path(root), expected, err) from None
        out += [_nchw(ds.data, layout), torch.as_tensor(np.asarray(getattr(ds, label_attr)),
                                                        dtype=torch.int64)]
    return out[0], out[1], out[2], out[3], tuple(map(str, getattr(ds, "classes", ())))


@register_dataset("digits", num_classes=10, in_channels=1)
def load_digits(root: str = "", download: bool = False, split_seed: int = 0) -> ImageSplits:
    """scikit-learn's bundled 8x8 digits (offline); a seeded stratified 80/20 split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    train_idx, test_idx = train_test_split(np.arange(len(images)), test_size=0.2,
                                           stratify=digits.target, random_state=split_seed)
    train = _nchw(images[train_idx], "NHW")
    mean, std = channel_stats(train)
    return ImageSplits(train, torch.as_tensor(digits.target[train_idx], dtype=torch.int64),
                       _nchw(images[test_idx], "NHW"),
                       torch.as_tensor(digits.target[test_idx], dtype=torch.int64),
                       10, mean, std, hflip=False)


def _mnist_like(name: str, cls_name: str, folder: str, mean: float, std: float, hflip: bool):
    files = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]

    def loader(root: str = "data", download: bool = False, split_seed: int = 0) -> ImageSplits:
        *splits, names = _torchvision_splits(name, cls_name, root, download,
                                             [f"{folder}/raw/{f}" for f in files],
                                             lambda train: {"train": train}, "NHW", "targets")
        return ImageSplits(*splits, num_classes=10, mean=(mean,), std=(std,), hflip=hflip, class_names=names)

    register_dataset(name, num_classes=10, in_channels=1)(loader)


_mnist_like("mnist", "MNIST", "MNIST", 0.1307, 0.3081, hflip=False)
_mnist_like("fashion_mnist", "FashionMNIST", "FashionMNIST", 0.2860, 0.3530, hflip=True)


def _torchvision_rgb(name: str, cls_name: str, expected: list[str], layout: str, label_attr: str,
                     num_classes: int, mean: tuple[float, ...], std: tuple[float, ...], hflip: bool,
                     split_names: tuple[str, str] | None = None) -> None:
    """Register a 3-channel torchvision dataset; ``split_names`` for datasets that take ``split=``."""

    def split_kw(train: bool) -> dict:
        return {"train": train} if split_names is None else {"split": split_names[0 if train else 1]}

    def loader(root: str = "data", download: bool = False, split_seed: int = 0) -> ImageSplits:
        *splits, names = _torchvision_splits(name, cls_name, root, download, expected, split_kw, layout, label_attr)
        return ImageSplits(*splits, num_classes=num_classes, mean=mean, std=std, hflip=hflip, class_names=names)

    register_dataset(name, num_classes=num_classes, in_channels=3)(loader)


_torchvision_rgb("cifar10", "CIFAR10", ["cifar-10-batches-py/data_batch_1..5", "cifar-10-batches-py/test_batch"],
                 "NHWC", "targets", 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), hflip=True)
_torchvision_rgb("cifar100", "CIFAR100", ["cifar-100-python/train", "cifar-100-python/test"],
                 "NHWC", "targets", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), hflip=True)
_torchvision_rgb("svhn", "SVHN", ["train_32x32.mat", "test_32x32.mat"], "NCHW", "labels", 10,
                 (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), hflip=False, split_names=("train", "test"))
# STL-10: the labeled 5k train split is the pool (the 100k 'unlabeled' split has no ground truth).
_torchvision_rgb("stl10", "STL10", ["stl10_binary/train_X.bin", "stl10_binary/test_X.bin"], "NCHW", "labels", 10,
                 (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), hflip=True, split_names=("train", "test"))


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _image_files(paths: Iterable[Path]) -> list[Path]:
    """The image files among ``paths``, sorted."""
    return sorted(p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def image_folder_classes(root: str) -> list[str]:
    """The class folders of ``train/``, or of ``test/`` when every train image is unlabeled."""
    base = Path(root)
    folder = base / "train" if (base / "train").is_dir() or not (base / "unlabeled").is_dir() else base / "test"
    if not folder.is_dir():
        raise DatasetNotFound(f"image_folder: no folder {folder}; expected {root}/train/<class>/*.jpg (or "
                              f"{root}/unlabeled/*.jpg) and {root}/test/<class>/*.jpg (set data.root)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DatasetNotFound(f"image_folder: {folder} needs at least two class folders, found {classes}")
    return classes


def _decode_all(paths: list[Path], size: int, channels: int) -> torch.Tensor:
    """``(N, channels, size, size)`` uint8, decoded and resized by a thread per core (PIL releases
    the GIL while it decodes and resizes: 1.6-1.8x on two cores against one) into one buffer."""
    from PIL import Image

    mode = "RGB" if channels == 3 else "L"

    def decode(path: Path) -> np.ndarray:
        with Image.open(path) as img:
            img = img.convert(mode).resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).reshape(size, size, channels)

    images = np.empty((len(paths), size, size, channels), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as threads:
        for i, image in enumerate(threads.map(decode, paths, chunksize=64)):
            images[i] = image
    return _nchw(images, "NHWC")


def _class_folder_paths(folder: Path, classes: list[str], required: bool = True) -> tuple[list[Path], list[int]]:
    """The images of ``folder/<class>/`` in class then path order, and their class indices."""
    paths, targets = [], []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            if not required:
                continue
            raise DatasetNotFound(f"image_folder: class folder {class_dir} is missing (every class "
                                  f"in train/ needs a folder in {folder.name}/)")
        found = _image_files(class_dir.iterdir())
        paths += found
        targets += [label] * len(found)
    return paths, targets


def _image_folder_shape(root: str, channels: int = 3, **options) -> tuple[int, int]:
    return len(image_folder_classes(root)), channels


@register_dataset("image_folder", shape=_image_folder_shape)
def load_image_folder(root: str = "data", download: bool = False, split_seed: int = 0,
                      image_size: int = 32, channels: int = 3) -> ImageSplits:
    """A user's images, decoded once and resized: ``root/train/<class>/`` (images whose class is
    known), ``root/unlabeled/`` (any sub-folders; images nobody has labeled yet, target
    :data:`UNKNOWN`), at least one of the two, and ``root/test/<class>/`` to measure accuracy on.
    With an ``unlabeled/`` folder the known classes are labels a person gave, and a run starts with
    them labeled (:attr:`ImageSplits.given_labels`); without one, they are a benchmark's hidden
    ground truth that only the simulated oracle reads."""
    base = Path(root)
    classes = image_folder_classes(root)
    unlabeled = base / "unlabeled"
    known, known_y = _class_folder_paths(base / "train", classes, required=not unlabeled.is_dir())
    unknown = _image_files(unlabeled.rglob("*")) if unlabeled.is_dir() else []
    if not known and not unknown:
        raise DatasetNotFound(f"image_folder: no images under {base / 'train'} or {unlabeled}")
    test, test_y = _class_folder_paths(base / "test", classes)
    if not test:
        raise DatasetNotFound(f"image_folder: no images under {base / 'test'}; the test set measures every fit")
    train_x = _decode_all(known + unknown, image_size, channels)
    train_y = torch.as_tensor(known_y + [UNKNOWN] * len(unknown), dtype=torch.int64)
    names = tuple(p.relative_to(base).as_posix() for p in known + unknown)
    mean, std = channel_stats(train_x)
    return ImageSplits(train_x, train_y, _decode_all(test, image_size, channels), torch.as_tensor(test_y),
                       len(classes), mean, std, hflip=True, class_names=tuple(classes), train_names=names)
