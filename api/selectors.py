"""Reads: jobs and batches visible to a user, and the models being served."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, QuerySet
from redis.exceptions import RedisError

from api.exceptions import InvalidInput, NotFound
from api.heartbeats import workers_online
from api.models import ACTIVE_STATUSES, Batch, Job, JobStatus
from api.prepared import PreparedGet
from workers.store import ModelSpec, get_store

# Polls, waits and workers read one job row far more often than anything else: SQL built once (api/prepared.py).
# Reads that answer clients leave a small input's bytes in the row (`Job.objects` defers them too);
# a worker's read takes them.
_job_by_id_and_owner = PreparedGet(Job, "id", "owner", defer=("input_data",))
job_by_id = PreparedGet(Job, "id", defer=("input_data",))
job_with_input_by_id = PreparedGet(Job, "id")
# Every submit into a batch checks it is the caller's: through the ORM that check was a third of the submit's CPU.
_batch_by_id_and_owner = PreparedGet(Batch, "id", "owner")


def _id_or_not_found(kind: str, value: str) -> UUID:
    """A job's or batch's id from a URL; a malformed one is simply not found (404), as anyone else's is."""
    try:
        return UUID(str(value))
    except ValueError as exc:
        raise NotFound(f"No {kind} {value!r}: {kind} ids are UUIDs.", code="not_found") from exc


def job_get(*, user: AbstractBaseUser, job_id: str) -> Job:
    """The caller's job; anyone else's (or a malformed id) is simply not found."""
    uuid = _id_or_not_found("job", job_id)
    job = _job_by_id_and_owner(id=uuid, owner=user.pk)
    if job is None:
        raise NotFound(f"No job {uuid}.", code="not_found")
    return job


# `GET /v1/jobs?id=…` names at most this many jobs (the bulk command reads its jobs' states so, 100 at a time):
# 250 UUIDs are 9.25 KiB of query string, within uWSGI's 16 KiB request buffer (uwsgi.ini's buffer-size) beside
# the headers; a longer request line would be refused by uWSGI before the app could say why.
MAX_LISTED_IDS = 250


def listed_ids(values: list[str]) -> list[UUID]:
    """The job ids of `?id=a&id=b` or `?id=a,b` (both may be mixed); 400 for a malformed one or too many."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        raise InvalidInput("id names no job: give job ids (UUIDs), repeated or separated by commas.",
                           code="invalid_request")
    if len(names) > MAX_LISTED_IDS:
        raise InvalidInput(f"id names at most {MAX_LISTED_IDS} jobs (got {len(names)}).", code="invalid_request")
    try:
        return [UUID(name) for name in names]
    except ValueError as exc:
        raise InvalidInput("id must be job ids (UUIDs), repeated or separated by commas.",
                           code="invalid_request") from exc


def job_list(*, user: AbstractBaseUser, filters: dict[str, Any] | None = None) -> QuerySet[Job]:
    filters = filters or {}
    qs = Job.objects.filter(owner=user).order_by("-created_at")
    if "id" in filters:
        qs = qs.filter(id__in=listed_ids(filters["id"]))
    if status := filters.get("status"):
        if status not in JobStatus.values:
            raise InvalidInput(f"status must be one of {', '.join(JobStatus.values)}.", code="invalid_request")
        qs = qs.filter(status=status)
    if model := filters.get("model"):
        qs = qs.filter(model_name=model)
    if batch := filters.get("batch"):
        try:
            qs = qs.filter(batch_id=UUID(str(batch)))
        except ValueError as exc:
            raise InvalidInput("batch must be a UUID.", code="invalid_request") from exc
    return qs


def batch_get(*, user: AbstractBaseUser, batch_id: str) -> Batch:
    """The caller's batch; anyone else's (or a malformed id) is simply not found."""
    uuid = _id_or_not_found("batch", batch_id)
    batch = _batch_by_id_and_owner(id=uuid, owner=user.pk)
    if batch is None:
        raise NotFound(f"No batch {uuid}.", code="not_found")
    return batch


def batch_counts(*, batch: Batch) -> dict[str, int]:
    """Jobs of a batch by status, every status present (one grouped query)."""
    counts = dict.fromkeys(JobStatus.values, 0)
    for row in Job.objects.filter(batch=batch).order_by().values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


def batch_unfinished(*, batch: Batch) -> int:
    """How many of a batch's jobs are still queued or running (the batch's index, then their rows)."""
    return Job.objects.filter(batch=batch, status__in=ACTIVE_STATUSES).count()


def batch_describe(*, batch: Batch) -> dict[str, Any]:
    counts = batch_counts(batch=batch)
    return {"id": str(batch.id), "name": batch.name, "model": batch.model_name, "created_at": batch.created_at,
            "total": sum(counts.values()), "counts": counts, "jobs": f"/v1/jobs?batch={batch.id}"}


def job_key_used(*, user: AbstractBaseUser, idempotency_key: str) -> bool:
    """Whether the caller already made a job with this Idempotency-Key."""
    return Job.objects.filter(owner=user, idempotency_key=idempotency_key).exists()


def jobs_queued(*, model_names: list[str]) -> bool:
    """Whether any of these models has a job waiting to run (a seek in the `job_queue` index: status, model)."""
    return Job.objects.filter(status=JobStatus.QUEUED, model_name__in=model_names).exists()


def queue_depth(model_name: str) -> int:
    return Job.objects.filter(model_name=model_name, status=JobStatus.QUEUED).count()


def model_describe(spec: ModelSpec) -> dict[str, Any]:
    """A model's public description plus live facts: versions, workers online, queue depth."""
    try:
        workers: list[str] | None = workers_online(spec.name)
    except RedisError:
        workers = None
    return {
        **spec.public(),
        "versions": get_store().versions(spec.name),
        "workers": workers,
        "workers_online": len(workers) if workers is not None else None,
        "queued": queue_depth(spec.name),
    }


def model_list() -> list[dict[str, Any]]:
    return [model_describe(spec) for spec in get_store().latest()]
