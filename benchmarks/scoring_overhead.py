"""Cost of ASSL's online scoring on a FixMatch training step, as a ratio to the bare step.

A step is forward (labeled + weak + strong in one pass), backward, SGD and the EMA update; the
scored step adds exactly what OnlineScoring does per step. Bare and scored steps run interleaved
on the same fixed batch (ratio of medians); the callback's own work is also timed alone over many
calls, since on a large backbone its cost is far below the step's run-to-run noise.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from al_lightning.methods import FixMatch
from al_lightning.scoring import OnlineScoring
from al_lightning.scoring.online import OnlineScoreState

CASES = [  # backbone, channels, image size, batch, uratio, pool size
    ("small_cnn", 1, 8, 16, 7, 1437),
    ("wrn28_2", 3, 32, 4, 7, 50000),
]


def bench(backbone: str, channels: int, size: int, batch: int, uratio: int, pool: int, steps: int, rounds: int):
    torch.manual_seed(0)
    model = FixMatch(backbone=backbone, num_classes=10, in_channels=channels, scheduler="none")
    model.log = lambda *a, **k: None  # no trainer attached: logging is not what is measured
    optimizer = model.configure_optimizers()
    n_u = batch * uratio
    data = {"labeled": (torch.randn(batch, channels, size, size), torch.randint(0, 10, (batch,))),
            "unlabeled": {"weak": torch.randn(n_u, channels, size, size),
                          "strong": torch.randn(n_u, channels, size, size),
                          "index": torch.randperm(pool)[:n_u]}}
    callback = OnlineScoring()
    callback.state = OnlineScoreState(pool)
    trainer = SimpleNamespace(world_size=1)

    def step(scored: bool) -> None:
        out = model.training_step(data, 0)
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()
        model.ema.update(model.model)
        if scored:
            callback.on_train_batch_end(trainer, model, out, data, 0)

    for _ in range(3):
        step(True)
    times = {False: [], True: []}
    for _ in range(rounds):
        for scored in (False, True):
            started = time.perf_counter()
            for _ in range(steps):
                step(scored)
            times[scored].append((time.perf_counter() - started) / steps)
    bare, scored = statistics.median(times[False]), statistics.median(times[True])
    out = model.training_step(data, 0)
    calls = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(50):
            callback.on_train_batch_end(trainer, model, out, data, 0)
        calls.append((time.perf_counter() - started) / 50)
    return bare, scored, statistics.median(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print("\nonline scoring overhead on a FixMatch step (CPU, median of interleaved rounds)")
    print("backbone   images/step  bare_step_s  scored_step_s  measured_ratio  callback_s  "
          "(bare+callback)/bare   goal <= 1.03")
    for backbone, channels, size, batch, uratio, pool in CASES:
        bare, scored, call = bench(backbone, channels, size, batch, uratio, pool, args.steps, args.rounds)
        print(f"{backbone:<10} {batch * (1 + 2 * uratio):<12} {bare:.4f}       {scored:.4f}         "
              f"{scored / bare:.3f}           {call:.5f}     {(bare + call) / bare:.4f}")


if __name__ == "__main__":
    main()
