"""Result cache and Idempotency-Key: resubmitting the same bytes or the same key creates no new work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from api.models import Job, JobStatus
from api.services import job_fail, job_succeed
from tests.api.helpers import assert_error, broker_messages
from tests.conftest import write_entry

pytestmark = pytest.mark.django_db

ECHO_URL = "/v1/models/echo/jobs"
QUEUE = "inferq.model.echo"


def submit(client: Any, data: bytes, url: str = ECHO_URL, **headers: str) -> Any:
    return client.post(url, data=data, content_type="application/octet-stream", **headers)


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def answered(client: Any, data: bytes, result: Any) -> Job:
    """Submit `data` and let a stand-in worker answer it with `result`."""
    response = submit(client, data)
    assert response.status_code == 202
    job = Job.objects.get(id=response.json()["id"])
    job_succeed(job=job, result=result, inference_ms=3.0)
    broker_messages(QUEUE)
    return job


# --- result cache ------------------------------------------------------------------------------------------


def test_identical_bytes_are_answered_at_once_from_the_earlier_result(api_client: Any, echo_model: Path,
                                                                      user: Any) -> None:
    first = answered(api_client, b"same bytes", {"label": "cat"})

    response = submit(api_client, b"same bytes")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "succeeded" and body["cached"] is True
    assert body["result"] == {"label": "cat"}
    assert body["id"] != str(first.id)
    assert response["Location"] == f"/v1/jobs/{body['id']}"
    assert broker_messages(QUEUE) == []  # no work was queued
    job = Job.objects.get(id=body["id"])
    assert job.owner == user and not job.input  # nothing stored either
    assert job.input_sha256 == first.input_sha256
    assert api_client.get(f"/v1/jobs/{job.id}").json()["cached"] is True


def test_different_bytes_are_not_cached(api_client: Any, echo_model: Path) -> None:
    answered(api_client, b"these bytes", {"label": "cat"})
    response = submit(api_client, b"other bytes")
    assert response.status_code == 202 and response.json()["cached"] is False
    assert len(broker_messages(QUEUE)) == 1


def test_a_failed_or_unfinished_job_is_not_a_cache_entry(api_client: Any, echo_model: Path) -> None:
    failed = Job.objects.get(id=submit(api_client, b"flaky").json()["id"])
    job_fail(job=failed, code="inference_error", message="boom")
    submit(api_client, b"queued twice")
    broker_messages(QUEUE)

    assert submit(api_client, b"flaky").status_code == 202
    assert submit(api_client, b"queued twice").status_code == 202
    assert len(broker_messages(QUEUE)) == 2


def test_another_model_version_is_not_answered_from_the_cache(api_client: Any, echo_model: Path,
                                                              store: Path) -> None:
    answered(api_client, b"versioned", {"v": 1})
    write_entry(store, {"name": "echo", "version": "2", "handler": "echo", "input": {"kind": "bytes"}})

    response = submit(api_client, b"versioned")  # the latest version is now 2

    assert response.status_code == 202 and response.json()["version"] == "2"
    assert submit(api_client, b"versioned", url=ECHO_URL + "?version=1").status_code == 200


def test_the_cache_is_shared_between_users_unless_told_otherwise(api_client: Any, echo_model: Path,
                                                                 other_user: Any, settings: Any) -> None:
    answered(api_client, b"public knowledge", {"label": "dog"})
    other = client_for(other_user)

    shared = submit(other, b"public knowledge")
    assert shared.status_code == 200 and shared.json()["cached"] is True

    settings.INFERQ_RESULT_CACHE_SHARED = False
    Job.objects.filter(owner=other_user).delete()
    private = submit(other, b"public knowledge")
    assert private.status_code == 202 and private.json()["cached"] is False
    assert submit(api_client, b"public knowledge").status_code == 200  # the owner still hits


def test_the_cache_can_be_turned_off(api_client: Any, echo_model: Path, settings: Any) -> None:
    answered(api_client, b"again please", {"label": "cat"})
    settings.INFERQ_RESULT_CACHE = False
    response = submit(api_client, b"again please")
    assert response.status_code == 202 and response.json()["cached"] is False
    assert len(broker_messages(QUEUE)) == 1


def test_a_cache_hit_ignores_the_queue_bound(api_client: Any, echo_model: Path, settings: Any) -> None:
    """Nothing is queued for a hit, so a full queue does not refuse it."""
    answered(api_client, b"cheap", {"label": "cat"})
    submit(api_client, b"filler")
    settings.INFERQ_MAX_QUEUED = 1
    assert submit(api_client, b"cheap").status_code == 200
    assert_error(submit(api_client, b"new work"), 429, "queue_full")


# --- Idempotency-Key -----------------------------------------------------------------------------------


def test_the_same_key_returns_the_same_job_and_queues_nothing_new(api_client: Any, echo_model: Path) -> None:
    first = submit(api_client, b"pay once", HTTP_IDEMPOTENCY_KEY="order-17")
    again = submit(api_client, b"pay once", HTTP_IDEMPOTENCY_KEY="order-17")

    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first
    assert Job.objects.count() == 1
    assert len(broker_messages(QUEUE)) == 1


def test_replaying_a_finished_job_answers_200_with_its_result(api_client: Any, echo_model: Path) -> None:
    first = submit(api_client, b"done deal", HTTP_IDEMPOTENCY_KEY="k1")
    job_succeed(job=Job.objects.get(id=first.json()["id"]), result={"ok": 1}, inference_ms=1.0)

    again = submit(api_client, b"done deal", HTTP_IDEMPOTENCY_KEY="k1")

    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.json()["result"] == {"ok": 1}


def test_the_same_key_with_different_bytes_is_a_conflict(api_client: Any, echo_model: Path) -> None:
    submit(api_client, b"original", HTTP_IDEMPOTENCY_KEY="k2")
    assert_error(submit(api_client, b"something else", HTTP_IDEMPOTENCY_KEY="k2"), 409, "idempotency_key_reused")
    assert Job.objects.count() == 1


def test_keys_belong_to_their_user(api_client: Any, echo_model: Path, other_user: Any, settings: Any) -> None:
    settings.INFERQ_RESULT_CACHE = False
    mine = submit(api_client, b"shared key", HTTP_IDEMPOTENCY_KEY="k3")
    theirs = submit(client_for(other_user), b"shared key", HTTP_IDEMPOTENCY_KEY="k3")
    assert mine.json()["id"] != theirs.json()["id"]
    assert Job.objects.count() == 2


def test_an_overlong_key_is_a_400(api_client: Any, echo_model: Path) -> None:
    assert_error(submit(api_client, b"x", HTTP_IDEMPOTENCY_KEY="k" * 256), 400, "invalid_request")
    assert not Job.objects.exists()


def test_a_cache_hit_keeps_its_idempotency_key(api_client: Any, echo_model: Path) -> None:
    answered(api_client, b"hit with key", {"label": "cat"})
    first = submit(api_client, b"hit with key", HTTP_IDEMPOTENCY_KEY="k4")
    again = submit(api_client, b"hit with key", HTTP_IDEMPOTENCY_KEY="k4")
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert Job.objects.filter(status=JobStatus.SUCCEEDED, cached=True).count() == 1
