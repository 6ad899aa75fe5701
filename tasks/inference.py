"""`inference.run`: the message carries a job id; the worker runner does the rest."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="inference.run", ignore_result=True)
def run(*, job_id: str, model: str | None = None) -> None:
    """Run one job. `model` is informational (shown in Flower); the Job row is authoritative."""
    from workers.runner import run_job

    run_job(job_id)
