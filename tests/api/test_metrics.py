"""/metrics: Prometheus text that Prometheus' own parser reads, counted from the database and Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from api.heartbeats import heartbeat_record
from api.models import Job
from api.services import job_cancel, job_fail, job_start, job_succeed
from tests.api.helpers import assert_error

pytestmark = pytest.mark.django_db


def scrape(client: Any = None, **headers: str) -> dict[str, Any]:
    response = (client or APIClient()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    matches = [s.value for s in families[family].samples if s.name == sample and s.labels == labels]
    assert len(matches) == 1, (sample, labels, families[family].samples)
    return matches[0]


@pytest.fixture
def finished_jobs(make_job: Any, fake_redis: Any, django_capture_on_commit_callbacks: Any) -> list[Job]:
    """Two succeeded jobs (batch of 2), one failed, one canceled, one still queued, and one cache hit."""
    from api.inputs import ModelInput
    from api.services import job_create, model_spec_get

    jobs = [make_job(b"a"), make_job(b"b"), make_job(b"c"), make_job(b"d"), make_job(b"e")]
    with django_capture_on_commit_callbacks(execute=True):
        for job in jobs[:3]:
            job_start(job_id=job.id, worker="w1")
        running = [Job.objects.get(id=job.id) for job in jobs[:3]]
        job_succeed(job=running[0], result={"r": 0}, inference_ms=40.0, batch_size=2)
        job_succeed(job=running[1], result={"r": 1}, inference_ms=40.0, batch_size=2)
        job_fail(job=running[2], code="inference_error", message="boom", inference_ms=3.0)
        job_cancel(job=jobs[3])
        hit = job_create(owner=jobs[0].owner, spec=model_spec_get(name="echo"),
                         model_input=ModelInput(b"a", "application/octet-stream"))
    assert hit.cached
    return jobs


def test_jobs_by_model_and_status(finished_jobs: list[Job]) -> None:
    families = scrape()
    assert value(families, "inferq_jobs", "inferq_jobs", model="echo", status="succeeded") == 3
    assert value(families, "inferq_jobs", "inferq_jobs", model="echo", status="failed") == 1
    assert value(families, "inferq_jobs", "inferq_jobs", model="echo", status="canceled") == 1
    assert value(families, "inferq_jobs", "inferq_jobs", model="echo", status="queued") == 1
    assert value(families, "inferq_jobs", "inferq_jobs", model="echo", status="running") == 0
    assert value(families, "inferq_queue_depth", "inferq_queue_depth", model="echo") == 1


def test_finished_counters_and_cache_hits(finished_jobs: list[Job]) -> None:
    families = scrape()
    finished = "inferq_jobs_finished"
    assert value(families, finished, "inferq_jobs_finished_total", model="echo", status="succeeded") == 3
    assert value(families, finished, "inferq_jobs_finished_total", model="echo", status="failed") == 1
    assert value(families, finished, "inferq_jobs_finished_total", model="echo", status="canceled") == 1
    assert value(families, "inferq_cache_hits", "inferq_cache_hits_total", model="echo") == 1
    assert value(families, "inferq_redis_up", "inferq_redis_up") == 1


def test_histograms_of_time_and_batch_size(finished_jobs: list[Job]) -> None:
    families = scrape()
    inference = families["inferq_job_inference_seconds"]
    assert value(families, "inferq_job_inference_seconds", "inferq_job_inference_seconds_count", model="echo") == 3
    assert value(families, "inferq_job_inference_seconds", "inferq_job_inference_seconds_sum",
                 model="echo") == pytest.approx(0.083)
    buckets = [(float(s.labels["le"]), s.value) for s in inference.samples if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets)  # cumulative: never decreasing
    assert dict(buckets)[0.005] == 1 and dict(buckets)[0.05] == 3 and dict(buckets)[float("inf")] == 3
    # The cache hit ran nothing and is left out of the timings; the canceled job never queued-then-started.
    assert value(families, "inferq_job_total_seconds", "inferq_job_total_seconds_count", model="echo") == 4
    assert value(families, "inferq_job_queue_seconds", "inferq_job_queue_seconds_count", model="echo") == 3
    assert value(families, "inferq_job_batch_size", "inferq_job_batch_size_bucket", model="echo", le="2.0") == 2
    assert value(families, "inferq_job_batch_size", "inferq_job_batch_size_bucket", model="echo", le="1.0") == 0


def test_workers_online_and_broker_messages(echo_model: Path, fake_redis: Any) -> None:
    heartbeat_record(hostname="w1@host", models=["echo"], client=fake_redis)
    heartbeat_record(hostname="w2@host", models=["echo"], client=fake_redis)
    fake_redis.rpush("inferq.model.echo", b"m1", b"m2")
    families = scrape()
    assert value(families, "inferq_workers_online", "inferq_workers_online", model="echo") == 2
    assert value(families, "inferq_broker_messages", "inferq_broker_messages", model="echo") == 2


def test_without_redis_the_database_metrics_still_answer(make_job: Any) -> None:
    from api.redis_client import set_redis

    make_job(b"queued")
    set_redis(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2))
    try:
        families = scrape()
    finally:
        set_redis(None)
    assert value(families, "inferq_redis_up", "inferq_redis_up") == 0
    assert value(families, "inferq_queue_depth", "inferq_queue_depth", model="echo") == 1
    assert "inferq_workers_online" not in families


def test_openmetrics_when_the_scraper_asks(echo_model: Path, fake_redis: Any) -> None:
    response = APIClient().get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")


def test_a_metrics_token_is_required_when_configured(echo_model: Path, fake_redis: Any, settings: Any) -> None:
    settings.INFERQ_METRICS_TOKEN = "s3cret"
    assert_error(APIClient().get("/metrics"), 401, "not_authenticated")
    assert_error(APIClient().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong"), 401, "not_authenticated")
    assert "inferq_jobs" in scrape(HTTP_AUTHORIZATION="Bearer s3cret")


def test_counts_are_sent_in_bulk_and_not_lost_when_redis_blinks(finished_jobs: list[Job], fake_redis: Any,
                                                                monkeypatch: Any) -> None:
    """Ended jobs are counted in the process and reach Redis together; a failed send keeps them for the next."""
    import api.metrics

    monkeypatch.setattr(fake_redis, "pipeline", lambda **kw: (_ for _ in ()).throw(redis.ConnectionError("down")))
    with pytest.raises(redis.ConnectionError):
        api.metrics.metrics_flush()
    monkeypatch.undo()

    api.metrics.metrics_flush()

    sent = fake_redis.hgetall(api.metrics.model_key("echo"))
    assert sent[b"jobs:succeeded"] == b"3" and sent[b"jobs:failed"] == b"1" and sent[b"cache_hits"] == b"1"
    assert sent[b"batch:count"] == b"2"
    api.metrics.metrics_flush()  # nothing left: a second send adds nothing
    assert fake_redis.hgetall(api.metrics.model_key("echo")) == sent


def test_a_forked_child_does_not_send_its_parents_unsent_counts(finished_jobs: list[Job], monkeypatch: Any) -> None:
    """uWSGI and Celery fork workers: the parent's counts are the parent's to send, or they would count twice."""
    import os

    import api.metrics

    monkeypatch.setattr(api.metrics, "metrics_flush", lambda: None)  # the flusher thread must not drain them now
    assert api.metrics._tally.counts  # the parent has counted the finished jobs and not yet sent them
    pid = os.fork()
    if pid == 0:
        os._exit(0 if api.metrics._tally.counts == {} and not api.metrics._tally.lock.locked() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert api.metrics._tally.counts  # still here for the parent's own flush
