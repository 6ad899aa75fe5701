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


def test_filter_by_ids_repeated_or_comma_separated(api_client: Any, jobs: list[Job]) -> None:
    wanted = [jobs[0], jobs[2], jobs[4]]
    repeated = "&".join(f"id={j.id}" for j in wanted)
    assert ids(api_client.get(f"/v1/jobs?{repeated}")) == [str(jobs[4].id), str(jobs[2].id), str(jobs[0].id)]
    mixed = f"id={jobs[0].id},{jobs[2].id}&id={jobs[4].id}&status=succeeded"
    assert ids(api_client.get(f"/v1/jobs?{mixed}")) == [str(jobs[4].id)]


def test_filter_by_ids_never_shows_someone_elses_job(api_client: Any, jobs: list[Job], other_user: Any) -> None:
    theirs = Job.objects.get(owner=other_user)
    response = api_client.get(f"/v1/jobs?id={jobs[1].id}&id={theirs.id}")
    assert ids(response) == [str(jobs[1].id)]
    assert response.json()["count"] == 1


def test_bad_or_too_many_ids_are_400(api_client: Any, jobs: list[Job]) -> None:
    from uuid import uuid4

    body = assert_error(api_client.get(f"/v1/jobs?id={jobs[0].id},nope"), 400, "invalid_request")
    assert "UUID" in body["error"]["message"]
    for nothing in ("", ",", " , "):
        body = assert_error(api_client.get(f"/v1/jobs?id={nothing}"), 400, "invalid_request")
        assert "names no job" in body["error"]["message"]
    many = ",".join(str(uuid4()) for _ in range(251))
    body = assert_error(api_client.get(f"/v1/jobs?id={many}"), 400, "invalid_request")
    assert "at most 250" in body["error"]["message"]
    assert ids(api_client.get("/v1/jobs?id=" + ",".join([str(jobs[3].id)] + [str(uuid4()) for _ in range(249)]))) \
        == [str(jobs[3].id)]
