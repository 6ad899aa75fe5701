"""glibc's allocator, tuned for a process that runs models: memory a batch frees is kept for the next one.

Stock glibc gives an allocation above a threshold its own `mmap` (the threshold starts at 128 KiB and
adapts up to 32 MiB) and hands freed memory at the top of a heap back to the kernel once it exceeds the
trim threshold (128 KiB, or twice the adapted mmap threshold). A forward pass allocates and frees tens of
MiB of activations, so every batch got them back from the kernel page by page, each page a fault and
zero-filled: on resnet50 (batches of 8 as two single-thread streams, 640×480 JPEGs) the worker's pool
process took 2,000-6,300 minor page faults per image, the in-process loop 600-2,900. With the mmap
threshold fixed at its ceiling and freed memory kept up to TRIM_THRESHOLD, both took nearly none
(1-170 and 40-1,500), the pool process spent 102-111 ms of CPU per image instead of 110-122, and (b)
ran at 16.4-18.2 img/s against 14.7-16.5 (interleaved runs; `make bench`'s lab loop gets the same tuning,
so its limit moved too). PyTorch's CPU tuning guide makes the same point by recommending jemalloc or
tcmalloc; this needs neither.

Those thresholds rule glibc's main arena only in part: every other thread that allocates (a stream running
its share of a batch, a decode thread) gets an arena of its own, made of heaps of at most 64 MiB, and a heap
that a batch leaves wholly free is unmapped whatever the trim threshold says. On resnet50 (two streams) the
pool process still took 1,700-3,300 faults per image and 2.6-4 ms of system CPU; with one arena for every
thread (ARENAS), 0-180 faults and 0.1-0.5 ms. Bulk rounds of (b), the two settings one after the other on
a drifting host: 28.2-30.3 img/s against 26.2-27.8, then 23.7-23.8 against 23.0 (pool CPU per image 77.8
against 79.3 ms; user time alone level, 77.4 against 76.5). The threads that allocate are few and allocate
tensors, not small objects, so they seldom meet at the arena's lock.

The cost is memory: a process keeps up to TRIM_THRESHOLD of freed heap at the top of its one arena: about
one batch's activations per thread that runs the model, which it needs again at the next batch. A pool process
that has run no job for INFERQ_IDLE_TRIM_S gives it back (`trim_heap`, from workers/idle.py). Set
INFERQ_MALLOC_TUNING=0 for glibc's defaults; an operator's own `GLIBC_TUNABLES=glibc.malloc.…` is left alone.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from typing import Any

logger = logging.getLogger("inferq.worker")

# From glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# glibc's ceiling for the adaptive threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); larger blocks keep their
# own mapping. Setting it also turns the adapting off.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024
# Every thread allocates from the main arena (see above). Set before the threads that allocate exist: one that
# already has an arena keeps it.
ARENAS = 1

@functools.cache
def _glibc_function(name: str, argtypes: tuple[Any, ...], restype: Any) -> Any:
    """A function of this process's glibc with its signature set, or None on another C library (musl's mallopt
    does nothing, and it has no malloc_trim)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        function = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    function.argtypes = list(argtypes)
    function.restype = restype
    return function


@functools.cache
def tune_malloc() -> bool:
    """Set the thresholds above in this process (its children inherit them); whether they are set.

    Not on a C library other than glibc, not with INFERQ_MALLOC_TUNING=0, and not over malloc settings
    given in GLIBC_TUNABLES. Once per process.
    """
    if os.environ.get("INFERQ_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    mallopt = _glibc_function("mallopt", (ctypes.c_int, ctypes.c_int), ctypes.c_int)
    if mallopt is None:
        return False
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            and mallopt(M_ARENA_MAX, ARENAS)):
        logger.warning("glibc refused the allocator settings; running with its defaults")
        return False
    return True


def trim_heap() -> bool:
    """Give the heap's free memory back to the kernel (glibc's `malloc_trim(0)`: the top of the heap, and the
    free pages inside it); whether any was given back. False on a C library other than glibc."""
    trim = _glibc_function("malloc_trim", (ctypes.c_size_t,), ctypes.c_int)
    return bool(trim(0)) if trim is not None else False
