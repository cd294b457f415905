"""Freed memory kept in the process while a fit runs on a CPU.

glibc's malloc serves every block above its mmap threshold (32 MiB at most) with a fresh ``mmap``
and hands it back to the kernel on ``free``. A training step's activations are such blocks (one
layer of a 28x28 FixMatch batch at width 32: 960 x 32 x 28 x 28 float32, 96 MiB), so each step
faults every page of them in again, zero-filled by the kernel: on 2 cores a product written into a
new 96 MiB tensor took 35 ms, into a kept one 8 ms. What PyTorch's CPU tuning guides do with
jemalloc or tcmalloc, :func:`retain_freed_memory` does with glibc itself: large blocks come from the
heap (``M_MMAP_MAX`` 0) and freed ones stay there for the next step (``M_TRIM_THRESHOLD``
2 GiB). :func:`release_freed_memory` hands the free memory back to the kernel (``malloc_trim``) and
restores glibc's steady state for a process that has freed a large block (mmap above 32 MiB, trim
above 64 MiB): after the fit a large block comes from a fresh mmap again unless a free stretch of
the heap fits it, and is faulted in either way. Besides fits, only the pass over the pool keeps
freed memory (its batches are a fit's steps without the backward); the strategies' own work is
left to glibc on purpose: its blocks are few and long-lived, and keeping them measured no faster
on a 100,000-sample pool and raised CDAL's peak from 2.06 to 2.79 GiB.

Nothing changes where the C library is not glibc, or where the user set glibc's allocator through
the environment (any ``MALLOC_*`` variable or a malloc tunable in ``GLIBC_TUNABLES``): their
settings win. Calls nest; only the outermost release restores. :class:`RetainFreedMemory` is the
fit's side of it, a callback the SSL methods and pre-training methods bring to every trainer: it
keeps freed memory from the training loop's start on and hands it back at its end or when the fit
raises, so a failed fit in a notebook leaves glibc as it found it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from functools import cache

import lightning as L

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
#: glibc's largest dynamic mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX), where a process
#: that freed any block above it settles, with the trim threshold at twice it
_STEADY_MMAP_THRESHOLD = 32 << 20
_DEFAULT_MMAP_MAX = 65536
#: mallopt takes an int: free memory at the heap's top is kept up to 2 GiB
_KEEP_UP_TO = (1 << 31) - 1

_lock = threading.Lock()
_depth = 0


@cache
def _glibc() -> ctypes.CDLL | None:
    """The process's glibc when its allocator is ours to tune, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if any(name.startswith("MALLOC_") for name in os.environ) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def retain_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed ones for reuse; True if the allocator
    now does (glibc, not configured by the user)."""
    global _depth
    libc = _glibc()
    if libc is None:
        return False
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_UP_TO)
        _depth += 1
    return True


def release_freed_memory() -> None:
    """Undo one :func:`retain_freed_memory`; the outermost hands the free memory back."""
    global _depth
    libc = _glibc()
    if libc is None:
        return
    with _lock:
        if _depth == 0:
            return
        _depth -= 1
        if _depth == 0:
            libc.mallopt(_M_MMAP_THRESHOLD, _STEADY_MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 * _STEADY_MMAP_THRESHOLD)
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.malloc_trim(0)


class RetainFreedMemory(L.Callback):
    """Keeps freed memory while a fit trains on a CPU: from ``on_train_start`` (after the module's
    ``on_fit_start`` has made its lasting allocations, such as the per-sample state) to
    ``on_train_end``, or to ``on_exception`` when the fit raises."""

    def __init__(self) -> None:
        self.retained = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cpu" and not self.retained:
            self.retained = retain_freed_memory()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._release()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._release()

    def _release(self) -> None:
        if self.retained:
            self.retained = False
            release_freed_memory()
