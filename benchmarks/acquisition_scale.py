"""Pool inference and every acquisition strategy on a synthetic pool at million-image scale.

Defaults: 1,000,000 samples x 512 features, 1,000 classes, 10,000 labeled, budget 10,000
(``make bench-scale``). The pool is streamed through a model in batches as in a real run: the
"images" are 512-d feature vectors drawn on the fly from each id (a clustered mixture, one cluster
per class), the backbone's embedding is the identity and its head a linear layer, so pool inference
costs what the data loader and the head cost and every strategy sees a real
:class:`~al_lightning.strategies.AcquisitionContext`.

Each case runs in a fresh process, which prints one line starting ``scale``:

    scale <case> n=<n> d=<d> C=<C> budget=<b> device=<dev> seconds=<s> host_peak_gib=<x>
          host_base_gib=<y> device_peak_gib=<z> valid=<yes|NO>

``host_peak`` is the process's resident high-water mark (``VmHWM``), ``host_base`` the resident size
once the pool and model exist (before inference), ``device_peak`` torch's peak allocation on the
GPU (0 on the CPU). A strategy is valid when it returns exactly ``budget`` distinct unlabeled ids.
The inputs alone (embeddings n x d and probabilities n x C in float32) take ``4 n (d + C)`` bytes,
printed as ``inputs_gib``; a bounded strategy peaks at a small multiple of it, never at n x n.
faiss runs on the GPU when faiss-gpu sees one (``make install-gpu``), on the CPU otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from al_lightning.data.pool import ActivePool
from al_lightning.methods.inference import pool_inference
from al_lightning.models import Backbone
from al_lightning.scoring.online import OnlineScoreState
from al_lightning.strategies import STRATEGIES, AcquisitionContext

#: strategies whose features default to ``auto``: here the model's embedding (a trained model)
CASES = ["pool_inference", *STRATEGIES.names()]
#: cluster spread of the synthetic features (cluster centres have unit-variance coordinates)
SPREAD = 0.6
BATCH = 8192


class FeaturePool:
    """Deterministic synthetic features of any ids: centre of the id's class plus noise that is a
    function of the id alone, so every pass over any subset sees the same rows."""

    def __init__(self, n: int, d: int, classes: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.n, self.d, self.classes = n, d, classes
        self.centres = torch.randn(classes, d, generator=generator)
        self.frequency = torch.rand(d, generator=generator, dtype=torch.float64) * 1e3 + 1.0
        self.phase = torch.rand(d, generator=generator, dtype=torch.float64) * 2 * math.pi

    def labels(self, ids: np.ndarray) -> np.ndarray:
        return (np.asarray(ids, dtype=np.int64) * 7919) % self.classes

    def rows(self, ids: np.ndarray) -> torch.Tensor:
        ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        # a hash of (id, coordinate) in [0, 1), then a triangular (roughly Gaussian) noise
        u = torch.frac(torch.sin(ids_t[:, None].double() * self.frequency + self.phase) * 43758.5453)
        v = torch.frac(torch.sin(ids_t[:, None].double() * self.frequency * 1.618 + self.phase) * 24634.6345)
        noise = (u + v - 1.0).float() * (SPREAD * math.sqrt(6.0))
        return self.centres[torch.as_tensor(self.labels(ids))] + noise

    def loader_for(self, ids: np.ndarray):
        ids = np.asarray(ids, dtype=np.int64)

        class Loader:
            def __iter__(inner):
                for start in range(0, len(ids), BATCH):
                    chunk = ids[start:start + BATCH]
                    yield {"plain": self.rows(chunk), "index": torch.as_tensor(chunk)}

            def __len__(inner):
                return -(-len(ids) // BATCH)

        return Loader()


class FeatureBackbone(Backbone):
    """Identity embedding and a linear head whose weights point at the class centres, softened so
    the two nearest classes are a few logits apart (a trained model is not one-hot on its pool)."""

    def __init__(self, centres: torch.Tensor) -> None:
        super().__init__()
        temperature = centres.shape[1] / 4.0
        self.num_features = centres.shape[1]
        self.fc = nn.Linear(centres.shape[1], centres.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(centres / temperature)
            self.fc.bias.copy_(-(centres * centres).sum(1) / (2 * temperature))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return x


def resident_gib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def run_case(case: str, n: int, d: int, classes: int, labeled: int, budget: int, device: torch.device) -> dict:
    """One case in this process: build the pool, run it, measure."""
    pool_data = FeaturePool(n, d, classes)
    rng = np.random.default_rng(0)
    pool = ActivePool(n, classes)
    start_ids = rng.choice(n, size=labeled, replace=False)
    pool.label(start_ids, pool_data.labels(start_ids))
    model = FeatureBackbone(pool_data.centres).to(device).eval()
    scores = OnlineScoreState(n, device=device)
    generator = torch.Generator(device="cpu").manual_seed(1)
    for name in ("u_mean", "u_var", "i_mean", "i_var"):
        getattr(scores, name).copy_(torch.rand(n, generator=generator, dtype=torch.float64))
    base = resident_gib("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    valid = True
    if case == "pool_inference":
        computed = pool_inference(model, pool_data.loader_for, pool.unlabeled_indices, device)
        valid = computed["embeddings"].shape == (n - labeled, d) and computed["logits"].shape == (n - labeled, classes)
    else:
        context = AcquisitionContext(pool, model, pool_data.loader_for, device, scores=scores, cycle=1, seed=0)
        picks = STRATEGIES.get(case)().select(context, budget)
        valid = len(picks) == budget and len(np.unique(picks)) == budget and not pool.labeled_mask[picks].any()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    device_peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return {"case": case, "n": n, "d": d, "C": classes, "budget": budget, "device": device.type,
            "seconds": round(seconds, 2), "host_peak_gib": round(resident_gib("VmHWM"), 2),
            "host_base_gib": round(base, 2), "device_peak_gib": round(device_peak, 2),
            "inputs_gib": round(4 * n * (d + classes) / 2**30, 2), "valid": "yes" if valid else "NO"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--labeled", type=int, default=None, help="labeled samples before the acquisition "
                        "(default: the budget)")
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a case may run before it is stopped")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    labeled = args.budget if args.labeled is None else args.labeled
    if args.one:
        result = run_case(args.cases[0], args.n, args.d, args.classes, labeled, args.budget, torch.device(args.device))
        print(json.dumps(result), flush=True)
        return
    for case in args.cases:
        command = [sys.executable, __file__, "--one", "--cases", case, "--n", str(args.n), "--d", str(args.d),
                   "--classes", str(args.classes), "--labeled", str(labeled), "--budget", str(args.budget),
                   "--device", args.device]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=os.environ)
        except subprocess.TimeoutExpired:
            print(f"scale {case} n={args.n} timeout after {args.timeout:.0f} s", flush=True)
            continue
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            print(f"scale {case} n={args.n} FAILED: {tail[0]}", flush=True)
            continue
        r = json.loads(lines[-1])
        print(f"scale {r['case']} n={r['n']} d={r['d']} C={r['C']} budget={r['budget']} device={r['device']} "
              f"seconds={r['seconds']} host_peak_gib={r['host_peak_gib']} host_base_gib={r['host_base_gib']} "
              f"device_peak_gib={r['device_peak_gib']} inputs_gib={r['inputs_gib']} valid={r['valid']}", flush=True)


if __name__ == "__main__":
    main()
