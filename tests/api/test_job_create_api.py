"""POST /v1/models/{model}/jobs: accepted inputs, the published message, and every refusal's shape."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from api.models import Job, JobStatus
from api.services import job_input_read
from tests.api.helpers import assert_error, broker_messages
from tests.conftest import jpeg_bytes, png_bytes

pytestmark = pytest.mark.django_db

IMAGE_URL = "/v1/models/tinyimg/jobs"
TENSOR_URL = "/v1/models/vec/jobs"


def assert_accepted(response: Any) -> Job:
    assert response.status_code == 202, response.content
    body = response.json()
    assert response["Location"] == f"/v1/jobs/{body['id']}"
    assert int(response["Retry-After"]) >= 1
    job = Job.objects.get(id=body["id"])
    assert job.status == JobStatus.QUEUED
    assert body["status"] == "queued"
    return job


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header for a huge 1-bit image, with almost no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 8)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# --- accepted inputs ---------------------------------------------------------------------------


def test_raw_jpeg_is_accepted_and_only_the_job_id_is_published(api_client: Any, image_model_manifest: Path,
                                                               user: Any) -> None:
    data = jpeg_bytes()
    response = api_client.post(IMAGE_URL, data=data, content_type="image/jpeg")

    job = assert_accepted(response)
    assert job.owner == user
    assert (job.model_name, job.model_version) == ("tinyimg", "1")
    assert job.input_content_type == "image/jpeg"
    assert job.input_size == len(data)
    assert job_input_read(job) == data
    assert job.enqueued_at is not None

    messages = broker_messages("inferq.model.tinyimg")
    assert len(messages) == 1
    message = messages[0]
    assert message.content_type == "application/json"
    assert message.headers["task"] == "inference.run"
    args, kwargs, _embed = message.payload
    assert args == []
    assert kwargs == {"job_id": str(job.id), "model": "tinyimg"}


def test_multipart_file_field_input_is_accepted(api_client: Any, image_model_manifest: Path) -> None:
    upload = SimpleUploadedFile("cat.png", png_bytes(), content_type="image/png")
    response = api_client.post(IMAGE_URL, data={"input": upload}, format="multipart")

    job = assert_accepted(response)
    assert job.input_content_type == "image/png"
    assert len(broker_messages("inferq.model.tinyimg")) == 1


def test_multipart_without_input_field_is_refused(api_client: Any, image_model_manifest: Path) -> None:
    upload = SimpleUploadedFile("cat.png", png_bytes(), content_type="image/png")
    response = api_client.post(IMAGE_URL, data={"file": upload}, format="multipart")
    assert_error(response, 400, "empty_input")
    assert not Job.objects.exists()


def test_json_base64_image_is_accepted(api_client: Any, image_model_manifest: Path) -> None:
    data = jpeg_bytes()
    payload = {"input": {"b64": base64.b64encode(data).decode()}}
    response = api_client.post(IMAGE_URL, data=payload, format="json")

    job = assert_accepted(response)
    assert job.input_content_type == "image/jpeg"  # sniffed from the bytes, not trusted from the client
    assert job.input_size == len(data)


def test_json_tensor_is_stored_as_npy(api_client: Any, tensor_model_manifest: Path) -> None:
    values = np.arange(64, dtype=np.float32).reshape(1, 8, 8) / 64
    response = api_client.post(TENSOR_URL, data={"input": {"data": values.tolist()}}, format="json")

    job = assert_accepted(response)
    assert job.input_content_type == "application/x-npy"
    stored = np.load(io.BytesIO(job_input_read(job)), allow_pickle=False)
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(stored, values)
    assert len(broker_messages("inferq.model.vec")) == 1


def test_raw_npy_tensor_is_accepted(api_client: Any, tensor_model_manifest: Path) -> None:
    data = npy_bytes(np.zeros((1, 8, 8), dtype=np.float32))
    response = api_client.post(TENSOR_URL, data=data, content_type="application/x-npy")

    job = assert_accepted(response)
    assert job.input_content_type == "application/x-npy"
    assert job.input_size == len(data)


def test_idempotency_key_returns_the_same_job(api_client: Any, image_model_manifest: Path) -> None:
    data = jpeg_bytes()
    first = api_client.post(IMAGE_URL, data=data, content_type="image/jpeg", HTTP_IDEMPOTENCY_KEY="k-1")
    second = api_client.post(IMAGE_URL, data=data, content_type="image/jpeg", HTTP_IDEMPOTENCY_KEY="k-1")
    third = api_client.post(IMAGE_URL, data=data, content_type="image/jpeg", HTTP_IDEMPOTENCY_KEY="k-2")

    assert first.status_code == second.status_code == third.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert third.json()["id"] != first.json()["id"]
    assert Job.objects.count() == 2
    assert len(broker_messages("inferq.model.tinyimg")) == 2


def test_version_query_picks_a_version(api_client: Any, image_model_manifest: Path) -> None:
    from tests.conftest import write_entry

    manifest = json.loads((image_model_manifest / "manifest.json").read_text())
    write_entry(image_model_manifest.parent.parent, {**manifest, "version": "2"})

    latest = api_client.post(IMAGE_URL, data=jpeg_bytes(), content_type="image/jpeg")
    pinned = api_client.post(IMAGE_URL + "?version=1", data=jpeg_bytes(), content_type="image/jpeg")
    missing = api_client.post(IMAGE_URL + "?version=9", data=jpeg_bytes(), content_type="image/jpeg")

    assert latest.json()["version"] == "2"
    assert pinned.json()["version"] == "1"
    assert_error(missing, 404, "unknown_model")


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        pytest.param(b"", "image/jpeg", 400, "empty_input", id="empty"),
        pytest.param(jpeg_bytes(256, 256)[:700], "image/jpeg", 400, "invalid_image", id="truncated-jpeg"),
        pytest.param(b"this is plainly not a picture", "image/jpeg", 400, "invalid_image", id="text-as-jpeg"),
        pytest.param(png_declaring(30000, 30000), "image/png", 400, "image_too_large", id="decompression-bomb"),
        pytest.param(jpeg_bytes(), "text/plain", 415, "unsupported_media_type", id="text-plain"),
    ],
)
def test_bad_image_bodies_are_refused(api_client: Any, image_model_manifest: Path, data: bytes,
                                      content_type: str, status: int, code: str) -> None:
    response = api_client.post(IMAGE_URL, data=data, content_type=content_type)
    assert_error(response, status, code)
    assert not Job.objects.exists()
    assert broker_messages("inferq.model.tinyimg") == []


def test_image_over_the_pixel_limit_is_refused(api_client: Any, image_model_manifest: Path, settings: Any) -> None:
    settings.INFERQ_MAX_IMAGE_PIXELS = 32 * 32 - 1
    response = api_client.post(IMAGE_URL, data=png_bytes(32, 32), content_type="image/png")
    body = assert_error(response, 400, "image_too_large")
    assert "32x32" in body["error"]["message"]


def test_body_over_the_size_limit_is_413(api_client: Any, image_model_manifest: Path, settings: Any) -> None:
    data = jpeg_bytes()
    settings.INFERQ_MAX_INPUT_BYTES = len(data) - 1
    assert_error(api_client.post(IMAGE_URL, data=data, content_type="image/jpeg"), 413, "too_large")

    upload = SimpleUploadedFile("big.jpg", data, content_type="image/jpeg")
    assert_error(api_client.post(IMAGE_URL, data={"input": upload}, format="multipart"), 413, "too_large")
    assert not Job.objects.exists()


def test_an_input_over_the_size_limit_is_413_whatever_carried_it(api_client: Any, image_model_manifest: Path,
                                                                 settings: Any) -> None:
    """The limit is on the input's bytes (api.inputs.input_from_bytes), not on one way of sending them: base64 in
    JSON, whose body is larger than its input, is held to it too."""
    data = jpeg_bytes()
    settings.INFERQ_MAX_INPUT_BYTES = len(data) - 1
    payload = {"input": {"b64": base64.b64encode(data).decode(), "content_type": "image/jpeg"}}

    assert_error(api_client.post(IMAGE_URL, data=payload, format="json"), 413, "too_large")
    assert not Job.objects.exists()


def test_body_at_the_size_limit_is_accepted(api_client: Any, image_model_manifest: Path, settings: Any) -> None:
    data = jpeg_bytes()
    settings.INFERQ_MAX_INPUT_BYTES = len(data)
    assert_accepted(api_client.post(IMAGE_URL, data=data, content_type="image/jpeg"))


def test_malformed_json_is_400(api_client: Any, image_model_manifest: Path) -> None:
    response = api_client.post(IMAGE_URL, data=b'{"input": {"b64": ', content_type="application/json")
    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param([1, 2, 3], id="not-an-object"),
        pytest.param({"image": "x"}, id="no-input-key"),
        pytest.param({"input": {"url": "http://example.com/cat.jpg"}}, id="neither-b64-nor-data"),
    ],
)
def test_json_of_the_wrong_shape_is_400(api_client: Any, image_model_manifest: Path, payload: Any) -> None:
    assert_error(api_client.post(IMAGE_URL, data=payload, format="json"), 400, "invalid_json")


@pytest.mark.parametrize("b64", ["not base64 at all!", "abc", 12345])
def test_bad_base64_is_400(api_client: Any, image_model_manifest: Path, b64: Any) -> None:
    response = api_client.post(IMAGE_URL, data={"input": {"b64": b64}}, format="json")
    assert_error(response, 400, "invalid_base64")


def test_base64_of_a_non_image_is_invalid_image(api_client: Any, image_model_manifest: Path) -> None:
    payload = {"input": {"b64": base64.b64encode(b"hello world").decode()}}
    assert_error(api_client.post(IMAGE_URL, data=payload, format="json"), 400, "invalid_image")


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"input": {"data": np.zeros((8, 8)).tolist()}}, id="wrong-shape"),
        pytest.param({"input": {"data": np.zeros((1, 8, 8)).tolist(), "dtype": "float64"}}, id="wrong-dtype"),
        pytest.param({"input": {"data": np.zeros((1, 8, 8)).tolist(), "dtype": "complex"}}, id="unknown-dtype"),
        pytest.param({"input": {"data": [["a"] * 8] * 8}}, id="not-numeric"),
        pytest.param({"input": {"data": list(range(64)), "shape": [1, 7, 7]}}, id="does-not-fit-shape"),
    ],
)
def test_bad_json_tensors_are_refused(api_client: Any, tensor_model_manifest: Path, payload: Any) -> None:
    assert_error(api_client.post(TENSOR_URL, data=payload, format="json"), 400, "invalid_tensor")
    assert not Job.objects.exists()


def test_json_tensor_reshaped_by_shape_is_accepted(api_client: Any, tensor_model_manifest: Path) -> None:
    payload = {"input": {"data": [0.5] * 64, "shape": [1, 8, 8]}}
    assert_accepted(api_client.post(TENSOR_URL, data=payload, format="json"))


@pytest.mark.parametrize(
    "array",
    [
        pytest.param(np.zeros((1, 8, 9), dtype=np.float32), id="wrong-shape"),
        pytest.param(np.zeros((1, 8, 8), dtype=np.float64), id="wrong-dtype"),
        pytest.param(np.full((1, 8, 8), np.nan, dtype=np.float32), id="nan"),
        pytest.param(np.full((1, 8, 8), np.inf, dtype=np.float32), id="inf"),
    ],
)
def test_bad_npy_tensors_are_refused(api_client: Any, tensor_model_manifest: Path, array: np.ndarray) -> None:
    response = api_client.post(TENSOR_URL, data=npy_bytes(array), content_type="application/x-npy")
    assert_error(response, 400, "invalid_tensor")
    assert not Job.objects.exists()


def test_garbage_npy_is_refused(api_client: Any, tensor_model_manifest: Path) -> None:
    response = api_client.post(TENSOR_URL, data=b"\x93NUMPY garbage", content_type="application/x-npy")
    assert_error(response, 400, "invalid_tensor")


def test_tensor_data_sent_to_an_image_model_is_refused(api_client: Any, image_model_manifest: Path) -> None:
    response = api_client.post(IMAGE_URL, data={"input": {"data": [[1.0]]}}, format="json")
    assert_error(response, 400, "invalid_input")


def test_image_sent_to_a_tensor_model_is_415(api_client: Any, tensor_model_manifest: Path) -> None:
    response = api_client.post(TENSOR_URL, data=jpeg_bytes(), content_type="image/jpeg")
    assert_error(response, 415, "unsupported_media_type")


def test_unknown_model_is_404(api_client: Any, image_model_manifest: Path) -> None:
    response = api_client.post("/v1/models/nosuchmodel/jobs", data=jpeg_bytes(), content_type="image/jpeg")
    body = assert_error(response, 404, "unknown_model")
    assert "nosuchmodel" in body["error"]["message"]


def test_unauthenticated_is_401(image_model_manifest: Path, db: Any) -> None:
    from rest_framework.test import APIClient

    response = APIClient().post(IMAGE_URL, data=jpeg_bytes(), content_type="image/jpeg")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Token")
    assert not Job.objects.exists()


def test_bad_token_is_401(image_model_manifest: Path, db: Any) -> None:
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert_error(client.post(IMAGE_URL, data=jpeg_bytes(), content_type="image/jpeg"), 401, "authentication_failed")


def test_full_queue_is_429_with_retry_after(api_client: Any, image_model_manifest: Path) -> None:
    manifest = json.loads((image_model_manifest / "manifest.json").read_text())
    (image_model_manifest / "manifest.json").write_text(json.dumps({**manifest, "max_queued": 1}))

    assert_accepted(api_client.post(IMAGE_URL, data=jpeg_bytes(), content_type="image/jpeg"))
    response = api_client.post(IMAGE_URL, data=jpeg_bytes(), content_type="image/jpeg")
    assert_error(response, 429, "queue_full")
    assert int(response["Retry-After"]) > 0
    assert Job.objects.count() == 1


def test_broker_down_is_503_and_leaves_no_job(api_client: Any, image_model_manifest: Path, monkeypatch: Any,
                                               media_root: Path) -> None:
    from kombu.exceptions import OperationalError

    from project.celery import app

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(app, "send_task", refuse)
    response = api_client.post(IMAGE_URL, data=jpeg_bytes(), content_type="image/jpeg")

    body = assert_error(response, 503, "broker_unavailable")
    assert int(response["Retry-After"]) > 0
    assert "6379" not in body["error"]["message"]
    assert not Job.objects.exists()
    assert [p for p in media_root.rglob("*") if p.is_file()] == []
