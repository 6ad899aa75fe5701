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


def _child_copies_after_a_collection(freeze: bool) -> int:
    """KiB a forked child copies (its private dirty memory grows by) when it runs a full collection, with the
    parent's 200 000 objects frozen before the fork or not."""
    import os

    held = [Node() for _ in range(200_000)]  # what a worker parent holds: many long-lived objects
    gc.collect()
    if freeze:
        gc.freeze()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure its private memory around one full collection
        def private_kib() -> int:
            for line in open("/proc/self/smaps_rollup"):
                if line.startswith("Private_Dirty:"):
                    return int(line.split()[1])
            return 0

        before = private_kib()
        gc.collect()
        os.write(write, str(private_kib() - before).encode())
        os._exit(0)
    os.close(write)
    try:
        copied = int(os.read(read, 64))
    finally:
        os.close(read)
        os.waitpid(pid, 0)
        gc.unfreeze()
    assert len(held) == 200_000
    return copied


def test_a_frozen_parents_objects_stay_shared_with_a_forked_child_that_collects() -> None:
    """Why the worker parent freezes before its pool forks (workers/bootstrap.py): a child's full collection
    writes to every tracked object's header, and so copies every page the parent's objects sit on."""
    unfrozen = _child_copies_after_a_collection(freeze=False)
    frozen = _child_copies_after_a_collection(freeze=True)
    assert unfrozen > 4 * 1024  # 200 000 objects: several MiB copied
    assert frozen < unfrozen / 4
