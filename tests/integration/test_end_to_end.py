"""Submit over HTTP → Redis → preloaded Celery worker → poll, checked against in-process inference."""

from __future__ import annotations

import struct
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from bench.images import photo
from tests.integration.processes import Service, task_events, wait_until

pytestmark = pytest.mark.integration


def local_handler(store: Path, name: str) -> Any:
    import torch

    from workers.handlers import get_handler
    from workers.store import ModelStore

    handler = get_handler(ModelStore(store).get(name))
    handler.setup(torch.device("cpu"))
    return handler


def assert_same_predictions(served: list[dict[str, Any]], local: list[dict[str, Any]], tol: float = 1e-4) -> None:
    assert len(served) == len(local)
    for s, here in zip(served, local, strict=True):
        assert abs(s["probability"] - here["probability"]) <= tol, (served, local)
        if s["index"] != here["index"]:
            # Only a tie within tolerance may swap places.
            assert abs(s["probability"] - here["probability"]) <= tol and s["index"] in {x["index"] for x in local}


def submit_and_wait(service: Service, model: str, items: list[tuple[bytes, str]]) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda item: service.submit(model, item[0], item[1]), items))
        for response in responses:
            assert response.status_code == 202, response.text
            assert response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"
        return list(pool.map(lambda r: service.wait_job(r.json()["id"]), responses))


def test_resnet18_top5_equals_in_process_forward(service: Service) -> None:
    images = [photo(seed) for seed in range(4)]
    jobs = submit_and_wait(service, "resnet18", [(img, "image/jpeg") for img in images])
    handler = local_handler(service.store, "resnet18")
    for img, job in zip(images, jobs, strict=True):
        assert job["status"] == "succeeded", job
        served = job["result"]["predictions"]
        assert len(served) == 5 and all(p["label"] for p in served)
        assert_same_predictions(served, handler(img, "image/jpeg")["predictions"])
        assert job["timings"]["inference_ms"] > 0 and job["timings"]["total_ms"] >= job["timings"]["queue_ms"]
        assert job["worker"] and job["attempts"] == 1


def test_digits_served_predictions_match_and_reach_manifest_accuracy(service: Service) -> None:
    from workers.digits import holdout_pngs
    from workers.store import ModelStore

    manifest = ModelStore(service.store).get("digits")
    pairs = holdout_pngs()
    assert len(pairs) >= 100
    jobs = submit_and_wait(service, "digits", [(png, "image/png") for png, _ in pairs])
    handler = local_handler(service.store, "digits")
    correct = 0
    for (png, label), job in zip(pairs, jobs, strict=True):
        assert job["status"] == "succeeded", job
        served_top = job["result"]["predictions"][0]
        assert served_top["index"] == handler(png, "image/png")["predictions"][0]["index"]
        correct += served_top["index"] == label
    accuracy = correct / len(pairs)
    # The manifest keeps the held-out accuracy rounded to 4 places (448/450 = 0.99556 is written 0.9956).
    assert accuracy >= manifest.extra["accuracy"] - 0.5e-4, (accuracy, manifest.extra["accuracy"])
    assert accuracy > 0.9


def test_garbage_upload_is_a_4xx_with_the_error_shape_and_creates_no_job(service: Service) -> None:
    before = requests.get(f"{service.base}/v1/jobs", headers=service.headers, timeout=10).json()["count"]
    for body, content_type, code in [(b"not an image at all", "image/jpeg", "invalid_image"),
                                     (photo(1)[:3000], "image/jpeg", "invalid_image"),
                                     (b"", "image/jpeg", "empty_input"),
                                     (b"hello", "text/plain", "unsupported_media_type")]:
        response = service.submit("resnet18", body, content_type)
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]["code"] == code
        assert "Traceback" not in response.text
    after = requests.get(f"{service.base}/v1/jobs", headers=service.headers, timeout=10).json()["count"]
    assert after == before


def test_models_report_their_worker_and_readiness(service: Service) -> None:
    models = requests.get(f"{service.base}/v1/models", headers=service.headers, timeout=10).json()["models"]
    by_name = {m["name"]: m for m in models}
    assert {"resnet18", "digits"} <= set(by_name)
    assert all(m["workers_online"] >= 1 for m in by_name.values())
    assert by_name["digits"]["accuracy"] > 0.9
    ready = requests.get(f"{service.base}/readyz", timeout=10).json()
    assert ready["checks"]["database"] == "ok" and ready["checks"]["broker"] == "ok"


def test_other_users_cannot_see_a_job(service: Service) -> None:
    response = service.submit("digits", _digit(), "image/png")
    job_id = response.json()["id"]
    stranger = service.manage("inferq_token", "--username", "stranger")
    other = requests.get(f"{service.base}/v1/jobs/{job_id}", headers={"Authorization": f"Token {stranger}"},
                         timeout=10)
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    assert service.wait_job(job_id)["status"] == "succeeded"


def test_flower_gets_each_jobs_task_events(service: Service) -> None:
    """What Flower listens to: the worker's task events on the broker, received to succeeded, for each job."""
    with task_events(service.env["REDIS_URL"]) as seen:
        # Bytes no job has had: an input answered before would come from the result cache, with no task.
        job = service.submit("digits", _unseen_digit(), "image/png", Prefer="wait=10").json()
        assert job["status"] == "succeeded" and not job["cached"], job
        wait_until(lambda: "task-succeeded" in seen.get(job["id"], []), 10, "the job's task events",
                   [service.log("worker")])
    assert seen[job["id"]] == ["task-received", "task-started", "task-succeeded"]


def _unseen_digit() -> bytes:
    """A digit-sized PNG of random pixels, different on every call."""
    import numpy as np

    from workers.digits import render_png

    return render_png(np.random.default_rng().uniform(0, 16, (8, 8)))


def _digit() -> bytes:
    from workers.digits import holdout_pngs

    return holdout_pngs(1)[0][0]


def test_bulk_submit_over_uwsgi_runs_every_input_and_refuses_a_bad_one_whole(service: Service) -> None:
    """One multipart request of many digits, as `curl -F input=@a.png -F input=@b.png` sends it: a job per input,
    in order, each answered as it would be alone; a bad input among good ones makes none."""
    from workers.digits import holdout_pngs

    # Bytes of their own (a text chunk with a fresh nonce), so that no earlier test's job answers them from the
    # result cache: every one goes through the worker.
    nonce = uuid.uuid4().hex
    pairs = [(_with_text(png, f"{nonce}-{i}"), label) for i, (png, label) in enumerate(holdout_pngs(40))]
    url = f"{service.base}/v1/models/digits/jobs/bulk"
    files = [("input", (f"{i}.png", png, "image/png")) for i, (png, _) in enumerate(pairs)]
    response = requests.post(url, files=files, headers=service.headers, timeout=30)
    assert response.status_code == 202, response.text
    jobs = response.json()["jobs"]
    assert len(jobs) == len(pairs) and len({job["id"] for job in jobs}) == len(pairs)
    ended = [service.wait_job(job["id"]) for job in jobs]
    handler = local_handler(service.store, "digits")
    for (png, _), job in zip(pairs, ended, strict=True):
        assert job["status"] == "succeeded" and not job["cached"], job
        assert job["result"]["predictions"][0]["index"] == handler(png, "image/png")["predictions"][0]["index"]
    right = sum(job["result"]["predictions"][0]["index"] == label for (_, label), job in zip(pairs, ended, strict=True))
    assert right >= 36

    before = requests.get(f"{service.base}/v1/jobs", headers=service.headers, timeout=10).json()["count"]
    bad = [files[0], ("input", ("broken.png", b"not a png", "image/png")), files[1]]
    refused = requests.post(url, files=bad, headers=service.headers, timeout=30)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_image"
    assert "Input 2 (broken.png)" in refused.json()["error"]["message"]
    assert requests.get(f"{service.base}/v1/jobs", headers=service.headers, timeout=10).json()["count"] == before


def _with_text(png: bytes, text: str) -> bytes:
    """The same PNG image with a tEXt chunk after its header: other bytes, the same pixels."""
    data = b"Comment\x00" + text.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:33] + chunk + png[33:]  # the signature (8 bytes) and IHDR (25) come first
