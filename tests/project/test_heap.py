"""project/heap.py: a long-lived process's start-up objects kept out of the cyclic collector's walks."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from project.heap import freeze_loaded


class Node:
    link: Any = None


def test_start_up_garbage_is_collected_before_the_rest_is_frozen(settings: Any) -> None:
    settings.INFERQ_GC_FREEZE = True
    garbage = Node()
    garbage.link = garbage  # a cycle: only the collector frees it
    dead = weakref.ref(garbage)
    kept = Node()
    del garbage
    try:
        assert freeze_loaded() > 0
        assert dead() is None  # not frozen forever
        assert not any(o is kept for o in gc.get_objects())  # frozen: no collection walks it
    finally:
        gc.unfreeze()
    assert any(o is kept for o in gc.get_objects())


def test_off_freezes_nothing(settings: Any) -> None:
    settings.INFERQ_GC_FREEZE = False
    assert freeze_loaded() == 0
    assert gc.get_freeze_count() == 0
