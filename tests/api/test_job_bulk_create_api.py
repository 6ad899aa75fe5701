"""POST /v1/models/{model}/jobs/bulk: many inputs in one multipart request, made into jobs all or none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache

from api.models import Batch, Job, JobStatus
from api.services import job_input_read, job_succeed
from bench.client import multipart
from tests.api.helpers import assert_error, broker_messages
from tests.conftest import jpeg_bytes, png_bytes

pytestmark = pytest.mark.django_db

BULK_URL = "/v1/models/tinyimg/jobs/bulk"
ECHO_BULK_URL = "/v1/models/echo/jobs/bulk"


def post_parts(client: Any, items: list[tuple[bytes, str]], url: str = BULK_URL, **extra: Any) -> Any:
    body, content_type = multipart(items)
    return client.post(url, data=body, content_type=content_type, **extra)


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_each_input_becomes_a_queued_job_in_order_with_its_own_message(api_client: Any, image_model_manifest: Path,
                                                                       user: Any, settings: Any) -> None:
    settings.INFERQ_INLINE_INPUT_BYTES = 0  # every input through the storage
    images = [jpeg_bytes(color=(10 * i, 30, 30)) for i in range(3)] + [png_bytes()]
    types = ["image/jpeg"] * 3 + ["image/png"]

    response = post_parts(api_client, list(zip(images, types, strict=True)))

    assert response.status_code == 202, response.content
    answered = response.json()["jobs"]
    assert [job["status"] for job in answered] == ["queued"] * 4
    jobs = [Job.objects.get(id=job["id"]) for job in answered]
    for job, data, content_type in zip(jobs, images, types, strict=True):
        assert job.owner == user and job.status == JobStatus.QUEUED
        assert job_input_read(job) == data and job.input
        assert job.input_content_type == content_type and job.input_size == len(data)
        assert job.enqueued_at is not None
    messages = broker_messages("inferq.model.tinyimg")
    assert [message.payload[1] for message in messages] == [{"job_id": str(job.id), "model": "tinyimg"}
                                                          for job in jobs]


def test_the_jobs_are_filed_in_the_batch_named(api_client: Any, image_model_manifest: Path) -> None:
    batch = api_client.post("/v1/batches", {"name": "folder"}, format="json").json()["id"]

    response = post_parts(api_client, [(jpeg_bytes(), "image/jpeg")] * 2, url=f"{BULK_URL}?batch={batch}")

    assert response.status_code == 202, response.content
    assert Job.objects.filter(batch=Batch.objects.get(id=batch)).count() == 2
    assert api_client.get(f"/v1/batches/{batch}").json()["total"] == 2


def test_one_bad_input_refuses_the_request_names_it_and_makes_no_job(api_client: Any, image_model_manifest: Path,
                                                                     media_root: Path, settings: Any) -> None:
    settings.INFERQ_INLINE_INPUT_BYTES = 0
    response = post_parts(api_client, [(jpeg_bytes(), "image/jpeg"), (b"not an image", "image/jpeg"),
                                       (jpeg_bytes(), "image/jpeg")])

    body = assert_error(response, 400, "invalid_image")
    assert body["error"]["message"].startswith("Input 2 (2): ")
    assert "No job was made" in body["error"]["message"]
    assert not Job.objects.exists()
    assert broker_messages("inferq.model.tinyimg") == []
    assert stored_files(media_root) == []


def test_a_part_of_the_wrong_type_is_415_naming_it(api_client: Any, image_model_manifest: Path) -> None:
    response = post_parts(api_client, [(jpeg_bytes(), "image/jpeg"), (b"hello", "text/plain")])

    body = assert_error(response, 415, "unsupported_media_type")
    assert body["error"]["message"].startswith("Input 2 (2): ")
    assert not Job.objects.exists()


def test_the_file_name_a_client_gave_is_in_the_refusal(api_client: Any, image_model_manifest: Path) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api_client.post(BULK_URL, {"input": [SimpleUploadedFile("cat.jpg", jpeg_bytes(), "image/jpeg"),
                                                    SimpleUploadedFile("dog.jpg", b"", "image/jpeg")]},
                               format="multipart")

    body = assert_error(response, 400, "empty_input")
    assert body["error"]["message"].startswith("Input 2 (dog.jpg): ")


def test_a_body_that_is_not_multipart_is_415(api_client: Any, image_model_manifest: Path) -> None:
    response = api_client.post(BULK_URL, data=jpeg_bytes(), content_type="image/jpeg")

    assert_error(response, 415, "unsupported_media_type")


def test_a_multipart_body_without_input_parts_is_400(api_client: Any, image_model_manifest: Path) -> None:
    response = api_client.post(BULK_URL, {"note": "no files"}, format="multipart")

    assert_error(response, 400, "empty_input")


def test_more_inputs_than_the_limit_are_refused_whole(api_client: Any, image_model_manifest: Path,
                                                      settings: Any) -> None:
    settings.INFERQ_MAX_BULK_INPUTS = 3

    assert post_parts(api_client, [(jpeg_bytes(), "image/jpeg")] * 3).status_code == 202
    response = post_parts(api_client, [(jpeg_bytes(), "image/jpeg")] * 4)

    body = assert_error(response, 400, "too_many_inputs")
    assert "at most 3" in body["error"]["message"]
    assert Job.objects.count() == 3


def test_a_truncated_body_is_400_and_makes_no_job(api_client: Any, image_model_manifest: Path) -> None:
    body, content_type = multipart([(jpeg_bytes(), "image/jpeg")] * 2)

    response = api_client.post(BULK_URL, data=body[:-30], content_type=content_type)

    assert_error(response, 400, "bad_request")
    assert not Job.objects.exists()


def test_an_idempotency_key_is_refused_with_a_reason(api_client: Any, image_model_manifest: Path) -> None:
    response = post_parts(api_client, [(jpeg_bytes(), "image/jpeg")], HTTP_IDEMPOTENCY_KEY="k1")

    body = assert_error(response, 400, "invalid_request")
    assert "single submits" in body["error"]["message"]
    assert not Job.objects.exists()


def test_an_unknown_model_is_404(api_client: Any, image_model_manifest: Path) -> None:
    assert_error(post_parts(api_client, [(jpeg_bytes(), "image/jpeg")], url="/v1/models/nope/jobs/bulk"), 404,
                 "unknown_model")


def test_the_broker_down_is_503_and_withdraws_every_job_and_input(api_client: Any, image_model_manifest: Path,
                                                                  monkeypatch: Any, media_root: Path,
                                                                  settings: Any) -> None:
    from kombu.exceptions import OperationalError

    from project.celery import app

    settings.INFERQ_INLINE_INPUT_BYTES = 0
    sent: list[str] = []

    def refuse_the_second(name: str, *, task_id: str, **kwargs: Any) -> None:
        sent.append(task_id)
        if len(sent) == 2:
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(app, "send_task", refuse_the_second)
    response = post_parts(api_client, [(jpeg_bytes(), "image/jpeg")] * 3)

    assert_error(response, 503, "broker_unavailable")
    assert not Job.objects.exists()
    assert stored_files(media_root) == []


def test_the_queue_bound_counts_every_input(api_client: Any, image_model_manifest: Path) -> None:
    manifest = json.loads((image_model_manifest / "manifest.json").read_text())
    (image_model_manifest / "manifest.json").write_text(json.dumps({**manifest, "max_queued": 3}))

    refused = post_parts(api_client, [(jpeg_bytes(), "image/jpeg")] * 4)
    assert_error(refused, 429, "queue_full")
    assert "room for 3 more" in refused.json()["error"]["message"]
    assert not Job.objects.exists()

    assert post_parts(api_client, [(jpeg_bytes(), "image/jpeg")] * 3).status_code == 202
    assert_error(post_parts(api_client, [(jpeg_bytes(), "image/jpeg")]), 429, "queue_full")


def test_the_submit_rate_limit_counts_every_input(api_client: Any, image_model_manifest: Path,
                                                  settings: Any) -> None:
    cache.clear()
    settings.INFERQ_THROTTLE_RATES = {"submit": "5/min", "api": ""}
    try:
        assert post_parts(api_client, [(jpeg_bytes(), "image/jpeg")] * 3).status_code == 202
        refused = post_parts(api_client, [(jpeg_bytes(), "image/jpeg")] * 3)  # 6 > 5
        assert_error(refused, 429, "throttled")
        assert int(refused["Retry-After"]) >= 1
        assert Job.objects.count() == 3
        # The refused inputs were taken back: two more still fit.
        assert post_parts(api_client, [(jpeg_bytes(), "image/jpeg")] * 2).status_code == 202
        assert_error(post_parts(api_client, [(jpeg_bytes(), "image/jpeg")]), 429, "throttled")
    finally:
        cache.clear()


def test_inputs_already_answered_come_from_the_cache_and_only_the_rest_are_queued(api_client: Any,
                                                                                  echo_model: Path) -> None:
    first = post_parts(api_client, [(b"seen", "application/octet-stream")], url=ECHO_BULK_URL).json()["jobs"][0]
    job_succeed(job=Job.objects.get(id=first["id"]), result={"echo": "seen"}, inference_ms=1.0)
    broker_messages("inferq.model.echo")

    response = post_parts(api_client, [(b"new", "application/octet-stream"), (b"seen", "application/octet-stream")],
                          url=ECHO_BULK_URL)

    assert response.status_code == 202, response.content
    fresh, cached = response.json()["jobs"]
    assert fresh["status"] == "queued" and not fresh["cached"]
    assert cached["status"] == "succeeded" and cached["cached"] and cached["result"] == {"echo": "seen"}
    assert [m.payload[1]["job_id"] for m in broker_messages("inferq.model.echo")] == [fresh["id"]]

    every_one_cached = post_parts(api_client, [(b"seen", "application/octet-stream")], url=ECHO_BULK_URL)
    assert every_one_cached.status_code == 200
    assert every_one_cached.json()["jobs"][0]["status"] == "succeeded"


def test_a_refused_insert_leaves_no_stored_input(user: Any, image_model_manifest: Path, monkeypatch: Any,
                                                 media_root: Path, settings: Any) -> None:
    from django.db import DatabaseError

    from api.inputs import ModelInput
    from api.services import jobs_create, model_spec_get

    settings.INFERQ_INLINE_INPUT_BYTES = 0

    def refuse(jobs: list[Any]) -> None:
        assert len(jobs) == 2 and len(stored_files(media_root)) == 2  # the inputs were stored first
        raise DatabaseError("disk I/O error")

    monkeypatch.setattr("api.services.insert_rows", refuse)
    with pytest.raises(DatabaseError):
        jobs_create(owner=user, spec=model_spec_get(name="tinyimg"),
                    model_inputs=[ModelInput(jpeg_bytes(), "image/jpeg")] * 2)

    assert stored_files(media_root) == []
    assert not Job.objects.exists()


def test_the_rows_go_in_as_one_insert(user: Any, image_model_manifest: Path, settings: Any,
                                      django_assert_num_queries: Any) -> None:
    from api.inputs import ModelInput
    from api.services import jobs_create, model_spec_get

    settings.INFERQ_RESULT_CACHE = False  # no cache lookup per input

    spec = model_spec_get(name="tinyimg")
    jobs_create(owner=user, spec=spec, model_inputs=[ModelInput(jpeg_bytes(), "image/jpeg")])  # counts the queue
    with django_assert_num_queries(1) as captured:
        jobs = jobs_create(owner=user, spec=spec, model_inputs=[ModelInput(jpeg_bytes(), "image/jpeg")] * 5)

    assert captured.captured_queries[0]["sql"].startswith("INSERT")
    assert Job.objects.filter(id__in=[job.id for job in jobs]).count() == 5


def test_an_input_over_the_size_limit_is_413_naming_it(api_client: Any, image_model_manifest: Path,
                                                       settings: Any) -> None:
    small, large = jpeg_bytes(8, 8), jpeg_bytes(64, 48)
    settings.INFERQ_MAX_INPUT_BYTES = len(small) + 10

    response = post_parts(api_client, [(small, "image/jpeg"), (large, "image/jpeg")])

    body = assert_error(response, 413, "too_large")
    assert body["error"]["message"].startswith("Input 2 (2): ")
    assert not Job.objects.exists()


def test_inputs_the_cache_answers_do_not_count_against_the_queue_bound(api_client: Any, echo_model: Path) -> None:
    manifest = json.loads((echo_model / "manifest.json").read_text())
    (echo_model / "manifest.json").write_text(json.dumps({**manifest, "max_queued": 1}))
    seen = post_parts(api_client, [(b"seen", "application/octet-stream")], url=ECHO_BULK_URL).json()["jobs"][0]
    job_succeed(job=Job.objects.get(id=seen["id"]), result={"echo": "seen"}, inference_ms=1.0)
    assert post_parts(api_client, [(b"fills the queue", "application/octet-stream")],
                      url=ECHO_BULK_URL).status_code == 202

    answered = post_parts(api_client, [(b"seen", "application/octet-stream")] * 2, url=ECHO_BULK_URL)
    assert answered.status_code == 200, answered.content
    assert [job["cached"] for job in answered.json()["jobs"]] == [True, True]

    refused = post_parts(api_client, [(b"seen", "application/octet-stream"), (b"new", "application/octet-stream")],
                         url=ECHO_BULK_URL)
    assert_error(refused, 429, "queue_full")
    assert Job.objects.count() == 4
