"""The job lifecycle services: claim, finish once, fail, give up on lost workers, discard inputs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from api import services
from api.models import Job, JobStatus
from api.services import _ms, job_cancel, job_fail, job_input_read, job_requeue_orphans, job_start, job_succeed

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["inline", "file"])
def input_place(request: Any, settings: Any) -> str:
    """Run a test with small inputs kept in the row (the default) and with every input in the storage."""
    if request.param == "file":
        settings.INFERQ_INLINE_INPUT_BYTES = 0
    return str(request.param)


def input_exists(job: Job) -> bool:
    row = Job.objects.with_input().get(id=job.id)
    if row.input_data is not None:
        return True
    return bool(row.input) and row.input.storage.exists(row.input.name)


def test_job_start_claims_a_queued_job(make_job: Any) -> None:
    job = make_job()

    claimed = job_start(job_id=str(job.id), worker="w1@host")

    assert claimed is not None and claimed.id == job.id
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING
    assert job.attempts == 1
    assert job.worker == "w1@host"
    assert job.started_at is not None and job.started_at >= job.created_at
    assert job.queue_ms is not None and job.queue_ms >= 0


def test_job_start_reads_back_the_claimed_row_in_one_statement(make_job: Any, django_assert_num_queries: Any) -> None:
    job = make_job(b"payload")

    with django_assert_num_queries(1):
        claimed = job_start(job_id=job.id, worker="w1")

    assert claimed is not None
    row = Job.objects.with_input().get(id=job.id)
    for field in ("status", "attempts", "worker", "started_at", "lease_expires_at", "queue_ms", "created_at"):
        assert getattr(claimed, field) == getattr(row, field), field
    assert job_input_read(claimed) == b"payload"
    # The database works queue_ms out as the Python side always has: milliseconds to 3 places.
    assert row.queue_ms == _ms(row.created_at, row.started_at)


def test_job_start_says_whether_more_first_attempts_of_its_model_are_queued(make_job: Any) -> None:
    first, second, third = make_job(b"1"), make_job(b"2"), make_job(b"3")
    assert job_start(job_id=first.id, worker="w1").others_queued is True  # second and third wait
    Job.objects.filter(id=third.id).update(attempts=1)  # a retry is never a batch mate
    assert job_start(job_id=second.id, worker="w1").others_queued is False
    Job.objects.filter(id=third.id).update(model_version="2")
    other_version = make_job(b"4")
    assert job_start(job_id=other_version.id, worker="w1").others_queued is False


def test_job_start_without_returning_claims_by_read_and_lock(make_job: Any, monkeypatch: Any) -> None:
    """A database without UPDATE … RETURNING (SQLite before 3.35) takes the locked path and leaves the probe unasked."""
    monkeypatch.setattr(services._CLAIM_FIRST_ATTEMPT, "supported", lambda connection: False)
    job, _ = make_job(), make_job()

    claimed = job_start(job_id=job.id, worker="w1")

    assert claimed is not None and claimed.others_queued is None
    row = Job.objects.get(id=job.id)
    assert (row.status, row.attempts, row.worker) == (JobStatus.RUNNING, 1, "w1")
    assert row.queue_ms == _ms(row.created_at, row.started_at)
    assert job_start(job_id=job.id, worker="w2") is None


def test_job_start_of_an_unknown_job_is_none(db: Any) -> None:
    assert job_start(job_id="00000000-0000-0000-0000-000000000000", worker="w1") is None


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED])
def test_job_start_of_an_ended_job_is_none(make_job: Any, final: str) -> None:
    job = make_job()
    Job.objects.filter(id=job.id).update(status=final)

    assert job_start(job_id=job.id, worker="w1") is None
    job.refresh_from_db()
    assert job.status == final
    assert job.attempts == 0
    assert job.worker == ""


def test_canceled_job_is_not_started(make_job: Any) -> None:
    job = make_job()
    job_cancel(job=job)
    assert job_start(job_id=job.id, worker="w1") is None


def lose_worker(job: Job) -> None:
    """The job's worker died: it stops renewing, and the lease runs out."""
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def test_a_running_job_with_a_live_worker_is_not_claimed_twice(make_job: Any) -> None:
    job = make_job()
    assert job_start(job_id=job.id, worker="w1") is not None

    assert job_start(job_id=job.id, worker="w2") is None
    job.refresh_from_db()
    assert (job.status, job.worker, job.attempts) == (JobStatus.RUNNING, "w1", 1)


def test_redelivery_after_max_attempts_fails_with_worker_lost(make_job: Any, settings: Any,
                                                              django_capture_on_commit_callbacks: Any) -> None:
    settings.INFERQ_MAX_ATTEMPTS = 3
    job = make_job()

    # Three deliveries whose worker died before finishing: each one claims the job again.
    for attempt in (1, 2, 3):
        claimed = job_start(job_id=job.id, worker=f"w{attempt}")
        assert claimed is not None
        assert (claimed.attempts, claimed.worker) == (attempt, f"w{attempt}")
        lose_worker(job)

    with django_capture_on_commit_callbacks(execute=True):
        assert job_start(job_id=job.id, worker="w4") is None
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error_code == "worker_lost"
    assert "3" in job.error_message
    assert job.finished_at is not None
    assert job.attempts == 3
    assert not input_exists(job)
    # The failure is final: yet another delivery changes nothing.
    assert job_start(job_id=job.id, worker="w5") is None
    job.refresh_from_db()
    assert (job.status, job.attempts) == (JobStatus.FAILED, 3)


def test_sweeper_failing_a_job_out_of_attempts_discards_its_input(make_job: Any, settings: Any,
                                                                  django_capture_on_commit_callbacks: Any) -> None:
    settings.INFERQ_MAX_ATTEMPTS = 1
    job = make_job()
    assert job_start(job_id=job.id, worker="w1") is not None
    lose_worker(job)

    with django_capture_on_commit_callbacks(execute=True):
        assert job_requeue_orphans() == {"requeued": 0, "worker_lost": 1}

    job.refresh_from_db()
    assert (job.status, job.error_code) == (JobStatus.FAILED, "worker_lost")
    assert not input_exists(job)


def test_job_succeed_writes_the_result_once(make_job: Any) -> None:
    job = job_start(job_id=make_job().id, worker="w1")
    assert job is not None

    assert job_succeed(job=job, result={"n": 1}, inference_ms=12.3456, batch_size=4) is True
    assert job_succeed(job=job, result={"n": 2}, inference_ms=99.0) is False

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert job.result == {"n": 1}
    assert job.inference_ms == pytest.approx(12.346)
    assert job.batch_size == 4
    assert job.finished_at is not None
    assert job.total_ms is not None and job.total_ms >= 0
    assert job.error_code == ""


def test_job_fail_after_success_changes_nothing(make_job: Any) -> None:
    job = job_start(job_id=make_job().id, worker="w1")
    assert job is not None
    job_succeed(job=job, result={"n": 1}, inference_ms=1.0)

    assert job_fail(job=job, code="timeout", message="late") is False
    job.refresh_from_db()
    assert (job.status, job.result, job.error_code) == (JobStatus.SUCCEEDED, {"n": 1}, "")


def test_job_fail_sets_code_and_message(make_job: Any) -> None:
    job = job_start(job_id=make_job().id, worker="w1")
    assert job is not None

    assert job_fail(job=job, code="invalid_image", message="Cannot decode the image.", inference_ms=2.0) is True

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.error_code == "invalid_image"
    assert job.error_message == "Cannot decode the image."
    assert job.result is None
    assert job.finished_at is not None


def test_job_fail_does_not_overwrite_a_canceled_job(make_job: Any) -> None:
    job = make_job()
    job_cancel(job=job)
    assert job_fail(job=job, code="timeout", message="late") is False
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELED


@pytest.mark.parametrize("finish", ["succeed", "fail", "cancel"])
def test_input_is_deleted_when_the_job_ends(make_job: Any, finish: str, input_place: str,
                                           django_capture_on_commit_callbacks: Any) -> None:
    job = make_job(b"some input bytes")
    assert input_exists(job)
    assert bool(job.input) == (input_place == "file")

    with django_capture_on_commit_callbacks(execute=True):  # the test's own transaction commits nothing
        if finish == "cancel":
            job_cancel(job=job)
        else:
            claimed = job_start(job_id=job.id, worker="w1")
            assert claimed is not None and input_exists(claimed)
            if finish == "succeed":
                job_succeed(job=claimed, result={}, inference_ms=1.0)
            else:
                job_fail(job=claimed, code="invalid_input", message="no")

    assert not input_exists(job)


@pytest.mark.parametrize("finish", ["succeed", "fail"])
def test_an_ending_rolled_back_keeps_the_input_for_the_jobs_next_run(make_job: Any, finish: str,
                                                                     input_place: str) -> None:
    job = make_job(b"x" * 100)
    claimed = job_start(job_id=job.id, worker="w1")
    assert claimed is not None and input_exists(claimed)

    with pytest.raises(RuntimeError), transaction.atomic():
        if finish == "succeed":
            assert job_succeed(job=claimed, result={}, inference_ms=1.0)
        else:
            assert job_fail(job=claimed, code="invalid_input", message="no")
        raise RuntimeError("the database refused the batch's commit")

    row = Job.objects.with_input().get(id=job.id)
    assert row.status == JobStatus.RUNNING
    assert job_input_read(row) == b"x" * 100


def test_input_is_kept_when_configured(make_job: Any, settings: Any, input_place: str) -> None:
    settings.INFERQ_KEEP_INPUTS = True
    job = make_job()
    claimed = job_start(job_id=job.id, worker="w1")
    assert claimed is not None
    job_succeed(job=claimed, result={}, inference_ms=1.0)
    assert input_exists(job)


def test_job_create_stores_input_and_digest(make_job: Any, input_place: str) -> None:
    import hashlib

    job = make_job(b"digest me")
    assert job.input_sha256 == hashlib.sha256(b"digest me").hexdigest()
    assert job.input_size == 9
    assert job_input_read(Job.objects.get(id=job.id)) == b"digest me"


def test_inputs_up_to_the_inline_limit_stay_in_the_row_and_larger_ones_go_to_the_storage(
        make_job: Any, settings: Any) -> None:
    settings.INFERQ_INLINE_INPUT_BYTES = 8
    small, large = make_job(b"8 bytes!"), make_job(b"nine byte")
    assert (bytes(small.input_data), small.input.name) == (b"8 bytes!", "")
    assert large.input_data is None and large.input.storage.exists(large.input.name)
    assert [job_input_read(Job.objects.get(id=j.id)) for j in (small, large)] == [b"8 bytes!", b"nine byte"]


def test_reads_that_answer_clients_leave_the_input_bytes_out(make_job: Any, user: Any,
                                                             django_assert_num_queries: Any) -> None:
    from api.selectors import job_get, job_list

    job = make_job(b"bytes a poll never needs")
    with django_assert_num_queries(2):
        polled = job_get(user=user, job_id=str(job.id))
        listed = list(job_list(user=user))
    assert "input_data" in polled.get_deferred_fields() and "input_data" in listed[0].get_deferred_fields()
    claimed = job_start(job_id=job.id, worker="w1")
    assert claimed is not None and "input_data" not in claimed.get_deferred_fields()


def test_queue_bound_is_exact_near_the_limit_and_counts_are_reused_far_from_it(
        user: Any, echo_model: Any, settings: Any, django_assert_num_queries: Any) -> None:
    from api import services
    from api.exceptions import Overloaded
    from api.services import check_queue_capacity, model_spec_get

    services._depth_seen.clear()
    spec = model_spec_get(name="echo")
    settings.INFERQ_MAX_QUEUED = 1000
    with django_assert_num_queries(1):
        for _ in range(5):
            check_queue_capacity(spec=spec)  # far below the bound: one COUNT, reused

    services._depth_seen.clear()
    settings.INFERQ_MAX_QUEUED = 2
    for payload in (b"a", b"b"):
        check_queue_capacity(spec=spec)
        Job.objects.create(owner=user, model_name="echo", model_version="1", input_content_type="x",
                           input_sha256=payload.hex())
    with pytest.raises(Overloaded):
        check_queue_capacity(spec=spec)  # near the bound every submit recounts


def test_a_claim_made_between_read_and_update_is_not_overwritten(make_job: Any, monkeypatch: Any) -> None:
    """Two workers read the job queued; the second one's guarded update finds it changed and backs off."""
    import api.services

    job = make_job()
    stale = Job.objects.get(id=job.id)  # what the second worker read, before the first claimed it
    assert job_start(job_id=job.id, worker="w1") is not None
    monkeypatch.setattr(api.services, "job_with_input_by_id", lambda id: stale)

    assert job_start(job_id=job.id, worker="w2") is None

    row = Job.objects.get(id=job.id)
    assert row.worker == "w1" and row.attempts == 1 and row.status == JobStatus.RUNNING
