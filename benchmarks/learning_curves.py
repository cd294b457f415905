"""Learning curves of acquisition strategies through the real loop (``make bench-curves``).

Every (strategy, seed) is one ``al-lightning fit`` run: the same random initial labels per seed for
every strategy, ``--rounds`` acquisitions of ``per_class x classes`` labels each, a FixMatch fit
(or the config's method) after each. Two regimes by default: 1 and 10 labels per class per cycle
(initial set and every acquisition). Runs already finished in ``--out`` are reused, interrupted ones
are resumed (``fit --resume``), so the harness can be stopped and restarted at any time.

The initial fit is the same for every strategy of a seed (the same initial labels, the same RNG
states of (seed, cycle 0)), so it runs once per seed (``<regime>/_initial/version_<seed>``, a run
with ``loop.rounds 0``) and every strategy's run starts as a copy of it taken between that fit and
its acquisition (:func:`fork_after_initial_fit`): a quarter fewer fits at 3 rounds, and the paired
test's cycle 0 is one shared measurement by construction rather than by determinism.

Per regime it prints and writes (``<out>/<dataset>_<k>pc/curves.md``, ``curves.png`` by the report
command's plotting):

* test accuracy mean ± std over seeds at every label count, and the normalised area under the
  learning curve (AULC, :func:`al_lightning.report.normalised_aulc`);
* class coverage per cycle: classes holding at least one label when the fit ran, mean and minimum
  over seeds;
* against Random, per cycle after the shared initial fit: win / tie / loss by a paired t-test over
  seeds (two-sided, p < 0.05; a tie otherwise), and the AULC difference with its paired p-value.

Datasets: ``digits`` (scikit-learn's, from ``configs/assl_digits.yaml``: 4 x 100 steps per fit) and
``mnist`` from ``--mnist-dir`` (``configs/assl_mnist.yaml`` with the CPU budget of ``MNIST_CPU``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy import stats

from al_lightning.data import ActiveDataModule
from al_lightning.loop.run_state import RunDirectory
from al_lightning.report import load_run, normalised_aulc, plot_curves, summarise

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from label_efficiency import mnist_root  # noqa: E402

#: strategy name -> (class path, init_args); any registered strategy can be added with --extra
STRATEGIES = {
    "Random": ("al_lightning.strategies.Random", {}),
    "Entropy": ("al_lightning.strategies.Entropy", {}),
    "ASSL": ("al_lightning.strategies.ASSL", {}),
    "ASSLDiv": ("al_lightning.strategies.ASSLDiv", {}),
    "CoreSet": ("al_lightning.strategies.CoreSet", {}),
    "TypiClust": ("al_lightning.strategies.TypiClust", {}),
    "ProbCover": ("al_lightning.strategies.ProbCover", {}),
    "BudgetAware": ("al_lightning.strategies.BudgetAware", {}),
}
#: the README's table (ProbCover's delta search is too slow for 40 acquisitions on 2 cores: --strategies adds it)
DEFAULT_STRATEGIES = ["Random", "BudgetAware", "TypiClust", "ASSL", "Entropy"]
CONFIGS = {"digits": ROOT / "configs" / "assl_digits.yaml", "mnist": ROOT / "configs" / "assl_mnist.yaml"}
CLASSES = {"digits": 10, "mnist": 10}
#: MNIST on 2 CPU cores: what the budget changes against configs/assl_mnist.yaml (the paper's
#: 5 x 1024 steps of batch 64 x (1 + 2 x 7) per fit would take hours per fit here)
MNIST_CPU = ["--data.batch_size", "16", "--data.steps_per_epoch", "200", "--trainer.max_epochs", "3",
             "--data.num_workers", "0", "--model.init_args.backbone_kwargs", '{"width": 8}',
             "--model.init_args.ema_decay", "0.99"]
ALPHA = 0.05
#: the runs' name for each seed's shared initial fit
INITIAL = "_initial"


@dataclass(frozen=True)
class Run:
    dataset: str
    per_class: int
    strategy: str
    seed: int
    out: Path

    @property
    def regime_dir(self) -> Path:
        return self.out / f"{self.dataset}_{self.per_class}pc"

    @property
    def run_dir(self) -> Path:
        return self.regime_dir / self.strategy / f"version_{self.seed}"

    def finished(self) -> bool:
        state = self.run_dir / "state.json"
        return state.is_file() and json.loads(state.read_text()).get("phase") == "done"

    def command(self, rounds: int, data_root: Path | None) -> list[str]:
        """A new run's ``fit`` arguments (the strategy's, or the shared initial fit's with no
        acquisition), or the resume of a run already started."""
        executable = str(Path(sys.executable).with_name("al-lightning"))
        if (self.run_dir / "state.json").is_file():
            return [executable, "fit", "--resume", str(self.run_dir)]
        # the shared initial fit (loop.rounds 0) never acquires: any strategy does for its config
        class_path, init_args = STRATEGIES["Random" if self.strategy == INITIAL else self.strategy]
        size = self.per_class * CLASSES[self.dataset]
        args = [executable, "fit", "--config", str(CONFIGS[self.dataset]),
                "--seed_everything", str(self.seed), "--loop.seed", str(self.seed),
                "--loop.rounds", str(rounds), "--loop.initial_size", str(size), "--loop.budget", str(size),
                "--loop.strategy", json.dumps({"class_path": class_path, "init_args": init_args}),
                "--trainer.logger.init_args.save_dir", str(self.regime_dir),
                "--trainer.logger.init_args.name", self.strategy,
                "--trainer.logger.init_args.version", str(self.seed),
                "--trainer.enable_progress_bar", "false", "--loop.checkpoint_every_n_steps", "0"]
        if self.dataset == "mnist":
            args += ["--data.root", str(data_root), *MNIST_CPU]
        return args


def fork_after_initial_fit(initial: Run, run: Run, rounds: int) -> None:
    """Start ``run`` as a copy of the finished initial-fit run ``initial`` (``loop.rounds 0``), put
    back between its fit and its acquisition, with ``run``'s strategy and ``rounds`` in its
    ``config.yaml``: resuming it acquires with that strategy from the shared fit's snapshot."""
    staging = run.run_dir.with_name(f".{run.run_dir.name}.fork")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(initial.run_dir, staging)
    config = yaml.safe_load((staging / "config.yaml").read_text())
    class_path, init_args = STRATEGIES[run.strategy]
    config["loop"].update(rounds=rounds, strategy={"class_path": class_path, "init_args": init_args})
    config["trainer"]["logger"]["init_args"].update(name=run.strategy, version=run.seed)
    (staging / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    directory = RunDirectory(staging)
    state = directory.load()
    if state.phase != "done" or len(state.results) != 1:
        raise SystemExit(f"{initial.run_dir} is not a finished initial fit (phase {state.phase}, "
                         f"{len(state.results)} cycles); remove it and run the harness again")
    row = state.results[0]
    snapshot = directory.snapshot_path("cycle_0_fitted")  # the name the loop saves fit 0's snapshot under
    if not snapshot.is_file():
        raise SystemExit(f"{initial.run_dir / snapshot.relative_to(staging)} is missing; remove {initial.run_dir} "
                         f"and run again")
    state.phase, state.results = "acquire", []
    state.fitted = {**{k: row[k] for k in ("n_labeled", "test_acc", "fit_seconds", "class_coverage")},
                    "snapshot": str(snapshot.relative_to(staging))}
    directory.commit(state)
    run.run_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, run.run_dir)  # the run exists whole or not at all


def execute(run: Run, rounds: int, data_root: Path | None, threads: int) -> float:
    """Run (or resume) one run to its end, forked from its seed's initial fit; returns its wall
    seconds (0 if it was already done)."""
    if run.finished():
        return 0.0
    started = time.perf_counter()
    if not (run.run_dir / "state.json").is_file():
        initial = initial_run(run)
        _run_to_end(initial, 0, data_root, threads)
        fork_after_initial_fit(initial, run, rounds)
    _run_to_end(run, rounds, data_root, threads)
    seconds = time.perf_counter() - started
    print(f"run {run.dataset} {run.per_class}/class {run.strategy} seed {run.seed}: {seconds:.0f} s", flush=True)
    return seconds


def initial_run(run: Run) -> Run:
    return Run(run.dataset, run.per_class, INITIAL, run.seed, run.out)


def _run_to_end(run: Run, rounds: int, data_root: Path | None, threads: int) -> None:
    if run.finished():
        return
    run.regime_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = run.regime_dir / f"{run.strategy}_seed{run.seed}.log"
    with log.open("a") as handle:
        done = subprocess.run(run.command(rounds, data_root), cwd=ROOT, env=env, stdout=handle,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0 or not run.finished():
        raise SystemExit(f"{run.strategy} seed {run.seed} ({run.dataset}, {run.per_class}/class) failed: see {log}")


# ----------------------------------------------------------------------------- statistics
def curves(runs: list[Run]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels (cycles,), accuracy (seeds, cycles), coverage (seeds, cycles))`` of one strategy."""
    loaded = [load_run(r.run_dir) for r in runs]
    labels = loaded[0].labels
    accuracy = np.stack([c.accuracy for c in loaded])
    coverage = np.stack([[float(row) for row in _column(r.run_dir, "class_coverage")] for r in runs])
    return labels, accuracy, coverage


def _column(run_dir: Path, name: str) -> list[str]:
    with (run_dir / "results.csv").open() as handle:
        return [row[name] for row in csv.DictReader(handle)]


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean difference a - b over seeds and the two-sided paired t-test p-value (1.0 when every
    difference is 0, as for the shared initial fit)."""
    diff = a - b
    if np.allclose(diff, 0.0) or len(diff) < 2:
        return float(diff.mean()), 1.0
    return float(diff.mean()), float(stats.ttest_rel(a, b).pvalue)


def verdict(mean: float, p: float) -> str:
    return "W" if p < ALPHA and mean > 0 else "L" if p < ALPHA and mean < 0 else "T"


def regime_table(dataset: str, per_class: int, strategies: list[str], seeds: list[int], out: Path) -> str:
    """The markdown report of one regime, and its PNG beside it."""
    runs = {s: [Run(dataset, per_class, s, seed, out) for seed in seeds] for s in strategies}
    data = {s: curves(r) for s, r in runs.items()}
    labels = data[strategies[0]][0]
    reference = data.get("Random")
    header = ("| strategy | " + " | ".join(str(n) for n in labels) + " | AULC | classes covered per cycle (mean, min) |"
              + (" vs Random per cycle (W/T/L) | AULC - Random (p) |" if reference else ""))
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for name in strategies:
        _, accuracy, coverage = data[name]
        aulc = np.array([normalised_aulc(labels, row) for row in accuracy])
        cells = [f"{m:.4f} ± {s:.4f}" for m, s in zip(accuracy.mean(0), accuracy.std(0, ddof=1))]
        classes = coverage * CLASSES[dataset]
        cover = " / ".join(f"{m:.1f} ({lo:.0f})" for m, lo in zip(classes.mean(0), classes.min(0)))
        row = f"| {name} | " + " | ".join(cells) + f" | {aulc.mean():.4f} ± {aulc.std(ddof=1):.4f} | {cover} |"
        if reference is not None and name == "Random":
            row += " - | - |"
        elif reference is not None:
            ref_accuracy = reference[1]
            marks = [verdict(*paired(accuracy[:, c], ref_accuracy[:, c])) for c in range(1, len(labels))]
            ref_aulc = np.array([normalised_aulc(labels, r) for r in ref_accuracy])
            diff, p = paired(aulc, ref_aulc)
            row += (f" {''.join(marks)} ({marks.count('W')}/{marks.count('T')}/{marks.count('L')}) |"
                    f" {diff:+.4f} ({p:.3f}) |")
        lines.append(row)
    regime_dir = runs[strategies[0]][0].regime_dir
    summaries = summarise({s: [load_run(r.run_dir) for r in runs[s]] for s in strategies})
    plot_curves(summaries, regime_dir / "curves.png",
                f"{dataset}: {per_class} label{'s' if per_class > 1 else ''} per class per cycle, {len(seeds)} seeds")
    text = (f"### {dataset}, {per_class} label{'s' if per_class > 1 else ''} per class per cycle "
            f"({len(seeds)} seeds: {', '.join(map(str, seeds))})\n\n" + "\n".join(lines) + "\n")
    (regime_dir / "curves.md").write_text(text + f"\n![curves](curves.png)\n")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(CONFIGS), default="mnist")
    parser.add_argument("--per-class", type=int, nargs="+", default=[1, 10],
                        help="labels per class in the initial set and in every acquisition (one regime each)")
    parser.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES, choices=sorted(STRATEGIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rounds", type=int, default=3, help="acquisitions after the initial fit")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_learning_curves")
    parser.add_argument("--mnist-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cores / jobs threads)")
    parser.add_argument("--report-only", action="store_true", help="tables of the finished runs, no training")
    args = parser.parse_args()
    if "Random" not in args.strategies:
        print("note: without Random there is no win/tie/loss column", flush=True)
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    with tempfile.TemporaryDirectory() as scratch:
        data_root = None
        if args.dataset == "mnist":  # verified and extracted once, before parallel runs read it
            data_root = mnist_root(args.mnist_dir, Path(scratch))
            ActiveDataModule("mnist", root=str(data_root), download=True).prepare_data()
        runs = [Run(args.dataset, k, s, seed, args.out) for k in args.per_class for seed in args.seeds
                for s in args.strategies]
        if not args.report_only:
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # the shared initial fits first
                initials = sorted({initial_run(r) for r in runs if not r.finished()}, key=lambda r: (r.per_class, r.seed))
                list(pool.map(lambda r: _run_to_end(r, 0, data_root, threads), initials))
                seconds = [s for s in pool.map(lambda r: execute(r, args.rounds, data_root, threads), runs) if s]
            if seconds:
                print(f"\n{len(seconds)} runs, {np.mean(seconds):.0f} s per run on average ({threads} threads, "
                      f"{args.jobs} at a time)", flush=True)
    for k in args.per_class:
        print("\n" + regime_table(args.dataset, k, args.strategies, args.seeds, args.out), flush=True)


if __name__ == "__main__":
    main()
