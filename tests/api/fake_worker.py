"""A stand-in for the Celery worker in web-tier tests: it ends jobs the way a worker would (through the services)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import OperationalError, connection

from api.events import job_channel
from api.models import Job
from api.services import job_fail, job_succeed

Answer = Callable[[Job], dict[str, Any]]
_one_writer = threading.Lock()


def end_job(job: Job, answer: Answer) -> None:
    """Succeed `job` with answer(job), or fail it when the answer is {"error": code}."""
    outcome = answer(job)
    if "error" in outcome:
        job_fail(job=job, code=outcome["error"], message=outcome.get("message", "it failed"))
    else:
        job_succeed(job=job, result=outcome, inference_ms=1.0)


def subscribed(fake_redis: Any, channel: str) -> bool:
    """Whether anyone listens on `channel` now."""
    return bool(dict(fake_redis.pubsub_numsub(channel)).get(channel.encode()))


def wait_for_subscriber(fake_redis: Any, channel: str, timeout: float = 10.0) -> None:
    """Return once someone listens on `channel` (or `timeout` passes: the waiter's own checks then fail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not subscribed(fake_redis, channel):
        time.sleep(0.01)


def end_job_by_id(job_id: Any, answer: Answer) -> None:
    """end_job on the row as it is now, retried while SQLite's shared in-memory test database refuses (rather
    than queues) a write that overlaps a waiter's read on the same table."""
    with _one_writer:
        for attempt in range(50):
            try:
                end_job(Job.objects.get(id=job_id), answer)
                return
            except OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.02)


def finish_when_subscribed(fake_redis: Any, job_id: Any, answer: Answer) -> threading.Thread:
    """Once a waiter is subscribed to the job's channel, end the job (from another thread, as a worker would)."""

    def run() -> None:
        try:
            wait_for_subscriber(fake_redis, job_channel(job_id))
            # Let the waiter finish the read it does right after subscribing.
            time.sleep(0.05)
            end_job_by_id(job_id, answer)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def install_instant_worker(monkeypatch: Any, answer: Answer) -> list[Job]:
    """Jobs created by the synchronous compat endpoints end at once with answer(job); returns them as made."""
    import api.compat.sync
    from api.services import job_create

    made: list[Job] = []

    def create_and_end(**kwargs: Any) -> Job:
        job = job_create(**kwargs)
        if not job.is_final:
            end_job(job, answer)
            job.refresh_from_db()
        made.append(job)
        return job

    monkeypatch.setattr(api.compat.sync, "job_create", create_and_end)
    return made


def install_threaded_worker(monkeypatch: Any, fake_redis: Any, answer: Answer) -> list[Job]:
    """Jobs created by the compat endpoints end from another thread once their waiter subscribes."""
    import api.compat.sync
    from api.services import job_create

    made: list[Job] = []

    def create_then_end_later(**kwargs: Any) -> Job:
        job = job_create(**kwargs)
        finish_when_subscribed(fake_redis, job.id, answer)
        made.append(job)
        return job

    monkeypatch.setattr(api.compat.sync, "job_create", create_then_end_later)
    return made
