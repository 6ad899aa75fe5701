"""Waiting on a whole batch: `GET /v1/batches/{id}?wait=N`, the batch channel every ending is announced on."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

import api.events
from api.events import batch_channel, batch_wait, job_channel, wait_slot
from api.models import Batch, Job, JobStatus
from api.selectors import batch_unfinished
from api.services import job_cancel, job_fail, job_succeed
from tests.api import fake_worker
from tests.api.helpers import assert_error


@pytest.fixture
def make_batch(user: Any, echo_model: Any) -> Callable[..., tuple[Batch, list[Job]]]:
    """A batch of `size` queued echo jobs, made through the real service."""
    from api.inputs import ModelInput
    from api.services import job_create, model_spec_get

    def make(size: int, *, owner: Any = None) -> tuple[Batch, list[Job]]:
        batch = Batch.objects.create(owner=owner or user, name="folder")
        spec = model_spec_get(name="echo")
        jobs = [job_create(owner=owner or user, spec=spec, batch=batch,
                           model_input=ModelInput(f"input {i}".encode(), "application/octet-stream"))
                for i in range(size)]
        return batch, jobs

    return make


def end_when_subscribed(fake_redis: Any, batch: Batch, jobs: list[Job], *, pause: float = 0.05) -> threading.Thread:
    """Once a waiter listens on the batch's channel, end `jobs` one by one (from another thread, as a worker would)."""

    def run() -> None:
        try:
            fake_worker.wait_for_subscriber(fake_redis, batch_channel(batch.id))
            for job in jobs:
                time.sleep(pause)  # the waiter's own reads in between (SQLite's shared test database)
                fake_worker.end_job_by_id(job.id, lambda j: {"echo": j.input_size})
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def counting(batch: Batch) -> tuple[list[int], Callable[[], int]]:
    counts: list[int] = []

    def unfinished() -> int:
        counts.append(batch_unfinished(batch=batch))
        return counts[-1]

    return counts, unfinished


# --- the announcements ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_ending_of_a_batch_job_is_announced_on_the_batch_channel(
        make_batch: Any, make_job: Any, fake_redis: Any, django_capture_on_commit_callbacks: Any) -> None:
    batch, jobs = make_batch(3)
    loner = make_job(b"in no batch")
    listener = fake_redis.pubsub(ignore_subscribe_messages=True)
    listener.psubscribe("inferq:batch:*")
    listener.subscribe(job_channel(jobs[0].id))

    with django_capture_on_commit_callbacks(execute=True):
        job_succeed(job=jobs[0], result={"x": 1}, inference_ms=2.0)
        job_fail(job=jobs[1], code="inference_error", message="boom")
        job_cancel(job=jobs[2])
        job_succeed(job=loner, result={"x": 2}, inference_ms=2.0)

    messages = []
    deadline = time.monotonic() + 0.5  # (a subscription's confirmation reads as None too: read until quiet)
    while time.monotonic() < deadline:
        if (message := listener.get_message(timeout=0.05)) is not None:
            messages.append((message["channel"].decode(), message["data"].decode()))
    listener.close()
    on_batch = [(channel, data) for channel, data in messages if channel.startswith("inferq:batch:")]
    assert on_batch == [(batch_channel(batch.id), status) for status in ("succeeded", "failed", "canceled")]
    # The job's own event still goes out beside it, with its row.
    assert [channel for channel, _ in messages if channel.startswith("inferq:job:")] == [job_channel(jobs[0].id)]


# --- the wait ---------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_batch_wait_returns_when_its_last_job_ends_counting_down_the_announcements(
        make_batch: Any, fake_redis: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(api.events, "BATCH_RECOUNT_S", 60.0)  # only the announcements can end it in time
    batch, jobs = make_batch(4)
    counts, unfinished = counting(batch)
    worker = end_when_subscribed(fake_redis, batch, jobs)

    started = time.monotonic()
    assert batch_wait(batch_id=batch.id, unfinished=unfinished, timeout=10) is True
    elapsed = time.monotonic() - started

    worker.join(5)
    assert batch_unfinished(batch=batch) == 0
    assert elapsed < 8
    # Counted before subscribing, once subscribed, and when the announcements reach zero: not once per job.
    assert counts == [4, 4, 0]


@pytest.mark.django_db
def test_a_stray_announcement_does_not_end_the_wait_early(make_batch: Any, fake_redis: Any) -> None:
    """Zero is checked, never trusted: more announcements than endings (an ending counted twice) hold the wait."""
    batch, jobs = make_batch(1)
    counts, unfinished = counting(batch)
    channel = batch_channel(batch.id)

    def announce_twice() -> None:
        fake_worker.wait_for_subscriber(fake_redis, channel, timeout=5)
        fake_redis.publish(channel, "succeeded")
        fake_redis.publish(channel, "succeeded")

    stray = threading.Thread(target=announce_twice, daemon=True)
    stray.start()
    started = time.monotonic()
    batch_wait(batch_id=batch.id, unfinished=unfinished, timeout=0.6)
    stray.join(5)

    assert time.monotonic() - started >= 0.6
    assert Job.objects.get(id=jobs[0].id).status == JobStatus.QUEUED
    assert counts[:3] == [1, 1, 1]  # the announcement brought the count to zero; the recount found one left


@pytest.mark.django_db
def test_a_lost_announcement_is_caught_by_counting_again(make_batch: Any, fake_redis: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(api.events, "BATCH_RECOUNT_S", 0.1)
    batch, jobs = make_batch(2)
    counts, unfinished = counting(batch)
    # The jobs end without a word on the channel (the worker's PUBLISH failed), once the wait has counted them.

    def end_silently() -> int:
        if len(counts) == 2:
            Job.objects.filter(batch=batch).update(status=JobStatus.SUCCEEDED)
        return unfinished()

    started = time.monotonic()
    assert batch_wait(batch_id=batch.id, unfinished=end_silently, timeout=20) is True
    assert time.monotonic() - started < 5
    assert counts == [2, 2, 0]


@pytest.mark.django_db
def test_a_batch_wait_without_a_free_slot_answers_at_once(make_batch: Any, fake_redis: Any, settings: Any) -> None:
    settings.INFERQ_WAIT_SLOTS = 1
    batch, _ = make_batch(1)
    with wait_slot() as held:
        assert held
        started = time.monotonic()
        assert batch_wait(batch_id=batch.id, unfinished=lambda: batch_unfinished(batch=batch), timeout=30) is False
        assert time.monotonic() - started < 1


@pytest.mark.django_db
def test_a_batch_wait_keeps_the_threads_subscriber_for_the_next_wait(make_batch: Any, fake_redis: Any) -> None:
    batch, _ = make_batch(1)
    batch_wait(batch_id=batch.id, unfinished=lambda: batch_unfinished(batch=batch), timeout=0.05)
    pubsub = api.events._local.pubsub
    assert pubsub is not None and pubsub.connection is not None
    channel = batch_channel(batch.id)
    # Unsubscribed, so the channel no longer reaches this thread.
    assert not fake_worker.subscribed(fake_redis, channel)


# --- over HTTP ---------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_get_batch_with_wait_holds_until_every_job_has_ended(api_client: Any, make_batch: Any,
                                                             fake_redis: Any) -> None:
    batch, jobs = make_batch(3)
    worker = end_when_subscribed(fake_redis, batch, jobs)

    response = api_client.get(f"/v1/batches/{batch.id}?wait=20")

    worker.join(5)
    assert response.status_code == 200
    body = response.json()
    assert body["total"] == 3 and body["counts"]["succeeded"] == 3
    assert body["counts"]["queued"] == body["counts"]["running"] == 0
    # Then every result comes in one page of the batch's jobs.
    listed = api_client.get(f"/v1/jobs?batch={batch.id}&limit=1000").json()
    assert sorted(job["result"]["echo"] for job in listed["results"]) == sorted(job.input_size for job in jobs)


@pytest.mark.django_db
def test_get_batch_with_wait_that_runs_out_answers_the_counts_as_they_are(api_client: Any, make_batch: Any,
                                                                          fake_redis: Any) -> None:
    batch, _ = make_batch(2)
    started = time.monotonic()
    body = api_client.get(f"/v1/batches/{batch.id}?wait=0.3").json()
    assert time.monotonic() - started >= 0.3
    assert body["counts"]["queued"] == 2


@pytest.mark.django_db
def test_get_batch_with_wait_on_an_ended_batch_answers_at_once(api_client: Any, make_batch: Any,
                                                               monkeypatch: Any) -> None:
    batch, jobs = make_batch(1)
    Job.objects.filter(id=jobs[0].id).update(status=JobStatus.FAILED)
    monkeypatch.setattr(api.events, "wait_slot", None)  # a wait would take a slot: it must not get that far
    assert api_client.get(f"/v1/batches/{batch.id}?wait=30").json()["counts"]["failed"] == 1


@pytest.mark.django_db
def test_get_batch_with_a_bad_wait_or_someone_elses_batch_is_refused(api_client: Any, make_batch: Any,
                                                                      other_user: Any) -> None:
    batch, _ = make_batch(1)
    assert_error(api_client.get(f"/v1/batches/{batch.id}?wait=later"), 400, "invalid_request")
    theirs, _ = make_batch(1, owner=other_user)
    assert_error(api_client.get(f"/v1/batches/{theirs.id}?wait=1"), 404, "not_found")


@pytest.mark.django_db
def test_a_job_page_holds_at_most_max_limit_jobs(api_client: Any, make_batch: Any, monkeypatch: Any) -> None:
    from api.views import JobPagination

    monkeypatch.setattr(JobPagination, "max_limit", 2)
    batch, _ = make_batch(3)
    page = api_client.get(f"/v1/jobs?batch={batch.id}&limit=100").json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
