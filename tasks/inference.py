"""`inference.run`: the message carries a job id (its task id); the worker runner does the rest."""

from __future__ import annotations

from typing import Any

from celery import shared_task

# The task every job's message names (the web tier publishes it; the worker's consumer recognises it).
TASK_NAME = "inference.run"
# The worker's consumer reads the batch mates back from this result's repr (workers/consumer.py): room for
# the largest batch's ids, where Celery's default (1024 characters) holds about 25.
RESULT_REPR_CHARS = 64 * 1024


@shared_task(name=TASK_NAME, ignore_result=True, resultrepr_maxsize=RESULT_REPR_CHARS)
def run(*, job_id: str, model: str | None = None) -> dict[str, Any] | None:
    """Run one job, with the queued jobs it gathers into its batch. `model` is informational (shown in Flower);
    the Job row is authoritative. The result (never stored; Flower shows it) names the batch mates."""
    from workers.runner import run_job

    mates = run_job(job_id)
    return {"batch_mates": mates} if mates else None
