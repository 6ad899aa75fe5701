"""workers/idle.py: a pool process gives back the memory its batches freed once jobs stop coming."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from workers import idle, runner
from workers.idle import IdleTrim

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def trimmer() -> tuple[IdleTrim, Clock, list[int]]:
    clock, trims = Clock(), []
    return IdleTrim(10.0, trim=lambda: trims.append(1) or True, clock=clock), clock, trims


def test_trims_once_after_the_idle_time_and_again_only_after_another_job(trimmer: Any) -> None:
    trim, clock, trims = trimmer
    assert not trim.check()  # nothing ran yet: nothing to give back
    with trim.job():
        clock.now += 3
    clock.now += 9.9
    assert not trim.check() and trims == []
    clock.now += 0.1
    assert trim.check() and trims == [1]
    clock.now += 60
    assert not trim.check() and trims == [1]  # once per idle spell
    with trim.job():
        pass
    clock.now += 10
    assert trim.check() and trims == [1, 1]


def test_never_trims_while_a_job_runs(trimmer: Any) -> None:
    trim, clock, trims = trimmer
    with trim.job():
        pass
    with trim.job():
        clock.now += 60
        assert not trim.check()
    assert not trim.check()  # the idle time counts from the last job's end
    clock.now += 10
    assert trim.check() and trims == [1]


def test_a_process_that_loaded_its_models_trims_once_idle_without_a_job(trimmer: Any) -> None:
    trim, clock, trims = trimmer
    clock.now += 60
    trim.loaded()  # the idle time counts from the end of the loading
    clock.now += 9
    assert not trim.check()
    clock.now += 1
    assert trim.check() and trims == [1]
    clock.now += 60
    assert not trim.check() and trims == [1]


def test_zero_never_trims(trimmer: Any) -> None:
    _, clock, trims = trimmer
    off = IdleTrim(0, trim=lambda: trims.append(1) or True, clock=clock)
    with off.job():
        pass
    clock.now += 3600
    assert not off.check() and trims == []


def test_run_job_counts_as_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    clock, trims = Clock(), []
    tracker = IdleTrim(5.0, trim=lambda: trims.append(1) or True, clock=clock)
    monkeypatch.setattr(idle, "tracker", tracker)
    seen: list[bool] = []

    def fake_run(job_id: str) -> list[str]:
        clock.now += 60  # a long batch: still no trim while it runs
        seen.append(tracker.check())
        return []

    monkeypatch.setattr(runner, "_run_job", fake_run)
    assert runner.run_job("job") == []
    assert seen == [False]
    clock.now += 5
    assert tracker.check() and trims == [1]


def test_a_failing_trim_does_not_stop_the_thread() -> None:
    failed, trimmed = threading.Event(), threading.Event()

    def trim() -> bool:
        if not failed.is_set():
            failed.set()
            raise OSError("boom")
        trimmed.set()
        return True

    trimmer = IdleTrim(0.04, trim=trim)
    trimmer.start()
    with trimmer.job():
        pass
    assert failed.wait(2)
    with trimmer.job():
        pass
    assert trimmed.wait(2)


# A process with the worker's allocator settings: 200 MiB of blocks of 1 MiB allocated, written and freed stay
# resident (the tuning keeps freed memory for the next batch); once the process has been idle, they are gone.
IDLE_PROCESS = """
import ctypes, sys, time
from workers.malloc import tune_malloc
from workers.idle import IdleTrim
assert tune_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

def rss_mib():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024

trimmer = IdleTrim(float(sys.argv[1]))
trimmer.start()
base = rss_mib()
with trimmer.job():
    blocks = [libc.malloc(1 << 20) for _ in range(200)]
    for block in blocks:
        libc.memset(block, 1, 1 << 20)
    for block in reversed(blocks):
        libc.free(block)
freed = rss_mib()
time.sleep(1.5)
print(base, freed, rss_mib(), trimmer.trims)
"""


def held_after_idle(idle_s: float) -> tuple[int, int, int, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("INFERQ_MALLOC_TUNING", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", IDLE_PROCESS, str(idle_s)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split()
    base, freed, later, trims = map(int, out)
    return base, freed, later, trims


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_an_idle_process_gives_the_freed_memory_back() -> None:
    base, freed, later, trims = held_after_idle(0.3)
    assert freed - base >= 150  # kept after the "batch", as workers/malloc.py intends
    assert trims >= 1  # (a slow start may have trimmed once before the "batch" too)
    assert later - base < 30  # given back once idle


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_without_the_idle_trim_the_memory_stays() -> None:
    base, freed, later, trims = held_after_idle(0)
    assert freed - base >= 150
    assert trims == 0
    assert later - base >= 150
