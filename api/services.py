"""Business logic between the API and the queue: create, enqueue, start, finish and cancel jobs."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from api.exceptions import NotFound, Overloaded, ServiceUnavailable
from api.inputs import ModelInput
from api.models import ACTIVE_STATUSES, Batch, Job, JobStatus
from workers.store import ModelSpec, StoreError, get_store

logger = logging.getLogger("inferq.jobs")

TASK_NAME = "inference.run"


def model_spec_get(*, name: str, version: str | None = None) -> ModelSpec:
    try:
        return get_store().get(name, version)
    except StoreError as exc:
        raise NotFound(str(exc).capitalize() + ".", code="unknown_model") from exc


def _ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds() * 1000.0, 3)


def job_enqueue(*, job: Job) -> None:
    """Publish the job's message (only its id) to its model's queue; raise 503 if the broker is down."""
    from project.celery import app

    try:
        app.send_task(
            TASK_NAME,
            kwargs={"job_id": str(job.id), "model": job.model_name},
            queue=f"inferq.model.{job.model_name}",
            task_id=str(job.id),
            retry=True,
        )
    except (KombuOperationalError, RedisError, OSError) as exc:
        logger.error("broker unavailable while enqueueing job %s: %s", job.id, exc)
        raise ServiceUnavailable("The job queue is unavailable; try again shortly.",
                                 code="broker_unavailable") from exc
    Job.objects.filter(id=job.id).update(enqueued_at=timezone.now())


def check_queue_capacity(*, spec: ModelSpec) -> None:
    limit = spec.max_queued if spec.max_queued is not None else settings.INFERQ_MAX_QUEUED
    if limit and Job.objects.filter(model_name=spec.name, status=JobStatus.QUEUED).count() >= limit:
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
    """Store the input, insert the Job row (queued) and, once committed, enqueue its id."""
    if idempotency_key:
        existing = Job.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing
    check_queue_capacity(spec=spec)
    job = Job(
        owner=owner,
        model_name=spec.name,
        model_version=spec.version,
        input_content_type=model_input.content_type,
        input_size=len(model_input.data),
        input_sha256=hashlib.sha256(model_input.data).hexdigest(),
        batch=batch,
        idempotency_key=idempotency_key or None,
    )
    job.created_at = timezone.now()
    job.input.save(str(job.id), ContentFile(model_input.data), save=False)
    try:
        with transaction.atomic():
            job.save(force_insert=True)
    except IntegrityError:
        job.input.delete(save=False)
        if idempotency_key:
            return Job.objects.get(owner=owner, idempotency_key=idempotency_key)
        raise
    # Published after the commit (so a worker always finds the row); if the broker is down the
    # job is withdrawn and the client told 503, so a retry never creates a twin.
    try:
        job_enqueue(job=job)
    except ServiceUnavailable:
        job.input.delete(save=False)
        Job.objects.filter(id=job.id).delete()
        raise
    logger.info("job queued", extra={"job_id": str(job.id), "model": job.model_name, "status": "queued"})
    return job


def job_cancel(*, job: Job) -> Job:
    """Cancel a job that has not finished; a queued job's message is then skipped by the worker."""
    now = timezone.now()
    updated = Job.objects.filter(id=job.id, status__in=ACTIVE_STATUSES).update(
        status=JobStatus.CANCELED, finished_at=now, total_ms=_ms(job.created_at, now)
    )
    job.refresh_from_db()
    if updated:
        logger.info("job canceled", extra={"job_id": str(job.id), "model": job.model_name, "status": "canceled"})
        job_discard_input(job=job)
    return job


def job_start(*, job_id: str | UUID, worker: str) -> Job | None:
    """Claim a job for this worker; None when it already ended (or was canceled).

    Runs on every delivery, so a job whose worker died is claimed again; after
    INFERQ_MAX_ATTEMPTS deliveries that never finished it fails with `worker_lost`.
    """
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(id=job_id).first()
        if job is None or job.status not in ACTIVE_STATUSES:
            return None
        if job.attempts >= settings.INFERQ_MAX_ATTEMPTS:
            job.status = JobStatus.FAILED
            job.error_code = "worker_lost"
            job.error_message = f"The job's worker process died {job.attempts} times while running it."
            job.finished_at = now
            job.total_ms = _ms(job.created_at, now)
            job.save(update_fields=["status", "error_code", "error_message", "finished_at", "total_ms"])
            logger.warning("job failed", extra={"job_id": str(job.id), "model": job.model_name,
                                                "status": "failed", "code": "worker_lost"})
            # Like every other way a job ends, failing it discards its input (once that is committed).
            transaction.on_commit(lambda: job_discard_input(job=job))
            return None
        job.status = JobStatus.RUNNING
        job.attempts += 1
        job.started_at = now
        job.worker = worker
        job.queue_ms = _ms(job.created_at, now)
        job.save(update_fields=["status", "attempts", "started_at", "worker", "queue_ms"])
    return job


def _finish(job: Job, **fields: Any) -> bool:
    now = timezone.now()
    fields.update(finished_at=now, total_ms=_ms(job.created_at, now))
    updated = Job.objects.filter(id=job.id, status__in=ACTIVE_STATUSES).update(**fields)
    if updated:
        job_discard_input(job=job)
    return bool(updated)


def job_succeed(*, job: Job, result: Any, inference_ms: float, batch_size: int = 1) -> bool:
    """Write the result once: a twin delivery that finishes second changes nothing."""
    done = _finish(job, status=JobStatus.SUCCEEDED, result=result, inference_ms=round(inference_ms, 3),
                   batch_size=batch_size, error_code="", error_message="")
    if done:
        logger.info("job succeeded", extra={"job_id": str(job.id), "model": job.model_name, "status": "succeeded",
                                            "inference_ms": round(inference_ms, 3), "queue_ms": job.queue_ms})
    return done


def job_fail(*, job: Job, code: str, message: str, inference_ms: float | None = None) -> bool:
    done = _finish(job, status=JobStatus.FAILED, error_code=code, error_message=message[:2000],
                   inference_ms=inference_ms)
    if done:
        logger.warning("job failed", extra={"job_id": str(job.id), "model": job.model_name, "status": "failed",
                                            "code": code})
    return done


def job_discard_input(*, job: Job) -> None:
    """Inputs are deleted once a job ends unless INFERQ_KEEP_INPUTS is set."""
    if settings.INFERQ_KEEP_INPUTS or not job.input:
        return
    try:
        job.input.storage.delete(job.input.name)
    except OSError:
        logger.warning("could not delete input of job %s", job.id)
