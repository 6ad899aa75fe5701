"""Run one job in a worker process: claim the row, read the input, run the handler, write the result."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from typing import Any

import torch
from celery import current_app
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections, router, transaction

from api.events import job_events_together
from api.models import Job
from api.selectors import jobs_queued
from api.services import job_claim_queued, job_fail, job_input_read, job_start, job_succeed
from workers import idle, lease, registry
from workers.handlers import InputError, Outcome
from workers.store import ModelSpec, get_store

logger = logging.getLogger("inferq.worker")

# served: the models this worker serves (workers/bootstrap.py), which a backlog run makes way for.
_state: dict[str, Any] = {"device": None, "hostname": socket.gethostname(), "served": ()}
# The most jobs one message runs, its own batch and the backlog's together: their ids go back in the task's
# result, twice at most (run and taken off the queue), which the worker's consumer reads from its repr
# (tasks/inference.py's RESULT_REPR_CHARS: about 1600 ids in all).
MAX_RUN_JOBS = 512


def configure(*, device: torch.device, hostname: str, served: Iterable[str] = ()) -> None:
    _state["device"] = device
    _state["hostname"] = hostname
    _state["served"] = tuple(served)


def device() -> torch.device:
    if _state["device"] is None:
        from workers.loading import default_device

        _state["device"] = default_device()
    return _state["device"]


def run_job(job_id: str) -> list[str]:
    """Claim the message's job, gather a batch of queued jobs of the same model, run them together; after a full
    batch, go on with the model's backlog for a while (`run_backlog`).

    Everything that can go wrong with one job ends as that job's error, never the worker's. Returns the ids
    of the other jobs whose ending it wrote, whose own messages then have nothing left to do.
    """
    with idle.tracker.job():  # the process trims its heap once jobs stop for a while (workers/idle.py)
        return _run_job(job_id)


def _run_job(job_id: str) -> list[str]:
    worker = _state["hostname"]
    # Connections are kept between jobs (celeryconfig's CELERY_DB_REUSE_MAX); drop one that broke or aged out.
    close_old_connections()
    job = job_start(job_id=job_id, worker=worker)
    if job is None:
        logger.debug("job skipped (ended, canceled, or held by another worker)", extra={"job_id": job_id})
        return []
    started = time.monotonic()
    jobs = [job]
    # A job retried after its worker died runs alone: if its input is what kills workers,
    # it must not take innocent batch mates down with it again.
    spec = batching_spec(job) if job.attempts == 1 and settings.INFERQ_BATCHING else None
    with lease.holding([job.id]):
        if spec is not None:
            jobs += gather_batch(job, worker, spec)
        with lease.holding([j.id for j in jobs]):
            ended = run_claimed(jobs)
    # Only mates whose ending this run wrote: one whose lease ran out meanwhile has a new message to run.
    mates = [str(j.id) for j in jobs[1:] if str(j.id) in ended]
    if spec is not None:
        mates += run_backlog(job, worker, spec, first_batch=len(jobs), started=started)
    return mates


def batching_spec(job: Job) -> ModelSpec | None:
    """The manifest that sizes the job's batch and backlog run, looked up once per message; None without one."""
    try:
        return get_store().get(job.model_name, job.model_version)
    except Exception:  # noqa: BLE001 - the runner reports a missing model on the job itself
        return None


def backlog_budget_s(spec: ModelSpec) -> float:
    """How long one message may go on running its model's backlog: INFERQ_BACKLOG_RUN_S, and at most a quarter
    of the message's soft time limit (the manifest's `timeout_s`, else the worker's), which covers the whole run."""
    limit = spec.timeout_s or current_app.conf.task_soft_time_limit
    budget = float(settings.INFERQ_BACKLOG_RUN_S)
    return min(budget, float(limit) / 4) if limit else budget


def run_backlog(job: Job, worker: str, spec: ModelSpec, *, first_batch: int, started: float) -> list[str]:
    """After a full batch, go on with the model's queued backlog, a batch at a time, under the same message.

    Each batch is claimed, run and written as the first was; the run stops at a batch that comes short (the
    backlog is gone), before a batch that would take it past `backlog_budget_s` or past MAX_RUN_JOBS (their
    ids go back in the task's result), and as soon as another model this worker serves has a job queued: the
    task then goes back to Celery, whose queues take turns, so that job waits for one batch, not for the
    backlog. Between two batches the process spends one claim (and, serving several models, one indexed
    look) instead of handing the task back and waiting for the next message: with resnet50 on 2 cores that
    hand-off was 2-3 ms of an 8-image batch's 175 (docs/benchmarks.md). Returns the ids of the jobs whose
    ending it wrote.
    """
    size = spec.batch_size
    if size <= 1 or first_batch < size:
        return []
    budget = backlog_budget_s(spec)
    others = [name for name in _state["served"] if name != job.model_name]
    ran: list[str] = []
    last = time.monotonic() - started  # the first batch's time: the next one should take about as long
    while time.monotonic() - started + last <= budget and len(ran) + first_batch + size <= MAX_RUN_JOBS:
        if others and jobs_queued(model_names=others):
            break
        batch_started = time.monotonic()
        jobs = job_claim_queued(model_name=job.model_name, model_version=job.model_version, worker=worker,
                                limit=size)
        if not jobs:
            break
        with lease.holding([j.id for j in jobs]):
            ended = run_claimed(jobs)
        ran += [str(j.id) for j in jobs if str(j.id) in ended]
        if len(jobs) < size:
            break
        last = time.monotonic() - batch_started
    return ran


def gather_batch(job: Job, worker: str, spec: ModelSpec) -> list[Job]:
    """More queued jobs for this model version, up to batch_size - 1.

    Takes what is queued now; only when that shows other jobs are arriving does it wait (at most
    batch_delay_ms) for the batch to fill, so a lone job never pays the delay.
    """
    wanted = spec.batch_size - 1
    if wanted <= 0 or job.others_queued is False:
        return []  # nobody else was queued for this model when the job was claimed: no need to look
    deadline = time.monotonic() + spec.batch_delay_ms / 1000.0
    extra: list[Job] = []
    while wanted > len(extra):
        extra += job_claim_queued(model_name=job.model_name, model_version=job.model_version, worker=worker,
                                  limit=wanted - len(extra))
        remaining = deadline - time.monotonic()
        if not extra or remaining <= 0 or len(extra) >= wanted:
            break
        time.sleep(min(0.001, remaining))
    return extra


def run_claimed(jobs: list[Job]) -> set[str]:
    """Run claimed jobs of one model version as one batch; each gets its own outcome. Returns the ids of the
    jobs whose ending this run wrote (one whose lease was lost meanwhile may have been queued again)."""
    model_name, model_version = jobs[0].model_name, jobs[0].model_version
    ended: set[str] = set()

    def fail(job: Job, code: str, message: str, inference_ms: float | None = None) -> None:
        if job_fail(job=job, code=code, message=message, inference_ms=inference_ms):
            ended.add(str(job.id))

    inputs: list[tuple[bytes, str] | None] = []
    for job in jobs:
        try:
            inputs.append((job_input_read(job), job.input_content_type))
        except (OSError, ValueError) as exc:
            fail(job, "input_missing", f"The job's stored input cannot be read: {exc}")
            inputs.append(None)
    ready = [(job, item) for job, item in zip(jobs, inputs, strict=True) if item is not None]
    if not ready:
        return ended
    handler = None
    try:
        handler = registry.get(get_store(), model_name, model_version, device())
        outcomes = handler.run_batch([item for _, item in ready])
    except SoftTimeLimitExceeded:
        for job, _ in ready:
            fail(job, "timeout", "The job ran past its model's time limit.")
        if handler is not None:
            handler.settle()  # the jobs have their answer; the next job must not find this batch's threads busy
        return ended
    except Exception:  # noqa: BLE001 - a model bug must fail the job, not kill the worker
        logger.exception("model %s:%s raised", model_name, model_version)
        outcomes = [Outcome(error=InputError("The model failed on this input.", code="inference_error"))
                    for _ in ready]
    with job_events_together():  # their announcements go out together, once the endings are committed
        ended |= write_endings([job for job, _ in ready], outcomes)
    if handler is not None:
        handler.settle()  # after a stream raised, the others may still be running
    return ended


def _write_each(jobs: list[Job], outcomes: list[Outcome]) -> set[str]:
    ended: set[str] = set()
    for job, outcome in zip(jobs, outcomes, strict=True):
        if outcome.error is not None:
            done = job_fail(job=job, code=outcome.error.code, message=outcome.error.message,
                            inference_ms=outcome.inference_ms or None)
        else:
            done = job_succeed(job=job, result=outcome.result, inference_ms=outcome.inference_ms,
                               batch_size=outcome.batch_size)
        if done:
            ended.add(str(job.id))
    return ended


def commits_flush() -> bool:
    """Whether a commit of the jobs' database waits for its log to reach the disk (not SQLite's WAL here)."""
    return connections[router.db_for_write(Job)].vendor != "sqlite"


def write_endings(jobs: list[Job], outcomes: list[Outcome]) -> set[str]:
    """Write each job's ending, its result or its error; the ids of the jobs whose ending this wrote.

    Where a commit flushes the database's log to disk (PostgreSQL), a batch's endings are written in one
    transaction: one flush for the batch instead of one per job (on the 2-core host's PostgreSQL, a batch of 8
    ended in 3.9-6.1 ms against 6.1-9.2, a batch of 32 in 12.8 against 23-24). Should the database refuse any of
    them, that transaction is rolled back and the endings are written one by one, so that each one that can be
    written is, as before. On SQLite each ending stays a statement of its own: in WAL mode a commit flushes
    nothing (the batch of 8: 1.0 ms either way), and a transaction would hold the one write lock, which the web
    tier's INSERTs queue for, across the Python between the statements (project/sqlite/base.py).
    """
    if not commits_flush():
        return _write_each(jobs, outcomes)
    try:
        with transaction.atomic():
            return _write_each(jobs, outcomes)
    except DatabaseError as exc:
        logger.warning("a batch's endings could not be written together (%s); writing them one by one", exc)
        return _write_each(jobs, outcomes)
