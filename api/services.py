"""Business logic between the API and the queue: create, enqueue, start, finish and cancel jobs."""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.db import IntegrityError, router, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from api.cache import cached_job_announce, cached_job_new, cached_result_find, job_create_cached
from api.events import job_event_publish_on_commit
from api.exceptions import Conflict, InvalidInput, NotFound, Overloaded, ServiceUnavailable
from api.inputs import ModelInput
from api.models import ACTIVE_STATUSES, Batch, Job, JobStatus
from api.prepared import PreparedGet, PreparedUpdateReturning, insert_row, insert_rows, new_instance, update_where
from api.retention import input_file_delete
from api.selectors import job_with_input_by_id
from tasks.inference import TASK_NAME
from workers.store import ModelSpec, StoreError, get_store

logger = logging.getLogger("inferq.jobs")


def model_spec_get(*, name: str, version: str | None = None) -> ModelSpec:
    try:
        return get_store().get(name, version)
    except StoreError as exc:
        raise NotFound(str(exc).capitalize() + ".", code="unknown_model") from exc


def _spec_or_none(job: Job) -> ModelSpec | None:
    try:
        return get_store().get(job.model_name, job.model_version)
    except StoreError:
        return None


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000.0, 3)


def job_enqueue(*, job: Job, spec: ModelSpec | None = None) -> None:
    """Publish the job's message (only its id) to its model's queue; raise 503 if the broker is down.

    Callers stamp `enqueued_at` in the write that precedes this (no second write after publishing:
    on SQLite it would contend with the worker already claiming the job).
    """
    jobs_enqueue(jobs=[job], spec=spec)


def jobs_enqueue(*, jobs: list[Job], spec: ModelSpec | None = None) -> None:
    """`job_enqueue` for jobs of one model, in order, in one push to the broker (all or none on Redis)."""
    from api.publish import task_publish_many
    from project.celery import app

    if not jobs:
        return
    model = jobs[0].model_name
    limits: dict[str, float] = {}
    if spec is not None and spec.timeout_s:
        # The model's own time limit: soft fails the job with `timeout`, hard recycles the process.
        limits = {"soft_time_limit": float(spec.timeout_s), "time_limit": float(spec.timeout_s) + 10.0}
    try:
        task_publish_many(app, name=TASK_NAME, tasks=[(str(job.id), {"job_id": str(job.id), "model": model})
                                                      for job in jobs],
                          queue=f"inferq.model.{model}", **limits)
    except (KombuOperationalError, RedisError, OSError) as exc:
        logger.error("broker unavailable while enqueueing %s: %s",
                     f"job {jobs[0].id}" if len(jobs) == 1 else f"{len(jobs)} jobs", exc)
        raise ServiceUnavailable("The job queue is unavailable; try again shortly.",
                                 code="broker_unavailable") from exc


# Per process: model name → (queued count, when counted, submits since). Far below the bound the
# count is reused for a second instead of being recounted on every submit.
_depth_seen: dict[str, list[float]] = {}
_DEPTH_MARGIN = 100


def check_queue_capacity(*, spec: ModelSpec, adding: int = 1) -> None:
    """429 `queue_full` when the model already has its bound of queued jobs (or would pass it by `adding`).

    Exact near the bound; far from it (more than 100 below), a count at most one second old is
    reused, so a deep backlog does not cost a COUNT on every submit.
    """
    limit = spec.max_queued if spec.max_queued is not None else settings.INFERQ_MAX_QUEUED
    if not limit:
        return
    now = time.monotonic()
    seen = _depth_seen.get(spec.name)
    if seen and now - seen[1] < 1.0 and seen[0] + seen[2] + adding <= limit - _DEPTH_MARGIN:
        seen[2] += adding
        return
    queued = Job.objects.filter(model_name=spec.name, status=JobStatus.QUEUED).count()
    _depth_seen[spec.name] = [queued, now, adding]
    if queued + adding > limit:
        if adding > 1 and queued < limit:
            raise Overloaded(f"Model {spec.name!r} has room for {limit - queued} more queued jobs, not "
                             f"{adding}; send fewer inputs or retry later.", code="queue_full", retry_after=5)
        raise Overloaded(f"Model {spec.name!r} has {limit} jobs queued already; retry later.",
                         code="queue_full", retry_after=5)


def job_create(
    *,
    owner: AbstractBaseUser,
    spec: ModelSpec,
    model_input: ModelInput,
    batch: Batch | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """Store the input, insert the Job row (queued) and, once committed, enqueue its id.

    The same idempotency key returns the job it made before; bytes this model version already
    answered make a job that is succeeded at once, from the result cache (api/cache.py).
    """
    sha256 = hashlib.sha256(model_input.data).hexdigest()
    if idempotency_key and len(idempotency_key) > 255:
        raise InvalidInput("Idempotency-Key is longer than 255 characters.", code="invalid_request")
    if idempotency_key:
        existing = Job.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing is not None:
            check_idempotent_replay(existing=existing, spec=spec, sha256=sha256)
            return existing
    hit = cached_result_find(owner=owner, spec=spec, sha256=sha256)
    if hit is not None:
        return job_create_cached(owner=owner, source=hit, content_type=model_input.content_type,
                                 size=len(model_input.data), batch=batch, idempotency_key=idempotency_key)
    check_queue_capacity(spec=spec)
    job = _queued_job(owner=owner, spec=spec, model_input=model_input, sha256=sha256, batch=batch,
                      idempotency_key=idempotency_key)
    try:
        if transaction.get_connection().in_atomic_block:
            with transaction.atomic():  # a savepoint, so a duplicate key leaves the caller's transaction usable
                insert_row(job)
        else:
            insert_row(job)
    except IntegrityError:
        _delete_stored_input(job)
        if idempotency_key:
            return Job.objects.get(owner=owner, idempotency_key=idempotency_key)
        raise
    # Published after the commit (so a worker always finds the row); if the broker is down the
    # job is withdrawn and the client told 503, so a retry never creates a twin.
    try:
        job_enqueue(job=job, spec=spec)
    except ServiceUnavailable:
        _delete_stored_input(job)
        Job.objects.filter(id=job.id).delete()
        raise
    logger.info("job queued", extra={"job_id": str(job.id), "model": job.model_name, "status": "queued"})
    return job


def _queued_job(*, owner: AbstractBaseUser, spec: ModelSpec, model_input: ModelInput, sha256: str,
                batch: Batch | None, idempotency_key: str | None) -> Job:
    """A new queued job with its input stored (in the row when small, else through the storage), not yet saved."""
    job = new_instance(
        Job,
        owner=owner,
        model_name=spec.name,
        model_version=spec.version,
        input_content_type=model_input.content_type,
        input_size=len(model_input.data),
        input_sha256=sha256,
        batch=batch,
        idempotency_key=idempotency_key or None,
    )
    job.created_at = job.enqueued_at = timezone.now()
    if len(model_input.data) <= settings.INFERQ_INLINE_INPUT_BYTES:
        job.input_data = model_input.data
    else:
        job.input.save(str(job.id), ContentFile(model_input.data), save=False)
    return job


def jobs_create(*, owner: AbstractBaseUser, spec: ModelSpec, model_inputs: list[ModelInput],
                batch: Batch | None = None) -> list[Job]:
    """Jobs for several inputs to one model, in their order, all or none.

    Each is what `job_create` would make of its input alone (a result-cache hit is answered at once), but
    the rows go in as one multi-row INSERT and the messages to the broker as one push: a failure at either
    step leaves no job behind (503 when the broker is down), so a client that retries a refused request never
    makes twins.
    """
    if not model_inputs:
        raise InvalidInput("No inputs were sent.", code="empty_input")
    digests = [hashlib.sha256(model_input.data).hexdigest() for model_input in model_inputs]
    hits = [cached_result_find(owner=owner, spec=spec, sha256=sha256) for sha256 in digests]
    misses = hits.count(None)
    if misses:  # as on a single submit, only inputs the cache does not answer count against the queue's bound
        check_queue_capacity(spec=spec, adding=misses)
    jobs: list[Job] = []
    queued: list[Job] = []
    sources: dict[Any, Any] = {}  # cached job's id -> the job it copies
    try:
        for model_input, sha256, hit in zip(model_inputs, digests, hits, strict=True):
            if hit is not None:
                job = cached_job_new(owner=owner, source=hit, content_type=model_input.content_type,
                                     size=len(model_input.data), batch=batch)
                sources[job.id] = hit.id
            else:
                job = _queued_job(owner=owner, spec=spec, model_input=model_input, sha256=sha256, batch=batch,
                                  idempotency_key=None)
                queued.append(job)
            jobs.append(job)
        insert_rows(jobs)  # one statement: every row or none
    except BaseException:
        for job in queued:
            _delete_stored_input(job)
        raise
    try:
        jobs_enqueue(jobs=queued, spec=spec)
    except ServiceUnavailable:
        for job in queued:
            _delete_stored_input(job)
        Job.objects.filter(id__in=[job.id for job in jobs]).delete()
        raise
    for job in jobs:
        if job.id in sources:
            cached_job_announce(job, source_id=sources[job.id])
        else:
            logger.info("job queued", extra={"job_id": str(job.id), "model": job.model_name, "status": "queued"})
    return jobs


def _delete_stored_input(job: Job) -> None:
    if job.input:
        job.input.delete(save=False)


def check_idempotent_replay(*, existing: Job, spec: ModelSpec, sha256: str) -> None:
    """A reused Idempotency-Key must come with the same model and the same input bytes."""
    if existing.model_name != spec.name or existing.input_sha256 != sha256:
        raise Conflict("This Idempotency-Key was already used for a different input or model; use a new key.",
                       code="idempotency_key_reused")


def job_cancel(*, job: Job) -> Job:
    """Cancel a job that has not finished; a queued job's message is then skipped by the worker."""
    now = timezone.now()
    updated = Job.objects.filter(id=job.id, status__in=ACTIVE_STATUSES).update(
        status=JobStatus.CANCELED, finished_at=now, total_ms=_ms(job.created_at, now), **_input_data_dropped()
    )
    job.refresh_from_db()
    if updated:
        logger.info("job canceled", extra={"job_id": str(job.id), "model": job.model_name, "status": "canceled",
                                           "total_ms": job.total_ms})
        job_discard_input(job=job)
        job_event_publish_on_commit(job)
    return job


def _lease_until(now: datetime) -> datetime:
    return now + timedelta(seconds=settings.INFERQ_LEASE_SECONDS)


def _claim(job: Job, *, worker: str, now: datetime) -> None:
    job.status = JobStatus.RUNNING
    job.attempts += 1
    job.started_at = now
    job.worker = worker
    job.lease_expires_at = _lease_until(now)
    job.queue_ms = _ms(job.created_at, now)


_CLAIM_FIELDS = ["status", "attempts", "started_at", "worker", "lease_expires_at", "queue_ms"]


def _fail_worker_lost(job: Job, now: datetime) -> None:
    job.status = JobStatus.FAILED
    job.error_code = "worker_lost"
    job.error_message = f"The job's worker process died {job.attempts} times while running it."
    job.finished_at = now
    job.lease_expires_at = None
    job.total_ms = _ms(job.created_at, now)
    dropped = _input_data_dropped()
    for name, value in dropped.items():
        setattr(job, name, value)
    job.save(update_fields=["status", "error_code", "error_message", "finished_at", "lease_expires_at",
                            "total_ms", *dropped])
    logger.warning("job failed", extra={"job_id": str(job.id), "model": job.model_name, "status": "failed",
                                        "code": "worker_lost", "attempts": job.attempts})
    # Like every other way a job ends, failing it discards its input (once that is committed).
    transaction.on_commit(lambda: job_discard_input(job=job))
    job_event_publish_on_commit(job)


# queue_ms worked out by the database, as _ms() does, from the claim's start time.
_QUEUE_MS = {"queue_ms": ("started_at", {
    "sqlite": "ROUND(django_timestamp_diff(%s, {created_at}) / 1000.0, 3)",
    "postgresql": "ROUND((EXTRACT(EPOCH FROM (%s - {created_at})) * 1000)::numeric, 3)::double precision",
})}

# Claims a queued first attempt and reads it back in one statement, with its queue_ms and whether more first
# attempts of its model version are queued behind it (then the runner gathers a batch).
_CLAIM_FIRST_ATTEMPT = PreparedUpdateReturning(
    Job, sets=("status", "attempts", "started_at", "worker", "lease_expires_at"), where=("id", "status", "attempts"),
    computed=_QUEUE_MS,
    extra={vendor: "EXISTS (SELECT 1 FROM {table} AS behind WHERE behind.model_name = {model_name}"
                   " AND behind.model_version = {model_version} AND behind.status = 'queued'"
                   " AND behind.attempts = 0 AND behind.id <> {id})" for vendor in ("sqlite", "postgresql")},
)


def job_start(*, job_id: str | UUID, worker: str) -> Job | None:
    """Claim a job for this worker on delivery of its message; None when there is nothing to do.

    Nothing to do: the job ended or was canceled, or another live worker holds it (it was taken
    into that worker's batch, and its lease is fresh). A running job whose lease ran out lost its
    worker: it is claimed again, and after INFERQ_MAX_ATTEMPTS claims it fails with `worker_lost`.

    The claimed job's `others_queued` says whether more first attempts of its model version were
    queued when it was claimed (None: not asked).
    """
    now = timezone.now()
    # Most deliveries are a first attempt still queued: one UPDATE … RETURNING claims it, reads it back and
    # tells whether others are queued. The rest are decided by one plain read: a job that ended, or that a
    # live worker took into its batch (its message arrives after it), is skipped; the others (a lease that ran
    # out, or any claim on a database without RETURNING) take a locked transaction.
    connection = transaction.get_connection(router.db_for_write(Job))
    if _CLAIM_FIRST_ATTEMPT.supported(connection):
        claimed = _CLAIM_FIRST_ATTEMPT(
            values={"status": JobStatus.RUNNING, "attempts": 1, "started_at": now, "worker": worker,
                    "lease_expires_at": _lease_until(now)},
            computed={"queue_ms": now}, match={"id": job_id, "status": JobStatus.QUEUED, "attempts": 0})
        if claimed is not None:
            job, others = claimed
            job.others_queued = bool(others)
            _log_started(job)
            return job
    seen = job_with_input_by_id(id=job_id)
    if seen is None or _held_or_ended(seen, now):
        return None
    with transaction.atomic():
        locked = Job.objects.with_input().select_for_update().filter(id=job_id).first()
        if locked is None or _held_or_ended(locked, now):
            return None
        if locked.attempts >= settings.INFERQ_MAX_ATTEMPTS:
            _fail_worker_lost(locked, now)
            return None
        _claim(locked, worker=worker, now=now)
        locked.save(update_fields=_CLAIM_FIELDS)
    _log_started(locked)  # others_queued stays None (not asked): the runner asks the database itself
    return locked


def _log_started(job: Job) -> None:
    logger.info("job started", extra={"job_id": str(job.id), "model": job.model_name, "status": "running",
                                      "queue_ms": job.queue_ms, "attempt": job.attempts})


def _held_or_ended(job: Job, now: datetime) -> bool:
    if job.status not in ACTIVE_STATUSES:
        return True
    return job.status == JobStatus.RUNNING and job.lease_expires_at is not None and job.lease_expires_at > now


# Claims up to N queued first attempts of one model version, oldest first, and reads them back: one statement
# (PostgreSQL skips rows another worker's claim has locked). Through the ORM (a locked SELECT, then
# `bulk_update`) a claim of 7 cost about 13 ms on SQLite, 5% of a resnet50 batch of 8.
# On PostgreSQL the locking subquery goes in `= ANY(ARRAY(…))`, which runs it once (an InitPlan). As `IN (…)` the
# planner may make it the inner side of a nested-loop semi join, run again for every queued row, each run
# past the rows the statement has claimed so far: a claim of 31 took 274 of 1350 queued rows, and a worker
# ran digits in batches of 450 where its manifest says 32 (docs/benchmarks.md, 2026-12-07).
_CLAIM_SUBQUERY = ("SELECT {id} FROM {table} WHERE {model_name} = %s AND {model_version} = %s"
                   " AND {status} = 'queued' AND {attempts} = 0 ORDER BY {created_at} LIMIT %s{lock}")
_CLAIM_OLDEST = PreparedUpdateReturning(
    Job, sets=("status", "attempts", "started_at", "worker", "lease_expires_at"), where=("status", "attempts"),
    computed=_QUEUE_MS,
    scope={"sqlite": "{id} IN (" + _CLAIM_SUBQUERY + ")",
           "postgresql": "{id} = ANY(ARRAY(" + _CLAIM_SUBQUERY + "))"},
)
# Is anything queued to claim? A cheap read first: polling an empty queue must not take SQLite's write lock.
_ANY_QUEUED = PreparedGet(Job, "model_name", "model_version", "status", "attempts",
                          defer=tuple(f.name for f in Job._meta.concrete_fields if not f.primary_key))


def job_claim_queued(*, model_name: str, model_version: str, worker: str, limit: int) -> list[Job]:
    """Claim up to `limit` more queued jobs of one model version, oldest first, to run in one batch.

    Their own messages, delivered later, find them running under a fresh lease and are skipped.
    """
    if limit <= 0:
        return []
    # Only first attempts: a job requeued after its worker died is run alone, by its own message.
    if _ANY_QUEUED(model_name=model_name, model_version=model_version, status=JobStatus.QUEUED, attempts=0) is None:
        return []
    now = timezone.now()
    connection = transaction.get_connection(router.db_for_write(Job))
    if _CLAIM_OLDEST.supported(connection):
        claimed = _CLAIM_OLDEST.many(
            values={"status": JobStatus.RUNNING, "attempts": 1, "started_at": now, "worker": worker,
                    "lease_expires_at": _lease_until(now)},
            computed={"queue_ms": now}, match={"status": JobStatus.QUEUED, "attempts": 0},
            scope_params=[model_name, model_version, limit])
        jobs = sorted((job for job, _ in claimed), key=lambda job: job.created_at)  # RETURNING keeps no order
        for job in jobs:
            _log_started(job)
        return jobs
    candidates = Job.objects.with_input().filter(model_name=model_name, model_version=model_version,
                                                 status=JobStatus.QUEUED, attempts=0)
    with transaction.atomic():
        jobs = list(candidates.select_for_update(skip_locked=True).order_by("created_at")[:limit])
        for job in jobs:
            _claim(job, worker=worker, now=now)
        if jobs:
            Job.objects.bulk_update(jobs, _CLAIM_FIELDS)
    for job in jobs:
        _log_started(job)
    return jobs


def job_leases_renew(*, job_ids: list[UUID], worker: str) -> int:
    """Extend the leases of the jobs this worker process is running right now."""
    if not job_ids:
        return 0
    return Job.objects.filter(id__in=job_ids, status=JobStatus.RUNNING, worker=worker).update(
        lease_expires_at=_lease_until(timezone.now()))


def job_requeue_orphans() -> dict[str, int]:
    """Sweeper: running jobs whose lease ran out lost their worker; queue them again (or fail them)."""
    now = timezone.now()
    counts = {"requeued": 0, "worker_lost": 0}
    orphans = Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now).values_list("id", flat=True)
    for job_id in list(orphans[:1000]):
        with transaction.atomic():
            job = Job.objects.select_for_update().filter(id=job_id, status=JobStatus.RUNNING,
                                                         lease_expires_at__lt=now).first()
            if job is None:
                continue
            if job.attempts >= settings.INFERQ_MAX_ATTEMPTS:
                _fail_worker_lost(job, now)
                counts["worker_lost"] += 1
                continue
            job.status = JobStatus.QUEUED
            job.lease_expires_at = None
            job.enqueued_at = timezone.now()
            job.save(update_fields=["status", "lease_expires_at", "enqueued_at"])
        try:
            job_enqueue(job=job, spec=_spec_or_none(job))
            counts["requeued"] += 1
        except ServiceUnavailable:
            break  # the broker is down; the next sweep tries again
        logger.warning("job requeued after its worker was lost",
                       extra={"job_id": str(job.id), "model": job.model_name, "status": "queued",
                              "attempts": job.attempts})
    return counts


def _finish(job: Job, **fields: Any) -> bool:
    now = timezone.now()
    fields.update(finished_at=now, total_ms=_ms(job.created_at, now), lease_expires_at=None, **_input_data_dropped())
    updated = update_where(Job, values=fields, exact={"id": job.id}, within={"status": ACTIVE_STATUSES})
    if updated:
        for name, value in fields.items():
            setattr(job, name, value)
        # Once the ending is committed (at once outside a transaction): a batch's endings written together
        # (workers/runner.py) and rolled back leave their jobs to run again, with their inputs.
        transaction.on_commit(lambda: job_discard_input(job=job))
        job_event_publish_on_commit(job)
    return bool(updated)


def job_succeed(*, job: Job, result: Any, inference_ms: float, batch_size: int = 1) -> bool:
    """Write the result once: a twin delivery that finishes second changes nothing."""
    done = _finish(job, status=JobStatus.SUCCEEDED, result=result, inference_ms=round(inference_ms, 3),
                   batch_size=batch_size, error_code="", error_message="")
    if done:
        logger.info("job succeeded", extra={"job_id": str(job.id), "model": job.model_name, "status": "succeeded",
                                            "queue_ms": job.queue_ms, "inference_ms": round(inference_ms, 3),
                                            "total_ms": job.total_ms, "batch_size": batch_size})
    return done


def job_fail(*, job: Job, code: str, message: str, inference_ms: float | None = None) -> bool:
    done = _finish(job, status=JobStatus.FAILED, error_code=code, error_message=message[:2000],
                   inference_ms=inference_ms)
    if done:
        logger.warning("job failed", extra={"job_id": str(job.id), "model": job.model_name, "status": "failed",
                                            "code": code, "queue_ms": job.queue_ms, "inference_ms": inference_ms,
                                            "total_ms": job.total_ms})
    return done


def job_input_read(job: Job) -> bytes:
    """The job's input: a small one from the row itself, a larger one from the storage."""
    if job.input_data is not None:
        return bytes(job.input_data)  # PostgreSQL hands back a memoryview
    with job.input.open("rb") as fh:
        return fh.read()


def _input_data_dropped() -> dict[str, None]:
    """The fields a job's ending write sets so that an inline input goes with it (in the same UPDATE)."""
    return {} if settings.INFERQ_KEEP_INPUTS else {"input_data": None}


def job_discard_input(*, job: Job) -> None:
    """Inputs are deleted once a job ends unless INFERQ_KEEP_INPUTS is set (an inline one by the ending write)."""
    if settings.INFERQ_KEEP_INPUTS or not job.input:
        return
    input_file_delete(job.input.storage, job.input.name)


def batch_create(*, owner: AbstractBaseUser, name: str = "", model_name: str = "") -> Batch:
    """A group for jobs submitted together (`submit_bulk`, or `POST /v1/batches` then `?batch=`)."""
    return Batch.objects.create(owner=owner, name=name[:200], model_name=model_name[:100])
