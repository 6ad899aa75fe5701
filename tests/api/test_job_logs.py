"""Logs a person can follow: one line per job event with id, model, status and timings; Flower sees them too."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from api.logformat import JsonFormatter
from api.services import job_cancel, job_start, job_succeed
from tests.api.helpers import broker_messages

pytestmark = pytest.mark.django_db


def events(caplog: Any, job_id: str) -> dict[str, dict[str, Any]]:
    """Each `inferq.jobs` record about this job, rendered by the JSON formatter (LOG_FORMAT=json)."""
    formatter = JsonFormatter()
    found = {}
    for record in caplog.records:
        if record.name == "inferq.jobs" and getattr(record, "job_id", None) == job_id:
            line = json.loads(formatter.format(record))
            found[line["message"]] = line
    return found


def test_a_job_is_traced_from_queued_to_succeeded(make_job: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="inferq.jobs")
    job = make_job(b"trace me")
    job_start(job_id=job.id, worker="w1")
    job.refresh_from_db()
    job_succeed(job=job, result={"ok": True}, inference_ms=12.5, batch_size=3)

    lines = events(caplog, str(job.id))

    assert list(lines) == ["job queued", "job started", "job succeeded"]
    assert all(line["model"] == "echo" for line in lines.values())
    assert [line["status"] for line in lines.values()] == ["queued", "running", "succeeded"]
    done = lines["job succeeded"]
    assert done["inference_ms"] == 12.5 and done["batch_size"] == 3
    assert done["queue_ms"] is not None and done["total_ms"] is not None


def test_cancel_and_cache_hits_are_logged(make_job: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="inferq.jobs")
    canceled = make_job(b"never mind")
    job_cancel(job=canceled)
    done = make_job(b"answer once")
    job_succeed(job=done, result={"r": 1}, inference_ms=1.0)
    hit = make_job(b"answer once")

    assert events(caplog, str(canceled.id))["job canceled"]["status"] == "canceled"
    assert hit.cached and events(caplog, str(hit.id))["job answered from cache"]["source_job_id"] == str(done.id)


def test_flower_shows_the_job_id_and_model(make_job: Any) -> None:
    """Flower's task view shows the task's keyword arguments (the `kwargsrepr` header) and its id."""
    broker_messages("inferq.model.echo")
    job = make_job(b"flower")
    [message] = broker_messages("inferq.model.echo")
    assert message.headers["id"] == str(job.id)
    assert str(job.id) in message.headers["kwargsrepr"] and "'model': 'echo'" in message.headers["kwargsrepr"]
