"""Batches over the API (POST /v1/batches, GET /v1/batches/{id}, ?batch= on submit) and in the admin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from api.models import Batch, Job
from tests.api.helpers import assert_error
from tests.conftest import png_bytes

pytestmark = pytest.mark.django_db


def submit(client: APIClient, batch: str, data: bytes | None = None) -> Any:
    return client.post(f"/v1/models/tinyimg/jobs?batch={batch}", data=data or png_bytes(),
                       content_type="image/png")


def test_a_batch_groups_submitted_jobs_and_counts_them_by_status(api_client: APIClient, user: Any,
                                                                 image_model_manifest: Path) -> None:
    created = api_client.post("/v1/batches", {"name": "holiday photos", "model": "tinyimg"}, format="json")
    assert created.status_code == 201, created.content
    batch_id = created.json()["id"]
    assert created["Location"] == f"/v1/batches/{batch_id}"
    assert created.json()["counts"] == {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "canceled": 0}
    jobs = [submit(api_client, batch_id, png_bytes(8 + i, 8)) for i in range(3)]
    assert all(r.status_code == 202 and r.json()["batch"] == batch_id for r in jobs)
    api_client.post(f"/v1/jobs/{jobs[0].json()['id']}/cancel")
    outsider = api_client.post("/v1/models/tinyimg/jobs", data=png_bytes(), content_type="image/png")
    assert outsider.json()["batch"] is None
    detail = api_client.get(f"/v1/batches/{batch_id}").json()
    assert (detail["name"], detail["model"], detail["total"]) == ("holiday photos", "tinyimg", 3)
    assert detail["counts"]["queued"] == 2 and detail["counts"]["canceled"] == 1
    listed = api_client.get(f"/v1/jobs?batch={batch_id}").json()
    assert listed["count"] == 3 and {j["id"] for j in listed["results"]} == {r.json()["id"] for r in jobs}


def test_someone_elses_batch_is_not_found_and_gets_no_job(api_client: APIClient, other_user: Any,
                                                          image_model_manifest: Path) -> None:
    theirs = Batch.objects.create(owner=other_user, name="not yours")
    assert_error(api_client.get(f"/v1/batches/{theirs.id}"), 404, "not_found")
    assert_error(api_client.get("/v1/batches/not-a-uuid"), 404, "not_found")
    assert_error(submit(api_client, str(theirs.id)), 404, "not_found")
    assert_error(submit(api_client, "not-a-uuid"), 404, "not_found")
    assert Job.objects.count() == 0


def test_a_batch_for_an_unknown_model_is_refused(api_client: APIClient, image_model_manifest: Path) -> None:
    assert_error(api_client.post("/v1/batches", {"model": "nope"}, format="json"), 404, "unknown_model")
    assert Batch.objects.count() == 0


def test_the_admin_lists_batches_with_counts_by_status_and_links_to_their_jobs(
        user: Any, image_model_manifest: Path, client: Any) -> None:
    from django.contrib.auth import get_user_model

    batch = Batch.objects.create(owner=user, name="b1", model_name="tinyimg")
    for status, n in (("queued", 2), ("succeeded", 3), ("failed", 1)):
        for _ in range(n):
            Job.objects.create(owner=user, batch=batch, model_name="tinyimg", model_version="1", status=status,
                               input_content_type="image/png", input_sha256="0" * 64)
    loose = Job.objects.create(owner=user, model_name="tinyimg", model_version="1", input_content_type="image/png",
                               input_sha256="1" * 64)
    client.force_login(get_user_model().objects.create_superuser("admin", "a@example.com", "pw"))
    page = client.get("/admin/api/batch/").content.decode()
    cells = [f'<td class="field-{s}">{n}</td>' for s, n in
             (("queued", 2), ("running", 0), ("succeeded", 3), ("failed", 1), ("canceled", 0))]
    assert all(cell in page for cell in cells), page
    detail = client.get(f"/admin/api/batch/{batch.id}/change/").content.decode()
    assert "queued 2, running 0, succeeded 3, failed 1, canceled 0" in detail
    jobs = client.get(f"/admin/api/job/?batch={batch.id}")
    assert jobs.status_code == 200
    assert "6 jobs" in jobs.content.decode() or "6 total" in jobs.content.decode()
    assert str(loose.id) not in jobs.content.decode()
