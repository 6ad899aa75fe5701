"""The sweeper's lost-message recovery: which queued jobs get a new message, and which must not.

The broker's Redis is fakeredis holding kombu's keys as the Redis transport writes them; new
messages go to the test settings' memory broker, where they are counted.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import fakeredis
import pytest
from django.utils import timezone

from api.models import Job, JobStatus
from api.recovery import MARKER_KEY, UNACKED_INDEX_KEY, UNACKED_KEY, job_republish_lost
from tests.api.helpers import broker_messages

pytestmark = pytest.mark.django_db

QUEUE = "inferq.model.echo"


@pytest.fixture
def broker() -> fakeredis.FakeRedis:
    """The broker's Redis, as it is after a first sweep: the marker is set."""
    client = fakeredis.FakeRedis()
    client.set(MARKER_KEY, "set by an earlier sweep")
    return client


def message(job: Job) -> bytes:
    return json.dumps({"body": "", "headers": {"id": str(job.id), "task": "inference.run"},
                       "properties": {"delivery_tag": f"tag-{job.id}"}}).encode()


def reserve(client: fakeredis.FakeRedis, job: Job, *, seconds_ago: float) -> None:
    """A worker took the message (kombu moves it from the queue list to the unacked hash)."""
    tag = f"tag-{job.id}"
    client.hset(UNACKED_KEY, tag, json.dumps([json.loads(message(job)), "", QUEUE]))
    client.zadd(UNACKED_INDEX_KEY, {tag: time.time() - seconds_ago})


def age(job: Job, seconds: float) -> None:
    Job.objects.filter(id=job.id).update(enqueued_at=timezone.now() - timedelta(seconds=seconds))


def republished_ids() -> list[str]:
    return [m.headers["id"] for m in broker_messages(QUEUE)]


@pytest.fixture
def jobs(make_job: Any) -> list[Job]:
    made = [make_job(f"input {i}".encode()) for i in range(3)]
    broker_messages(QUEUE)  # their first messages, published by job_create
    return made


def test_a_broker_that_lost_its_data_gets_every_queued_job_again(jobs: list[Job]) -> None:
    client = fakeredis.FakeRedis()  # no marker: Redis restarted empty (or this is the first sweep)
    running = jobs[2]
    Job.objects.filter(id=running.id).update(status=JobStatus.RUNNING)

    counts = job_republish_lost(client=client)

    assert counts == {"republished": 2, "broker_reset": 1}
    assert sorted(republished_ids()) == sorted(str(j.id) for j in jobs[:2])
    assert client.get(MARKER_KEY)
    # The marker is back: the next sweep republishes nothing that is fresh.
    assert job_republish_lost(client=client) == {"republished": 0, "broker_reset": 0}
    assert republished_ids() == []


def test_a_stale_job_whose_message_is_missing_is_republished_once(jobs: list[Job], broker: Any,
                                                                   settings: Any) -> None:
    settings.INFERQ_LOST_MESSAGE_SECONDS = 30
    lost, waiting, fresh = jobs
    age(lost, 60)
    age(waiting, 60)
    broker.lpush(QUEUE, message(waiting))  # still in its queue: fine

    assert job_republish_lost(client=broker)["republished"] == 1
    assert republished_ids() == [str(lost.id)]
    # Its new message counts as fresh: the next sweep leaves it alone.
    assert job_republish_lost(client=broker)["republished"] == 0


def test_a_message_reserved_recently_is_live_and_one_reserved_long_ago_is_lost(jobs: list[Job], broker: Any,
                                                                               settings: Any) -> None:
    settings.INFERQ_LOST_MESSAGE_SECONDS = 30
    taken_now, taken_by_a_dead_worker, _ = jobs
    for job in jobs:
        age(job, 60)
    reserve(broker, taken_now, seconds_ago=1)
    reserve(broker, taken_by_a_dead_worker, seconds_ago=120)
    broker.lpush(QUEUE, message(jobs[2]))

    job_republish_lost(client=broker)

    assert republished_ids() == [str(taken_by_a_dead_worker.id)]


def test_a_queue_at_least_as_long_as_the_queued_jobs_is_not_scanned(jobs: list[Job], broker: Any,
                                                                    settings: Any) -> None:
    settings.INFERQ_LOST_MESSAGE_SECONDS = 30
    for job in jobs:
        age(job, 60)
    # Three messages (say, of jobs a batch already took): cheap LLEN says nothing can be found missing now.
    for _ in range(3):
        broker.lpush(QUEUE, b'{"headers": {"id": "someone-else"}}')

    assert job_republish_lost(client=broker)["republished"] == 0
    broker.delete(QUEUE)  # the queue drained: now the lost ones show
    assert job_republish_lost(client=broker)["republished"] == 3


def test_a_job_published_before_the_threshold_is_left_alone(jobs: list[Job], broker: Any, settings: Any) -> None:
    settings.INFERQ_LOST_MESSAGE_SECONDS = 30
    age(jobs[0], 10)

    assert job_republish_lost(client=broker)["republished"] == 0


def test_a_job_never_published_is_republished_after_the_threshold(make_job: Any, broker: Any,
                                                                  settings: Any) -> None:
    settings.INFERQ_LOST_MESSAGE_SECONDS = 30
    job = make_job(b"the web process died between commit and publish")
    broker_messages(QUEUE)
    Job.objects.filter(id=job.id).update(enqueued_at=None, created_at=timezone.now() - timedelta(seconds=60))

    assert job_republish_lost(client=broker)["republished"] == 1
    assert republished_ids() == [str(job.id)]


def test_ended_and_running_jobs_are_never_republished(jobs: list[Job], settings: Any) -> None:
    Job.objects.filter(id=jobs[0].id).update(status=JobStatus.SUCCEEDED)
    Job.objects.filter(id=jobs[1].id).update(status=JobStatus.CANCELED)
    Job.objects.filter(id=jobs[2].id).update(status=JobStatus.RUNNING)

    assert job_republish_lost(client=fakeredis.FakeRedis())["republished"] == 0
    assert republished_ids() == []


def test_a_redis_outage_skips_the_sweep_without_raising(jobs: list[Job]) -> None:
    server = fakeredis.FakeServer()
    server.connected = False

    assert job_republish_lost(client=fakeredis.FakeRedis(server=server)) == {"republished": 0, "broker_reset": 0}


def test_a_failed_republish_clears_the_marker_so_the_next_sweep_starts_over(jobs: list[Job], monkeypatch: Any) -> None:
    from api import recovery
    from api.exceptions import ServiceUnavailable

    def broker_down(**kwargs: Any) -> None:
        raise ServiceUnavailable("down", code="broker_unavailable")

    monkeypatch.setattr(recovery, "job_enqueue", broker_down)
    client = fakeredis.FakeRedis()

    job_republish_lost(client=client)

    assert client.get(MARKER_KEY) is None


def test_the_sweep_task_runs_both_recoveries(jobs: list[Job], monkeypatch: Any) -> None:
    from api import recovery
    from tasks.sweeper import sweep

    monkeypatch.setattr(recovery, "broker_redis", lambda: _yield(fakeredis.FakeRedis()))

    counts = sweep()

    assert counts == {"requeued": 0, "worker_lost": 0, "republished": 3, "broker_reset": 1}


class _yield:
    """A context manager yielding `value` (stands in for the broker connection)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: object) -> None:
        return None
