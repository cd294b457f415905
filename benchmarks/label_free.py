"""Label-free selection on MNIST, CPU-sized: does a self-supervised representation pick 10 labels
that cover the classes and train a better semi-supervised model than 10 random ones?

Stages (each result is printed as a table; every stage reuses the pre-training runs):

1. pre-training: SimSiam, SimCLR and DeepCluster, one run each from their MNIST configs
   (``configs/pretrain_*_mnist.yaml``) through ``al-lightning pretrain``, with the overrides a 2-core
   budget forces (``PRETRAIN_BUDGET``); runs are kept in ``--workdir`` and reused when present;
2. kNN accuracy of each representation vs raw pixels: the 10,000 test images classified by their 200
   nearest train images (cosine, ``exp(s / 0.1)`` votes, the pre-training monitor's rule with the
   train split as the bank; train labels are read here only);
3. class coverage of 10 labels picked by Random, K-medoids, USL, USL-T and AS3L on one
   representation (``--selection``; by default the pre-training of best kNN accuracy, a choice
   made with the test labels of stage 2 that a user without labels could not make), for each
   seed (the strategies' own code and defaults, through an ``AcquisitionContext``);
4. accuracy of AS3L's prior pseudo-labels (constrained seed k-means on the fine-tuned features,
   K = 10..60, the PPL-guided fits' recipe) on the 59,990 unlabeled images, from AS3L's 10 labels;
5. FlexMatch from the best label-free 10 vs from 10 random ones: the same small CNN from the same
   initial weights and the same step budget; test accuracy of the EMA teacher.

Goals (the pre-training issue): best coverage >= 9.5 of 10 on average (random ~6.5); PPL accuracy
>= 80%; the label-free fit >= random + 10 points.

MNIST comes from ``--mnist-dir`` (default ``../shared/data/mnist``), linked into ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from al_lightning.data import ActiveDataModule
from al_lightning.loop import ActiveLoop
from al_lightning.methods.flexmatch import FlexMatch
from al_lightning.ops.as3l import finetune_features, prior_pseudo_labels
from al_lightning.models import create_backbone
from al_lightning.ops.faiss_ops import knn_search, l2_normalised
from al_lightning.pretrain.outputs import load_backbone_state, load_features
from al_lightning.strategies import AS3L, USL, AcquisitionContext, KMedoids, Random, USLT
from label_efficiency import mnist_root  # noqa: E402 (the sibling benchmark; this folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent

#: what the 2-core budget changes against each method's config (the papers' settings)
PRETRAIN_BUDGET: dict[str, tuple[str, list[str]]] = {
    "simsiam": ("configs/pretrain_simsiam_mnist.yaml",
                ["--trainer.max_epochs=5", "--model.init_args.projection_dim=512",
                 "--model.init_args.predictor_hidden_dim=128"]),
    "simclr": ("configs/pretrain_simclr_mnist.yaml",
               ["--trainer.max_epochs=5", "--model.init_args.warmup_epochs=1"]),
    "deepcluster": ("configs/pretrain_deepcluster_mnist.yaml", ["--trainer.max_epochs=6"]),
}
BUDGET_NOTES = (
    "backbone small_cnn width 16 (64-d features) for every pre-training (configs: cnn13)",
    "SimSiam 5 epochs (800), projector 512 and predictor 512-128-512 (2048, 2048-512-2048)",
    "SimCLR 5 epochs (1000), 1 warm-up epoch (10)",
    "DeepCluster 6 epochs (250)",
    "FlexMatch: small_cnn width 8 from scratch (as USL's CIFAR fits), labeled batch 16 x uratio 7, EMA 0.99",
)


def pretrain(method: str, workdir: Path, data_root: Path, width: int) -> tuple[Path, float | None]:
    """The run directory of ``method``'s pre-training, run now unless it is already there."""
    config, overrides = PRETRAIN_BUDGET[method]
    run_dir = workdir / "pretrain" / method / "run"
    if (run_dir / "features.pt").is_file():
        return run_dir, None
    command = [str(Path(sys.executable).parent / "al-lightning"), "pretrain", "--config", str(ROOT / config),
               "--model.init_args.backbone=small_cnn", f"--model.init_args.backbone_kwargs={{width: {width}}}",
               f"--data.root={data_root}", "--data.num_workers=1", "--trainer.enable_progress_bar=false",
               f"--trainer.default_root_dir={workdir / 'pretrain'}",
               f"--trainer.logger.init_args.save_dir={workdir / 'pretrain'}",
               f"--trainer.logger.init_args.name={method}", "--trainer.logger.init_args.version=run", *overrides]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return run_dir, time.perf_counter() - started



def mnist_module(data_root: Path, seed: int = 0, **kwargs: Any) -> ActiveDataModule:
    datamodule = ActiveDataModule("mnist", root=str(data_root), download=True, num_workers=0, seed=seed,
                                  eval_batch_size=1000, **kwargs)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def pixels(datamodule: ActiveDataModule, split: str) -> torch.Tensor:
    size = len(datamodule.splits.train_images if split == "train" else datamodule.splits.test_images)
    return torch.cat([b["plain"].flatten(1) for b in datamodule.inference_dataloader(np.arange(size), split)])


@torch.no_grad()
def test_features(run_dir: Path, datamodule: ActiveDataModule, width: int) -> torch.Tensor:
    """The test split through a pre-training run's backbone (its ``features.pt`` holds the train split)."""
    backbone = create_backbone("small_cnn", 10, 1, width=width)
    backbone.load_state_dict(load_backbone_state(run_dir))
    backbone.eval()
    loader = datamodule.inference_dataloader(np.arange(len(datamodule.splits.test_images)), "test")
    return torch.cat([backbone.embed(batch["plain"]) for batch in loader])


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, labels: torch.Tensor,
                 k: int = 200, temperature: float = 0.1) -> float:
    """Weighted kNN (cosine, ``exp(s / T)`` votes) of every query over the bank."""
    similarities, neighbours = knn_search(l2_normalised(bank), l2_normalised(queries), k, metric="ip")
    votes = torch.zeros(len(queries), 10, dtype=torch.float64)
    votes.scatter_add_(1, bank_labels[torch.from_numpy(neighbours)],
                       (torch.from_numpy(similarities).double() / temperature).exp())
    return float((votes.argmax(1) == labels).double().mean())


def knn_stage(runs: dict[str, Path], datamodule: ActiveDataModule, width: int) -> dict[str, float]:
    splits = datamodule.splits
    train_labels, test_labels = splits.train_targets, splits.test_targets
    accuracy = {"pixels": knn_accuracy(pixels(datamodule, "train"), train_labels, pixels(datamodule, "test"),
                                       test_labels)}
    for method, run_dir in runs.items():
        accuracy[method] = knn_accuracy(load_features(run_dir)[1], train_labels,
                                        test_features(run_dir, datamodule, width), test_labels)
    print("\n200-NN test accuracy (cosine, T = 0.1; bank: the 60,000 train images)")
    print("| representation | kNN accuracy |\n|---|---|")
    for name, value in accuracy.items():
        print(f"| {name} | {value:.4f} |")
    return accuracy


STRATEGIES = {"Random": Random, "K-medoids": KMedoids, "USL": USL, "USL-T": USLT, "AS3L": AS3L}


def select(name: str, features: torch.Tensor, datamodule: ActiveDataModule, seed: int, budget: int = 10
           ) -> np.ndarray:
    """``budget`` ids of the empty pool picked by strategy ``name`` on ``features`` (no label read)."""
    pool = datamodule.pool
    context = AcquisitionContext(pool, create_backbone("small_cnn", 10, 1), datamodule.inference_dataloader,
                                 torch.device("cpu"), seed=seed, pretrained_features=features,
                                 model_is_random=True)
    strategy = STRATEGIES[name]() if name == "Random" else STRATEGIES[name](features="pretrained")
    return strategy.select(context, budget)


def coverage_stage(features: torch.Tensor, datamodule: ActiveDataModule, seeds: list[int], workdir: Path
                   ) -> dict[str, list[np.ndarray]]:
    picks: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, list[float]] = {}
    for name in STRATEGIES:
        for seed in seeds:
            started = time.perf_counter()
            chosen = select(name, features, datamodule, seed)
            seconds.setdefault(name, []).append(time.perf_counter() - started)
            picks.setdefault(name, []).append(chosen)
            print(f"select {name} seed {seed}: {coverage(datamodule, chosen)} classes ({seconds[name][-1]:.1f} s)", flush=True)
    (workdir / "picks.json").write_text(json.dumps({n: [p.tolist() for p in v] for n, v in picks.items()}))
    print(f"\nclasses covered by 10 labels, {len(seeds)} seeds (selection on the representation above)")
    print("| strategy | mean | min | max | per seed | seconds per selection |\n|---|---|---|---|---|---|")
    for name, chosen in picks.items():
        counts = [coverage(datamodule, c) for c in chosen]
        print(f"| {name} | {statistics.mean(counts):.1f} | {min(counts)} | {max(counts)} | "
              f"{' '.join(map(str, counts))} | {statistics.mean(seconds[name]):.1f} |")
    return picks


def coverage(datamodule: ActiveDataModule, chosen: np.ndarray) -> int:
    return len(np.unique(datamodule.ground_truth(chosen)))


def ppl_stage(features: torch.Tensor, datamodule: ActiveDataModule, picks: dict[str, list[np.ndarray]],
              seeds: list[int]) -> dict[str, list[float]]:
    """AS3L's prior pseudo-labels as the PPL-guided fit computes them (fine-tune with K = 10, then
    constrained seed k-means over K = 10..60), scored on the unlabeled images."""
    accuracy: dict[str, list[float]] = {}
    truth = datamodule.ground_truth(np.arange(datamodule.pool.size))
    for name in ("AS3L",):
        for seed, chosen in zip(seeds, picks[name]):
            fine, _ = finetune_features(features, num_clusters=len(chosen), seed=seed)
            prior = prior_pseudo_labels(fine.numpy(), chosen, truth[chosen], 10, seed=seed)
            unlabeled = np.setdiff1d(np.arange(len(truth)), chosen)
            accuracy.setdefault(name, []).append(float((prior[unlabeled].argmax(1) == truth[unlabeled]).mean()))
            print(f"PPL from {name} labels, seed {seed}: {accuracy[name][-1]:.4f}", flush=True)
    print("\naccuracy of the prior pseudo-labels on the 59,990 unlabeled images")
    print("| labels from | mean | std | per seed |\n|---|---|---|---|")
    for name, values in accuracy.items():
        print(f"| {name} | {statistics.mean(values):.4f} | {statistics.pstdev(values):.4f} | "
              f"{' '.join(f'{v:.3f}' for v in values)} |")
    return accuracy


def fit(chosen: np.ndarray, seed: int, steps: int, data_root: Path, workdir: Path) -> float:
    """FlexMatch from random weights (the same per seed for every selection) on the ``chosen`` labels."""
    index_file = workdir / "fits" / f"ids_{seed}_{abs(hash(tuple(chosen.tolist())))}.json"
    index_file.parent.mkdir(parents=True, exist_ok=True)
    index_file.write_text(json.dumps(chosen.tolist()))
    datamodule = ActiveDataModule("mnist", root=str(data_root), download=True, steps_per_epoch=steps,
                                  num_workers=0, seed=seed, eval_batch_size=1000, batch_size=16, uratio=7)
    L.seed_everything(seed)
    model = FlexMatch(backbone="small_cnn", backbone_kwargs={"width": 8}, num_classes=10, in_channels=1,
                      ema_decay=0.99)
    make_trainer = lambda: L.Trainer(  # noqa: E731
        accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        use_distributed_sampler=False, default_root_dir=str(workdir / "fits"))
    loop = ActiveLoop(rounds=0, budget=0, initial_index_file=str(index_file), seed=seed)
    return float(loop.run(model, datamodule, make_trainer)[-1]["test_acc"])


def fit_stage(picks: dict[str, list[np.ndarray]], best: str, seeds: list[int], steps: int, data_root: Path,
              workdir: Path, datamodule: ActiveDataModule) -> dict[str, list[float]]:
    accuracy: dict[str, list[float]] = {}
    for seed_index, seed in enumerate(seeds):
        for name in (best, "Random"):
            chosen = picks[name][seed_index]
            started = time.perf_counter()
            accuracy.setdefault(name, []).append(fit(chosen, seed, steps, data_root, workdir))
            print(f"FlexMatch on {name} labels ({coverage(datamodule, chosen)} classes), seed {seed}: "
                  f"{accuracy[name][-1]:.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\nFlexMatch, 10 labels, {steps} steps, test accuracy of the EMA teacher")
    print("| labels from | mean | std | per seed |\n|---|---|---|---|")
    for name, values in accuracy.items():
        print(f"| {name} | {statistics.mean(values):.4f} | {statistics.pstdev(values):.4f} | "
              f"{' '.join(f'{v:.3f}' for v in values)} |")
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", type=Path, default=Path("../shared/data/mnist"))
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_label_free"),
                        help="pre-training runs and results; runs found here are reused")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--width", type=int, default=16, help="small_cnn width of the pre-trained backbones")
    parser.add_argument("--selection", default="best", choices=["best", *PRETRAIN_BUDGET],
                        help="the representation every strategy selects on and AS3L's prior pseudo-labels "
                             "cluster; best: the pre-training with the highest kNN accuracy")
    parser.add_argument("--fit-steps", type=int, default=1500)
    parser.add_argument("--stages", nargs="+", default=["pretrain", "knn", "coverage", "ppl", "fit"])
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    data_root = mnist_root(args.mnist_dir, workdir / "data")
    runs = {}
    for method in PRETRAIN_BUDGET:
        runs[method], seconds = pretrain(method, workdir, data_root, args.width)
        timing = workdir / "pretrain" / method / "seconds.json"
        if seconds is not None:
            timing.write_text(json.dumps(seconds))
        print(f"pre-training {method}: {float(json.loads(timing.read_text())):.0f} s on this machine "
              f"({'this run' if seconds is not None else 'reused'}); {runs[method]}", flush=True)
    datamodule = mnist_module(data_root)
    selection = args.selection
    if "knn" in args.stages or selection == "best":
        accuracy = knn_stage(runs, datamodule, args.width)
        if selection == "best":
            selection = max(runs, key=lambda method: accuracy[method])
    if not {"coverage", "ppl", "fit"} & set(args.stages):
        return
    print(f"\nselecting on the {selection} features", flush=True)
    features = load_features(runs[selection])[1].float()
    picks = coverage_stage(features, datamodule, args.seeds, workdir)
    mean_coverage = {name: statistics.mean(coverage(datamodule, c) for c in chosen) for name, chosen in picks.items()}
    best = max((name for name in picks if name != "Random"), key=lambda name: mean_coverage[name])
    goals = [("best coverage >= 9.5 of 10", f"{best} {mean_coverage[best]:.1f}", mean_coverage[best] >= 9.5)]
    if "ppl" in args.stages:
        ppl = statistics.mean(ppl_stage(features, datamodule, picks, args.seeds)["AS3L"])
        goals.append(("AS3L prior pseudo-labels >= 80%", f"{ppl:.4f}", ppl >= 0.80))
    if "fit" in args.stages:
        accuracy = fit_stage(picks, best, args.seeds, args.fit_steps, data_root, workdir, datamodule)
        gain = statistics.mean(accuracy[best]) - statistics.mean(accuracy["Random"])
        goals.append((f"FlexMatch on {best} labels >= Random + 10 points", f"{100 * gain:+.1f} points",
                      gain >= 0.10))
    print("\nbudget: " + "; ".join(BUDGET_NOTES))
    for goal, measured, met in goals:
        print(f"goal: {goal}: {measured} ({'met' if met else 'NOT met'})")


if __name__ == "__main__":
    main()
