"""Bulk submission (`manage.py submit_bulk`): find the inputs, submit them, wait, write one result line each.

The run is the same in both modes; a submitter does the mode-specific part (in-process through
`api.services.job_create`, or remote over HTTP). Files are read and checked by a small thread
pool while the main thread records each submission; every job is written to the results file
as soon as it is queued, so an interrupted run is resumed without submitting anything twice.
"""

from __future__ import annotations

import glob
import hashlib
import mimetypes
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any, Protocol

from api.bulk_report import Progress, Summary
from api.bulk_results import Record, ResultsFile


class BulkError(Exception):
    """The run cannot start (bad paths, unknown model, refused token, unusable results file)."""


class BulkAbort(Exception):
    """The run cannot go on (the broker or the API stays unreachable); what is done so far is kept."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    top_k: int
    notice: str = ""  # a warning worth showing before the run (no worker serves the model, say)


class Submitter(Protocol):
    """The mode-specific half of a run. `load` runs in pool threads; the rest in the main thread."""

    def model_info(self) -> ModelInfo: ...

    def open_batch(self, *, batch_id: str, name: str) -> str: ...

    def load(self, path: str) -> Any: ...

    def commit(self, loaded: Any, *, stopping: bool) -> Record | None: ...

    def poll(self, pending: dict[str, str]) -> list[Record]: ...


def content_type_of(path: str) -> str:
    """By extension; the API then checks the bytes themselves (a PNG named .jpg is still a PNG)."""
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def idempotency_key(batch_id: str, path: str) -> str:
    """One key per (batch, input): a retried or resumed submission gets the job it already has."""
    return f"bulk:{batch_id}:{hashlib.sha256(path.encode()).hexdigest()[:40]}"


def _walk(root: str) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(folder, f) for f in sorted(files) if not f.startswith(".")]
    return found


def discover(patterns: list[str]) -> list[str]:
    """Absolute paths of every input: folders recursively (hidden entries skipped), globs, files."""
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.exists(m)]
        if not matches:
            raise BulkError(f"{pattern}: no such file or directory" if not glob.has_magic(pattern)
                            else f"{pattern}: matches nothing")
        for match in matches:
            found += _walk(match) if os.path.isdir(match) else [match]
    unique = dict.fromkeys(os.path.abspath(p) for p in found if not os.path.isdir(p))
    if not unique:
        raise BulkError("no input files found in " + " ".join(patterns))
    return list(unique)


@dataclass
class Plan:
    inputs: list[str]
    out: ResultsFile
    wait: bool = True
    limit: int | None = None
    concurrency: int = 8
    name: str = ""
    poll_interval: float = 0.5


class BulkRun:
    """One run: submit what is not yet in the results file, then collect results until all jobs end."""

    def __init__(self, plan: Plan, submitter: Submitter, *, stop: threading.Event,
                 progress: Callable[[int, int], Progress], say: Callable[[str], None] = lambda text: None) -> None:
        self.plan, self.submitter, self.stop, self.make_progress = plan, submitter, stop, progress
        self.say = say
        self.summary = Summary(inputs=len(plan.inputs), out=str(plan.out.path))
        self.final: dict[str, Record] = {}
        self.pending: dict[str, str] = {}  # job id -> path
        self.last_poll = 0.0
        self.handled = self.done_now = self.failed_now = 0

    def run(self) -> Summary:
        started = time.monotonic()
        plan, out = self.plan, self.plan.out
        wanted = set(plan.inputs)
        known = {path: rec for path, rec in out.read().items() if path in wanted}
        info = self.info = self.submitter.model_info()
        if info.notice:
            self.say(info.notice)
        batch_id = next((r.batch_id for r in reversed(known.values()) if r.batch_id), "")
        self.summary.batch_id = self.submitter.open_batch(batch_id=batch_id, name=plan.name)
        for path, rec in known.items():
            if rec.final:
                self.final[path] = rec
            elif rec.job_id:
                self.pending[rec.job_id] = path
        started_paths = set(self.final) | set(self.pending.values())
        todo = [p for p in plan.inputs if p not in started_paths]
        self.summary.skipped = len(plan.inputs) - len(todo)
        todo = todo[:plan.limit] if plan.limit is not None else todo
        out.open(info.top_k)
        self.progress = self.make_progress(len(todo), len(todo) + (len(self.pending) if plan.wait else 0))
        try:
            self._submit_all(todo)
            self.summary.submit_s = time.monotonic() - started
            while plan.wait and self.pending and not self.stop.is_set():
                self.stop.wait(max(0.0, self.last_poll + plan.poll_interval - time.monotonic()))
                if not self.stop.is_set():
                    self._poll()
        except BulkAbort as exc:
            self.summary.aborted = str(exc)
        finally:
            self.progress.close()
            out.close()
            out.compact()
        self.summary.wall_s = time.monotonic() - started
        self.summary.interrupted = self.stop.is_set() and not self.summary.aborted
        return self._summarize()

    def _submit_all(self, todo: list[str]) -> None:
        """Keep up to 2 x concurrency loads in flight; record each as it completes (no head-of-line wait)."""
        window: set[Future[Any]] = set()
        paths = iter(todo)
        abort: BulkAbort | None = None
        pool = ThreadPoolExecutor(max_workers=max(1, self.plan.concurrency), thread_name_prefix="bulk")
        try:
            while True:
                while not self.stop.is_set() and len(window) < 2 * self.plan.concurrency:
                    path = next(paths, None)
                    if path is None:
                        break
                    window.add(pool.submit(self.submitter.load, path))
                if not window:
                    break
                done, window = wait_futures(window, timeout=self.plan.poll_interval, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        # Once stopping, loads in flight are drained: what was submitted is still recorded.
                        record = self.submitter.commit(future.result(), stopping=self.stop.is_set())
                    except BulkAbort as exc:
                        abort = abort or exc
                        self.stop.set()
                        continue
                    if record is not None:
                        self._record(record, submitted=True)
                # While submitting, results are collected less often: the submissions come first.
                if self.plan.wait and time.monotonic() - self.last_poll >= max(2.0, self.plan.poll_interval):
                    self._poll()
        finally:
            if window:  # a second Ctrl-C lands here with loads in flight: cancel them rather than wait
                self.stop.set()
            pool.shutdown(wait=not window, cancel_futures=True)
        if abort is not None:
            raise abort

    def _record(self, record: Record, *, submitted: bool = False) -> None:
        record.batch_id = record.batch_id or self.summary.batch_id
        record.model = record.model or self.info.name
        record.version = record.version or self.info.version
        self.plan.out.write(record)
        if submitted:
            self.handled += 1
            self.summary.submitted += bool(record.job_id)
        if record.final:
            self.final[record.path] = record
            self.pending.pop(record.job_id, None)
            self.failed_now += record.status != "succeeded"
            self.done_now += record.status == "succeeded"
            if record.job_id:
                self.summary.finished_now += 1
                if record.total_ms is not None:
                    self.summary.latencies_ms.append(record.total_ms)
        elif record.job_id:
            self.pending[record.job_id] = record.path
        self.progress.update(submitted=self.handled, done=self.done_now, failed=self.failed_now)

    def _poll(self) -> None:
        self.last_poll = time.monotonic()
        if self.pending:
            for record in self.submitter.poll(dict(self.pending)):
                self._record(record)

    def _summarize(self) -> Summary:
        s = self.summary
        for record in self.final.values():
            if record.status == "succeeded":
                s.succeeded += 1
            else:
                s.failed += 1
                s.errors[record.error_code or record.status] += 1
        s.unfinished = len(self.pending)
        s.remaining = s.inputs - len(self.final) - s.unfinished
        return s
