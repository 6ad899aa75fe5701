"""`inferq.sweep`: periodic recovery of jobs whose worker or message was lost (run by beat)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="inferq.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    from api.recovery import job_republish_lost
    from api.services import job_requeue_orphans

    counts = job_requeue_orphans()
    counts.update(job_republish_lost())
    return counts
