"""Label efficiency of the SSL method suite on MNIST at 20 labels (2 per class), CPU-sized.

Every method trains one fit from the same initial weights on the same labeled set (2 random labels
per class, fixed per seed), for the same number of optimizer steps, and is tested with its EMA
teacher on the 10,000 MNIST test images at each quarter of the step budget (convergence speed is
what AS3L's prior pseudo-labels claim). Hyper-parameters are each method's paper/reference defaults;
what the CPU budget forces is scaled and listed in ``BUDGET_NOTES``.

Goals (the method-suite issue): every SSL method at least Supervised + 20 points; the best at least
90% ("Rethinking deep active learning" reports 90.89% for Random + SEMI at 20 labels, section 6.5).

MNIST comes from ``--mnist-dir`` (default ``../shared/data/mnist``): its four ``*-ubyte.gz`` files are
linked into a scratch ``MNIST/raw`` folder and torchvision verifies and extracts them offline.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L

from al_lightning.data import ActiveDataModule
from al_lightning.loop import ActiveLoop

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

#: what the CPU budget changes against the papers, printed with the results
BUDGET_NOTES = (
    "steps: 2,000 per fit (papers: 2^20 for FixMatch-family CIFAR runs, 200 epochs for LP-SEMI)",
    "FixMatch family: labeled batch 16, uratio 7 (papers: 64, 7); EMA decay 0.99 for a 2,000-step fit",
    "LP-SEMI: batch 10 labeled + 54 pseudo-labeled (the paper's MNIST split); one warm-up quarter, "
    "then label propagation at the start of each of the three other quarters (epochs of 500 steps, "
    "not half of |U|); the paper's lr 0.2, weight decay 2e-4, cosine annealing to 0 at 210/200, no EMA",
    "PPL: prior pseudo-labels from pixel features, switch point at 60/1024 of the fit (AS3L's 60th of 1,024 epochs)",
    "backbone small_cnn (width 8) for every method",
)


def method_class(path: str) -> type:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def part(path: str, **kwargs: Any) -> Any:
    return method_class(path)(**kwargs)


def cases(steps: int) -> dict[str, tuple[str, dict[str, Any], dict[str, Any]]]:
    """name -> (method class path, method kwargs, data kwargs)."""
    fa = "al_lightning.methods.parts.feature_realignment.FeatureRealignment"
    ppl = "al_lightning.methods.parts.prior_guidance.PriorGuidance"
    fixmatch_data = {"batch_size": 16, "uratio": 7}
    return {
        "Supervised": ("al_lightning.methods.supervised.Supervised", {}, {"batch_size": 16, "uratio": 0}),
        "FixMatch": ("al_lightning.methods.fixmatch.FixMatch", {}, fixmatch_data),
        "FlexMatch": ("al_lightning.methods.flexmatch.FlexMatch", {}, fixmatch_data),
        "FreeMatch": ("al_lightning.methods.freematch.FreeMatch", {}, fixmatch_data),
        "FixMatch+FA": ("al_lightning.methods.fixmatch.FixMatch", {"parts": lambda: [part(fa)]}, fixmatch_data),
        "FreeMatch+FA": ("al_lightning.methods.freematch.FreeMatch", {"parts": lambda: [part(fa)]}, fixmatch_data),
        "LP-SEMI": ("al_lightning.methods.lp_semi.LPSemi",
                    {"warmup_epochs": 1, "lr": 0.2, "weight_decay": 2e-4, "scheduler": "cosine_annealing",
                     "anneal_epochs_ratio": 210 / 200, "ema_decay": 0.0},
                    {"batch_size": 10, "unlabeled_batch_size": 54}),
        "FlexMatch+PPL": ("al_lightning.methods.flexmatch.FlexMatch",
                          {"parts": lambda: [part(ppl, features="pixels", switch_step=round(steps * 60 / 1024))]},
                          fixmatch_data),
    }


class QuarterEvaluation(L.Callback):
    """Test accuracy of the EMA teacher after each quarter of the step budget."""

    def __init__(self, steps: int) -> None:
        self.marks = {round(steps * q / 4) for q in (1, 2, 3, 4)}
        self.accuracy: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step in self.marks and step not in self.accuracy:
            self.accuracy[step] = ActiveLoop.evaluate(pl_module, trainer.datamodule, pl_module.device)


def mnist_root(mnist_dir: Path, scratch: Path) -> Path:
    raw = scratch / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        source = mnist_dir / name
        if not source.is_file():
            raise SystemExit(f"--mnist-dir: {source} is missing (expected the four MNIST *-ubyte.gz files)")
        target = raw / name
        if not target.exists():
            target.symlink_to(source.resolve())
    return scratch


def run_case(name: str, steps: int, seed: int, root: Path) -> tuple[dict[int, float], float]:
    path, method_kwargs, data_kwargs = cases(steps)[name]
    kwargs = {k: (v() if callable(v) else v) for k, v in method_kwargs.items()}
    quarter = steps // 4
    datamodule = ActiveDataModule("mnist", root=str(root), download=True, steps_per_epoch=quarter,
                                  num_workers=0, seed=seed, eval_batch_size=1000, **data_kwargs)
    L.seed_everything(seed)
    if name == "LP-SEMI":  # epochs of a quarter each: warm-up, then LP before each later quarter
        datamodule.setup()
        kwargs["unlabeled_epoch_fraction"] = quarter * datamodule.unlabeled_batch_size / (datamodule.pool.size - 20)
    model = method_class(path)(**{"backbone": "small_cnn", "backbone_kwargs": {"width": 8}, "num_classes": 10,
                                  "in_channels": 1, "ema_decay": 0.99, **kwargs})
    probe = QuarterEvaluation(steps)
    make_trainer = lambda: L.Trainer(  # noqa: E731
        accelerator="cpu", devices=1, max_epochs=4, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        use_distributed_sampler=False, callbacks=[probe], default_root_dir=str(root / "runs"))
    loop = ActiveLoop(rounds=0, budget=0, initial_per_class=2, seed=seed)
    started = time.perf_counter()
    loop.run(model, datamodule, make_trainer)
    return probe.accuracy, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--methods", nargs="+", default=list(cases(1000)))
    args = parser.parse_args()
    unknown = set(args.methods) - set(cases(args.steps))
    if unknown:
        parser.error(f"unknown --methods {sorted(unknown)}; choose from {list(cases(args.steps))}")
    if args.steps % 4:
        parser.error("--steps must be a multiple of 4 (accuracy is reported at each quarter)")
    results: dict[str, list[dict[int, float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = mnist_root(args.mnist_dir, Path(scratch))
        for name in args.methods:
            for seed in args.seeds:
                accuracy, seconds = run_case(name, args.steps, seed, root)
                results.setdefault(name, []).append(accuracy)
                print(f"run {name} seed {seed}: " + "  ".join(f"{s}: {a:.4f}" for s, a in sorted(accuracy.items()))
                      + f"  ({seconds:.0f} s)", flush=True)
    report(results, args.steps)


def report(results: dict[str, list[dict[int, float]]], steps: int) -> None:
    marks = [round(steps * q / 4) for q in (1, 2, 3, 4)]
    print(f"\nMNIST, 20 labels (2 per class), {steps} steps, {len(next(iter(results.values())))} seeds; "
          "test accuracy of the EMA teacher")
    print("| method | final mean | std | " + " | ".join(f"step {m}" for m in marks) + " |")
    print("|---" * (3 + len(marks)) + "|")
    final = {}
    for name, runs in results.items():
        finals = [r[steps] for r in runs]
        final[name] = statistics.mean(finals)
        std = statistics.stdev(finals) if len(finals) > 1 else 0.0
        quarters = [statistics.mean(r[m] for r in runs) for m in marks]
        print(f"| {name} | {final[name]:.4f} | {std:.4f} | " + " | ".join(f"{q:.4f}" for q in quarters) + " |")
    print("\nbudget: " + "; ".join(BUDGET_NOTES))
    if "Supervised" in final:
        floor = final["Supervised"] + 0.20
        for name, acc in final.items():
            if name != "Supervised":
                verdict = "met" if acc >= floor else "NOT met"
                print(f"goal: {name} >= Supervised + 20 points ({floor:.4f}): {acc:.4f} ({verdict})")
    best = max((n for n in final if n != "Supervised"), key=final.get, default=None)
    if best is not None:
        print(f"goal: best method >= 0.90: {best} {final[best]:.4f} ({'met' if final[best] >= 0.90 else 'NOT met'})")


if __name__ == "__main__":
    main()
