"""workers/malloc.py: memory a batch frees stays in the process for the next one, instead of being faulted back in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Rounds of what a forward pass does to the allocator: blocks of a few MiB allocated, written and freed. The
# first round is the same either way (fresh pages); what the later rounds fault in is what was given back.
ROUNDS = """
import ctypes, resource, sys
from workers.malloc import tune_malloc
print("tuned" if tune_malloc() else "untouched")
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
SIZE = 2 << 20

def one_round():
    blocks = [libc.malloc(SIZE) for _ in range(int(sys.argv[2]))]
    for block in blocks:
        libc.memset(block, 1, SIZE)
    for block in reversed(blocks):
        libc.free(block)

def later_rounds_faults():
    one_round()
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(5):
        one_round()
    found.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

found = []
if sys.argv[1] == "thread":
    import threading
    worker = threading.Thread(target=later_rounds_faults)
    worker.start()
    worker.join()
else:
    later_rounds_faults()
print(found[0])
"""
BLOCKS = 16
PAGES_PER_ROUND = BLOCKS * (2 << 20) // os.sysconf("SC_PAGE_SIZE")


def faults_after_the_first_round(*, where: str = "main", blocks: int = BLOCKS, **env: str) -> tuple[str, int]:
    """Run the rounds in the main thread or in a thread of their own; (tuned or not, faults after round one)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("INFERQ_MALLOC_TUNING", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", ROUNDS, where, str(blocks)], cwd=ROOT, env={**clean, **env},
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    return out[0], int(out[1])


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")


def test_tuned_a_process_keeps_what_it_freed_for_the_next_round() -> None:
    state, faults = faults_after_the_first_round()
    assert state == "tuned"
    assert faults < PAGES_PER_ROUND // 4  # five rounds reuse the first one's pages


def test_a_thread_that_runs_a_batch_keeps_what_it_freed_too() -> None:
    # A stream's batch of activations outgrows one thread heap (64 MiB): with an arena per thread, glibc unmaps
    # the heaps a round leaves free, whatever the trim threshold, and the next round faults them in again.
    blocks = 3 * BLOCKS  # 96 MiB
    state, faults = faults_after_the_first_round(where="thread", blocks=blocks)
    assert state == "tuned"
    assert faults < blocks * PAGES_PER_ROUND // BLOCKS // 4


def test_the_thresholds_alone_left_a_threads_heaps_to_be_unmapped() -> None:
    # What the one arena adds: the same thresholds as an operator's tunables, each thread in its own arena.
    blocks = 3 * BLOCKS
    tunables = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456"
    state, faults = faults_after_the_first_round(where="thread", blocks=blocks, GLIBC_TUNABLES=tunables)
    assert state == "untouched"
    assert faults > blocks * PAGES_PER_ROUND // BLOCKS  # more than a whole round's pages over five rounds


def test_glibcs_defaults_give_it_back_and_fault_it_in_again_every_round() -> None:
    state, faults = faults_after_the_first_round(INFERQ_MALLOC_TUNING="0")
    assert state == "untouched"
    assert faults > 4 * PAGES_PER_ROUND  # what the tuning saves


def test_an_operators_own_glibc_tunables_win() -> None:
    state, faults = faults_after_the_first_round(GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert state == "untouched"
    assert faults > 4 * PAGES_PER_ROUND


def test_the_worker_tunes_its_parent_before_forking_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import bootstrap

    calls: list[str] = []
    monkeypatch.setattr(bootstrap, "tune_malloc", lambda: calls.append("tuned") or True)
    monkeypatch.setattr(bootstrap, "threads_per_process", lambda n: calls.append("sized") or 1)
    monkeypatch.setattr(bootstrap, "served_models", lambda store, consumed: [])

    class App:
        class amqp:  # noqa: N801 - Celery's attribute name
            class queues:  # noqa: N801
                consume_from: dict[str, object] = {}

    class Sender:
        app = App
        hostname = "w@test"
        concurrency = 1
        pool_cls = "prefork"

    # What the signal handler changes in this process, put back after the test.
    from workers import timelimit

    monkeypatch.setattr(timelimit, "_worker", {"pid": 0})
    monkeypatch.setattr(bootstrap, "_layout", {"auto": False})
    monkeypatch.setattr(bootstrap, "_served", [])
    monkeypatch.setattr(bootstrap, "_worker", dict(bootstrap._worker))
    monkeypatch.setattr(bootstrap, "_threads", dict(bootstrap._threads))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, os.environ.get(var, "1"))
    bootstrap.on_worker_init(sender=Sender())
    assert calls[:2] == ["tuned", "sized"]
