"""Images per second of a full FixMatch training step, by augmentation pipeline, in one run.

A step is the real thing: the data module's loaders, the transfer, the views, one forward of
labeled + weak + strong, backward, SGD, the EMA teacher, under a Lightning trainer (no logger, no
progress bar). Images per step = batch x (1 + 2 mu). Pipelines:

* ``per_sample-wK``: the per-sample pipeline (``data.augmentation: per_sample``) in K loader
  workers; with the workers of the case's configuration (4 in assl_cifar10, 2 in assl_mnist, 0 in the demo's)
  it is the step before on-device views: the reference of the case's ratios.
* ``pil-w4``: what the published FixMatch codes do (PIL images, PIL RandAugment, Cutout, ToTensor
  and Normalize per sample in 4 workers); implemented here only, as a reference.
* ``device``: loaders hand out uint8, the views are built on the batch's device.
* ``premade``: the same step fed with views made once and reused: no augmentation cost at all,
  the limit the on-device pipeline is measured against.
* ``device+scoring``: ``device`` with ASSL's online scoring callback (the scoring overhead ratio).
* on a GPU also ``device+cl`` (channels_last), ``device+bf16``, ``device+bf16+cl`` and
  ``device+bf16+cl+compile``;
  on a CPU ``device+cl`` and ``premade+cl``, channels-last being the CPU default. The other
  pipelines keep the contiguous layout (``+cl`` after any name switches it on).

Each case prints one line: ``throughput <pipeline> <backbone@side> <device> <images/s> <ratio>x``,
the ratio against ``per_sample-w2`` of the same backbone in the same run.
"""

from __future__ import annotations

import argparse
import random
import time

import lightning as L
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torchvision import transforms as tv

from al_lightning.data import ActiveDataModule
from al_lightning.data.datasets import ImageSplits, register_dataset
from al_lightning.methods import FixMatch
from al_lightning.scoring import OnlineScoring

CASES = {  # case: (backbone, backbone_kwargs, channels, side, labeled batch, dataset, today's loader workers)
    "wrn28_2": ("wrn28_2", {}, 3, 32, 64, "synthetic_rgb32", 4),
    "small_cnn": ("small_cnn", {}, 1, 28, 64, "synthetic_grey28", 2),
    # the demo's step (configs/assl_digits.yaml): width-16 CNN, 8x8 digits, batch 16 x (1 + 2 x 7), no workers
    "digits": ("small_cnn", {"width": 16}, 1, 8, 16, "synthetic_grey8", 0),
}


def _synthetic(channels: int, side: int, n: int = 8192):
    def loader(root: str = "", download: bool = False, split_seed: int = 0) -> ImageSplits:
        g = torch.Generator().manual_seed(0)
        # smooth random images (upsampled noise), closer to photographs than white noise
        low = torch.randint(0, 256, (n + 512, channels, max(2, side // 4), max(2, side // 4)), generator=g).float()
        images = torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear").round().byte()
        targets = torch.randint(0, 10, (n + 512,), generator=g)
        return ImageSplits(images[:n], targets[:n], images[n:], targets[n:], 10, (0.5,) * channels,
                           (0.25,) * channels, hflip=channels == 3)
    return loader


for _backbone, _kwargs, _c, _s, _batch, _dataset, _workers in CASES.values():
    register_dataset(_dataset, num_classes=10, in_channels=_c)(_synthetic(_c, _s))


# ----------------------------------------------------------------------------- the PIL reference
def _pil_ops():
    """FixMatch's RandAugment pool on PIL images, as the published PyTorch codes write it
    (magnitude v in 1..10 of 10, each op applied with probability 0.5)."""
    def signed(x):
        return x if random.random() < 0.5 else -x

    def enhance(cls):
        return lambda img, v: cls(img).enhance(0.05 + 0.9 * v / 10)

    def affine(matrix):
        return lambda img, v: img.transform(img.size, Image.AFFINE, matrix(img, signed(0.3 * v / 10)))

    return [
        lambda img, v: ImageOps.autocontrast(img),
        enhance(ImageEnhance.Brightness), enhance(ImageEnhance.Color), enhance(ImageEnhance.Contrast),
        lambda img, v: ImageOps.equalize(img), lambda img, v: img,
        lambda img, v: ImageOps.posterize(img, 4 + int(4 * v / 10)),
        lambda img, v: img.rotate(signed(int(30 * v / 10))),
        enhance(ImageEnhance.Sharpness),
        affine(lambda img, r: (1, r, 0, 0, 1, 0)), affine(lambda img, r: (1, 0, 0, r, 1, 0)),
        lambda img, v: ImageOps.solarize(img, 256 - int(256 * v / 10)),
        affine(lambda img, r: (1, 0, int(r * img.size[0]), 0, 1, 0)),
        affine(lambda img, r: (1, 0, 0, 0, 1, int(r * img.size[1]))),
    ]


class PilView:
    """uint8 (C, H, W) -> PIL -> reflect-pad crop, flip, [RandAugment, Cutout] -> normalised tensor."""

    def __init__(self, side: int, channels: int, hflip: bool, strong: bool) -> None:
        self.crop = tv.RandomCrop(side, padding=int(0.125 * side + 0.5), padding_mode="reflect")
        self.flip = tv.RandomHorizontalFlip() if hflip else None
        self.strong, self.ops, self.side, self.channels = strong, _pil_ops(), side, channels
        self.finish = tv.Compose([tv.ToTensor(), tv.Normalize((0.5,) * channels, (0.25,) * channels)])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        array = image.permute(1, 2, 0).numpy()
        img = Image.fromarray(array[..., 0] if self.channels == 1 else array)
        img = self.crop(img)
        if self.flip is not None:
            img = self.flip(img)
        if self.strong:
            for op in random.choices(self.ops, k=2):
                v = random.randint(1, 10)
                if random.random() < 0.5:
                    img = op(img, v)
            half = self.side // 4
            x0, y0 = random.randrange(self.side) - half, random.randrange(self.side) - half
            img = img.copy()
            ImageDraw.Draw(img).rectangle((max(x0, 0), max(y0, 0), x0 + 2 * half, y0 + 2 * half),
                                          fill=127 if self.channels == 1 else (127, 127, 127))
        return self.finish(img)


class PilDataModule(ActiveDataModule):
    def _loader_views(self, key, names):
        channels, side = self.in_channels, self.splits.image_size
        return {name: PilView(side, channels, self.splits.hflip, strong=name == "strong") for name in names}


class PremadeDataModule(ActiveDataModule):
    """On-device views built once, then handed to every step: the step without augmentation cost."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._premade = None

    def on_after_batch_transfer(self, batch, dataloader_idx):
        if self._premade is None:
            self._premade = super().on_after_batch_transfer(batch, dataloader_idx)
        return self._premade


# ----------------------------------------------------------------------------- timing
class StepTimer(L.Callback):
    """Times the steps after ``warmup``; stops the fit once ``budget_s`` of timed steps have run
    (at least ``min_steps``), so slow pipelines cost seconds, not minutes."""

    def __init__(self, warmup: int, budget_s: float, min_steps: int = 3) -> None:
        self.warmup, self.budget_s, self.min_steps = warmup, budget_s, min_steps
        self.started, self.steps, self.seconds = None, 0, 0.0

    def _sync(self, module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self._sync(module)
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        timed = trainer.global_step - self.warmup
        if self.started is not None and timed >= self.min_steps and time.perf_counter() - self.started > self.budget_s:
            self._sync(module)
            trainer.should_stop = True

    def on_train_end(self, trainer, module) -> None:
        self._sync(module)
        self.steps = trainer.global_step - self.warmup
        self.seconds = time.perf_counter() - self.started


def run_case(pipeline: str, case: str, accelerator: str, steps: int, warmup: int, mu: int,
             workers: int, budget_s: float) -> float:
    backbone, backbone_kwargs, channels, side, batch, dataset, _ = CASES[case]
    L.seed_everything(0, verbose=False)
    options = dict(batch_size=batch, uratio=mu, steps_per_epoch=steps + warmup + 1, eval_batch_size=1024)
    if pipeline.startswith("per_sample"):
        dm = ActiveDataModule(dataset, augmentation="per_sample", num_workers=workers, **options)
    elif pipeline.startswith("pil"):
        dm = PilDataModule(dataset, augmentation="per_sample", num_workers=workers, **options)
    elif pipeline.startswith("premade"):
        dm = PremadeDataModule(dataset, num_workers=0, **options)
    else:
        dm = ActiveDataModule(dataset, num_workers=0, **options)
    dm.setup()
    ids = np.random.default_rng(0).choice(dm.pool.size, 400, replace=False)
    dm.pool.label(ids, dm.ground_truth(ids))
    model = FixMatch(backbone=backbone, num_classes=10, in_channels=channels, scheduler="none",
                     backbone_kwargs=backbone_kwargs,
                     channels_last="+cl" in pipeline, compile_backbone="compile" in pipeline)
    timer = StepTimer(warmup, budget_s)
    callbacks = [timer] + ([OnlineScoring()] if "scoring" in pipeline else [])
    trainer = L.Trainer(accelerator=accelerator, devices=1, max_steps=steps + warmup, logger=False,
                        precision="bf16-mixed" if "bf16" in pipeline else "32-true",
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
                        callbacks=callbacks)
    trainer.fit(model, datamodule=dm)
    return timer.steps * batch * (1 + 2 * mu) / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", nargs="+", default=None, choices=list(CASES),
                        help="default: all on a GPU; digits and small_cnn on a CPU (a WRN-28-2 step there takes minutes)")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument("--steps", type=int, default=100_000, help="most timed steps per case")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per case (default: 30 CPU, 8 GPU)")
    parser.add_argument("--mu", type=int, default=7)
    parser.add_argument("--pipelines", nargs="+", default=None)
    args = parser.parse_args()
    accelerator = ("gpu" if torch.cuda.is_available() else "cpu") if args.accelerator == "auto" else args.accelerator
    gpu = accelerator == "gpu"
    device = torch.cuda.get_device_name(0).replace(" ", "_") if gpu else f"cpu{torch.get_num_threads()}"
    # on a CPU the default step is channels-last (model.init_args.channels_last: None); the
    # reference pipelines keep the contiguous layout the step had before
    extra = (["device+cl", "device+bf16", "device+bf16+cl", "device+bf16+cl+compile", "premade+bf16+cl"] if gpu
             else ["device+cl", "premade+cl"])
    cases = args.cases or (list(CASES) if gpu else ["digits", "small_cnn"])
    print(f"# FixMatch step throughput, labeled batch x (1 + 2 x {args.mu}) images per step, device {device}", flush=True)
    for case in cases:
        backbone_name, kwargs, _, side, _, _, today = CASES[case]
        reference_pipeline = f"per_sample-w{today}"
        pipelines = args.pipelines or (
            [reference_pipeline] + [f"per_sample-w{k}" for k in (0, 2, 4) if k != today]
            + ["pil-w4", "device", "premade", "device+scoring"] + extra)
        backbone = f"{backbone_name}{'_w' + str(kwargs['width']) if 'width' in kwargs else ''}@{side}px"
        budget_s = args.seconds or (8.0 if gpu else 30.0)
        warmup = 5 if gpu else 2
        workers_of = lambda name: int(name.split("-w")[1].split("+")[0]) if "-w" in name else 0  # noqa: E731
        # the first fit of a process runs slow for a while (allocator, thread pools): warm up unreported
        run_case(pipelines[0], case, accelerator, args.steps, warmup, args.mu, workers_of(pipelines[0]),
                 min(budget_s, 5.0))
        reference = None
        results = {}
        for pipeline in pipelines:
            rate = run_case(pipeline, case, accelerator, args.steps, warmup, args.mu, workers_of(pipeline), budget_s)
            results[pipeline] = rate
            reference = reference or rate
            print(f"throughput {pipeline} {backbone} {device} {rate:.1f} {rate / reference:.2f}x", flush=True)
        if "device" in results and "premade" in results and "pil-w4" in results:
            print(f"# {backbone}: device / pil-w4 = {results['device'] / results['pil-w4']:.2f}x (goal >= 3 on a GPU), "
                  f"device / premade = {results['device'] / results['premade']:.2f} (goal >= 0.85 on a GPU), "
                  f"device / {reference_pipeline} = {results['device'] / results[reference_pipeline]:.2f}x "
                  f"(goal >= 1.5 on 2 CPU cores)", flush=True)
        if "device+cl" in results and not gpu:
            print(f"# {backbone}: the CPU default (device+cl) / {reference_pipeline} = "
                  f"{results['device+cl'] / results[reference_pipeline]:.2f}x (goal >= 1.5 on 2 CPU cores), "
                  f"device+cl / premade+cl = {results['device+cl'] / results.get('premade+cl', float('nan')):.2f}",
                  flush=True)
        if "device+cl" in results and gpu:  # what decides the GPU default of channels_last
            print(f"# {backbone}: channels-last in float32 on the GPU: device+cl / device = "
                  f"{results['device+cl'] / results['device']:.2f}", flush=True)
        if "device+scoring" in results:
            print(f"# {backbone}: scoring overhead: device+scoring / device step time = "
                  f"{results['device'] / results['device+scoring']:.3f}", flush=True)


if __name__ == "__main__":
    main()
