"""Runs survive a crash: a run killed with SIGKILL at random moments (inside a fit, between fit and
acquisition, while files are written) and resumed, as often as it takes, ends with the same pool,
selections and results rows as an uninterrupted run; no label is ever lost and every file a reader
opens after a kill parses."""

import csv
import json
import multiprocessing
import random
import time
from pathlib import Path

import yaml

from al_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
TRIALS = 10
#: what must be equal between runs (fit and acquisition times are not)
COMPARED = ("cycle", "n_labeled", "test_acc", "class_coverage")


def tiny_config(tmp_path: Path, name: str, **loop: object) -> Path:
    """ASSL on digits, 3 fits of 2 x 6 FixMatch steps, a mid-fit checkpoint every 4 steps."""
    config = yaml.safe_load((ROOT / "configs" / "assl_digits.yaml").read_text())
    config["trainer"].update(max_epochs=2, default_root_dir=str(tmp_path))
    config["trainer"]["logger"]["init_args"].update(save_dir=str(tmp_path), name=name, version=0)
    config["model"]["init_args"]["backbone_kwargs"] = {"width": 8}
    config["data"].update(batch_size=8, uratio=2, steps_per_epoch=6)
    config["loop"].update({"rounds": 2, "initial_size": 20, "budget": 10, "checkpoint_every_n_steps": 4, **loop})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launcher(monkeypatch):
    """Runs of ``al-lightning`` as child processes forked from a server that imported it once (a
    fresh interpreter spends seconds on imports), one thread each, killable with SIGKILL."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["al_lightning.cli"])
    warm_up = context.Process(target=time.sleep, args=(0,))  # starts the server: the imports happen here
    warm_up.start()
    warm_up.join()
    return lambda *args: context.Process(target=main, args=(list(args),), daemon=True)


def outcome(run: Path) -> dict:
    rows = [{k: row[k] for k in COMPARED} for row in csv.DictReader(open(run / "results.csv"))]
    return {"results": rows, "pool": json.loads((run / "pool.json").read_text()),
            "selections": json.loads((run / "selections.json").read_text())}


def readable(run: Path) -> dict:
    """Every file a reader opens parses; returns the committed state."""
    state = json.loads((run / "state.json").read_text())
    for name in ("pool.json", "selections.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())
    if (run / "results.csv").exists():
        list(csv.DictReader(open(run / "results.csv")))
    return state


def test_sigkill_at_random_moments_then_resume_ends_like_an_uninterrupted_run(tmp_path, monkeypatch):
    process_of = launcher(monkeypatch)
    config = tiny_config(tmp_path, "reference")
    process = process_of("fit", "--config", str(config))
    started = time.perf_counter()
    process.start()
    while not (tmp_path / "reference" / "version_0" / "state.json").exists() and process.is_alive():
        time.sleep(0.01)
    start_up = time.perf_counter() - started  # data and set-up, before the run's first commit
    process.join()
    duration = time.perf_counter() - started
    assert process.exitcode == 0
    reference = outcome(tmp_path / "reference" / "version_0")
    assert [int(r["n_labeled"]) for r in reference["results"]] == [20, 30, 40]

    rng = random.Random(0)
    kills: list[str] = []  # where each kill landed: the committed phase, and whether a fit checkpoint existed
    for trial in range(TRIALS):
        name = f"trial{trial}"
        run = tmp_path / name / "version_0"
        args = ["fit", "--config", str(tiny_config(tmp_path, name))]
        labels_seen: list[list[int]] = []
        for attempt in range(6):
            process = process_of(*args)
            process.start()
            # the first attempt (the first two in odd trials) is killed somewhere in the run's life
            if attempt < 1 + trial % 2:
                process.join(timeout=start_up + rng.uniform(-0.2, 0.95) * (duration - start_up))
                if process.is_alive():
                    process.kill()
                    process.join()
                    phase = json.loads((run / "state.json").read_text())["phase"] if (run / "state.json").exists() \
                        else "start-up"
                    kills.append(phase + ("+checkpoint" if list(run.glob("checkpoints/*.ckpt")) else ""))
            process.join()
            if (run / "state.json").exists():
                state = readable(run)
                labeled = sorted(state["pool"]["labeled"])
                assert all(set(old) <= set(labeled) for old in labels_seen), f"trial {trial}: a label was lost"
                labels_seen.append(labeled)
                if state["phase"] == "done":
                    break
                args = ["fit", "--resume", str(run)]
        assert json.loads((run / "state.json").read_text())["phase"] == "done", f"trial {trial} did not finish"
        assert outcome(run) == reference, f"trial {trial} differs from the uninterrupted run"
        assert not list(run.rglob(".*.tmp")) and not list(run.rglob(".*.partial")), "stale temporary files"
    print(f"start-up {start_up:.2f}s of {duration:.2f}s; kills landed in:", sorted(kills))
    assert len(kills) >= TRIALS  # every trial was interrupted at least once
