"""KServe v2 / Open Inference Protocol: requests built and responses read by Triton's own client code."""

from __future__ import annotations

import base64
import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from django.test import Client
from rest_framework.authtoken.models import Token
from tritonclient.http._utils import _get_inference_request

from api.models import Job, JobStatus
from api.services import job_input_read
from tests.api.fake_worker import install_instant_worker, install_threaded_worker
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(user: Any) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {Token.objects.create(user=user).key}")


def tensor_sum(job: Job) -> dict[str, Any]:
    """A tensor model whose output is [sum of the input, 1.0]: which output came from which sample shows."""
    total = float(np.load(io.BytesIO(job_input_read(job))).sum())
    return {"output": [total, 1.0], "shape": [2]}


def classify_by_size(job: Job) -> dict[str, Any]:
    return {"predictions": [{"index": job.input_size % 7, "label": f"class{job.input_size % 7}", "probability": 0.6},
                            {"index": 9, "label": "other", "probability": 0.4}]}


def infer(client: Client, model: str, inputs: list[Any], outputs: list[Any] | None = None,
          request_id: str = "", path: str | None = None, **extra: Any) -> Any:
    """POST the exact bytes tritonclient's InferenceServerClient.infer would send."""
    body, json_size = _get_inference_request(inputs=inputs, request_id=request_id, outputs=outputs, sequence_id=0,
                                             sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                             custom_parameters=None)
    headers = {} if json_size is None else {"HTTP_INFERENCE_HEADER_CONTENT_LENGTH": str(json_size)}
    return client.post(path or f"/v2/models/{model}/infer", data=body, content_type="application/octet-stream",
                       **headers, **extra)


def result(response: Any) -> triton.InferResult:
    assert response.status_code == 200, response.content
    length = response.get("Inference-Header-Content-Length")
    return triton.InferResult.from_response_body(response.content, header_length=int(length) if length else None)


def tensor_input(array: np.ndarray, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("input", list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def assert_v2_error(response: Any, status: int) -> str:
    assert response.status_code == status, response.content
    body = json.loads(response.content)
    assert set(body) == {"error"} and body["error"]
    return body["error"]


# --- health and metadata ------------------------------------------------------------------------------------


def test_server_health_and_metadata_need_no_token(tensor_model_manifest: Path, fake_redis: Any) -> None:
    from api.heartbeats import heartbeat_record

    assert Client().get("/v2/health/live").json() == {"live": True}
    assert Client().get("/v2/health/ready").status_code == 503
    heartbeat_record(hostname="w1", models=["vec"], client=fake_redis)
    assert Client().get("/v2/health/ready").status_code == 200
    metadata = Client().get("/v2").json()
    assert metadata["name"] == "inferq" and "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_of_a_tensor_and_an_image_model(client: Client, tensor_model_manifest: Path,
                                                       image_model_manifest: Path) -> None:
    vec = client.get("/v2/models/vec").json()
    assert vec["name"] == "vec" and vec["versions"] == ["1"] and vec["platform"] == "pytorch"
    assert vec["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert vec["outputs"][0]["name"] == "output"
    img = client.get("/v2/models/tinyimg/versions/1").json()
    assert img["inputs"] == [{"name": "input", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in img["outputs"]] == ["probabilities", "indices", "labels"]
    assert img["outputs"][0]["shape"] == [-1, 2]  # top_k 5, but the model has 2 labels


def test_model_ready_follows_its_workers(client: Client, tensor_model_manifest: Path, fake_redis: Any) -> None:
    from api.heartbeats import heartbeat_record

    assert client.get("/v2/models/vec/ready").status_code == 503
    heartbeat_record(hostname="w1", models=["vec"], client=fake_redis)
    assert client.get("/v2/models/vec/ready").status_code == 200
    assert client.get("/v2/models/vec/versions/1/ready").status_code == 200


def test_unknown_model_and_missing_token_are_v2_errors(client: Client, tensor_model_manifest: Path) -> None:
    assert "Unknown model 'nope'" in assert_v2_error(client.get("/v2/models/nope"), 404)
    assert_v2_error(client.get("/v2/models/vec/versions/7"), 404)
    assert_v2_error(Client().get("/v2/models/vec"), 401)


# --- inference -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_a_batch_of_tensors_becomes_one_job_per_sample(client: Client, tensor_model_manifest: Path,
                                                       monkeypatch: Any, binary: bool, user: Any) -> None:
    made = install_instant_worker(monkeypatch, tensor_sum)
    batch = np.stack([np.full((1, 8, 8), i, dtype=np.float32) for i in (1, 2, 3)])
    output = triton.InferRequestedOutput("output", binary_data=binary)

    answer = result(infer(client, "vec", [tensor_input(batch, binary)], outputs=[output], request_id="req-9"))

    assert len(made) == 3 and all(job.owner == user for job in made)
    assert answer.get_response()["id"] == "req-9"
    assert answer.get_response()["model_name"] == "vec" and answer.get_response()["model_version"] == "1"
    np.testing.assert_allclose(answer.as_numpy("output"), [[64, 1], [128, 1], [192, 1]])
    assert answer.as_numpy("output").dtype == np.float32


def test_default_tritonclient_request_gets_binary_outputs(client: Client, tensor_model_manifest: Path,
                                                          monkeypatch: Any) -> None:
    """With no outputs named, tritonclient asks for every output as binary data."""
    install_instant_worker(monkeypatch, tensor_sum)
    response = infer(client, "vec", [tensor_input(np.ones((1, 1, 8, 8), dtype=np.float32), True)])
    assert int(response["Inference-Header-Content-Length"]) < len(response.content)
    np.testing.assert_allclose(result(response).as_numpy("output"), [[64, 1]])


def test_an_unbatched_tensor_answers_without_a_batch_dimension(client: Client, tensor_model_manifest: Path,
                                                               monkeypatch: Any) -> None:
    install_instant_worker(monkeypatch, tensor_sum)
    answer = result(infer(client, "vec", [tensor_input(np.ones((1, 8, 8), dtype=np.float32), False)],
                          outputs=[triton.InferRequestedOutput("output", binary_data=False)]))
    assert answer.as_numpy("output").shape == (2,)


def test_plain_json_from_curl(client: Client, tensor_model_manifest: Path, monkeypatch: Any) -> None:
    install_instant_worker(monkeypatch, tensor_sum)
    body = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}]}
    response = client.post("/v2/models/vec/versions/1/infer", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.content
    out = response.json()["outputs"][0]
    assert out["name"] == "output" and out["shape"] == [1, 2] and out["data"] == [32.0, 1.0]


def test_a_gzip_body(client: Client, tensor_model_manifest: Path, monkeypatch: Any) -> None:
    install_instant_worker(monkeypatch, tensor_sum)
    body = {"inputs": [{"name": "input", "shape": [1, 8, 8], "datatype": "FP32", "data": [1.0] * 64}]}
    response = client.post("/v2/models/vec/infer", data=gzip.compress(json.dumps(body).encode()),
                           content_type="application/json", HTTP_CONTENT_ENCODING="gzip")
    assert response.status_code == 200, response.content


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_images_as_bytes_answer_probabilities_indices_and_labels(client: Client, image_model_manifest: Path,
                                                                 monkeypatch: Any, binary: bool) -> None:
    made = install_instant_worker(monkeypatch, classify_by_size)
    images = [jpeg_bytes(color=(10, 20, 30)), jpeg_bytes(width=80, color=(200, 0, 0))]
    if binary:
        tensor = triton.InferInput("input", [2], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
        response = infer(client, "tinyimg", [tensor])
    else:
        body = {"inputs": [{"name": "input", "shape": [2], "datatype": "BYTES",
                            "data": [base64.b64encode(img).decode() for img in images]}]}
        response = client.post("/v2/models/tinyimg/infer", data=json.dumps(body), content_type="application/json")
    answer = result(response)

    sizes = [job.input_size for job in made]
    assert sizes == [len(img) for img in images]
    np.testing.assert_allclose(answer.as_numpy("probabilities"), [[0.6, 0.4], [0.6, 0.4]])
    assert answer.as_numpy("indices").tolist() == [[s % 7, 9] for s in sizes]
    labels = [[x.decode() if isinstance(x, bytes) else x for x in row] for row in answer.as_numpy("labels").tolist()]
    assert labels == [[f"class{s % 7}", "other"] for s in sizes]


def test_triton_classification_extension(client: Client, image_model_manifest: Path, monkeypatch: Any) -> None:
    made = install_instant_worker(monkeypatch, classify_by_size)
    tensor = triton.InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([jpeg_bytes()], dtype=np.object_), binary_data=True)
    answer = result(infer(client, "tinyimg", [tensor],
                          outputs=[triton.InferRequestedOutput("probabilities", binary_data=True, class_count=1)]))
    index = made[0].input_size % 7
    assert answer.as_numpy("probabilities").tolist() == [[f"0.600000:{index}:class{index}".encode()]]


def test_the_request_waits_for_jobs_ended_later(client: Client, tensor_model_manifest: Path, monkeypatch: Any,
                                                fake_redis: Any, transactional_db: Any) -> None:
    install_threaded_worker(monkeypatch, fake_redis, tensor_sum)
    batch = np.stack([np.full((1, 8, 8), i, dtype=np.float32) for i in (1, 2)])
    answer = result(infer(client, "vec", [tensor_input(batch, True)]))
    np.testing.assert_allclose(answer.as_numpy("output"), [[64, 1], [128, 1]])


# --- refusals ------------------------------------------------------------------------------------------------


def test_malformed_requests_are_400s_and_make_no_jobs(client: Client, tensor_model_manifest: Path,
                                                       monkeypatch: Any, settings: Any) -> None:
    install_instant_worker(monkeypatch, tensor_sum)
    ones = np.ones((1, 1, 8, 8))
    wrong_type = triton.InferInput("input", [1, 1, 8, 8], "FP64")
    wrong_type.set_data_from_numpy(ones, binary_data=False)
    assert "FP32" in assert_v2_error(infer(client, "vec", [wrong_type]), 400)
    assert_v2_error(infer(client, "vec", [tensor_input(np.ones((1, 4, 4), dtype=np.float32), False)]), 400)
    assert "Unknown output" in assert_v2_error(
        infer(client, "vec", [tensor_input(ones.astype(np.float32), False)],
              outputs=[triton.InferRequestedOutput("logits")]), 400)
    assert_v2_error(client.post("/v2/models/vec/infer", data=b"{not json", content_type="application/json"), 400)
    assert_v2_error(client.post("/v2/models/vec/infer", data=b'{"inputs": []}', content_type="application/json"), 400)
    truncated = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                             "parameters": {"binary_data_size": 256}}]}
    head = json.dumps(truncated).encode()
    assert_v2_error(client.post("/v2/models/vec/infer", data=head + b"\0" * 10, content_type="application/json",
                                HTTP_INFERENCE_HEADER_CONTENT_LENGTH=str(len(head))), 400)
    settings.INFERQ_COMPAT_MAX_BATCH = 2
    assert_v2_error(infer(client, "vec", [tensor_input(np.ones((3, 1, 8, 8), dtype=np.float32), True)]), 400)
    assert Job.objects.filter(status=JobStatus.QUEUED).count() == 0 and len(Job.objects.all()) == 1


def test_a_failed_job_is_a_v2_error(client: Client, tensor_model_manifest: Path, monkeypatch: Any) -> None:
    install_instant_worker(monkeypatch, lambda job: {"error": "inference_error"})
    message = assert_v2_error(infer(client, "vec", [tensor_input(np.ones((1, 8, 8), dtype=np.float32), False)]), 500)
    assert "inference_error" in message
    install_instant_worker(monkeypatch, lambda job: {"error": "invalid_tensor"})
    assert_v2_error(infer(client, "vec", [tensor_input(np.zeros((1, 8, 8), dtype=np.float32), False)]), 400)


def test_jobs_that_outlive_the_timeout_are_canceled_and_answered_504(client: Client, tensor_model_manifest: Path,
                                                                      settings: Any, fake_redis: Any) -> None:
    settings.INFERQ_COMPAT_TIMEOUT = 0.2
    assert_v2_error(infer(client, "vec", [tensor_input(np.ones((2, 1, 8, 8), dtype=np.float32), True)]), 504)
    assert set(Job.objects.values_list("status", flat=True)) == {JobStatus.CANCELED}
