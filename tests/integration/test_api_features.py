"""Issue #6 against the real service: waiting, idempotency and cache, metrics, logs, cancel, TorchServe, KServe.

Inputs here are this file's own (photo seeds from 6000, synthetic digits), so the result cache never
answers another test's submissions from these, nor these from theirs.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from bench.images import photo
from tests.integration.processes import Service, wait_until

pytestmark = pytest.mark.integration


def finished_at(job: dict[str, Any]) -> float:
    return datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00")).timestamp()


def digit_pixels(seed: int) -> np.ndarray:
    """A random 8x8 'digit' in 0..16 (not one of the held-out images other tests submit)."""
    return np.random.default_rng(seed).integers(0, 17, (8, 8)).astype(np.float64)


def digit_png(seed: int) -> bytes:
    from workers.digits import render_png

    return render_png(digit_pixels(seed))


def metrics(service: Service) -> dict[str, Any]:
    response = requests.get(f"{service.base}/metrics", timeout=10)
    assert response.status_code == 200
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def sample(families: dict[str, Any], family: str, name: str, **labels: str) -> float:
    return sum(s.value for s in families[family].samples if s.name == name and labels.items() <= s.labels.items())


# --- waiting without polling ---------------------------------------------------------------------------


def test_prefer_wait_answers_with_the_result_within_milliseconds_of_its_end(service: Service) -> None:
    lags = []
    for seed in range(6000, 6005):
        response = service.submit("resnet18", photo(seed), "image/jpeg", Prefer="wait=30")
        received = time.time()
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "succeeded" and job["cached"] is False
        assert response.headers["Preference-Applied"] == "wait=30"
        assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
        lags.append(received - finished_at(job))
    print(f"\nPrefer: wait — response after job end: median {statistics.median(lags) * 1000:.1f} ms, "
          f"max {max(lags) * 1000:.1f} ms")
    assert max(lags) < 1.0


def test_get_with_wait_wakes_within_milliseconds_of_the_end(service: Service) -> None:
    lags = []
    for seed in range(6010, 6015):
        submitted = service.submit("resnet18", photo(seed), "image/jpeg")
        assert submitted.status_code == 202
        response = service.session.get(f"{service.base}/v1/jobs/{submitted.json()['id']}?wait=30",
                                       headers=service.headers, timeout=40)
        received = time.time()
        job = response.json()
        assert job["status"] == "succeeded"
        lags.append(received - finished_at(job))
    print(f"\nGET ?wait — response after job end: median {statistics.median(lags) * 1000:.1f} ms, "
          f"max {max(lags) * 1000:.1f} ms")
    assert max(lags) < 1.0


def test_a_batch_wait_wakes_within_milliseconds_of_its_last_job_and_one_page_holds_every_result(
        service: Service) -> None:
    opened = service.session.post(f"{service.base}/v1/batches", json={"model": "resnet18"},
                                  headers=service.headers, timeout=10)
    assert opened.status_code == 201, opened.text
    batch = opened.json()["id"]
    submitted = [service.session.post(f"{service.base}/v1/models/resnet18/jobs?batch={batch}", data=photo(seed),
                                      headers={**service.headers, "Content-Type": "image/jpeg"}, timeout=30)
                 for seed in range(6030, 6036)]
    assert all(r.status_code == 202 for r in submitted), [r.text for r in submitted]

    response = service.session.get(f"{service.base}/v1/batches/{batch}?wait=30", headers=service.headers, timeout=40)
    received = time.time()

    assert response.status_code == 200
    assert response.json()["counts"]["succeeded"] == 6 and response.json()["total"] == 6
    page = service.session.get(f"{service.base}/v1/jobs?batch={batch}&limit=1000", headers=service.headers,
                               timeout=10).json()
    assert {job["id"] for job in page["results"]} == {r.json()["id"] for r in submitted}
    assert all(job["status"] == "succeeded" and job["result"]["predictions"] for job in page["results"])
    lag = received - max(finished_at(job) for job in page["results"])
    print(f"\nGET /v1/batches/{{id}}?wait — response after the last job's end: {lag * 1000:.1f} ms")
    assert lag < 1.0


@pytest.fixture
def parked(service: Service) -> Iterator[str]:
    """A model in the store that no running worker serves: its jobs stay queued until a test says otherwise."""
    path = service.store / "parked" / "1"
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"name": "parked", "version": "1", "handler": "echo",
                                                    "input": {"kind": "bytes"}}))
    try:
        yield "parked"
    finally:
        for job in requests.get(f"{service.base}/v1/jobs?model=parked&status=queued&limit=500",
                                headers=service.headers, timeout=10).json()["results"]:
            requests.post(f"{service.base}/v1/jobs/{job['id']}/cancel", headers=service.headers, timeout=10)
        service.stop("parked-worker")
        shutil.rmtree(service.store / "parked")


def web_cpu_seconds(service: Service) -> float:
    """User + system CPU of the uWSGI master and its workers (children), from /proc."""
    total = 0
    for pid in [service.procs["web"].pid, *service.web_processes()]:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def test_held_waits_cost_no_cpu_and_never_starve_submissions(service: Service, parked: str) -> None:
    jobs = [service.submit(parked, f"parked {i}".encode(), "application/octet-stream").json()["id"]
            for i in range(24)]
    wait_s = 8

    def hold(job_id: str) -> tuple[float, dict[str, Any]]:
        started = time.monotonic()
        response = requests.get(f"{service.base}/v1/jobs/{job_id}?wait={wait_s}", headers=service.headers,
                                timeout=wait_s + 20)
        return time.monotonic() - started, response.json()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        holds = [pool.submit(hold, job_id) for job_id in jobs]
        time.sleep(1.5)  # every wait slot of every web process is now taken
        cpu_before, quiet_started = web_cpu_seconds(service), time.monotonic()
        time.sleep(3)
        quiet_cpu, quiet_s = web_cpu_seconds(service) - cpu_before, time.monotonic() - quiet_started
        submit_times = []
        for seed in range(6020, 6025):
            started = time.monotonic()
            response = service.submit("resnet18", photo(seed), "image/jpeg")
            submit_times.append(time.monotonic() - started)
            assert response.status_code == 202, response.text
        assert requests.get(f"{service.base}/healthz", timeout=5).status_code == 200
        results = [h.result() for h in holds]
    held = [t for t, _ in results if t >= wait_s - 0.5]
    answered_at_once = [t for t, _ in results if t < 1.0]
    print(f"\n{len(held)} waits held {wait_s} s, {len(answered_at_once)} answered at once (no free wait slot); "
          f"web tier CPU while they were held: {quiet_cpu * 1000:.0f} ms in {quiet_s:.1f} s; "
          f"submissions meanwhile took at most {max(submit_times) * 1000:.0f} ms")
    assert all(job["status"] == "queued" for _, job in results)
    for job_id in jobs:
        requests.post(f"{service.base}/v1/jobs/{job_id}/cancel", headers=service.headers, timeout=10)
    # Each web process lends INFERQ_WAIT_SLOTS threads (here 2 processes x 3): that many waits are held,
    # the rest answered at once.
    slots = len(service.web_processes()) * settings.INFERQ_WAIT_SLOTS
    assert len(held) == min(slots, len(jobs)) and len(answered_at_once) == len(jobs) - len(held)
    assert max(submit_times) < 3.0
    assert quiet_cpu < 0.1  # a sleep-polling wait (12 waiters re-reading the database) would show here


def test_a_canceled_queued_job_is_never_run(service: Service, parked: str) -> None:
    canceled = service.submit(parked, b"do not run me", "application/octet-stream").json()["id"]
    response = requests.post(f"{service.base}/v1/jobs/{canceled}/cancel", headers=service.headers, timeout=10)
    assert response.json()["status"] == "canceled"
    after = service.submit(parked, b"run me", "application/octet-stream").json()["id"]

    service.start_worker("parked-worker", "-Q", f"inferq.model.{parked}")

    ran = service.wait_job(after, timeout=180)  # same queue, behind the canceled job's message
    assert ran["status"] == "succeeded" and ran["worker"].startswith("parked-worker")
    job = service.job(canceled)
    assert (job["status"], job["attempts"], job["started_at"], job["worker"]) == ("canceled", 0, None, "")
    assert job["result"] is None


# --- no new work: idempotency and the result cache -------------------------------------------------------


def test_the_same_idempotency_key_creates_no_second_job(service: Service) -> None:
    def count() -> int:
        return requests.get(f"{service.base}/v1/jobs?limit=1", headers=service.headers, timeout=10).json()["count"]

    before = count()
    first = service.submit("digits", digit_png(1), "image/png", **{"Idempotency-Key": "it-order-1"})
    again = service.submit("digits", digit_png(1), "image/png", **{"Idempotency-Key": "it-order-1"})
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert count() == before + 1
    other = service.submit("digits", digit_png(2), "image/png", **{"Idempotency-Key": "it-order-1"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"


def test_the_same_bytes_are_answered_from_the_cache_without_running(service: Service) -> None:
    image = photo(6100)
    first = service.submit("resnet18", image, "image/jpeg", Prefer="wait=30").json()
    assert first["status"] == "succeeded"
    time.sleep(1.5)  # processes send job counts within a second (api/metrics.py): let the first job's arrive
    ran_before = sample(metrics(service), "inferq_job_inference_seconds", "inferq_job_inference_seconds_count",
                        model="resnet18")

    again = service.submit("resnet18", image, "image/jpeg")

    assert again.status_code == 200, again.text
    hit = again.json()
    assert hit["cached"] is True and hit["id"] != first["id"] and hit["result"] == first["result"]
    assert hit["attempts"] == 0 and hit["worker"] == ""
    wait_until(lambda: sample(metrics(service), "inferq_cache_hits", "inferq_cache_hits_total",
                              model="resnet18") >= 1, 5, "the cache hit's count")
    assert sample(metrics(service), "inferq_job_inference_seconds", "inferq_job_inference_seconds_count",
                  model="resnet18") == ran_before


# --- metrics and logs ---------------------------------------------------------------------------------


def test_metrics_are_scraped_by_the_prometheus_parser(service: Service) -> None:
    job = service.submit("digits", digit_png(3), "image/png", Prefer="wait=30").json()
    assert job["status"] == "succeeded"
    families = metrics(service)
    for name in ("inferq_jobs", "inferq_queue_depth", "inferq_workers_online", "inferq_jobs_finished",
                 "inferq_job_queue_seconds", "inferq_job_inference_seconds", "inferq_job_total_seconds",
                 "inferq_job_batch_size", "inferq_broker_messages", "inferq_redis_up"):
        assert name in families, name
    assert sample(families, "inferq_jobs", "inferq_jobs", model="digits", status="succeeded") >= 1
    assert sample(families, "inferq_workers_online", "inferq_workers_online", model="digits") >= 1
    assert families["inferq_job_total_seconds"].type == "histogram"
    # Each process sends its job counts in bulk, within a second (api/metrics.py): the count arrives shortly.
    wait_until(lambda: sample(metrics(service), "inferq_job_total_seconds", "inferq_job_total_seconds_count",
                              model="digits") >= 1, 5, "the job's histogram count")


def test_one_job_can_be_traced_from_request_to_result_in_the_logs(service: Service) -> None:
    job = service.submit("digits", digit_png(4), "image/png", Prefer="wait=30").json()
    job_id = job["id"]

    def logged() -> bool:
        web, worker = service.log("web").read_text(), service.log("worker").read_text()
        return (f"job queued job_id={job_id} model=digits" in web
                and f"job started job_id={job_id} model=digits status=running" in worker
                and f"job succeeded job_id={job_id} model=digits status=succeeded" in worker)

    wait_until(logged, 10, f"log lines of job {job_id}", [service.log("web"), service.log("worker")])
    worker = service.log("worker").read_text().splitlines()
    line = next(x for x in worker if f"job succeeded job_id={job_id}" in x)
    assert "queue_ms=" in line and "inference_ms=" in line and "total_ms=" in line
    # A worker at INFO (as the Procfile starts it) leaves out Celery's own two lines per task (project/settings.py).
    assert [x for x in worker if job_id in x and "Task " in x] == []


# --- drop-in clients ---------------------------------------------------------------------------------------


def test_a_torchserve_client_works_by_changing_its_base_url(service: Service) -> None:
    from tests.integration.test_end_to_end import local_handler

    image = photo(6200)
    assert requests.get(f"{service.base}/ping", timeout=10).json() == {"status": "Healthy"}

    response = requests.post(f"{service.base}/predictions/resnet18", data=image, timeout=60)

    assert response.status_code == 200, response.text
    prediction = response.json()
    local = local_handler(service.store, "resnet18")(image, "image/jpeg")["predictions"]
    assert len(prediction) == len({p["label"] for p in local})
    for p in local:
        assert abs(prediction[p["label"]] - p["probability"]) < 1e-4
    with_token = requests.post(f"{service.base}/predictions/resnet18/1", data=photo(6201), timeout=60,
                               headers={"Authorization": f"Bearer {service.token}"})
    assert with_token.status_code == 200 and len(with_token.json()) == 5
    missing = requests.post(f"{service.base}/predictions/nope", data=image, timeout=10)
    assert missing.status_code == 404 and missing.json()["type"] == "ModelNotFoundException"


def test_tritonclient_runs_unchanged_against_inferq(service: Service) -> None:
    import tritonclient.http as triton

    from tests.integration.test_end_to_end import local_handler

    client = triton.InferenceServerClient(url=service.base.removeprefix("http://"), network_timeout=60)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits_tensor")
        metadata = client.get_model_metadata("digits_tensor")
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]

        batch = np.stack([digit_pixels(seed)[None] / 16.0 for seed in (7, 8, 9)]).astype(np.float32)
        handler = local_handler(service.store, "digits_tensor")
        for binary in (True, False):
            tensor = triton.InferInput("input", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch, binary_data=binary)
            outputs = None if binary else [triton.InferRequestedOutput("output", binary_data=False)]
            result = client.infer("digits_tensor", [tensor], outputs=outputs)
            scores = result.as_numpy("output")
            assert scores.shape == (3, 10)
            np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
            for row, one in zip(scores, batch, strict=True):
                buffer = io.BytesIO()
                np.save(buffer, one)
                np.testing.assert_allclose(row, handler(buffer.getvalue(), "application/x-npy")["output"],
                                           atol=1e-5)

        image = triton.InferInput("input", [1], "BYTES")
        image.set_data_from_numpy(np.array([digit_png(10)], dtype=np.object_), binary_data=True)
        top = client.infer("digits", [image]).as_numpy("labels")
        assert top.shape == (1, 3) and all(label.decode().isdigit() for label in top[0])
    finally:
        client.close()
