"""Hostile clients against real processes: bad inputs on every endpoint, oversized bodies, a pickle message,
Flower without credentials, an unreachable database, a fuzzer driven by the published schema, and
secrets that must never reach a log."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.integration.harness import Stack, echo_manifest, start_stack, stop_stack
from tests.integration.processes import BIN, ROOT, free_port, wait_until

pytestmark = pytest.mark.integration

MAX_INPUT = 1024 * 1024  # a small input limit keeps the oversized bodies cheap to send
BAD_TOKEN = "0123456789abcdef0123456789abcdef01234567"


def add_models(store: Path) -> None:
    """The digits classifier (image input) and the same weights behind a tensor handler."""
    from workers.export import export_digits
    from workers.store import ModelStore, write_manifest

    digits = export_digits(ModelStore(store), version="1", epochs=8)
    manifest = json.loads((digits / "manifest.json").read_text())
    vec = store / "vec" / "1"
    vec.mkdir(parents=True)
    shutil.copy(digits / manifest["weights"], vec / manifest["weights"])
    write_manifest(vec, {"name": "vec", "version": "1", "handler": "tensor", "architecture": "digits_mlp",
                         "format": "state_dict", "weights": manifest["weights"],
                         "input": {"kind": "tensor", "shape": [1, 8, 8], "dtype": "float32"}})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"INFERQ_MAX_INPUT_BYTES": str(MAX_INPUT), "INFERQ_THROTTLE_SUBMIT": "6000/min",
           "INFERQ_THROTTLE_API": "30000/min"}
    stack = start_stack(tmp_path_factory.mktemp("security"), [echo_manifest(input={"kind": "bytes"})], env=env,
                        prepare=add_models)
    yield stack
    stop_stack(stack)


@pytest.fixture(scope="module")
def stranger(stack: Stack) -> str:
    return stack.manage("inferq_token", "--username", "mallory")


# --- inputs ---------------------------------------------------------------------------------------------


def png(width: int = 8, height: int = 8) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height), 200).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(
        b"IEND", b"")


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_declaring(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\x00" * 16


JSON = "application/json"
# (what, model, body, content type, status, code): each bad input has its own status and code.
SUBMISSIONS: list[tuple[str, str, bytes, str, int, str]] = [
    ("empty body", "digits", b"", "image/png", 400, "empty_input"),
    ("truncated JPEG", "digits", jpeg()[:600], "image/jpeg", 400, "invalid_image"),
    ("text sent as image/jpeg", "digits", b"hello, I am not a picture", "image/jpeg", 400, "invalid_image"),
    ("decompression bomb", "digits", png_bomb(), "image/png", 400, "image_too_large"),
    ("unsupported content type", "digits", png(), "text/plain", 415, "unsupported_media_type"),
    ("malformed JSON", "digits", b'{"input": {"b64": ', JSON, 400, "invalid_json"),
    ("deeply nested JSON", "digits", b"[" * 50_000 + b"]" * 50_000, JSON, 400, "invalid_json"),
    ("malformed base64", "digits", b'{"input": {"b64": "not base64 at all!"}}', JSON, 400, "invalid_base64"),
    ("base64 of a bomb", "digits", json.dumps({"input": {"b64": base64.b64encode(png_bomb()).decode()}}).encode(),
     JSON, 400, "image_too_large"),
    ("tensor of the wrong shape", "vec", npy(np.zeros((1, 8, 9), np.float32)), "application/x-npy", 400,
     "invalid_tensor"),
    ("tensor of the wrong dtype", "vec", npy(np.zeros((1, 8, 8), np.float64)), "application/x-npy", 400,
     "invalid_tensor"),
    ("tensor with NaN", "vec", npy(np.full((1, 8, 8), np.nan, np.float32)), "application/x-npy", 400,
     "invalid_tensor"),
    ("tensor declaring terabytes", "vec", npy_declaring((1_000_000, 1_000_000)), "application/x-npy", 400,
     "invalid_tensor"),
    ("JSON tensor of the wrong shape", "vec", json.dumps({"input": {"data": [[0.5] * 8] * 8}}).encode(), JSON,
     400, "invalid_tensor"),
    ("an image sent to a tensor model", "vec", png(), "image/png", 415, "unsupported_media_type"),
    ("unknown model", "nosuchmodel", png(), "image/png", 404, "unknown_model"),
    ("body over the limit", "echo", b"x" * (MAX_INPUT + 200_000), "application/octet-stream", 413, "too_large"),
    ("body far over the limit", "echo", b"x" * (MAX_INPUT * 3), "application/octet-stream", 413, "too_large"),
]


def assert_error_shape(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, (status, response.status_code, response.text[:300])
    body = response.json()
    assert set(body) >= {"error"} and body["error"]["code"] == code and body["error"]["message"]
    assert "Traceback" not in response.text


def job_count(stack: Stack) -> int:
    return int(requests.get(f"{stack.base}/v1/jobs", headers=stack.headers, timeout=10).json()["count"])


def temp_files(stack: Stack) -> set[str]:
    return {str(p) for p in (stack.workdir / "tmp").rglob("*") if p.is_file()}


# --- tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("what", "model", "body", "content_type", "status", "code"), SUBMISSIONS,
                         ids=[s[0] for s in SUBMISSIONS])
def test_each_bad_input_has_its_own_4xx_and_creates_no_job(stack: Stack, what: str, model: str, body: bytes,
                                                           content_type: str, status: int, code: str) -> None:
    before = job_count(stack)
    response = requests.post(f"{stack.base}/v1/models/{model}/jobs", data=body, timeout=30,
                             headers={**stack.headers, "Content-Type": content_type})
    assert_error_shape(response, status, code)
    assert job_count(stack) == before


def test_job_ids_that_are_malformed_or_someone_elses_are_404(stack: Stack, stranger: str) -> None:
    mine = stack.submit("echo", b"mine", "application/octet-stream").json()["id"]
    theirs = {"Authorization": f"Token {stranger}"}
    for job_id in ("not-a-uuid", "1" * 300, "%00", str(uuid.uuid4())):
        assert_error_shape(requests.get(f"{stack.base}/v1/jobs/{job_id}", headers=stack.headers, timeout=10),
                           404, "not_found")
    assert_error_shape(requests.get(f"{stack.base}/v1/jobs/{mine}", headers=theirs, timeout=10), 404, "not_found")
    assert_error_shape(requests.post(f"{stack.base}/v1/jobs/{mine}/cancel", headers=theirs, timeout=10), 404,
                       "not_found")
    assert stack.wait_job(mine)["status"] == "succeeded"  # the stranger's cancel changed nothing


def raw_post(stack: Stack, head: str, body: Iterator[bytes]) -> bytes:
    """Send a request by hand (declared lengths and chunking that HTTP clients will not fake)."""
    host, port = stack.base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for part in body:
                sock.sendall(part)
        except OSError:
            pass  # the server answered and closed before the body was all sent: that is the point
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer


def chunked(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield f"{n:x}\r\n".encode() + b"x" * n + b"\r\n"
        sent += n
    yield b"0\r\n\r\n"


def test_oversized_bodies_are_refused_413_before_they_are_read(stack: Stack) -> None:
    head = (f"POST /v1/models/echo/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {stack.token}\r\n"
            "Content-Type: application/octet-stream\r\n")
    # Declared 50 MiB but only 64 KiB sent: the answer comes from the declared length alone.
    declared = raw_post(stack, head + "Content-Length: 52428800\r\n\r\n", iter([b"x" * 65536]))
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert b'"too_large"' in declared
    # No Content-Length at all (chunked): read only up to the limit.
    streamed = raw_post(stack, head + "Transfer-Encoding: chunked\r\n\r\n", chunked(MAX_INPUT * 4))
    assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]
    # A small chunked body is read whole and accepted.
    small = raw_post(stack, head + "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n", chunked(1000))
    assert small.startswith(b"HTTP/1.1 202"), small[:300]
    # uWSGI's own cap (limit-post) drops a body declared above 100 MiB without handing it to the app.
    mark = stack.log("web").stat().st_size
    assert raw_post(stack, head + "Content-Length: 209715200\r\n\r\n", iter([b"x" * 1024])) == b""
    wait_until(lambda: b"Invalid (too big) CONTENT_LENGTH" in stack.log("web").read_bytes()[mark:], 10,
               "uWSGI's limit-post")


def schema_operations(stack: Stack) -> list[tuple[str, str]]:
    schema = requests.get(f"{stack.base}/v1/schema", params={"format": "json"}, headers=stack.headers,
                          timeout=30).json()
    return [(method.upper(), path) for path, ops in schema["paths"].items() for method in ops
            if method in ("get", "post", "put", "patch", "delete")]


HOSTILE_PATH_VALUES = ["not-a-uuid", "..", "%00", "x" * 300, "00000000-0000-0000-0000-000000000000"]
HOSTILE_BODIES: list[tuple[bytes, str]] = [
    (b"", JSON), (b'{"input": {"b64": ', JSON), (b"[" * 50_000, JSON), (b"\xff\xfe\x00garbage", JSON),
    (b'{"input": null, "name": ' + b'"x"' * 3 + b"}", JSON), (jpeg()[:500], "image/jpeg"), (png_bomb(), "image/png"),
    (b"--x\r\nContent-Disposition: form-data; name=\"input\"\r\n\r\nbroken", "multipart/form-data; boundary=x"),
    (b"a=1&" * 2000, "application/x-www-form-urlencoded"), (b"\x00" * 5000, "application/octet-stream"),
]


def test_a_hostile_corpus_on_every_endpoint_gets_no_5xx_and_leaves_nothing_behind(stack: Stack) -> None:
    worker = stack.procs["worker"].pid
    children = sorted(c.pid for c in stack.worker_children())
    tmp_before = temp_files(stack)
    operations = schema_operations(stack)
    assert ("POST", "/v1/models/{model}/jobs") in operations and ("GET", "/v1/jobs/{id}") in operations or \
        any(p.startswith("/v1/jobs/{") for _, p in operations), operations

    answers: list[tuple[str, str, int]] = []
    for method, template in operations:
        for value in HOSTILE_PATH_VALUES + ["echo", "digits"]:
            path = template
            while "{" in path:
                start, end = path.index("{"), path.index("}")
                path = path[:start] + value + path[end + 1:]
            for body, content_type in HOSTILE_BODIES if method != "GET" else [(b"", JSON)]:
                response = requests.request(method, f"{stack.base}{path}", data=body, timeout=30,
                                            headers={**stack.headers, "Content-Type": content_type},
                                            params={"wait": "x", "limit": "-1", "status": "<script>"})
                answers.append((method, path[:60], response.status_code))
                if response.status_code >= 400:
                    assert "Traceback" not in response.text, response.text[:300]
                    if template.startswith("/v1/"):  # TorchServe and KServe paths answer in their own shapes
                        assert response.json()["error"]["code"], response.text[:200]
    server_errors = [a for a in answers if a[2] >= 500]
    assert server_errors == [], server_errors

    # Nothing stuck: whatever the corpus got accepted (echo takes any bytes) ends, and its input is deleted.
    jobs = requests.get(f"{stack.base}/v1/jobs", params={"limit": 1000}, headers=stack.headers, timeout=30).json()
    stack.wait_final([j["id"] for j in jobs["results"]], 120)
    assert [p for p in (stack.workdir / "media").rglob("*") if p.is_file()] == []
    assert temp_files(stack) == tmp_before
    # No worker process died: the same parent and the same pool, and it still answers.
    assert stack.procs["worker"].poll() is None and stack.procs["worker"].pid == worker
    assert sorted(c.pid for c in stack.worker_children()) == children
    assert stack.wait_job(stack.submit("digits", png(), "image/png").json()["id"])["status"] == "succeeded"


def test_an_input_the_worker_refuses_fails_its_job_not_the_worker(stack: Stack) -> None:
    job = stack.wait_job(stack.submit("echo", b"invalid: echo refuses this", "application/octet-stream").json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_input"
    assert stack.wait_job(stack.submit("echo", b"fine", "application/octet-stream").json()["id"])["status"] == \
        "succeeded"


class RunsCode:
    """Unpickling this runs a shell command: what a pickle-accepting worker would do for an attacker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_worker_refuses_a_pickle_message(stack: Stack) -> None:
    from kombu import Connection, Queue

    marker = stack.workdir / "pickle-ran"
    task_id = str(uuid.uuid4())
    mark = stack.log("worker").stat().st_size
    body = ((), {"job_id": task_id, "payload": RunsCode(marker)}, {"callbacks": None, "errbacks": None,
                                                                   "chain": None, "chord": None})
    headers = {"lang": "py", "task": "inference.run", "id": task_id, "root_id": task_id, "parent_id": None,
               "group": None, "retries": 0, "eta": None, "expires": None, "timelimit": [None, None],
               "argsrepr": "()", "kwargsrepr": "{}", "origin": "attacker"}
    with Connection(stack.env["REDIS_URL"]) as conn:
        conn.Producer(serializer="pickle").publish(
            body, exchange="", routing_key="inferq.model.echo", headers=headers, correlation_id=task_id,
            declare=[Queue("inferq.model.echo")])

    def refused() -> bool:
        return b"ContentDisallowed" in stack.log("worker").read_bytes()[mark:]

    wait_until(refused, 30, "the worker to refuse the pickle message", [stack.log("worker")])
    assert not marker.exists(), "the pickle payload ran"
    ok = stack.submit("echo", b"still serving", "application/octet-stream").json()["id"]
    assert stack.wait_job(ok)["status"] == "succeeded"


def test_flower_refuses_unauthenticated_requests(stack: Stack) -> None:
    port = free_port()
    args = [str(BIN / "celery"), "-A", "project", "flower", f"--port={port}", "--address=127.0.0.1"]
    open_flower = subprocess.run(args, cwd=ROOT, env={k: v for k, v in stack.env.items()
                                                      if not k.startswith("FLOWER_")},
                                 capture_output=True, text=True, timeout=60)
    assert open_flower.returncode != 0
    assert "refuses to start unauthenticated" in open_flower.stderr + open_flower.stdout

    stack.start_with("flower", args, FLOWER_BASIC_AUTH="admin:flower-secret-7731")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(url, timeout=2).status_code, 60, "flower", [stack.log("flower")])
        for path in ("/", "/api/workers", "/api/tasks", "/workers"):
            assert requests.get(url + path, timeout=10).status_code == 401, path
            assert requests.get(url + path, auth=("admin", "wrong"), timeout=10).status_code == 401, path
        assert requests.get(url + "/", auth=("admin", "flower-secret-7731"), timeout=10).status_code == 200
    finally:
        stack.stop("flower")


def test_an_unreachable_database_is_503_not_500(stack: Stack) -> None:
    port = free_port()
    closed = free_port()  # nothing listens here
    stack.start_with("web-nodb", [str(BIN / "uwsgi"), "--ini", "uwsgi.ini"], INFERQ_HTTP=f"127.0.0.1:{port}",
                     DATABASE_URL=f"postgres://inferq@127.0.0.1:{closed}/inferq")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(f"{base}/healthz", timeout=2).status_code == 200, 60, "web without db",
                   [stack.log("web-nodb")])
        for method, path in (("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{uuid.uuid4()}"), ("GET", "/v1/models/echo"),
                             ("POST", "/v1/models/echo/jobs")):
            response = requests.request(method, base + path, data=b"hi", headers=stack.headers, timeout=10)
            assert_error_shape(response, 503, "database_unavailable")
            assert int(response.headers["Retry-After"]) > 0
        assert requests.get(f"{base}/readyz", timeout=10).status_code == 503
    finally:
        stack.stop("web-nodb")


def test_schemathesis_finds_no_server_error(stack: Stack, tmp_path: Path) -> None:
    """A short, seeded fuzzing run driven by the published OpenAPI schema.

    Path parameters are real models and a real job some of the time, so requests get past the 404s.
    """
    job = stack.submit("echo", b"fuzz target", "application/octet-stream").json()["id"]
    config = tmp_path / "schemathesis.toml"
    config.write_text(f"""
[dictionaries.models]
values = ["echo", "digits", "vec"]

[dictionaries.jobs]
values = ["{job}"]

[parameters]
"path.model" = {{ dictionary = "models", probability = 0.7 }}
"path.job_id" = {{ dictionary = "jobs", probability = 0.5 }}
""")
    report = tmp_path / "report.json"
    mark = stack.log("web").stat().st_size
    result = subprocess.run(
        [str(BIN / "st"), "--config-file", str(config), "run", f"{stack.base}/v1/schema?format=json",
         "--url", stack.base,
         "--checks", "not_a_server_error", "--header", f"Authorization: Token {stack.token}",
         "--max-examples", "15", "--max-time", "60", "--seed", "5", "--workers", "2", "--request-timeout", "20",
         "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all",
         "--report", "json", "--report-json-path", str(report)],
        cwd=tmp_path, capture_output=True, text=True, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = json.loads(report.read_text())
    assert summary["operations"]["tested"] == summary["operations"]["total"] > 0
    assert summary["test_cases"]["generated"] > 100
    assert summary["failures"] == [] and summary["errors"] == []
    with open(stack.log("web"), "rb") as fh:
        fh.seek(mark)
        server_errors = [line for line in fh.read().decode(errors="replace").splitlines() if "(HTTP/1.1 5" in line]
    assert server_errors == [], server_errors[:10]


def test_no_secret_reaches_a_log(stack: Stack, stranger: str) -> None:
    """Runs last: every request above carried a token (and some a wrong one); none may be logged."""
    requests.get(f"{stack.base}/v1/jobs", headers={"Authorization": f"Token {BAD_TOKEN}"}, timeout=10)
    stack.submit("echo", b"one more", "application/octet-stream")
    logs = stack.logs()
    assert logs, "no logs to search"
    for secret in (stack.token, stranger, BAD_TOKEN, stack.env["DJANGO_SECRET_KEY"], "flower-secret-7731"):
        assert secret not in logs, f"a secret ({secret[:6]}...) appears in the logs"

