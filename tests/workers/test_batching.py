"""Dynamic batching by claiming queued rows, and the leases that make it crash-safe."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from django.utils import timezone

from api import events, services
from api.inputs import ModelInput
from api.models import Job, JobStatus
from api.services import job_claim_queued, job_create, job_leases_renew, job_requeue_orphans, job_start, model_spec_get
from tests.api.helpers import broker_messages
from tests.workers.helpers import acting_as_worker
from workers import runner

pytestmark = pytest.mark.django_db

WORKER = "celery@batcher"


@pytest.fixture(autouse=True)
def worker_state(tmp_path: Path, settings: Any) -> Iterator[None]:
    with acting_as_worker(tmp_path, settings, WORKER):
        yield


def set_batching(model_dir: Path, batch_size: int, delay_ms: float = 0) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest.update(batch_size=batch_size, batch_delay_ms=delay_ms)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def make_jobs(user: Any, echo_model: Path) -> Callable[[list[bytes]], list[Job]]:
    def make(payloads: list[bytes]) -> list[Job]:
        spec = model_spec_get(name="echo")
        return [job_create(owner=user, spec=spec, model_input=ModelInput(p, "application/octet-stream"))
                for p in payloads]

    return make


def test_one_message_runs_every_queued_job_as_one_batch(echo_model: Path, make_jobs: Any) -> None:
    set_batching(echo_model, batch_size=8)
    jobs = make_jobs([f"input {i}".encode() for i in range(5)])

    runner.run_job(str(jobs[0].id))

    rows = {j.id: j for j in Job.objects.all()}
    assert all(rows[j.id].status == JobStatus.SUCCEEDED for j in jobs)
    assert {rows[j.id].batch_size for j in jobs} == {5}
    assert [rows[j.id].result["size"] for j in jobs] == [len(f"input {i}") for i in range(5)]


def test_a_batch_names_the_mates_whose_ending_it_wrote(echo_model: Path, make_jobs: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """What the worker's consumer reads to end the mates' own messages without running them."""
    set_batching(echo_model, batch_size=8)
    jobs = make_jobs([f"input {i}".encode() for i in range(4)])
    lost = str(jobs[2].id)
    succeed = runner.job_succeed

    def succeed_unless_lost(*, job: Job, **fields: Any) -> bool:
        # As when the job's lease ran out mid-batch and it was queued again: the guarded write changes nothing.
        return False if str(job.id) == lost else succeed(job=job, **fields)

    monkeypatch.setattr(runner, "job_succeed", succeed_unless_lost)
    assert runner.run_job(str(jobs[0].id)) == [str(jobs[1].id), str(jobs[3].id)]
    assert runner.run_job(str(jobs[1].id)) == []  # its job is taken: nothing ran


def test_the_task_result_names_the_batch_mates_and_a_lone_job_returns_none(echo_model: Path,
                                                                          make_jobs: Any) -> None:
    from tasks.inference import run

    set_batching(echo_model, batch_size=8)
    leader, *mates = make_jobs([f"input {i}".encode() for i in range(3)])
    assert run.run(job_id=str(leader.id)) == {"batch_mates": [str(m.id) for m in mates]}
    (lone,) = make_jobs([b"alone"])
    assert run.run(job_id=str(lone.id)) is None


def test_the_task_takes_its_mates_messages_off_the_queue_it_came_from(echo_model: Path, make_jobs: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from api import publish
    from tasks.inference import run

    set_batching(echo_model, batch_size=8)
    leader, *mates = make_jobs([f"input {i}".encode() for i in range(3)])
    asked: list[tuple[str, list[str]]] = []

    def dequeue(app: Any, *, queue: str, task_ids: list[str]) -> list[str]:
        asked.append((queue, task_ids))
        return task_ids[:1]  # as when the other mate's message is already with a worker

    monkeypatch.setattr(publish, "task_dequeue", dequeue)
    run.push_request(delivery_info={"exchange": "", "routing_key": "inferq.model.echo"})
    try:
        result = run.run(job_id=str(leader.id))
    finally:
        run.pop_request()
    mate_ids = [str(m.id) for m in mates]
    assert asked == [("inferq.model.echo", mate_ids)]
    assert result == {"batch_mates": mate_ids, "dequeued": mate_ids[:1]}


def test_batch_size_bounds_the_batch(echo_model: Path, make_jobs: Any, settings: Any) -> None:
    settings.INFERQ_BACKLOG_RUN_S = 0  # one batch per message
    set_batching(echo_model, batch_size=3)
    jobs = make_jobs([b"x" * (i + 1) for i in range(7)])

    runner.run_job(str(jobs[0].id))

    statuses = [Job.objects.get(id=j.id).status for j in jobs]
    assert statuses.count(JobStatus.SUCCEEDED) == 3
    # The oldest jobs go first.
    assert statuses[:3] == [JobStatus.SUCCEEDED] * 3


def counting_claims(monkeypatch: Any) -> list[int]:
    """The number of jobs each claim of more jobs (a batch's mates, the backlog's batches) took, in order."""
    claim, taken = runner.job_claim_queued, []

    def counted(**kwargs: Any) -> list[Job]:
        jobs = claim(**kwargs)
        taken.append(len(jobs))
        return jobs

    monkeypatch.setattr(runner, "job_claim_queued", counted)
    return taken


def test_after_a_full_batch_the_message_goes_on_with_the_backlog_batch_by_batch(echo_model: Path, make_jobs: Any,
                                                                                monkeypatch: Any) -> None:
    from tasks.inference import run

    set_batching(echo_model, batch_size=3)
    jobs = make_jobs([b"x" * (i + 1) for i in range(7)])
    taken = counting_claims(monkeypatch)

    result = run.run(job_id=str(jobs[0].id))

    rows = [Job.objects.get(id=j.id) for j in jobs]
    assert [r.status for r in rows] == [JobStatus.SUCCEEDED] * 7
    # Each batch is its own forward pass of at most batch_size, the oldest jobs first; each job its own result.
    assert [r.batch_size for r in rows] == [3, 3, 3, 3, 3, 3, 1]
    assert [r.result["size"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[0].started_at < rows[3].started_at < rows[6].started_at
    # The batch's mates (2), then two batches from the backlog; none after the short one.
    assert taken == [2, 3, 1]
    # Every other job it ran is named, so the consumer ends their own messages without running them.
    assert result == {"batch_mates": [str(j.id) for j in jobs[1:]]}


def test_a_batch_that_is_not_full_runs_no_backlog(echo_model: Path, make_jobs: Any, monkeypatch: Any) -> None:
    set_batching(echo_model, batch_size=3)
    jobs = make_jobs([b"a", b"b"])
    taken = counting_claims(monkeypatch)

    assert runner.run_job(str(jobs[0].id)) == [str(jobs[1].id)]
    assert taken == [1]


def test_the_backlog_run_stops_before_a_batch_that_would_overrun_its_budget(echo_model: Path, make_jobs: Any,
                                                                           monkeypatch: Any, settings: Any) -> None:
    settings.INFERQ_BACKLOG_RUN_S = 1.0
    set_batching(echo_model, batch_size=3)
    jobs = make_jobs([f"input {i}".encode() for i in range(12)])
    # Every batch takes 0.3 s on the runner's clock: 0.3, 0.6 and 0.9 s; a fourth would end at 1.2.
    real, offset = time.monotonic, [0.0]
    run_claimed = runner.run_claimed

    def slow_batch(batch: list[Job]) -> set[str]:
        offset[0] += 0.3
        return run_claimed(batch)

    monkeypatch.setattr(runner.time, "monotonic", lambda: real() + offset[0])
    monkeypatch.setattr(runner, "run_claimed", slow_batch)

    ran = runner.run_job(str(jobs[0].id))

    statuses = [Job.objects.get(id=j.id).status for j in jobs]
    assert statuses == [JobStatus.SUCCEEDED] * 9 + [JobStatus.QUEUED] * 3
    assert ran == [str(j.id) for j in jobs[1:9]]


def test_the_backlog_run_stops_at_the_most_jobs_one_message_names(echo_model: Path, make_jobs: Any,
                                                                   monkeypatch: Any) -> None:
    monkeypatch.setattr(runner, "MAX_RUN_JOBS", 7)
    set_batching(echo_model, batch_size=3)
    jobs = make_jobs([f"input {i}".encode() for i in range(10)])

    assert runner.run_job(str(jobs[0].id)) == [str(j.id) for j in jobs[1:6]]
    assert Job.objects.filter(status=JobStatus.QUEUED).count() == 4


def queued_job_of(model: str, owner: Any) -> Job:
    return Job.objects.create(owner=owner, model_name=model, model_version="1",
                              input_content_type="application/octet-stream", status=JobStatus.QUEUED)


@pytest.mark.parametrize("served", [("echo", "digits"), ("echo",)], ids=["served-here", "served-elsewhere"])
def test_the_backlog_run_makes_way_for_another_model_this_worker_serves(echo_model: Path, make_jobs: Any,
                                                                        monkeypatch: Any, user: Any,
                                                                        served: tuple[str, ...]) -> None:
    set_batching(echo_model, batch_size=3)
    jobs = make_jobs([f"input {i}".encode() for i in range(7)])
    queued_job_of("digits", user)
    monkeypatch.setitem(runner._state, "served", served)
    taken = counting_claims(monkeypatch)

    ran = runner.run_job(str(jobs[0].id))

    statuses = [Job.objects.get(id=j.id).status for j in jobs]
    if served == ("echo",):
        # Another worker's model: nothing here waits for the backlog, which runs to its end.
        assert taken == [2, 3, 1]
        assert statuses == [JobStatus.SUCCEEDED] * 7
    else:
        # A digits job waits in this worker's queues: its batch, then back to Celery, whose queues take turns.
        assert taken == [2]
        assert statuses == [JobStatus.SUCCEEDED] * 3 + [JobStatus.QUEUED] * 4
        assert ran == [str(j.id) for j in jobs[1:3]]


def test_the_backlog_budget_is_at_most_a_quarter_of_the_time_limit(echo_model: Path, settings: Any) -> None:
    from dataclasses import replace

    settings.INFERQ_BACKLOG_RUN_S = 1.0
    spec = model_spec_get(name="echo")
    assert runner.backlog_budget_s(replace(spec, timeout_s=2)) == 0.5
    assert runner.backlog_budget_s(replace(spec, timeout_s=60)) == 1.0
    # No limit in the manifest: the worker's own soft limit (celeryconfig's task_soft_time_limit, 300 s).
    settings.INFERQ_BACKLOG_RUN_S = 500.0
    assert runner.backlog_budget_s(replace(spec, timeout_s=None)) == 75.0


def test_without_batching_only_the_message_job_runs(echo_model: Path, make_jobs: Any) -> None:
    set_batching(echo_model, batch_size=1)
    jobs = make_jobs([b"a", b"b"])

    runner.run_job(str(jobs[0].id))

    assert Job.objects.get(id=jobs[0].id).status == JobStatus.SUCCEEDED
    assert Job.objects.get(id=jobs[1].id).status == JobStatus.QUEUED


def test_a_bad_input_fails_alone_inside_a_batch(echo_model: Path, make_jobs: Any) -> None:
    set_batching(echo_model, batch_size=8)
    jobs = make_jobs([b"good one", b"invalid input", b"good two"])

    runner.run_job(str(jobs[1].id))

    rows = [Job.objects.get(id=j.id) for j in jobs]
    assert [r.status for r in rows] == [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SUCCEEDED]
    assert rows[1].error_code == "invalid_input"
    assert rows[0].result["size"] == len(b"good one")


def test_the_message_of_a_job_taken_into_a_batch_is_skipped(echo_model: Path, make_jobs: Any) -> None:
    jobs = make_jobs([b"a", b"b"])
    leader = job_start(job_id=jobs[0].id, worker="w1")
    assert leader is not None
    extra = job_claim_queued(model_name="echo", model_version="1", worker="w1", limit=4)
    assert [j.id for j in extra] == [jobs[1].id]

    # Its own message arrives at another worker while w1 still holds a fresh lease.
    assert job_start(job_id=jobs[1].id, worker="w2") is None
    row = Job.objects.get(id=jobs[1].id)
    assert row.worker == "w1" and row.attempts == 1


def test_an_expired_lease_means_the_worker_was_lost_and_the_job_is_claimed_again(make_jobs: Any) -> None:
    (job,) = make_jobs([b"a"])
    assert job_start(job_id=job.id, worker="w1") is not None
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    again = job_start(job_id=job.id, worker="w2")

    assert again is not None and again.worker == "w2" and again.attempts == 2


def test_renewing_keeps_the_lease_fresh(make_jobs: Any) -> None:
    (job,) = make_jobs([b"a"])
    job_start(job_id=job.id, worker="w1")
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() + timedelta(seconds=1))

    assert job_leases_renew(job_ids=[job.id], worker="w1") == 1
    assert job_leases_renew(job_ids=[job.id], worker="someone-else") == 0
    assert Job.objects.get(id=job.id).lease_expires_at > timezone.now() + timedelta(seconds=10)


def test_sweeper_requeues_orphans_and_fails_those_out_of_attempts(make_jobs: Any, settings: Any) -> None:
    settings.INFERQ_MAX_ATTEMPTS = 2
    orphan, doomed, healthy = make_jobs([b"a", b"b", b"c"])
    broker_messages("inferq.model.echo")
    for job in (orphan, doomed, healthy):
        job_start(job_id=job.id, worker="w1")
    Job.objects.filter(id=doomed.id).update(attempts=2)
    past = timezone.now() - timedelta(seconds=5)
    Job.objects.filter(id__in=[orphan.id, doomed.id]).update(lease_expires_at=past)

    counts = job_requeue_orphans()

    assert counts == {"requeued": 1, "worker_lost": 1}
    assert Job.objects.get(id=orphan.id).status == JobStatus.QUEUED
    assert Job.objects.get(id=doomed.id).error_code == "worker_lost"
    assert Job.objects.get(id=healthy.id).status == JobStatus.RUNNING
    messages = broker_messages("inferq.model.echo")
    assert [m.headers["id"] for m in messages] == [str(orphan.id)]


def test_a_job_retried_after_a_lost_worker_runs_alone(echo_model: Path, make_jobs: Any) -> None:
    set_batching(echo_model, batch_size=8)
    suspect, bystander = make_jobs([b"maybe kills workers", b"innocent"])
    job_start(job_id=suspect.id, worker="w1")
    Job.objects.filter(id=suspect.id).update(status=JobStatus.QUEUED, lease_expires_at=None)

    runner.run_job(str(suspect.id))

    assert Job.objects.get(id=suspect.id).status == JobStatus.SUCCEEDED
    assert Job.objects.get(id=suspect.id).batch_size == 1
    assert Job.objects.get(id=bystander.id).status == JobStatus.QUEUED
    # ...and a requeued job is never taken into someone else's batch either.
    Job.objects.filter(id=bystander.id).update(attempts=1)
    assert job_claim_queued(model_name="echo", model_version="1", worker="w2", limit=8) == []


def sleeps_in_this_thread(monkeypatch: Any, fake: Callable[[float], None]) -> None:
    """time.sleep is the time module's, shared by the whole test process: replace it for the test's own thread only,
    so that other threads (the metrics flusher, a lease renewer) keep sleeping for real instead of spinning."""
    real, me = time.sleep, threading.current_thread()
    monkeypatch.setattr(runner.time, "sleep", lambda s: fake(s) if threading.current_thread() is me else real(s))


def test_a_lone_job_does_not_wait_for_a_batch_to_fill(echo_model: Path, make_jobs: Any, monkeypatch: Any) -> None:
    set_batching(echo_model, batch_size=8, delay_ms=60_000)
    (job,) = make_jobs([b"alone"])
    slept: list[float] = []
    sleeps_in_this_thread(monkeypatch, slept.append)

    runner.run_job(str(job.id))

    assert Job.objects.get(id=job.id).status == JobStatus.SUCCEEDED
    assert slept == []


def test_a_partial_batch_waits_for_more_until_the_delay(echo_model: Path, make_jobs: Any, monkeypatch: Any) -> None:
    set_batching(echo_model, batch_size=8, delay_ms=50)
    first, second = make_jobs([b"one", b"two"])
    late: list[Job] = []
    calls: list[float] = []

    def fake_sleep(seconds: float) -> None:
        # While the leader waits, a third job arrives; it must join this batch.
        calls.append(seconds)
        if not late:
            late.extend(make_jobs([b"three"]))

    sleeps_in_this_thread(monkeypatch, fake_sleep)
    runner.run_job(str(first.id))

    assert calls, "the leader should have waited for more jobs"
    assert {Job.objects.get(id=j.id).batch_size for j in [first, second, *late]} == {3}


@pytest.mark.parametrize("others", [0, 2])
def test_the_claim_decides_whether_to_look_for_batch_mates(echo_model: Path, make_jobs: Any, monkeypatch: Any,
                                                           others: int) -> None:
    """The statement that claims the job also says whether others are queued: no claim query for a lone job."""
    set_batching(echo_model, batch_size=8)
    first, *_ = make_jobs([b"a", *[b"b"] * others])
    claims: list[int] = []
    real_claim = runner.job_claim_queued
    monkeypatch.setattr(runner, "job_claim_queued", lambda **kw: claims.append(kw["limit"]) or real_claim(**kw))

    runner.run_job(str(first.id))

    ran_together = Job.objects.get(id=first.id).batch_size
    if others:
        assert claims and ran_together == 1 + others
    else:
        assert claims == [] and ran_together == 1


@pytest.mark.parametrize("one_statement", [True, False], ids=["update-returning", "orm"])
def test_a_batch_claim_takes_the_oldest_first_attempts_and_hands_back_the_rows_it_wrote(
        echo_model: Path, make_jobs: Any, monkeypatch: Any, one_statement: bool) -> None:
    if not one_statement:  # the path for a database without RETURNING
        monkeypatch.setattr(services._CLAIM_OLDEST, "supported", lambda connection: False)
    jobs = make_jobs([f"input {i}".encode() for i in range(6)])
    retried = jobs[1]
    Job.objects.filter(id=retried.id).update(attempts=1)  # requeued after a lost worker: runs alone
    Job.objects.filter(id=jobs[2].id).update(model_version="2")  # another version: another batch

    claimed = job_claim_queued(model_name="echo", model_version="1", worker="w1", limit=2)
    assert [j.id for j in claimed] == [jobs[0].id, jobs[3].id]
    for job in claimed:
        row = Job.objects.with_input().get(id=job.id)
        assert (job.status, job.attempts, job.worker) == (row.status, row.attempts, row.worker) == (
            JobStatus.RUNNING, 1, "w1")
        assert job.started_at == row.started_at and job.lease_expires_at == row.lease_expires_at > row.started_at
        assert job.queue_ms == row.queue_ms == pytest.approx((row.started_at - row.created_at).total_seconds() * 1000,
                                                             abs=0.01)
        assert bytes(job.input_data) == bytes(row.input_data) and job.input_content_type == row.input_content_type

    assert [j.id for j in job_claim_queued(model_name="echo", model_version="1", worker="w2", limit=8)] == [
        jobs[4].id, jobs[5].id]
    assert job_claim_queued(model_name="echo", model_version="1", worker="w2", limit=8) == []
    assert Job.objects.get(id=retried.id).status == JobStatus.QUEUED


def heard_on(pubsub: Any, count: int) -> dict[str, Any]:
    """The events `pubsub` receives (channel: body) until `count` have come, or 5 s have passed."""
    heard: dict[str, Any] = {}
    deadline = time.monotonic() + 5
    while len(heard) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None:
            heard[message["channel"].decode()] = json.loads(message["data"])
    pubsub.close()
    return heard


@pytest.mark.django_db(transaction=True)  # each ending commits at once, as in a worker
def test_a_batch_announces_every_ending_in_one_round_trip(echo_model: Path, make_jobs: Any, fake_redis: Any,
                                                        monkeypatch: Any) -> None:
    set_batching(echo_model, batch_size=8)
    jobs = make_jobs([b"good one", b"invalid input", b"good two"])
    pubsub = fake_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(*(events.job_channel(j.id) for j in jobs))
    round_trips: list[list[Any]] = []
    real_publish = events._publish
    monkeypatch.setattr(events, "_publish", lambda ended: round_trips.append([j.id for j in ended])
                        or real_publish(ended))

    runner.run_job(str(jobs[0].id))

    assert round_trips == [[j.id for j in jobs]]
    heard = heard_on(pubsub, len(jobs))
    assert {channel: body["status"] for channel, body in heard.items()} == {
        events.job_channel(jobs[0].id): "succeeded", events.job_channel(jobs[1].id): "failed",
        events.job_channel(jobs[2].id): "succeeded"}


def test_announcements_held_together_are_still_sent_when_the_block_raises(fake_redis: Any, make_jobs: Any) -> None:
    job = make_jobs([b"a"])[0]
    pubsub = fake_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(events.job_channel(job.id))
    with pytest.raises(RuntimeError), events.job_events_together():
        events.job_event_publish(job)
        assert pubsub.get_message(timeout=0.05) is None  # held until the block ends
        raise RuntimeError
    assert heard_on(pubsub, 1) == {events.job_channel(job.id): {"status": "queued", "row": ANY}}
