"""GET /v1/jobs/{id}: the owner sees the job; anyone else, or a malformed id, gets the same 404."""

from __future__ import annotations

from typing import Any

import pytest

from api.models import JobStatus
from tests.api.helpers import assert_error

pytestmark = pytest.mark.django_db


def test_owner_sees_the_job(api_client: Any, make_job: Any) -> None:
    job = make_job(b"payload")
    response = api_client.get(f"/v1/jobs/{job.id}")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(job.id)
    assert body["status"] == "queued"
    assert body["model"] == "echo"
    assert body["version"] == "1"
    assert body["url"] == f"/v1/jobs/{job.id}"
    assert body["result"] is None
    assert body["error"] is None
    assert body["input"] == {"content_type": "application/octet-stream", "size": 7, "sha256": job.input_sha256}
    assert set(body["timings"]) == {"queue_ms", "inference_ms", "total_ms", "batch_size"}


def test_finished_job_shows_result_and_error(api_client: Any, make_job: Any) -> None:
    ok, bad = make_job(b"a"), make_job(b"b")
    type(ok).objects.filter(id=ok.id).update(status=JobStatus.SUCCEEDED, result={"answer": 42})
    type(bad).objects.filter(id=bad.id).update(status=JobStatus.FAILED, error_code="invalid_image",
                                               error_message="Cannot decode the image.")

    assert api_client.get(f"/v1/jobs/{ok.id}").json()["result"] == {"answer": 42}
    body = api_client.get(f"/v1/jobs/{bad.id}").json()
    assert body["status"] == "failed"
    assert body["error"] == {"code": "invalid_image", "message": "Cannot decode the image."}


def test_another_users_job_is_not_found(api_client: Any, make_job: Any, other_user: Any) -> None:
    theirs = make_job(owner=other_user)
    assert_error(api_client.get(f"/v1/jobs/{theirs.id}"), 404, "not_found")
    assert_error(api_client.post(f"/v1/jobs/{theirs.id}/cancel"), 404, "not_found")
    theirs.refresh_from_db()
    assert theirs.status == JobStatus.QUEUED


@pytest.mark.parametrize("job_id", ["not-a-uuid", "123", "00000000-0000-0000-0000-000000000000"])
def test_malformed_or_unknown_id_is_not_found(api_client: Any, job_id: str) -> None:
    assert_error(api_client.get(f"/v1/jobs/{job_id}"), 404, "not_found")


def test_a_job_is_answered_in_the_bytes_and_headers_drfs_response_renders(api_client: Any, make_job: Any) -> None:
    from rest_framework.renderers import JSONRenderer

    from api.serializers import job_to_dict

    job = make_job(b"x")
    type(job).objects.filter(id=job.id).update(status=JobStatus.FAILED, error_code="invalid_image",
                                               error_message="Cannot decode the image \u00e9\u2028.")
    job.refresh_from_db()
    for accept in ("application/json", "application/json; indent=4"):
        response = api_client.get(f"/v1/jobs/{job.id}", HTTP_ACCEPT=accept)
        assert response.status_code == 200 and response["Content-Type"] == "application/json"
        assert response.content == JSONRenderer().render(job_to_dict(job), accept)  # compact, or indented
    assert b"\\u2028" in response.content and "\u00e9".encode() in response.content
    assert api_client.get(f"/v1/jobs/{job.id}", HTTP_ACCEPT="text/html").status_code == 406
