"""`inferq.sweep`: periodic recovery of jobs whose worker was lost (run by beat)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="inferq.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    from api.services import job_requeue_orphans

    return job_requeue_orphans()
