"""Retention: finished jobs (their results, and any input still kept) are deleted after N days."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from api.models import FINAL_STATUSES, Job

logger = logging.getLogger("inferq.jobs")

CHUNK = 500


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
                try:
                    storage.delete(name)
                except OSError:
                    logger.warning("could not delete a purged job's input %s", name)
        deleted += len(chunk)
    if deleted:
        logger.info("purged expired jobs", extra={"deleted": deleted, "retention_days": days})
    return deleted
