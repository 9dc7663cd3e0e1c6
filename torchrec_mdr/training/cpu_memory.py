"""Keep freed memory in a CPU training process, so that large tensors are not page-faulted every step.

Why: PyTorch's CPU allocator takes every tensor from ``malloc`` and frees it when the tensor dies
(no caching, unlike the CUDA allocator). glibc serves a request above its mmap threshold (dynamic,
at most 32 MiB on 64-bit Linux) with a fresh ``mmap`` and gives it back with ``munmap`` at
``free``, so the kernel faults in and zeroes such a tensor's pages again at every training step.
The activations of the behaviour-sequence layers grow with B x L and cross that threshold at large
batches: one thread, DIN (50 behaviours, D = 16) at batch 4096 took ~145k minor page faults per step
(~570 MB of fresh pages) and trained at 7.1-7.5k samples/s of CPU time against 10.9-12.7k at batch
1024 (docs/benchmarks.md); this is what made samples/s fall as the batch grew once the embedding
backward scaled (:mod:`torchrec_mdr.sparse.fbgemm_nobag_cpu`).

What :func:`keep_freed_memory` does: ``mallopt(M_MMAP_MAX, 0)`` (no allocation is served by mmap:
all come from the heap, which reuses freed blocks) and ``mallopt(M_TRIM_THRESHOLD, 2 GiB - 1)``
(freed memory at the top of the heap is kept up to that size rather than returned to the kernel).
Measured on the same DIN steps: 0-11k faults per step and 13.0k samples/s at batch 4096. The price:
the process keeps its peak heap (its resident memory stays at the largest step's, as a caching
allocator's would). glibc only (Linux); elsewhere it does nothing. ``train.cpu_keep_freed_memory``
turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc <malloc.h> mallopt parameters
KEEP_UP_TO = 2**31 - 1  # mallopt takes a C int: the largest trim threshold it accepts


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and keep freed memory in it (glibc). Returns whether it applied."""
    libc = _libc()
    if libc is None:
        return False
    applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO))
    logger.info(
        "glibc malloc: mmap %s for large tensors (torchrec_mdr.training.cpu_memory)",
        "off, freed memory kept" if applied else "settings refused; unchanged",
    )
    return applied


def glibc_defaults() -> bool:
    """glibc's own settings back (mmap for large requests, trim at 128 KiB); for tests and comparisons."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 65536)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024))
