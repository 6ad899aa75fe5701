"""POST /v1/jobs/{id}/cancel: a job that has not finished is canceled; a finished one is left alone."""

from __future__ import annotations

from typing import Any

import pytest

from api.models import Job, JobStatus

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("inline_limit", [0, 1024])
def test_queued_job_is_canceled(api_client: Any, make_job: Any, media_root: Any, settings: Any,
                                inline_limit: int) -> None:
    settings.INFERQ_INLINE_INPUT_BYTES = inline_limit
    job = make_job(b"abc")
    assert (job.input and job.input.storage.exists(job.input.name)) or job.input_data == b"abc"

    response = api_client.post(f"/v1/jobs/{job.id}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELED
    assert job.finished_at is not None
    assert not (job.input and job.input.storage.exists(job.input.name))
    assert Job.objects.with_input().get(id=job.id).input_data is None


def test_running_job_is_canceled(api_client: Any, make_job: Any) -> None:
    job = make_job()
    Job.objects.filter(id=job.id).update(status=JobStatus.RUNNING)
    assert api_client.post(f"/v1/jobs/{job.id}/cancel").json()["status"] == "canceled"


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_finished_job_stays_finished(api_client: Any, make_job: Any, final: str) -> None:
    job = make_job()
    Job.objects.filter(id=job.id).update(status=final, result={"size": 5})

    response = api_client.post(f"/v1/jobs/{job.id}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == final
    assert response.json()["result"] == {"size": 5}
    job.refresh_from_db()
    assert job.status == final


def test_cancel_needs_post(api_client: Any, make_job: Any) -> None:
    job = make_job()
    response = api_client.get(f"/v1/jobs/{job.id}/cancel")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
