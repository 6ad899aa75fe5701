"""Time limits the task enforces itself where the pool does not: inline, in the worker's own process (solo)."""

from __future__ import annotations

import signal
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from workers import timelimit


@pytest.fixture
def inline(monkeypatch: Any) -> None:
    """This test process stands for the worker's own process, as under the solo pool."""
    monkeypatch.setattr(timelimit, "_worker", {"pid": 0})
    timelimit.note_worker_process()


@pytest.fixture
def pool_process(monkeypatch: Any) -> None:
    """The worker's own process is another one: this is one of prefork's pool processes."""
    monkeypatch.setattr(timelimit, "_worker", {"pid": 1})


def hold(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.01)


def alarm_left() -> float:
    return signal.getitimer(signal.ITIMER_REAL)[0]


@pytest.mark.parametrize("other_alarm", [0.0, 120.0])  # none set, or one set by someone else (pytest-timeout)
def test_inline_the_soft_limit_raises_in_the_task_and_is_disarmed_after(inline: None, other_alarm: float) -> None:
    before_handler = signal.getsignal(signal.SIGALRM)
    saved = signal.setitimer(signal.ITIMER_REAL, other_alarm)
    try:
        with pytest.raises(SoftTimeLimitExceeded), timelimit.enforced(None, 0.2):
            hold(5)
        # The other alarm is back, less the time the block took; none is left where there was none.
        assert other_alarm - 1 < alarm_left() <= other_alarm
        assert signal.getsignal(signal.SIGALRM) is before_handler
        # A block that ends in time leaves its own alarm off too: nothing fires later.
        with timelimit.enforced(None, 0.3):
            hold(0.05)
        hold(0.4)
        assert other_alarm - 2 < alarm_left() <= other_alarm
    finally:
        signal.setitimer(signal.ITIMER_REAL, *saved)


def test_inline_the_hard_limit_ends_the_process_only_when_the_block_overruns_it(inline: None) -> None:
    ended: list[float] = []

    with timelimit.enforced(0.5, None, on_hard=ended.append):
        hold(0.05)
    hold(0.7)
    assert ended == []

    with timelimit.enforced(0.2, None, on_hard=ended.append):
        hold(0.6)  # stuck where no soft limit reaches it
    assert ended == [0.2]


def test_in_a_prefork_pool_process_the_pool_enforces_them(pool_process: None) -> None:
    ended: list[float] = []

    before = alarm_left()
    with timelimit.enforced(0.2, 0.1, on_hard=ended.append):
        assert alarm_left() == pytest.approx(before, abs=0.05)  # no alarm of its own
        hold(0.3)

    assert ended == []


def test_outside_the_main_thread_nothing_is_armed(inline: None) -> None:
    seen: list[Any] = []

    def task() -> None:
        with timelimit.enforced(None, 0.1):
            seen.append(timelimit.runs_inline())
            hold(0.2)
        seen.append("ended")

    thread = threading.Thread(target=task)
    thread.start()
    thread.join()

    assert seen == [False, "ended"]
    assert timelimit.runs_inline()  # the main thread of the same process is inline


def test_the_message_limits_win_over_the_workers_configuration() -> None:
    conf = SimpleNamespace(task_time_limit=330, task_soft_time_limit=300)

    assert timelimit.limits((15.0, 5.0), conf) == (15.0, 5.0)
    assert timelimit.limits((None, None), conf) == (330.0, 300.0)
    assert timelimit.limits(None, conf) == (330.0, 300.0)
    assert timelimit.limits(None, SimpleNamespace(task_time_limit=None, task_soft_time_limit=None)) == (None, None)
