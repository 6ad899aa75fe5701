"""bench/turn.py: a bulk turn of (b) taken apart from its jobs' claim and ending times and the client's marks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bench.turn import breakdown, epoch, uncovered

T0 = datetime(2026, 12, 7, 13, 0, 0, tzinfo=UTC)


def stamp(seconds: float) -> str:
    """T0 + seconds, written as the API writes it (ISO 8601, microseconds, `Z`)."""
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def job(started: float, finished: float, batch_size: int) -> dict[str, Any]:
    return {"started_at": stamp(started), "finished_at": stamp(finished),
            "timings": {"queue_ms": 1.0, "inference_ms": 2.0, "total_ms": 3.0, "batch_size": batch_size}}


def test_epoch_reads_the_apis_utc_timestamps_to_the_microsecond() -> None:
    assert epoch(stamp(1.234567)) - T0.timestamp() == pytest.approx(1.234567, abs=1e-6)


@pytest.mark.parametrize(("spans", "expected"), [
    ([(0.0, 1.0), (1.5, 2.0)], 0.5),
    ([(1.5, 2.0), (0.0, 1.0), (3.0, 4.0)], 1.5),  # in any order
    ([(0.0, 3.0), (1.0, 2.0), (2.5, 4.0)], 0.0),  # nested and overlapping spans leave nothing uncovered
    ([(0.0, 1.0), (1.0, 2.0)], 0.0),  # touching
    ([(0.0, 1.0)], 0.0),
])
def test_uncovered_is_the_time_no_span_covers_between_the_first_start_and_the_last_end(
        spans: list[tuple[float, float]], expected: float) -> None:
    assert uncovered(spans) == pytest.approx(expected)


def test_breakdown_splits_a_turn_into_submits_the_runs_gaps_and_the_collection() -> None:
    # Two batches of two: claimed at 0.010 and 0.305, each ended one job after the other; the client opened the
    # batch at 0, had every submit answered at 0.2 and read the last page at 0.620.
    jobs = [job(0.010, 0.300, 2), job(0.010, 0.301, 2), job(0.305, 0.600, 2), job(0.305, 0.601, 2)]
    marks = {"opened": T0.timestamp(), "submitted": T0.timestamp() + 0.2, "listed": T0.timestamp() + 0.620}

    parts = breakdown(jobs, marks)

    assert parts == pytest.approx({"turn": 0.620, "submits": 0.2, "first_claim": 0.010, "run": 0.591,
                                   "between": 0.004, "after_last": 0.019, "batch": 2.0}, abs=1e-6)


def test_breakdown_reports_the_mean_batch_size_per_job() -> None:
    jobs = [job(0.0, 0.1, 3), job(0.0, 0.1, 3), job(0.0, 0.1, 3), job(0.2, 0.3, 1)]
    marks = {"opened": T0.timestamp(), "submitted": T0.timestamp(), "listed": T0.timestamp() + 0.3}

    parts = breakdown(jobs, marks)

    assert parts["batch"] == pytest.approx(2.5)
    assert parts["between"] == pytest.approx(0.1, abs=1e-6)
