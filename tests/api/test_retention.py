"""Retention: inputs go when a job ends; finished jobs go after INFERQ_RESULT_RETENTION_DAYS, by beat."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

import celeryconfig
from api.models import Job, JobStatus
from api.retention import jobs_purge_expired
from api.services import job_succeed

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def inputs_in_the_storage(settings: Any) -> None:
    """These tests are about input files; small inputs would otherwise be kept in the job row."""
    settings.INFERQ_INLINE_INPUT_BYTES = 0


def age(job: Job, days: float) -> None:
    Job.objects.filter(id=job.id).update(finished_at=timezone.now() - timedelta(days=days),
                                         created_at=timezone.now() - timedelta(days=days))


def stored(job: Job) -> bool:
    job.refresh_from_db()
    return bool(job.input) and job.input.storage.exists(job.input.name)


def test_the_input_is_deleted_when_the_job_ends(make_job: Any, django_capture_on_commit_callbacks: Any) -> None:
    job = make_job(b"private photo")
    assert stored(job)
    with django_capture_on_commit_callbacks(execute=True):  # once the ending is committed
        job_succeed(job=job, result={}, inference_ms=1.0)
    assert not job.input.storage.exists(job.input.name)


def test_finished_jobs_older_than_the_retention_are_purged(make_job: Any, settings: Any) -> None:
    settings.INFERQ_RESULT_RETENTION_DAYS = 30
    old, recent, active = make_job(b"old"), make_job(b"recent"), make_job(b"active but old")
    for job in (old, recent):
        job_succeed(job=job, result={"r": 1}, inference_ms=1.0)
    age(old, 31)
    age(recent, 29)
    Job.objects.filter(id=active.id).update(created_at=timezone.now() - timedelta(days=90))

    assert jobs_purge_expired() == 1

    assert set(Job.objects.values_list("id", flat=True)) == {recent.id, active.id}


def test_kept_inputs_go_with_their_purged_job(make_job: Any, settings: Any) -> None:
    settings.INFERQ_KEEP_INPUTS = True
    job = make_job(b"kept for audit")
    job_succeed(job=job, result={}, inference_ms=1.0)
    name = job.input.name
    assert job.input.storage.exists(name)
    age(job, 400)

    assert jobs_purge_expired(days=365) == 1

    assert not job.input.storage.exists(name)


def test_zero_days_keeps_everything(make_job: Any, settings: Any) -> None:
    settings.INFERQ_RESULT_RETENTION_DAYS = 0
    job = make_job(b"forever")
    job_succeed(job=job, result={}, inference_ms=1.0)
    age(job, 10_000)
    assert jobs_purge_expired() == 0
    assert Job.objects.filter(id=job.id, status=JobStatus.SUCCEEDED).exists()


def test_a_large_backlog_is_purged_in_chunks(make_job: Any, monkeypatch: Any) -> None:
    import api.retention

    monkeypatch.setattr(api.retention, "CHUNK", 2)
    jobs = [make_job(bytes([i])) for i in range(5)]
    for job in jobs:
        job_succeed(job=job, result={}, inference_ms=1.0)
        age(job, 100)
    assert jobs_purge_expired(days=30) == 5
    assert not Job.objects.exists()


def test_the_beat_task_runs_the_purge(make_job: Any, settings: Any) -> None:
    from tasks.maintenance import purge_expired

    settings.INFERQ_RESULT_RETENTION_DAYS = 1
    job = make_job(b"stale")
    job_succeed(job=job, result={}, inference_ms=1.0)
    age(job, 2)

    assert purge_expired() == 1
    assert purge_expired.name == "maintenance.purge_expired"


def test_beat_schedules_the_purge_and_workers_import_it() -> None:
    entries = [e for e in celeryconfig.beat_schedule.values() if e["task"] == "maintenance.purge_expired"]
    assert len(entries) == 1 and entries[0]["schedule"] > 0
    assert "tasks.maintenance" in celeryconfig.imports


def test_inputs_left_behind_by_a_killed_process_are_discarded(make_job: Any) -> None:
    from api.retention import inputs_discard_orphaned

    ended, queued, orphan = make_job(b"ended, input not deleted"), make_job(b"still queued"), make_job(b"no row")
    # A worker killed between writing the job's end and deleting its input: the row ended, the file stayed.
    Job.objects.filter(id=ended.id).update(status=JobStatus.SUCCEEDED, finished_at=timezone.now())
    # A web process killed between storing the input and inserting the row.
    Job.objects.filter(id=orphan.id).delete()
    storage = ended.input.storage

    assert inputs_discard_orphaned() == 1
    assert not storage.exists(ended.input.name)
    assert storage.exists(queued.input.name)
    assert storage.exists(orphan.input.name), "a file with no row yet may be a submit in progress"

    assert inputs_discard_orphaned(now=timezone.now() + timedelta(minutes=11)) == 1
    assert not storage.exists(orphan.input.name)
    assert storage.exists(queued.input.name)


def test_kept_inputs_are_not_discarded(make_job: Any, settings: Any) -> None:
    from api.retention import inputs_discard_orphaned

    settings.INFERQ_KEEP_INPUTS = True
    job = make_job(b"kept for audit")
    job_succeed(job=job, result={}, inference_ms=1.0)
    assert inputs_discard_orphaned(now=timezone.now() + timedelta(days=1)) == 0
    assert job.input.storage.exists(job.input.name)


def test_files_that_are_not_inputs_are_left_alone(make_job: Any) -> None:
    from django.core.files.base import ContentFile

    from api.retention import inputs_discard_orphaned

    job = make_job(b"x")
    storage = job.input.storage
    name = storage.save("inputs/README", ContentFile(b"an operator's note"))
    assert inputs_discard_orphaned(now=timezone.now() + timedelta(days=1)) == 0
    assert storage.exists(name)


def test_the_beat_task_also_discards_orphaned_inputs(make_job: Any) -> None:
    from tasks.maintenance import purge_expired

    job = make_job(b"ended, input not deleted")
    Job.objects.filter(id=job.id).update(status=JobStatus.FAILED, finished_at=timezone.now())
    purge_expired()
    assert not job.input.storage.exists(job.input.name)
