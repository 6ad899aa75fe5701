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

The cost is memory: a process keeps up to TRIM_THRESHOLD of freed heap at the top of its main arena, and
each thread's heap (at most 64 MiB) is no longer shrunk: about one batch's activations per thread that runs
the model, which it needs again at the next batch. Set INFERQ_MALLOC_TUNING=0 for glibc's defaults; an
operator's own `GLIBC_TUNABLES=glibc.malloc.…` is left alone.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

logger = logging.getLogger("inferq.worker")

# From glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's ceiling for the adaptive threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); larger blocks keep their
# own mapping. Setting it also turns the adapting off.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 256 * 1024 * 1024

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
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        logger.warning("glibc refused the allocator settings; running with its defaults")
        return False
    return True
