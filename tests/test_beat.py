"""Beat's scheduler survives a schedule file that a kill cut short, so the sweeper keeps running."""

from __future__ import annotations

import dbm.dumb
import shelve
from pathlib import Path

import pytest
from celery.beat import PersistentScheduler

from project.celery import app
from tasks.beat import RecoveringScheduler


@pytest.fixture
def truncated_schedule(tmp_path: Path) -> str:
    """A schedule whose stored entries end mid-pickle, as a kill during a write leaves them."""
    filename = str(tmp_path / "celerybeat-schedule")
    with shelve.Shelf(dbm.dumb.open(filename, "c")) as store:  # the format Celery's file ends up in here
        store["entries"] = {"some-entry": "x" * 1000}
    data = next(tmp_path.glob("celerybeat-schedule*.dat"))
    data.write_bytes(b"")  # the index survives, the data it points at does not
    return filename


def test_celerys_own_scheduler_would_not_start(truncated_schedule: str) -> None:
    with pytest.raises(EOFError):
        PersistentScheduler(app=app, schedule_filename=truncated_schedule, lazy=False)


def test_the_recovering_scheduler_starts_afresh_with_the_sweeper(truncated_schedule: str) -> None:
    scheduler = RecoveringScheduler(app=app, schedule_filename=truncated_schedule, lazy=False)

    assert "sweep-orphaned-jobs" in scheduler.schedule
    assert scheduler.schedule["sweep-orphaned-jobs"].task == "inferq.sweep"
    scheduler.close()


def test_beat_uses_the_recovering_scheduler() -> None:
    assert app.conf.beat_scheduler == "tasks.beat:RecoveringScheduler"
