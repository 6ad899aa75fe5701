"""Waiting without polling: `Prefer: wait=N` on submit, `GET /v1/jobs/{id}?wait=N`, events on every end."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from api.events import (
    EVENT_ROW_MAX_BYTES,
    job_channel,
    job_event_body,
    job_from_event,
    job_wait,
    jobs_wait_held,
    parse_prefer_wait,
    parse_query_wait,
    wait_slot,
)
from api.exceptions import InvalidInput
from api.models import Job, JobStatus
from api.services import job_cancel, job_fail, job_start, job_succeed
from tests.api import fake_worker
from tests.api.helpers import assert_error

ECHO_URL = "/v1/models/echo/jobs"


def finish_when_subscribed(fake_redis: Any, job_id: Any, *, result: Any = None) -> Any:
    return fake_worker.finish_when_subscribed(fake_redis, job_id, lambda job: result or {"ok": True})


@pytest.fixture
def subscriber(fake_redis: Any) -> Iterator[Callable[[Any], Any]]:
    pubsubs: list[Any] = []

    def subscribe(job_id: Any) -> Any:
        pubsub = fake_redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(job_channel(job_id))
        pubsubs.append(pubsub)
        return pubsub

    yield subscribe
    for pubsub in pubsubs:
        pubsub.close()


def next_message(pubsub: Any) -> Any:
    for _ in range(50):
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            return message
    return None


# --- parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("header, expected", [
    (None, None), ("", None), ("wait=5", 5.0), ("respond-async, wait=10", 10.0), ("wait=600", 60.0),
    ("WAIT=2.5", 2.5), ("wait=soon", None), ("handling=lenient", None), ('wait="3"', 3.0), ("wait=nan", None),
])
def test_prefer_wait_is_parsed_capped_and_otherwise_ignored(header: str | None, expected: float | None) -> None:
    assert parse_prefer_wait(header) == expected


def test_query_wait_is_capped_at_60_and_garbage_is_refused() -> None:
    assert parse_query_wait(None) is None
    assert parse_query_wait("90") == 60.0
    assert parse_query_wait("0.5") == 0.5
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(InvalidInput):
            parse_query_wait(bad)


# --- events are published on every way a job ends ----------------------------------------------------


@pytest.mark.django_db
def test_success_failure_and_cancel_each_publish_the_final_status(make_job: Any, subscriber: Any,
                                                                 django_capture_on_commit_callbacks: Any) -> None:
    jobs = [make_job(b"one"), make_job(b"two"), make_job(b"three")]
    channels = [subscriber(job.id) for job in jobs]

    with django_capture_on_commit_callbacks(execute=True):
        job_succeed(job=jobs[0], result={"x": 1}, inference_ms=2.0)
        job_fail(job=jobs[1], code="inference_error", message="boom")
        job_cancel(job=jobs[2])

    bodies = [json.loads(next_message(p)["data"]) for p in channels]
    assert [body["status"] for body in bodies] == ["succeeded", "failed", "canceled"]
    assert [body["row"]["id"] for body in bodies] == [str(job.id) for job in jobs]


def fields_of(job: Job) -> dict[str, Any]:
    """Every column a waiter answers from (the input bytes are never read by the web tier)."""
    return {f.attname: getattr(job, f.attname) for f in Job._meta.concrete_fields if f.attname != "input_data"}


@pytest.mark.django_db
@pytest.mark.parametrize("end", ["succeed", "fail", "cancel", "worker_lost"])
def test_the_event_carries_the_row_as_committed(make_job: Any, subscriber: Any, settings: Any, end: str,
                                                django_capture_on_commit_callbacks: Any) -> None:
    settings.INFERQ_MAX_ATTEMPTS = 1
    job = make_job(b"row")
    stale = Job.objects.get(id=job.id)  # what a waiter read while the job was queued
    channel = subscriber(job.id)
    with django_capture_on_commit_callbacks(execute=True):
        claimed = job_start(job_id=job.id, worker="w1")
        if end == "succeed":
            job_succeed(job=claimed, result={"top": [1, 2.5, "x"]}, inference_ms=2.25, batch_size=3)
        elif end == "fail":
            job_fail(job=claimed, code="invalid_input", message="not a digit", inference_ms=0.5)
        elif end == "cancel":
            job_cancel(job=Job.objects.get(id=job.id))
        else:
            Job.objects.filter(id=job.id).update(lease_expires_at=None)
            assert job_start(job_id=job.id, worker="w2") is None

    assert job_from_event(stale, next_message(channel)["data"]) is True
    assert fields_of(stale) == fields_of(Job.objects.get(id=job.id))


def test_an_event_without_the_row_is_refused() -> None:
    job = Job(id=uuid.uuid4())
    other = Job(id=uuid.uuid4(), status=JobStatus.SUCCEEDED)
    assert job_from_event(job, b"succeeded") is False  # an older worker's event: the status alone
    assert job_from_event(job, job_event_body(other).encode()) is False  # another job's row
    assert job_from_event(job, b'{"row": []}') is False
    assert job.status == JobStatus.QUEUED


@pytest.mark.django_db
def test_a_large_result_sends_the_status_alone(make_job: Any, settings: Any) -> None:
    job = make_job(b"big")
    job.status, job.result = JobStatus.SUCCEEDED, {"mask": "x" * EVENT_ROW_MAX_BYTES}
    assert job_event_body(job) == "succeeded"


@pytest.mark.django_db
def test_a_job_failing_out_of_attempts_publishes_once_committed(make_job: Any, subscriber: Any, settings: Any,
                                                                django_capture_on_commit_callbacks: Any) -> None:
    settings.INFERQ_MAX_ATTEMPTS = 1
    job = make_job(b"crashy")
    channel = subscriber(job.id)
    assert job_start(job_id=job.id, worker="w1") is not None
    Job.objects.filter(id=job.id).update(lease_expires_at=None)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert job_start(job_id=job.id, worker="w2") is None
    assert channel.get_message(timeout=0.05) is None  # nothing before the commit
    for callback in callbacks:
        callback()
    assert json.loads(next_message(channel)["data"])["status"] == "failed"


@pytest.mark.django_db
def test_a_second_finish_publishes_nothing(make_job: Any, subscriber: Any,
                                          django_capture_on_commit_callbacks: Any) -> None:
    job = make_job(b"twice")
    channel = subscriber(job.id)
    with django_capture_on_commit_callbacks(execute=True):
        job_succeed(job=job, result={}, inference_ms=1.0)
    assert json.loads(next_message(channel)["data"])["status"] == "succeeded"

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert job_succeed(job=Job.objects.get(id=job.id), result={}, inference_ms=1.0) is False

    assert callbacks == []
    assert channel.get_message(timeout=0.05) is None


# --- the wait itself -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_waiter_wakes_on_the_event(make_job: Any, fake_redis: Any) -> None:
    job = make_job(b"wake me")
    worker = finish_when_subscribed(fake_redis, job.id, result={"answer": 42})

    [ended] = jobs_wait_held(jobs=[job], timeout=10)

    worker.join(5)
    assert ended.status == JobStatus.SUCCEEDED
    assert ended.result == {"answer": 42}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("carries_row", [True, False])
def test_a_waiter_answers_from_the_events_row_without_reading_it_again(make_job: Any, fake_redis: Any,
                                                                       monkeypatch: Any, carries_row: bool) -> None:
    import api.events

    if not carries_row:  # an older worker, or a result too large for the event: the status alone
        monkeypatch.setattr(api.events, "job_event_body", lambda job: str(job.status))
    job = make_job(b"wake me")
    reads: list[int] = []
    real_refresh = api.events._refresh
    monkeypatch.setattr(api.events, "_refresh", lambda jobs: reads.append(len(jobs)) or real_refresh(jobs))
    worker = finish_when_subscribed(fake_redis, job.id, result={"answer": 42})

    [ended] = jobs_wait_held(jobs=[job], timeout=10)

    worker.join(5)
    assert ended.status == JobStatus.SUCCEEDED and ended.result == {"answer": 42}
    assert fields_of(ended) == fields_of(Job.objects.get(id=job.id))
    # One read right after subscribing (an end before it would be missed otherwise); a second only without the row.
    assert reads == ([1] if carries_row else [1, 1])


@pytest.mark.django_db(transaction=True)
def test_a_thread_keeps_its_subscriber_connection_between_waits(make_job: Any, fake_redis: Any) -> None:
    """A second wait in the same web thread reuses the first one's connection, and still wakes on its event."""
    import api.events

    first = make_job(b"first")
    assert job_wait(job=first, timeout=0.05)[0].status == JobStatus.QUEUED
    pubsub = api.events._local.pubsub
    connection = pubsub.connection
    assert connection is not None  # released for reuse, not closed

    second = make_job(b"second")
    worker = finish_when_subscribed(fake_redis, second.id, result={"again": True})
    [ended] = jobs_wait_held(jobs=[second], timeout=10)
    worker.join(5)

    assert ended.status == JobStatus.SUCCEEDED and ended.result == {"again": True}
    assert api.events._local.pubsub is pubsub and pubsub.connection is connection


@pytest.mark.django_db
def test_an_end_before_the_subscription_is_not_lost(make_job: Any, fake_redis: Any) -> None:
    """The row is re-read after subscribing: a job that ended in between (no event seen) returns at once."""
    job = make_job(b"already done")
    stale = Job.objects.get(id=job.id)
    Job.objects.filter(id=job.id).update(status=JobStatus.SUCCEEDED, result={"early": True})

    [ended] = jobs_wait_held(jobs=[stale], timeout=30)

    assert ended.status == JobStatus.SUCCEEDED and ended.result == {"early": True}


@pytest.mark.django_db
def test_a_wait_that_runs_out_returns_the_job_as_it_is(make_job: Any, fake_redis: Any) -> None:
    job = make_job(b"slow")

    ended, honoured = job_wait(job=job, timeout=0.2)

    assert honoured is True
    assert ended.status == JobStatus.QUEUED


@pytest.mark.django_db
def test_when_every_wait_slot_is_taken_the_wait_answers_at_once(make_job: Any, fake_redis: Any,
                                                                  settings: Any) -> None:
    settings.INFERQ_WAIT_SLOTS = 1
    job = make_job(b"busy")
    with wait_slot() as held:
        assert held
        ended, honoured = job_wait(job=job, timeout=30)
    assert honoured is False
    assert ended.status == JobStatus.QUEUED
    with wait_slot() as held_again:
        assert held_again  # the slot came back


# --- over HTTP -------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_prefer_wait_answers_200_with_the_result(api_client: Any, echo_model: Any, fake_redis: Any,
                                                 monkeypatch: Any) -> None:
    import api.views

    real_wait = api.views.job_wait

    def wait_while_a_worker_finishes(*, job: Job, timeout: float) -> Any:
        finish_when_subscribed(fake_redis, job.id, result={"done": True})
        return real_wait(job=job, timeout=timeout)

    monkeypatch.setattr(api.views, "job_wait", wait_while_a_worker_finishes)

    response = api_client.post(ECHO_URL, data=b"hello there", content_type="application/octet-stream",
                               HTTP_PREFER="wait=10")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "succeeded" and body["result"] == {"done": True}
    assert response["Preference-Applied"] == "wait=10"
    assert response["Location"] == f"/v1/jobs/{body['id']}"


@pytest.mark.django_db
def test_prefer_wait_that_runs_out_answers_202(api_client: Any, echo_model: Any, fake_redis: Any) -> None:
    response = api_client.post(ECHO_URL, data=b"nobody runs this", content_type="application/octet-stream",
                               HTTP_PREFER="wait=0.2")

    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    assert response["Preference-Applied"] == "wait=0.2"
    assert response["Location"] == f"/v1/jobs/{response.json()['id']}"


@pytest.mark.django_db
def test_without_prefer_submit_does_not_wait(api_client: Any, echo_model: Any, monkeypatch: Any) -> None:
    import api.views

    monkeypatch.setattr(api.views, "job_wait", lambda **kw: pytest.fail("waited without Prefer: wait"))
    response = api_client.post(ECHO_URL, data=b"fire and forget", content_type="application/octet-stream")
    assert response.status_code == 202
    assert "Preference-Applied" not in response


@pytest.mark.django_db(transaction=True)
def test_get_with_wait_holds_until_the_job_ends(api_client: Any, make_job: Any, fake_redis: Any) -> None:
    job = make_job(b"poll no more")
    finish_when_subscribed(fake_redis, job.id, result={"held": True})

    response = api_client.get(f"/v1/jobs/{job.id}?wait=10")

    assert response.status_code == 200
    assert response.json()["status"] == "succeeded"
    assert response.json()["result"] == {"held": True}


@pytest.mark.django_db
def test_get_with_a_bad_wait_is_a_400(api_client: Any, make_job: Any) -> None:
    job = make_job(b"x")
    assert_error(api_client.get(f"/v1/jobs/{job.id}?wait=later"), 400, "invalid_request")


@pytest.mark.django_db
def test_get_with_wait_on_an_ended_job_answers_at_once(api_client: Any, make_job: Any, monkeypatch: Any) -> None:
    import api.events

    job = make_job(b"done already")
    job_succeed(job=job, result={"r": 1}, inference_ms=1.0)
    monkeypatch.setattr(api.events, "jobs_wait_held", lambda **kw: pytest.fail("subscribed for an ended job"))

    response = api_client.get(f"/v1/jobs/{job.id}?wait=30")

    assert response.status_code == 200 and response.json()["status"] == "succeeded"


@pytest.mark.django_db
def test_waiting_on_someone_elses_job_is_not_found(api_client: Any, make_job: Any, other_user: Any) -> None:
    job = make_job(b"private", owner=other_user)
    assert_error(api_client.get(f"/v1/jobs/{job.id}?wait=5"), 404, "not_found")
