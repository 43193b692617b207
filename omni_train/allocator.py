"""How a CPU run's freed memory goes back to the C allocator: kept for the next step (glibc), and said.

A training step allocates and frees the same large buffers every step: activations, logit chunks,
gradients. glibc serves every buffer over its mmap threshold (32 MB at most) with a fresh `mmap`
and unmaps it on `free`, and it trims the top of its heap back to the OS once 128 kB there are free
(its defaults), so the next step faults every page of those buffers in again and the kernel zeroes
each one. At Qwen2-0.5B's full depth on one CPU thread that was a third of the CPU time (335 of
1015 s in the kernel, 48 million minor page faults; BENCHMARKS.md section 1). With mmap and
trimming off, freed memory stays in the process and the next step reuses it; the arithmetic is the
same, so the weights are the same bits. The price is resident memory: the heap keeps its
high-water mark, and for the first steps it grows a little past it (an aligned allocation needs
slightly more than the block the same tensor freed, until freed blocks coalesce); between stages
`give_back_freed_memory` returns it (`malloc_trim`).

It is applied to CPU runs only: a GPU run's tensors live in CUDA's caching allocator already.

What the user set wins: with any ``MALLOC_*`` variable, a ``glibc.malloc`` tunable in
``GLIBC_TUNABLES``, or another allocator in ``LD_PRELOAD`` (jemalloc, tcmalloc, mimalloc), glibc
is left as configured. ``MALLOC_MMAP_MAX_=65536`` restores glibc's default behaviour.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger("omni_train")

# mallopt parameters (<malloc.h>)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# -1 turns trimming off (mallopt(3)); the largest positive int would still trim once 2 GiB at the
# heap's top are free, which a full-depth 0.5B step frees every step
NEVER_TRIM = -1
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def user_choice() -> str | None:
    """The environment setting that configures the allocator already, if any (as ``NAME=value``)."""
    for name, value in os.environ.items():
        if name.startswith("MALLOC_"):  # MALLOC_MMAP_MAX_, MALLOC_ARENA_MAX, ...: the user tunes glibc
            return f"{name}={value}"
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(a in preload for a in OTHER_ALLOCATORS):
        return f"LD_PRELOAD={preload}"
    return None


def _glibc() -> ctypes.CDLL | None:
    """The C library, where it is glibc (macOS, musl: their allocators have no such switches)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)


def keep_freed_memory() -> bool:
    """Turn off glibc's mmap for large buffers and its heap trimming, unless the user chose; log the outcome.

    Returns whether the setting was applied here.
    """
    chosen = user_choice()
    if chosen:
        log.info("allocator: as the environment configures it (%s)", chosen)
        return False
    libc = _glibc()
    if libc is None:
        return False  # nothing to say
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)):
        log.warning("allocator: glibc refused mallopt; freed memory goes back to the OS as by default")
        return False
    log.info("allocator: freed memory kept for reuse (glibc: no mmap, no trimming; MALLOC_MMAP_MAX_=65536 "
             "for glibc's default)")  # fmt: skip
    return True


def give_back_freed_memory() -> None:
    """Return the heap's free memory to the OS now (glibc's `malloc_trim`), whatever trimming is set to.

    Between stages (`omni_train.train.release_memory`), so that a run's resident memory at a stage's
    start is that stage's, not the high-water mark of the stages before (BENCHMARKS.md section 12).
    """
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
