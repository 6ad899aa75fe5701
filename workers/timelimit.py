"""A job's time limits where Celery's pool does not enforce them: the solo pool (`-P solo`), which runs each task
in the worker's own process.

Under prefork (the default) the pool enforces `task_soft_time_limit` and `task_time_limit` (per model: the
manifest's `timeout_s`, api/services.py): at the soft limit its process raises SoftTimeLimitExceeded inside
the task, and the runner fails the batch's jobs with `timeout`; at the hard limit the pool's master kills the
process. The solo pool enforces neither, and says nothing: a model that hung would hold the worker forever.
So, when a task runs in the worker's own process (its main thread), `enforced` does the same itself:

- the soft limit is a SIGALRM whose handler raises SoftTimeLimitExceeded where the task is, as prefork's
  SIGUSR1 does;
- the hard limit, reached only when the task did not come back from the soft one (a model stuck in native
  code never returns to Python to see the exception), ends the process, as prefork's master ends its child.
  Its supervisor starts it again; the job's lease runs out and it is claimed again, and a job that keeps
  doing this fails with `worker_lost` (api/services.py).

Why run solo at all: the hop from Celery's consumer to a pool process and back is a good part of a small
model's round trip: `make bench-pools` (one client on digits, prefork and solo side by side) put solo's p50
0.5-1.1 ms lower, in eight or nine turns of ten (README, *Processes × threads*). What it gives up is the pool's master:
a model that crashes its process takes the whole worker down instead of one pool process the master
replaces, and the consumer answers Flower and `celery inspect` only between tasks. Prefork stays the default.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

logger = logging.getLogger("inferq.worker")

# The worker's own process (workers/bootstrap.py notes it before the pool starts); a prefork pool process is
# another, which its pool's master watches.
_worker = {"pid": 0}
# The hard limit's way out: no clean-up (the process is stuck by definition), the exit status says why.
EXIT_STATUS = 70


def note_worker_process() -> None:
    _worker["pid"] = os.getpid()


def runs_inline() -> bool:
    """Whether this task runs in the worker's own process and main thread (the solo pool)."""
    return os.getpid() == _worker["pid"] and threading.current_thread() is threading.main_thread()


def limits(request_limits: Any, conf: Any) -> tuple[float | None, float | None]:
    """(hard, soft) seconds: the message's own (`timelimit`), else the worker's configuration."""
    hard, soft = [*(request_limits or ()), None, None][:2]
    hard, soft = hard or conf.task_time_limit, soft or conf.task_soft_time_limit
    return (float(hard) if hard else None, float(soft) if soft else None)


def _exit_process(seconds: float) -> None:
    logger.critical("a job ran past its hard time limit (%.0f s) and did not stop at the soft one: "
                    "ending the worker process (its supervisor starts it again; the job is claimed again)",
                    seconds)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_STATUS)


@contextmanager
def enforced(hard: float | None, soft: float | None, *,
             on_hard: Callable[[float], None] = _exit_process) -> Iterator[None]:
    """Enforce the limits on the block when it runs inline (see `runs_inline`); elsewhere the pool does."""
    if not runs_inline() or not (hard or soft):
        yield
        return
    timer = None
    if hard:
        timer = threading.Timer(hard, on_hard, args=(hard,))
        timer.daemon = True
        timer.start()
    previous = None
    if soft and (not hard or soft < hard):

        def expire(signum: int, frame: FrameType | None) -> None:
            raise SoftTimeLimitExceeded(f"soft time limit ({soft:g} s) exceeded")

        previous = signal.signal(signal.SIGALRM, expire)
        # An alarm someone else set (a test runner's timeout) is put back, less the time the block took.
        other, other_interval = signal.setitimer(signal.ITIMER_REAL, soft)
        armed = time.monotonic()
    try:
        yield
    finally:
        if previous is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if other:
                signal.setitimer(signal.ITIMER_REAL, max(0.001, other - (time.monotonic() - armed)), other_interval)
        if timer is not None:
            timer.cancel()
