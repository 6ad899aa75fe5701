"""`maintenance.purge_expired`: beat deletes finished jobs older than INFERQ_RESULT_RETENTION_DAYS."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="maintenance.purge_expired", ignore_result=True)
def purge_expired() -> int:
    from api.retention import jobs_purge_expired

    return jobs_purge_expired()
