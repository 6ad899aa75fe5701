"""`maintenance.purge_expired`: beat deletes finished jobs older than INFERQ_RESULT_RETENTION_DAYS.

The same run deletes inputs that a killed process left behind (api/retention.py).
"""

from __future__ import annotations

from celery import shared_task


@shared_task(name="maintenance.purge_expired", ignore_result=True)
def purge_expired() -> int:
    from api.retention import inputs_discard_orphaned, jobs_purge_expired

    purged = jobs_purge_expired()
    inputs_discard_orphaned()
    return purged
