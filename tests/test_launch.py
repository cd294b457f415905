"""The launch scripts, run as a user runs them: torchrun as 2 nodes x 1 process on localhost (gloo,
CPU), and the SLURM batch script with a stubbed ``srun``."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed

sys.path.insert(0, str(Path(__file__).parent))
from test_resume import tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.ddp
@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="torch.distributed has no gloo backend")
def test_torchrun_two_nodes_on_localhost_select_identically(tmp_path):
    config = tiny_config(tmp_path, "torchrun", rounds=1)
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1", "NNODES": "2",
           "GPUS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "ACCELERATOR": "cpu"}
    nodes = [subprocess.Popen(["bash", "launch/torchrun.sh", str(config)], cwd=ROOT, env={**env, "NODE_RANK": str(n)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[1][-3000:] + outputs[0][-3000:]
    digests = [dict(re.findall(r"\[rank \d\] cycle (\d+) pool digest (\w+)", out)) for out in outputs]
    assert sorted(digests[0]) == ["0", "1"] and digests[0] == digests[1]
    assert "[rank 0]" in outputs[0] and "[rank 1]" in outputs[1]
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("results.csv")] == \
        ["torchrun/version_0/results.csv"]


def run_sbatch(tmp_path, args, **env):
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / "srun").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$SRUN_RECORD"\n')
    (stub / "srun").chmod(0o755)
    record = tmp_path / "srun_args"
    environment = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
                   "PATH": f"{stub}:{os.environ['PATH']}", "SRUN_RECORD": str(record), **env}
    done = subprocess.run(["bash", "launch/slurm.sbatch", *args], cwd=ROOT, env=environment, capture_output=True,
                          text=True)
    return done, record.read_text().splitlines() if record.exists() else None


def test_slurm_script_passes_the_allocation_to_the_trainer(tmp_path):
    done, argv = run_sbatch(tmp_path, ["configs/assl_cifar10.yaml", "--loop.rounds", "3"],
                            SLURM_NTASKS_PER_NODE="8", SLURM_JOB_NUM_NODES="2")
    assert done.returncode == 0, done.stderr
    assert argv == [".venv/bin/al-lightning", "fit", "--config", "configs/assl_cifar10.yaml",
                    "--trainer.accelerator", "gpu", "--trainer.devices", "8", "--trainer.num_nodes", "2",
                    "--trainer.strategy", "ddp", "--loop.rounds", "3"]


def test_slurm_script_refuses_a_missing_config_or_allocation(tmp_path):
    done, argv = run_sbatch(tmp_path, [], SLURM_NTASKS_PER_NODE="8", SLURM_JOB_NUM_NODES="2")
    assert done.returncode != 0 and argv is None and "usage: sbatch launch/slurm.sbatch CONFIG" in done.stderr
    done, argv = run_sbatch(tmp_path, ["configs/assl_cifar10.yaml"], SLURM_NTASKS_PER_NODE="8")
    assert done.returncode != 0 and argv is None and "SLURM_JOB_NUM_NODES" in done.stderr
