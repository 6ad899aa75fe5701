"""Hostile inputs beyond the everyday ones in test_job_create_api: each refused with its own 4xx and code,
never a 5xx, and never leaving a job, a stored input or a broker message behind."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from api.models import Job
from tests.api.helpers import assert_error, broker_messages
from tests.api.test_job_create_api import IMAGE_URL, TENSOR_URL, png_declaring
from tests.conftest import png_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def nothing_left_behind(media_root: Path) -> Any:
    """After every refusal: no job row, no stored input, no message."""
    yield
    assert not Job.objects.exists()
    assert [p for p in media_root.rglob("*") if p.is_file()] == []
    assert broker_messages("inferq.model.tinyimg") == [] and broker_messages("inferq.model.vec") == []


def npy_declaring(shape: tuple[int, ...]) -> bytes:
    """A valid .npy header for a gigantic float32 array, followed by a few bytes of data."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + b"\x00" * 16


def test_truncated_png_is_invalid_image(api_client: Any, image_model_manifest: Path) -> None:
    data = png_bytes(64, 64)
    response = api_client.post(IMAGE_URL, data=data[: len(data) // 2], content_type="image/png")
    assert_error(response, 400, "invalid_image")


def test_decompression_bomb_in_multipart_is_image_too_large(api_client: Any, image_model_manifest: Path) -> None:
    upload = SimpleUploadedFile("bomb.png", png_declaring(30000, 30000), content_type="image/png")
    response = api_client.post(IMAGE_URL, data={"input": upload}, format="multipart")
    assert_error(response, 400, "image_too_large")


def test_decompression_bomb_in_json_base64_is_image_too_large(api_client: Any, image_model_manifest: Path) -> None:
    payload = {"input": {"b64": base64.b64encode(png_declaring(30000, 30000)).decode()}}
    assert_error(api_client.post(IMAGE_URL, data=payload, format="json"), 400, "image_too_large")


def test_empty_multipart_file_is_empty_input(api_client: Any, image_model_manifest: Path) -> None:
    upload = SimpleUploadedFile("empty.jpg", b"", content_type="image/jpeg")
    response = api_client.post(IMAGE_URL, data={"input": upload}, format="multipart")
    assert_error(response, 400, "empty_input")


def test_deeply_nested_json_is_invalid_json_not_a_crash(api_client: Any, image_model_manifest: Path) -> None:
    body = b'{"input": {"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    assert_error(api_client.post(IMAGE_URL, data=body, content_type="application/json"), 400, "invalid_json")


def test_json_that_is_not_utf8_is_invalid_json(api_client: Any, image_model_manifest: Path) -> None:
    body = b'{"input": {"b64": "\xff\xfe"}}'
    assert_error(api_client.post(IMAGE_URL, data=body, content_type="application/json"), 400, "invalid_json")


def test_json_tensor_with_nan_is_refused(api_client: Any, tensor_model_manifest: Path) -> None:
    body = ('{"input": {"data": [' + ",".join(["NaN"] * 64) + '], "shape": [1, 8, 8]}}').encode()
    response = api_client.post(TENSOR_URL, data=body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] in {"invalid_json", "invalid_tensor"}


def test_npy_declaring_a_gigantic_shape_is_refused_without_allocating_it(api_client: Any,
                                                                        tensor_model_manifest: Path) -> None:
    response = api_client.post(TENSOR_URL, data=npy_declaring((1_000_000, 1_000_000)),
                               content_type="application/x-npy")
    assert_error(response, 400, "invalid_tensor")


def test_npy_of_python_objects_is_refused(api_client: Any, tensor_model_manifest: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    response = api_client.post(TENSOR_URL, data=buffer.getvalue(), content_type="application/x-npy")
    assert_error(response, 400, "invalid_tensor")


def test_tensor_shape_that_is_not_a_shape_is_refused(api_client: Any, tensor_model_manifest: Path) -> None:
    payload = {"input": {"data": [0.0] * 64, "shape": "eight by eight"}}
    assert_error(api_client.post(TENSOR_URL, data=payload, format="json"), 400, "invalid_tensor")


def test_multipart_with_too_many_fields_is_400(api_client: Any, image_model_manifest: Path) -> None:
    fields = {f"f{i}": "x" for i in range(1500)}
    response = api_client.post(IMAGE_URL, data=fields, format="multipart")
    assert 400 <= response.status_code < 500, response.content
    assert response.json()["error"]["code"]


def test_an_overlong_idempotency_key_is_400(api_client: Any, image_model_manifest: Path) -> None:
    from tests.conftest import jpeg_bytes

    response = api_client.post(IMAGE_URL, data=jpeg_bytes(), content_type="image/jpeg",
                               HTTP_IDEMPOTENCY_KEY="k" * 10_000)
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize("model", ["..", "%2e%2e", "tinyimg%00", "TINYIMG", "a" * 300])
def test_hostile_model_names_are_unknown_models(api_client: Any, image_model_manifest: Path, model: str) -> None:
    response = api_client.post(f"/v1/models/{model}/jobs", data=png_bytes(), content_type="image/png")
    assert response.status_code == 404, response.content
    assert response.json()["error"]["code"] in {"unknown_model", "not_found"}


@pytest.mark.parametrize("version", ["../../etc", "0", "1; DROP TABLE api_job"])
def test_hostile_versions_are_unknown(api_client: Any, image_model_manifest: Path, version: str) -> None:
    response = api_client.post(IMAGE_URL, {"version": version}, QUERY_STRING=f"version={version}",
                               content_type="image/png")
    assert_error(response, 404, "unknown_model")


@pytest.mark.parametrize("job_id", ["not-a-uuid", "../etc/passwd", "%00", "1" * 500])
def test_malformed_job_ids_are_404_for_cancel_too(api_client: Any, job_id: str) -> None:
    assert_error(api_client.post(f"/v1/jobs/{job_id}/cancel"), 404, "not_found")


def test_every_refusal_above_is_json(api_client: Any, image_model_manifest: Path) -> None:
    response = api_client.post(IMAGE_URL, data=b"\x00" * 10, content_type="image/jpeg")
    assert_error(response, 400, "invalid_image")
    assert json.loads(response.content)["error"]["message"]
