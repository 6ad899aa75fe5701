"""`inference.run`: the message carries a job id (its task id); the worker runner does the rest."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

# The task every job's message names (the web tier publishes it; the worker's consumer recognises it).
TASK_NAME = "inference.run"
# The worker's consumer reads the batch mates back from this result's repr (workers/consumer.py): room for
# the largest batch's ids, where Celery's default (1024 characters) holds about 25.
RESULT_REPR_CHARS = 64 * 1024


@shared_task(bind=True, name=TASK_NAME, ignore_result=True, resultrepr_maxsize=RESULT_REPR_CHARS)
def run(self: Task, *, job_id: str, model: str | None = None) -> dict[str, Any] | None:
    """Run one job, with the queued jobs it gathers into its batch. `model` is informational (shown in Flower);
    the Job row is authoritative. The result (never stored; Flower shows it) names the batch mates, and those
    whose own messages it took off the queue (`dequeued`): the worker's consumer ends the others' messages
    when they come (workers/consumer.py)."""
    from api.publish import task_dequeue
    from workers import timelimit
    from workers.runner import run_job

    # Prefork's pool enforces the time limits; under the solo pool the task does (workers/timelimit.py).
    with timelimit.enforced(*timelimit.limits(self.request.timelimit, self.app.conf)):
        mates = run_job(job_id)
    if not mates:
        return None
    # The queue this message came from holds the mates' messages too (one queue per model).
    queue = (self.request.delivery_info or {}).get("routing_key")
    dequeued = task_dequeue(self.app, queue=queue, task_ids=mates) if queue else []
    return {"batch_mates": mates, "dequeued": dequeued} if dequeued else {"batch_mates": mates}
