"""A CPU fit (and a CPU pass over the pool) keeps freed memory for its next step: a large block
freed and asked for again comes back without the kernel faulting its pages in again; the end of
the fit or pass hands the free memory back. Counted in minor page faults of a 64 MiB block, in
fresh processes (the heap's history decides where a block comes from); glibc's documented
behaviour makes the counts deterministic."""

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ddp_launch import ROOT


def _huge_pages_always() -> bool:
    """Transparent huge pages on every mapping: a fresh block then faults per 2 MiB, not per page."""
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


pytestmark = [pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's allocator only"),
              pytest.mark.skipif(_huge_pages_always(), reason="counts 4 KiB page faults; huge pages are always on")]

PAGES = (64 << 20) // resource.getpagesize()
ALL, NONE = PAGES / 2, PAGES / 50  # a block faulted in afresh / one reused


def probe(*args: str, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    environment.update(env)
    proc = subprocess.run([sys.executable, "tests/heap_probe.py", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("HEAP "))[5:])


def test_retained_blocks_come_back_without_faults_and_release_hands_them_back():
    result = probe("allocator")
    assert result["before"] > ALL  # glibc's own behaviour: every large block mmapped afresh
    assert result["retaining"] and result["retained"] < NONE
    assert result["nested"] < NONE
    assert result["first_after_release"] > ALL


def test_an_allocator_the_user_configured_is_left_alone():
    result = probe("allocator", MALLOC_ARENA_MAX="2")
    assert not result["retaining"]
    assert result["before"] > ALL and result["retained"] > ALL and result["nested"] > ALL


@pytest.mark.parametrize("method", ["fixmatch", "simclr"])
def test_a_cpu_fit_retains_freed_memory_while_it_trains_and_hands_it_back_after(method, tmp_path):
    result = probe(method, str(tmp_path))
    assert result["before"] > ALL
    assert len(result["inside"]) == 2 and max(result["inside"]) < NONE
    assert result["depth_after_fit"] == 0 and result["first_after_fit"] > ALL


def test_a_cpu_fit_that_raises_hands_the_freed_memory_back(tmp_path):
    result = probe("raising", str(tmp_path))
    assert result["raised"] == "the probe's step fails"
    assert len(result["inside"]) == 2 and max(result["inside"]) < NONE
    assert result["depth_after_fit"] == 0 and result["first_after_fit"] > ALL


def test_a_cpu_pool_pass_reuses_freed_memory_after_its_first_batch_and_hands_it_back():
    result = probe("inference")
    first, *later = result["between_batches"]
    assert result["before"] > ALL and first > ALL  # nothing kept before the pass has freed anything
    assert len(later) == 2 and max(later) < NONE
    assert result["exact"] and result["first_after_pass"] > ALL
