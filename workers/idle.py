"""A pool process that has sat idle gives back the memory its batches freed.

workers/malloc.py keeps the memory a batch frees (up to 256 MiB: about one batch's activations) so that the
next batch reuses it without a page fault per page. While jobs keep coming that is what makes batches fast;
once they stop, a process would hold it until the next job, however long that is: measured on resnet50 (one
batch of 8 at 224×224, two threads) a process held 939 MiB after its batches and 790 MiB once trimmed, and on
resnet152 the pool processes' private memory went from 48-146 MiB at start to 176-382 MiB after serving.

Here a thread in each pool process trims the heap (`malloc_trim`) once no job has run for INFERQ_IDLE_TRIM_S
seconds (default 10; 0 never trims), once per idle spell: the next job's first batch faults its activations
back in, the ones after it reuse them again. On resnet50 (a batch of 8, two threads) the trim took 8 ms and the
batch after it 442 ms against 407 (medians of six), a cost paid once after each idle spell.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from workers.malloc import trim_heap

logger = logging.getLogger("inferq.worker")


class IdleTrim:
    """Counts the jobs running in this process; `check()` trims once they have all been over for `idle_s`."""

    def __init__(self, idle_s: float, *, trim: Callable[[], bool] = trim_heap,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s, self._trim, self._clock = idle_s, trim, clock
        self._lock = threading.Lock()
        self._running = 0
        self._last_end = clock()
        self._used = False  # a job ran since the last trim
        self.trims = 0

    @contextmanager
    def job(self) -> Iterator[None]:
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._worked()

    def loaded(self) -> None:
        """The process has just loaded its models: what loading and warming them freed is given back too, once
        the process has been idle for idle_s from now (a worker started and left idle still trims once)."""
        with self._lock:
            self._worked()

    def _worked(self) -> None:
        """Work just ended: the idle time counts from now, and there is memory to give back (the lock held)."""
        self._last_end = self._clock()
        self._used = True

    def check(self) -> bool:
        """Trim if jobs ran and none has for idle_s seconds (then not again until another job has run)."""
        if self.idle_s <= 0:
            return False
        with self._lock:
            if not self._used or self._running or self._clock() - self._last_end < self.idle_s:
                return False
            self._used = False
        # Outside the lock: a job starting meanwhile only waits for the allocator's own lock.
        released = self._trim()
        self.trims += 1
        logger.debug("idle for %.0f s: heap trimmed (memory given back: %s)", self.idle_s, released)
        return True

    def start(self) -> None:
        """Check from a daemon thread, a few times per idle_s (at most once a second). Call once the process has
        loaded its models."""
        if self.idle_s <= 0:
            return
        self.loaded()
        interval = min(1.0, self.idle_s / 4)

        def watch() -> None:
            wake = threading.Event()
            while True:
                wake.wait(interval)
                try:
                    self.check()
                except Exception as exc:  # noqa: BLE001 - memory housekeeping must never kill the process
                    logger.warning("idle heap trim failed: %s", exc)

        threading.Thread(target=watch, name="inferq-idle-trim", daemon=True).start()


# This process's: runner.run_job counts its jobs here; the bootstrap starts its thread in each pool process.
tracker = IdleTrim(0.0)


def start(idle_s: float) -> None:
    """Trim this process's heap after idle_s seconds without a job (call in a pool process, after fork, once it
    has loaded its models)."""
    tracker.idle_s = idle_s
    tracker.start()
