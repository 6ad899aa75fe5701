"""GET /v1/jobs: only the caller's jobs, newest first, filtered and paginated."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from api.models import Job
from tests.api.helpers import assert_error

pytestmark = pytest.mark.django_db


@pytest.fixture
def jobs(user: Any, other_user: Any) -> list[Job]:
    """Five of alice's jobs with distinct ages (index 0 is the oldest) and one of mallory's."""
    start = timezone.now() - timedelta(hours=1)
    made = []
    specs = [("echo", "queued"), ("digits", "succeeded"), ("echo", "failed"), ("digits", "queued"),
             ("echo", "succeeded")]
    for i, (model, status) in enumerate(specs):
        job = Job.objects.create(owner=user, model_name=model, model_version="1", status=status,
                                 input_content_type="image/png", input_sha256="0" * 64)
        Job.objects.filter(id=job.id).update(created_at=start + timedelta(minutes=i))
        made.append(job)
    Job.objects.create(owner=other_user, model_name="echo", model_version="1", input_content_type="x",
                       input_sha256="1" * 64)
    return made


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["results"]]


def test_only_own_jobs_newest_first(api_client: Any, jobs: list[Job]) -> None:
    response = api_client.get("/v1/jobs")
    assert response.json()["count"] == 5
    assert ids(response) == [str(j.id) for j in reversed(jobs)]


def test_filter_by_status(api_client: Any, jobs: list[Job]) -> None:
    assert ids(api_client.get("/v1/jobs?status=queued")) == [str(jobs[3].id), str(jobs[0].id)]
    assert ids(api_client.get("/v1/jobs?status=canceled")) == []


def test_filter_by_model(api_client: Any, jobs: list[Job]) -> None:
    assert ids(api_client.get("/v1/jobs?model=digits")) == [str(jobs[3].id), str(jobs[1].id)]
    assert ids(api_client.get("/v1/jobs?model=echo&status=succeeded")) == [str(jobs[4].id)]


def test_limit_offset_pagination(api_client: Any, jobs: list[Job]) -> None:
    newest_first = [str(j.id) for j in reversed(jobs)]
    first = api_client.get("/v1/jobs?limit=2")
    second = api_client.get("/v1/jobs?limit=2&offset=2")
    last = api_client.get("/v1/jobs?limit=2&offset=4")

    assert ids(first) == newest_first[:2]
    assert ids(second) == newest_first[2:4]
    assert ids(last) == newest_first[4:]
    assert first.json()["count"] == 5
    assert "offset=2" in first.json()["next"]
    assert first.json()["previous"] is None
    assert last.json()["next"] is None


def test_bad_status_filter_is_400(api_client: Any, jobs: list[Job]) -> None:
    body = assert_error(api_client.get("/v1/jobs?status=finished"), 400, "invalid_request")
    assert "queued" in body["error"]["message"]


def test_bad_batch_filter_is_400(api_client: Any, jobs: list[Job]) -> None:
    assert_error(api_client.get("/v1/jobs?batch=nope"), 400, "invalid_request")


def test_list_requires_authentication(jobs: list[Job]) -> None:
    from rest_framework.test import APIClient

    assert_error(APIClient().get("/v1/jobs"), 401, "not_authenticated")
