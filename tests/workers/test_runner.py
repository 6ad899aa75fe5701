"""run_job on real Job rows: success writes result and timings, every failure ends as the job's error."""

from __future__ import annotations

import hashlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from celery.exceptions import SoftTimeLimitExceeded

from api.models import Job, JobStatus
from api.services import job_cancel, job_start
from tests.workers.helpers import acting_as_worker
from workers import handlers, runner
from workers.handlers import EchoHandler

pytestmark = pytest.mark.django_db

HOSTNAME = "celery@test-worker"


@pytest.fixture(autouse=True)
def worker_state(tmp_path: Path, settings: Any) -> Iterator[None]:
    with acting_as_worker(tmp_path, settings, HOSTNAME):
        yield


@pytest.fixture
def make_job(user: Any, echo_model: Path) -> Callable[[bytes], Job]:
    from api.inputs import ModelInput
    from api.services import job_create, model_spec_get

    def make(data: bytes) -> Job:
        return job_create(owner=user, spec=model_spec_get(name="echo"),
                          model_input=ModelInput(data, "application/octet-stream"))

    return make


def echo_result(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256_prefix": hashlib.sha256(data).hexdigest()[:16]}


def test_run_job_succeeds_and_records_everything(make_job: Callable[[bytes], Job]) -> None:
    job = make_job(b"a picture, honestly")

    runner.run_job(str(job.id))

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.result == echo_result(b"a picture, honestly")
    assert job.worker == HOSTNAME
    assert job.attempts == 1
    assert job.error_code == ""
    assert job.batch_size == 1
    assert job.inference_ms is not None and job.inference_ms >= 0
    assert job.queue_ms is not None and job.queue_ms >= 0
    assert job.total_ms is not None and job.total_ms >= job.queue_ms
    assert job.started_at is not None and job.finished_at is not None and job.finished_at >= job.started_at
    # The input was small, so it was kept in the row; the write that ended the job dropped it.
    assert not job.input and Job.objects.with_input().get(id=job.id).input_data is None


def test_the_celery_task_body_runs_the_job(make_job: Callable[[bytes], Job]) -> None:
    import tasks.inference

    job = make_job(b"via the task")
    tasks.inference.run(job_id=str(job.id), model="echo")

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.result == echo_result(b"via the task")


def test_bad_input_fails_the_job_with_its_code(make_job: Callable[[bytes], Job]) -> None:
    job = make_job(b"invalid bytes")

    runner.run_job(str(job.id))

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error_code == "invalid_input"
    assert "invalid" in job.error_message
    assert job.result is None


def test_an_unexpected_handler_exception_fails_the_job_not_the_worker(make_job: Callable[[bytes], Job],
                                                                      monkeypatch: Any) -> None:
    class BrokenModel(EchoHandler):
        def predict(self, batch: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("CUDA error: device-side assert triggered at /secret/path.py:12")

    monkeypatch.setitem(handlers.HANDLERS, "echo", BrokenModel)
    job = make_job(b"fine input")

    runner.run_job(str(job.id))  # must not raise

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error_code == "inference_error"
    assert "secret" not in job.error_message and "Traceback" not in job.error_message


def test_time_limit_fails_the_job_with_timeout(make_job: Callable[[bytes], Job], monkeypatch: Any) -> None:
    class SlowModel(EchoHandler):
        def predict(self, batch: torch.Tensor) -> torch.Tensor:
            raise SoftTimeLimitExceeded()

    monkeypatch.setitem(handlers.HANDLERS, "echo", SlowModel)
    job = make_job(b"slow")

    runner.run_job(str(job.id))

    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.FAILED, "timeout")


class TwoStreams(EchoHandler):
    """Echo whose batches run as two side-by-side streams; the stream holding the 4-byte input `hang` waits for
    `release`, and notes when it ends in `log`."""

    release: threading.Event
    log: list[str]
    # Seconds after the held stream starts that SIGALRM (the test's soft time limit) fires, if set: by then the
    # main thread is waiting for the streams, as the worker's is when Celery's soft limit comes.
    alarm_after: float | None = None

    def plan_streams(self, **_: Any) -> int:
        self.streams = 2
        return 2

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        if int(batch[0, 0]) == len(b"hang"):
            if self.alarm_after:
                signal.setitimer(signal.ITIMER_REAL, self.alarm_after)
            assert self.release.wait(10), "the test never released the stream"
            self.log.append("the stream ended")
        return batch


def two_claimed_jobs(make_job: Callable[[bytes], Job], first: bytes = b"hang", second: bytes = b"quick!") -> list[Job]:
    made = [make_job(first), make_job(second)]
    claimed = [job_start(job_id=job.id, worker=HOSTNAME) for job in made]
    assert all(claimed)
    return [job for job in claimed if job is not None]


def logging_failures(monkeypatch: Any, log: list[str], release_after: int) -> None:
    """runner.job_fail, noting each failure in `log`; once `release_after` were written, the hung stream is let go
    a moment later (from another thread: the runner may be waiting for it by then)."""
    real_fail = runner.job_fail

    def job_fail(**kwargs: Any) -> bool:
        written = real_fail(**kwargs)
        log.append(f"failed: {kwargs['code']}")
        if sum(entry.startswith("failed") for entry in log) == release_after:
            threading.Timer(0.3, TwoStreams.release.set).start()
        return written

    monkeypatch.setattr(runner, "job_fail", job_fail)


def test_a_time_limit_during_streams_fails_the_jobs_then_waits_for_the_stream_it_interrupted(
        make_job: Callable[[bytes], Job], monkeypatch: Any) -> None:
    # Celery's soft time limit is a signal that raises in the worker's main thread, which here is waiting for
    # the streams; the stream threads run on. The next job must not start beside them.
    log: list[str] = []
    monkeypatch.setattr(TwoStreams, "release", threading.Event(), raising=False)
    monkeypatch.setattr(TwoStreams, "log", log, raising=False)
    monkeypatch.setitem(handlers.HANDLERS, "echo", TwoStreams)
    logging_failures(monkeypatch, log, release_after=2)
    jobs = two_claimed_jobs(make_job)

    def soft_time_limit(*_: Any) -> None:
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, soft_time_limit)
    monkeypatch.setattr(TwoStreams, "alarm_after", 0.1)
    try:
        ended = runner.run_claimed(jobs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    log.append("the runner returned")

    assert log == ["failed: timeout", "failed: timeout", "the stream ended", "the runner returned"]
    assert ended == {str(job.id) for job in jobs}
    for job in jobs:
        job.refresh_from_db()
        assert (job.status, job.error_code) == (JobStatus.FAILED, "timeout")


def test_a_stream_that_raises_fails_the_batch_and_the_runner_waits_for_the_other_stream(
        make_job: Callable[[bytes], Job], monkeypatch: Any) -> None:
    class OneStreamBreaks(TwoStreams):
        def predict(self, batch: torch.Tensor) -> torch.Tensor:
            if int(batch[0, 0]) == len(b"quick!"):
                raise RuntimeError("a model bug")
            return super().predict(batch)

    log: list[str] = []
    monkeypatch.setattr(TwoStreams, "release", threading.Event(), raising=False)
    monkeypatch.setattr(TwoStreams, "log", log, raising=False)
    monkeypatch.setitem(handlers.HANDLERS, "echo", OneStreamBreaks)
    logging_failures(monkeypatch, log, release_after=2)
    # The broken stream first: the runner hears of it while the other stream still runs.
    jobs = two_claimed_jobs(make_job, b"quick!", b"hang")

    runner.run_claimed(jobs)
    log.append("the runner returned")

    assert log == ["failed: inference_error", "failed: inference_error", "the stream ended", "the runner returned"]


def test_missing_stored_input_fails_with_input_missing(make_job: Callable[[bytes], Job], settings: Any) -> None:
    settings.INFERQ_INLINE_INPUT_BYTES = 0
    job = make_job(b"soon gone")
    job.input.storage.delete(job.input.name)

    runner.run_job(str(job.id))

    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.FAILED, "input_missing")


def test_canceled_job_is_skipped(make_job: Callable[[bytes], Job]) -> None:
    job = make_job(b"never mind")
    job_cancel(job=job)

    runner.run_job(str(job.id))

    job.refresh_from_db()
    assert job.status == JobStatus.CANCELED
    assert job.result is None
    assert job.attempts == 0


def test_a_second_delivery_changes_nothing(make_job: Callable[[bytes], Job]) -> None:
    job = make_job(b"twice")
    runner.run_job(str(job.id))
    job.refresh_from_db()
    finished_at = job.finished_at

    runner.run_job(str(job.id))

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.attempts == 1
    assert job.finished_at == finished_at


def test_unknown_job_id_is_ignored(db: Any) -> None:
    runner.run_job("00000000-0000-0000-0000-000000000000")
    assert not Job.objects.exists()


def test_claimed_jobs_run_as_one_batch_and_a_bad_one_fails_alone(make_job: Callable[[bytes], Job]) -> None:
    payloads = [b"first", b"invalid second", b"third"]
    jobs = [job_start(job_id=make_job(p).id, worker=HOSTNAME) for p in payloads]
    assert all(j is not None for j in jobs)

    runner.run_claimed(jobs)  # type: ignore[arg-type]

    for job in jobs:
        job.refresh_from_db()  # type: ignore[union-attr]
    first, second, third = jobs
    assert (first.status, first.result, first.batch_size) == ("succeeded", echo_result(b"first"), 2)
    assert (second.status, second.error_code) == ("failed", "invalid_input")
    assert (third.status, third.result, third.batch_size) == ("succeeded", echo_result(b"third"), 2)


def test_the_handler_is_loaded_once_per_process(make_job: Callable[[bytes], Job], monkeypatch: Any) -> None:
    setups: list[torch.device] = []

    class CountingEcho(EchoHandler):
        def setup(self, device: torch.device) -> None:
            setups.append(device)
            super().setup(device)

    monkeypatch.setitem(handlers.HANDLERS, "echo", CountingEcho)
    for data in (b"one", b"two", b"three"):
        runner.run_job(str(make_job(data).id))

    assert setups == [torch.device("cpu")]
    assert Job.objects.filter(status=JobStatus.SUCCEEDED).count() == 3


def claimed_echo_jobs(make_job: Callable[[bytes], Job], count: int) -> tuple[list[Job], list[Any]]:
    from workers.handlers import Outcome

    jobs = [job_start(job_id=make_job(f"input {i}".encode()).id, worker=HOSTNAME) for i in range(count)]
    assert all(job is not None for job in jobs)
    return [job for job in jobs if job is not None], [Outcome(result={"n": i}, inference_ms=1.0, batch_size=count)
                                                      for i in range(count)]


def refusing_the_nth_write(monkeypatch: pytest.MonkeyPatch, nth: set[int]) -> list[str]:
    """job_succeed as the runner calls it, raising a DatabaseError on the calls numbered in `nth` (from 1)."""
    from django.db import DatabaseError

    calls: list[str] = []
    real = runner.job_succeed

    def job_succeed(*, job: Job, **kwargs: Any) -> bool:
        calls.append(str(job.id))
        if len(calls) in nth:
            raise DatabaseError("the database refused this write")
        return real(job=job, **kwargs)

    monkeypatch.setattr(runner, "job_succeed", job_succeed)
    return calls


def test_where_commits_flush_a_refused_ending_rolls_the_batch_back_and_each_is_written_again_alone(
        make_job: Callable[[bytes], Job], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runner, "commits_flush", lambda: True)
    jobs, outcomes = claimed_echo_jobs(make_job, 3)
    calls = refusing_the_nth_write(monkeypatch, {3})  # the third job's write, inside the batch's transaction

    ended = runner.write_endings(jobs, outcomes)

    ids = [str(job.id) for job in jobs]
    # The first two were written in the transaction, which the third's refusal rolled back: written again alone,
    # each one's guarded UPDATE found it still running (had their first write stood, it would have found them
    # ended and written nothing, and they would not count as ended here).
    assert calls == ids + ids
    assert ended == set(ids)
    assert [Job.objects.get(id=job.id).result for job in jobs] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert "could not be written together" in caplog.text


def test_where_commits_flush_a_batchs_endings_are_one_transaction(
        make_job: Callable[[bytes], Job], monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import connection

    monkeypatch.setattr(runner, "commits_flush", lambda: True)
    jobs, outcomes = claimed_echo_jobs(make_job, 3)
    depth = len(connection.savepoint_ids)  # the test's own transaction: atomic() inside it is a savepoint
    seen: list[int] = []
    real = runner.job_succeed

    def job_succeed(**kwargs: Any) -> bool:
        seen.append(len(connection.savepoint_ids) - depth)
        return real(**kwargs)

    monkeypatch.setattr(runner, "job_succeed", job_succeed)

    assert runner.write_endings(jobs, outcomes) == {str(job.id) for job in jobs}
    assert seen == [1, 1, 1]


def test_commits_flush_except_on_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import connection

    monkeypatch.setattr(connection, "vendor", "sqlite")
    assert not runner.commits_flush()
    monkeypatch.setattr(connection, "vendor", "postgresql")
    assert runner.commits_flush()


def test_where_commits_do_not_flush_each_ending_is_its_own_write_and_a_refused_one_leaves_the_others_written(
        make_job: Callable[[bytes], Job], monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import DatabaseError, connection

    monkeypatch.setattr(runner, "commits_flush", lambda: False)
    jobs, outcomes = claimed_echo_jobs(make_job, 3)
    depth = len(connection.savepoint_ids)
    calls = refusing_the_nth_write(monkeypatch, {2})

    with pytest.raises(DatabaseError):
        runner.write_endings(jobs, outcomes)

    assert len(connection.savepoint_ids) == depth  # no transaction of its own
    assert calls == [str(jobs[0].id), str(jobs[1].id)]
    assert [Job.objects.get(id=job.id).status for job in jobs] == [JobStatus.SUCCEEDED, JobStatus.RUNNING,
                                                                   JobStatus.RUNNING]
