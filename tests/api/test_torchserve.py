"""TorchServe's inference API: `POST /predictions/{model}` answers with the prediction; `GET /ping`."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.test import Client
from rest_framework.authtoken.models import Token

from api.events import wait_slot
from api.models import Job, JobStatus
from tests.api.fake_worker import install_instant_worker, install_threaded_worker
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.django_db

PREDICTIONS = [{"index": 1, "label": "b", "probability": 0.75}, {"index": 0, "label": "a", "probability": 0.25}]


def classify(job: Job) -> dict[str, Any]:
    return {"predictions": PREDICTIONS}


def tensor_out(job: Job) -> dict[str, Any]:
    return {"output": [0.1, 0.9], "shape": [2]}


@pytest.fixture
def token(user: Any) -> str:
    return Token.objects.create(user=user).key


def assert_torchserve_error(response: Any, status: int, kind: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = json.loads(response.content)
    assert set(body) == {"code", "type", "message"} and body["code"] == status and body["message"]
    if kind:
        assert body["type"] == kind
    return body


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# --- what a TorchServe client sends ------------------------------------------------------------------------


def test_raw_bytes_with_no_content_type_answer_label_to_probability(image_model_manifest: Path, token: str,
                                                                     user: Any, monkeypatch: Any) -> None:
    """`requests.post(url, data=image_bytes)` sends no Content-Type at all."""
    made = install_instant_worker(monkeypatch, classify)

    response = Client().generic("POST", "/predictions/tinyimg", data=jpeg_bytes(),
                                content_type="", HTTP_AUTHORIZATION=f"Bearer {token}")

    assert response.status_code == 200, response.content
    assert response.json() == {"b": 0.75, "a": 0.25}
    [job] = made
    assert response["X-InferQ-Job"] == str(job.id)
    assert Job.objects.get(id=job.id).owner == user  # an ordinary job, listed under /v1/jobs


def test_curl_data_binary_form_encoded_and_put_are_accepted(image_model_manifest: Path, token: str,
                                                            monkeypatch: Any) -> None:
    install_instant_worker(monkeypatch, classify)
    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    form = client.post("/predictions/tinyimg", data=jpeg_bytes(color=(1, 2, 3)),
                       content_type="application/x-www-form-urlencoded")
    put = client.put("/predictions/tinyimg", data=jpeg_bytes(color=(4, 5, 6)), content_type="image/jpeg")
    assert form.status_code == put.status_code == 200
    assert put.json() == {"b": 0.75, "a": 0.25}


def test_multipart_data_field(image_model_manifest: Path, token: str, monkeypatch: Any) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    install_instant_worker(monkeypatch, classify)
    upload = SimpleUploadedFile("kitten.jpg", jpeg_bytes(color=(9, 9, 9)), content_type="image/jpeg")
    response = Client().post("/predictions/tinyimg", data={"data": upload}, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200, response.content


def test_a_version_in_the_path(image_model_manifest: Path, token: str, monkeypatch: Any) -> None:
    made = install_instant_worker(monkeypatch, classify)
    ok = Client().post("/predictions/tinyimg/1", data=jpeg_bytes(), content_type="image/jpeg",
                       HTTP_AUTHORIZATION=f"Bearer {token}")
    assert ok.status_code == 200 and made[0].model_version == "1"
    missing = Client().post("/predictions/tinyimg/9", data=jpeg_bytes(), content_type="image/jpeg",
                            HTTP_AUTHORIZATION=f"Bearer {token}")
    assert_torchserve_error(missing, 404, "ModelNotFoundException")


def test_a_tensor_model_answers_its_output_list(tensor_model_manifest: Path, token: str, monkeypatch: Any) -> None:
    install_instant_worker(monkeypatch, tensor_out)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    as_npy = client.post("/predictions/vec", data=npy(np.zeros((1, 8, 8), dtype="float32")),
                         content_type="application/octet-stream")
    as_json = client.post("/predictions/vec", data=json.dumps({"data": np.ones((1, 8, 8)).tolist()}),
                          content_type="application/json")
    assert as_npy.status_code == as_json.status_code == 200, (as_npy.content, as_json.content)
    assert as_npy.json() == [0.1, 0.9]


def test_the_request_waits_for_a_worker_that_finishes_later(image_model_manifest: Path, token: str,
                                                            monkeypatch: Any, fake_redis: Any,
                                                            transactional_db: Any) -> None:
    install_threaded_worker(monkeypatch, fake_redis, classify)
    response = Client().post("/predictions/tinyimg", data=jpeg_bytes(), content_type="image/jpeg",
                             HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200 and response.json() == {"b": 0.75, "a": 0.25}


# --- refusals, in TorchServe's error shape ------------------------------------------------------------


def test_no_token_is_a_401_unless_anonymous_clients_are_allowed(image_model_manifest: Path, monkeypatch: Any,
                                                                settings: Any) -> None:
    made = install_instant_worker(monkeypatch, classify)
    refused = Client().post("/predictions/tinyimg", data=jpeg_bytes(), content_type="image/jpeg")
    assert_torchserve_error(refused, 401)
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert_torchserve_error(Client().post("/predictions/tinyimg", data=jpeg_bytes(), content_type="image/jpeg",
                                          HTTP_AUTHORIZATION="Bearer not-a-token"), 401)

    settings.INFERQ_COMPAT_ALLOW_ANONYMOUS = True
    allowed = Client().post("/predictions/tinyimg", data=jpeg_bytes(), content_type="image/jpeg")
    assert allowed.status_code == 200
    assert made[-1].owner.username == settings.INFERQ_COMPAT_ANONYMOUS_USERNAME
    # A wrong token is still refused: anonymity is only for clients that send none.
    assert_torchserve_error(Client().post("/predictions/tinyimg", data=jpeg_bytes(), content_type="image/jpeg",
                                          HTTP_AUTHORIZATION="Bearer not-a-token"), 401)


def test_unknown_model_and_bad_image(image_model_manifest: Path, token: str, monkeypatch: Any) -> None:
    install_instant_worker(monkeypatch, classify)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert_torchserve_error(client.post("/predictions/nope", data=b"x", content_type="image/jpeg"),
                            404, "ModelNotFoundException")
    assert_torchserve_error(client.post("/predictions/tinyimg", data=b"not an image", content_type="image/jpeg"),
                            400, "BadRequestException")
    assert not Job.objects.exists()


def test_a_failed_job_is_a_503_and_an_input_error_a_400(image_model_manifest: Path, token: str,
                                                         monkeypatch: Any) -> None:
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    install_instant_worker(monkeypatch, lambda job: {"error": "inference_error"})
    body = assert_torchserve_error(client.post("/predictions/tinyimg", data=jpeg_bytes(), content_type="image/jpeg"),
                                   503, "InternalServerException")
    assert "inference_error" in body["message"]
    install_instant_worker(monkeypatch, lambda job: {"error": "invalid_image"})
    assert_torchserve_error(client.post("/predictions/tinyimg", data=jpeg_bytes(color=(0, 0, 1)),
                                        content_type="image/jpeg"), 400)


def test_a_job_that_outlives_the_timeout_is_canceled_and_answered_504(image_model_manifest: Path, token: str,
                                                                       settings: Any, fake_redis: Any) -> None:
    settings.INFERQ_COMPAT_TIMEOUT = 0.2
    response = Client().post("/predictions/tinyimg", data=jpeg_bytes(), content_type="image/jpeg",
                             HTTP_AUTHORIZATION=f"Bearer {token}")
    assert_torchserve_error(response, 504)
    assert Job.objects.get().status == JobStatus.CANCELED


def test_no_free_wait_slot_is_a_503_before_any_job_is_made(image_model_manifest: Path, token: str,
                                                            settings: Any) -> None:
    settings.INFERQ_WAIT_SLOTS = 1
    with wait_slot():
        response = Client().post("/predictions/tinyimg", data=jpeg_bytes(), content_type="image/jpeg",
                                 HTTP_AUTHORIZATION=f"Bearer {token}")
    assert_torchserve_error(response, 503, "ServiceUnavailableException")
    assert response["Retry-After"] == "1"
    assert not Job.objects.exists()


def test_predictions_are_throttled_as_submissions(image_model_manifest: Path, token: str, settings: Any,
                                                  monkeypatch: Any) -> None:
    from django.core.cache import cache

    cache.clear()
    settings.INFERQ_THROTTLE_RATES = {"submit": "1/min", "api": ""}
    install_instant_worker(monkeypatch, classify)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.post("/predictions/tinyimg", data=jpeg_bytes(), content_type="image/jpeg").status_code == 200
    refused = client.post("/predictions/tinyimg", data=jpeg_bytes(), content_type="image/jpeg")
    assert_torchserve_error(refused, 429)
    assert int(refused["Retry-After"]) >= 1
    cache.clear()


# --- ping -----------------------------------------------------------------------------------------------------


def test_ping_is_healthy_when_every_model_has_a_worker(image_model_manifest: Path, fake_redis: Any) -> None:
    from api.heartbeats import heartbeat_record

    assert Client().get("/ping").json() == {"status": "Unhealthy"}
    heartbeat_record(hostname="w1", models=["tinyimg"], client=fake_redis)
    response = Client().get("/ping")
    assert response.status_code == 200 and response.json() == {"status": "Healthy"}
