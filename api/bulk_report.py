"""What `submit_bulk` tells its user: a live progress bar (or plain periodic lines) and the closing summary."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any


def _eta(seconds: float) -> str:
    if math.isinf(seconds) or math.isnan(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """tqdm on a terminal; elsewhere (a log, a CI job) a plain line every `every` seconds.

    The bar counts inputs that reached their end (done or failed), or, when not waiting,
    inputs submitted; `submitted` and `failed` ride along.
    """

    def __init__(self, stream: IO[str], *, total: int, wait: bool, to_submit: int | None = None, every: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.total = total
        self.to_submit = total if to_submit is None else to_submit
        self.wait = wait
        self.every = every
        self.clock = clock
        self.started = clock()
        self.last_line = self.started
        self.submitted = self.done = self.failed = 0
        self._bar: Any = None
        isatty = getattr(stream, "isatty", None)
        if callable(isatty) and isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=stream, unit="input", dynamic_ncols=True,
                             desc="done" if wait else "submitted", smoothing=0.1)

    @property
    def count(self) -> int:
        return self.done + self.failed if self.wait else self.submitted

    def update(self, *, submitted: int, done: int, failed: int) -> None:
        before = self.count
        self.submitted, self.done, self.failed = submitted, done, failed
        now = self.clock()
        if self._bar is not None:
            self._bar.set_postfix(submitted=submitted, failed=failed, refresh=False)
            if self.count != before:
                self._bar.update(self.count - before)
                self.last_line = now
            elif now - self.last_line >= 0.2:  # only the postfix moved (submitting): tqdm would not redraw
                self._bar.refresh()
                self.last_line = now
            return
        if now - self.last_line >= self.every:
            self.last_line = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.count / elapsed
        eta = (self.total - self.count) / rate if rate > 0 else math.inf
        of = f" of {self.total}" if self.wait and self.total != self.to_submit else ""
        return (f"submitted {self.submitted}/{self.to_submit}, done {self.done}, failed {self.failed}{of}, "
                f"{rate:.1f}/s, ETA {_eta(eta)}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Summary:
    """The outcome of one run, over every input it was given (earlier runs' results included)."""

    inputs: int = 0
    skipped: int = 0
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    unfinished: int = 0
    remaining: int = 0
    finished_now: int = 0
    wall_s: float = 0.0
    submit_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    aborted: str = ""
    batch_id: str = ""
    out: str = ""

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed or self.aborted else 0

    def lines(self) -> list[str]:
        p50, p95 = percentile(self.latencies_ms, 50), percentile(self.latencies_ms, 95)
        wall = max(self.wall_s, 1e-9)
        done_rate = (self.finished_now or self.submitted) / wall
        enqueue_rate = self.submitted / self.submit_s if self.submit_s > 0 else 0.0
        errors = ", ".join(f"{code} {n}" for code, n in self.errors.most_common())
        out = [
            f"inputs       {self.inputs}" + (f" ({self.skipped} submitted by an earlier run)" if self.skipped else ""),
            f"submitted    {self.submitted}",
            f"succeeded    {self.succeeded}",
            f"failed       {self.failed}" + (f" ({errors})" if errors else ""),
        ]
        if self.unfinished:
            out.append(f"unfinished   {self.unfinished} (queued or running; --resume collects them)")
        if self.remaining:
            out.append(f"not sent     {self.remaining} (--resume submits them)")
        out += [
            f"wall time    {self.wall_s:.1f} s",
            f"throughput   {done_rate:.1f} inputs/s"
            + (f" (enqueued at {enqueue_rate:.1f} inputs/s)" if self.submitted else ""),
            "latency      " + (f"p50 {p50:.0f} ms, p95 {p95:.0f} ms (job total_ms)"
                               if p50 is not None and p95 is not None else "n/a (no job finished in this run)"),
            f"results      {self.out}",
        ]
        if self.batch_id:
            out.append(f"batch        {self.batch_id}  (GET /v1/jobs?batch={self.batch_id})")
        return out
