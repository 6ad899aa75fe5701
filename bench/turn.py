"""Where one bulk turn of (b) spent its time, read from its jobs as the API reports them.

Each job's `started_at` (its claim) and `finished_at` (its ending written) are the worker's clock, and the client's
marks (the batch opened, every submit answered, the last page read) the client's: one machine, one wall clock.
Within a batch its jobs' spans overlap (claimed together, ended one after another), so the time inside the run that
no job's span covers is the time no batch was running: between batches (the next claim) and waiting for the queue.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any


def epoch(stamp: str) -> float:
    """Seconds since the epoch of an ISO 8601 timestamp as the API writes it (`Z` for UTC)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def uncovered(spans: Iterable[tuple[float, float]]) -> float:
    """The time between the first start and the last end that none of the (start, end) spans covers."""
    gaps, reached = 0.0, None
    for start, end in sorted(spans):
        if reached is not None and start > reached:
            gaps += start - reached
        reached = end if reached is None else max(reached, end)
    return gaps


def breakdown(jobs: list[dict[str, Any]], marks: dict[str, float]) -> dict[str, float]:
    """A turn's parts in seconds: `turn` (opened to the last page read), `submits` (opened to the last submit
    answered), `first_claim` (opened to the first job claimed), `between` (inside the run, no job running),
    `run` (first claim to last ending), `after_last` (the last ending to the last page read); and `batch`, the mean
    batch size over the jobs."""
    spans = [(epoch(job["started_at"]), epoch(job["finished_at"])) for job in jobs]
    first, last = min(start for start, _ in spans), max(end for _, end in spans)
    sizes = [job["timings"]["batch_size"] for job in jobs]
    return {
        "turn": marks["listed"] - marks["opened"],
        "submits": marks["submitted"] - marks["opened"],
        "first_claim": first - marks["opened"],
        "run": last - first,
        "between": uncovered(spans),
        "after_last": marks["listed"] - last,
        "batch": sum(sizes) / len(sizes),
    }
