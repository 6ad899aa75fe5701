"""Retention: finished jobs (their results, and any input still kept) are deleted after N days.

Also the clean-up behind "a job's input is deleted when it ends": a worker killed between writing a
job's end and deleting its input, or a web process killed between storing an input and inserting its
row, leaves a file no job needs; `inputs_discard_orphaned` finds and deletes those.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.core.files.storage import Storage
from django.db import transaction
from django.utils import timezone

from api.models import FINAL_STATUSES, Job

logger = logging.getLogger("inferq.jobs")

CHUNK = 500
INPUTS_DIR = "inputs"
# A stored input with no row yet is a submit between its storage write and its INSERT; give it this long.
UNCLAIMED_GRACE = timedelta(minutes=10)


def jobs_purge_expired(*, days: int | None = None, now: datetime | None = None) -> int:
    """Delete jobs that ended more than `days` (INFERQ_RESULT_RETENTION_DAYS) ago; 0 days keeps everything.

    Works in chunks so a large backlog never holds one long transaction or lock. Returns how many went.
    """
    days = settings.INFERQ_RESULT_RETENTION_DAYS if days is None else days
    if days <= 0:
        return 0
    cutoff = (now or timezone.now()) - timedelta(days=days)
    expired = Job.objects.filter(status__in=FINAL_STATUSES, finished_at__lt=cutoff)
    deleted = 0
    while True:
        chunk = list(expired.order_by("finished_at").values_list("id", "input")[:CHUNK])
        if not chunk:
            break
        with transaction.atomic():
            Job.objects.filter(id__in=[job_id for job_id, _ in chunk]).delete()
        storage = Job._meta.get_field("input").storage
        for _, name in chunk:
            if name:
                input_file_delete(storage, name)
        deleted += len(chunk)
    if deleted:
        logger.info("purged expired jobs", extra={"deleted": deleted, "retention_days": days})
    return deleted


def inputs_discard_orphaned(*, now: datetime | None = None, grace: timedelta = UNCLAIMED_GRACE) -> int:
    """Delete stored inputs that no live job needs; returns how many went.

    Those of jobs that ended (the worker that ended one was killed before it deleted the input), and
    those older than `grace` with no job at all (the web process died before its INSERT, or a purge
    could not delete one). Inputs of queued and running jobs are kept, and everything is kept under
    INFERQ_KEEP_INPUTS. Ended jobs' inputs are deleted as they end, so the walk sees only live inputs
    and these few left-overs.
    """
    if settings.INFERQ_KEEP_INPUTS:
        return 0
    storage = Job._meta.get_field("input").storage
    cutoff = (now or timezone.now()) - grace
    deleted = 0
    stored = list(_stored_inputs(storage, INPUTS_DIR))
    for start in range(0, len(stored), CHUNK):
        chunk = dict(stored[start:start + CHUNK])
        statuses = dict(Job.objects.filter(id__in=chunk).values_list("id", "status"))
        for job_id, name in chunk.items():
            status = statuses.get(job_id)
            if status in FINAL_STATUSES or (status is None and _modified_before(storage, name, cutoff)):
                deleted += input_file_delete(storage, name)
    if deleted:
        logger.info("deleted orphaned inputs", extra={"deleted": deleted})
    return deleted


def input_file_delete(storage: Storage, name: str) -> bool:
    """Delete one stored input; a storage error is logged (the next clean-up tries again), never raised."""
    try:
        storage.delete(name)
    except OSError:
        logger.warning("could not delete the stored input %s", name)
        return False
    return True


def _stored_inputs(storage: Storage, path: str) -> Iterator[tuple[uuid.UUID, str]]:
    """(job id, storage name) of every stored input under `path` (inputs/YYYY/MM/DD/<job id>)."""
    try:
        dirs, files = storage.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in files:
        try:
            yield uuid.UUID(name), f"{path}/{name}"
        except ValueError:
            continue  # not an input InferQ stored
    for name in dirs:
        yield from _stored_inputs(storage, f"{path}/{name}")


def _modified_before(storage: Storage, name: str, cutoff: datetime) -> bool:
    try:
        return storage.get_modified_time(name) < cutoff
    except (OSError, NotImplementedError):
        return False
