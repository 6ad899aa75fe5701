"""The cyclic garbage collector and a long-lived process's start-up objects."""

from __future__ import annotations

import gc

from django.conf import settings


def freeze_loaded() -> int:
    """Move every object alive now into the collector's permanent generation (`gc.freeze()`); how many moved.

    A web process imports Django, DRF, its URLconf, numpy and Pillow once and keeps them to its end. Left in the
    oldest generation, all of them were walked by every full collection (one in about a thousand submits, some
    120 ms each here), though none of them can become garbage. Frozen, collections walk only what requests
    allocate; objects created afterwards are collected as before. The start-up garbage is collected first, so
    none of it is kept forever. `INFERQ_GC_FREEZE=0` turns this off.
    """
    if not settings.INFERQ_GC_FREEZE:
        return 0
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
