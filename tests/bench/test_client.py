"""bench/client.py's bulk load: every image submitted first, then every result collected, in the items' order."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from bench import client


class FakeClient:
    """Records, per connection, the order of its submits and its waits."""

    connections: list[FakeClient] = []
    lock = threading.Lock()

    def __init__(self, base: str, token: str) -> None:
        self.calls: list[tuple[str, bytes]] = []
        with self.lock:
            self.connections.append(self)

    def submit(self, model: str, data: bytes, content_type: str, wait: int = 0) -> dict[str, Any]:
        self.calls.append(("submit", data))
        return {"id": data.decode(), "status": "queued"}

    def result(self, job: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        self.calls.append(("result", job["id"].encode()))
        return {**job, "status": "succeeded"}


def test_bulk_submits_everything_before_waiting_and_returns_jobs_in_the_items_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    FakeClient.connections = []
    monkeypatch.setattr(client, "Client", FakeClient)
    items = [(f"image {i}".encode(), "image/jpeg") for i in range(11)]

    _, jobs = client.run_bulk("http://x", "t", "resnet50", items, connections=4)

    assert [job["id"] for job in jobs] == [f"image {i}" for i in range(11)]
    assert len(FakeClient.connections) == 4
    submitted = sorted(data for c in FakeClient.connections for kind, data in c.calls if kind == "submit")
    assert submitted == sorted(data for data, _ in items)  # each once
    for conn in FakeClient.connections:
        kinds = [kind for kind, _ in conn.calls]
        assert kinds == sorted(kinds, key=lambda k: k == "result")  # every submit before its first wait
        assert [d for k, d in conn.calls if k == "submit"] == [d for k, d in conn.calls if k == "result"]


REAL_CLIENT = client.Client


class FakeBatchServer:
    """What run_batch meets: a batch to open, submits filed in it, a batch wait, and pages of its jobs."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.log: list[str] = []
        self.jobs: list[dict[str, Any]] = []
        self.waits = 0
        self.lock = threading.Lock()

    def client(self, base: str, token: str) -> Any:
        server = self

        class Conn:
            call = REAL_CLIENT.call  # the status check and JSON parsing run_batch relies on, over this fake

            def request(self, method: str, path: str, body: bytes | None = None,
                        headers: dict[str, str] | None = None) -> tuple[int, bytes]:
                return server.handle(method, path, body)

            def submit(self, model: str, data: bytes, content_type: str, wait: int = 0,
                       batch: str | None = None) -> dict[str, Any]:
                with server.lock:
                    server.log.append(f"submit {batch}")
                    job = {"id": f"job-{len(server.jobs)}", "status": "queued", "input": data.decode()}
                    server.jobs.append(job)
                return job

            def submit_many(self, model: str, items: list[tuple[bytes, str]],
                            batch: str | None = None) -> list[dict[str, Any]]:
                server.log.append(f"bulk {len(items)}")
                return [self.submit(model, data, content_type, batch=batch) for data, content_type in items]

        return Conn()

    def handle(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        self.log.append(f"{method} {path}")
        if (method, path) == ("POST", "/v1/batches"):
            assert json.loads(body or b"") == {"model": "resnet50"}
            return 201, b'{"id": "b1"}'
        if path == "/v1/batches/b1?wait=60":
            self.waits += 1
            left = 0 if self.waits > 1 else 3  # the first wait answers with jobs left (no wait slot was free)
            if not left:
                for job in self.jobs:
                    job["status"] = "succeeded"
            return 200, json.dumps({"counts": {"queued": left, "running": 0}}).encode()
        if path.startswith("/v1/jobs?batch=b1&limit=1000"):
            offset = int(path.partition("&offset=")[2] or 0)
            newest_first = self.jobs[::-1]
            rest = offset + self.page_size < len(newest_first)
            nxt = f"http://x/v1/jobs?batch=b1&limit=1000&offset={offset + self.page_size}" if rest else None
            return 200, json.dumps({"results": newest_first[offset:offset + self.page_size], "next": nxt}).encode()
        return 404, b"{}"


def test_run_batch_files_every_submit_in_one_batch_waits_for_it_then_reads_every_page(
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeBatchServer(page_size=4)
    monkeypatch.setattr(client, "Client", server.client)
    monkeypatch.setattr(client.time, "sleep", lambda s: None)
    items = [(f"image {i}".encode(), "image/jpeg") for i in range(11)]

    _, jobs = client.run_batch("http://x", "t", "resnet50", items, connections=3)

    assert sorted(job["input"] for job in jobs) == sorted(data.decode() for data, _ in items)
    # In the items' order: each job is the one its item's submit made.
    by_input = {job["input"]: job["id"] for job in server.jobs}
    assert [job["id"] for job in jobs] == [by_input[f"image {i}"] for i in range(11)]
    assert all(job["status"] == "succeeded" for job in jobs)
    assert server.log[0] == "POST /v1/batches"
    waits = [i for i, entry in enumerate(server.log) if entry.startswith("GET /v1/batches/")]
    submits = [i for i, entry in enumerate(server.log) if entry.startswith("submit")]
    assert len(submits) == 11 and all(entry == "submit b1" for entry in server.log if entry.startswith("submit"))
    assert len(waits) == 2 and max(submits) < min(waits)  # every submit before the wait, waited again when early
    pages = [entry for entry in server.log if entry.startswith("GET /v1/jobs")]
    assert len(pages) == 3 and min(server.log.index(p) for p in pages) > max(waits)


def test_api_ratios_read_the_trivial_view_at_each_measurements_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    # A host slowing down steadily: trivial_at(t) is the trivial view's rate in the run's t-th slot. Submits
    # run at 0.3 times it and polls at 0.6 times it, in their own slots: their ratios must read 0.3 and 0.6.
    def trivial_at(slot: int) -> float:
        return 5000.0 - 150.0 * slot

    slots = iter(range(100))
    factor = {"/_bench/trivial": 1.0, "/v1/models/digits/jobs": 0.3}

    def fake_rate(base: str, token: str, make_request: Any, seconds: float, threads: int = 4) -> tuple[float, int]:
        _, path, _, _ = make_request()
        return trivial_at(next(slots)) * factor.get(path, 0.6), 0

    monkeypatch.setattr(client, "rate", fake_rate)
    found = client.api_rates("http://x", "t", png=b"png", job_id="j", seconds=3.0, rounds=3, threads=1)

    assert found["trivial"] == [trivial_at(slot) for slot in (0, 3, 6, 9)]  # a last one closes the last round
    ratios = client.api_ratios(found)
    assert ratios["submit"] == pytest.approx([0.3] * 3, rel=1e-12)
    assert ratios["poll"] == pytest.approx([0.6] * 3, rel=1e-12)
    # Against the trivial view of its round's start alone, the same measurements read low.
    assert all(s / t < 0.3 for s, t in zip(found["submit"], found["trivial"], strict=False))


def test_run_batch_marks_the_opening_the_last_submit_answered_and_the_last_page_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeBatchServer(page_size=4)
    monkeypatch.setattr(client, "Client", server.client)
    monkeypatch.setattr(client.time, "sleep", lambda s: None)
    readings = iter(range(100, 200))

    def clock() -> float:
        reading = next(readings)
        server.log.append(f"clock {reading}")
        return float(reading)

    monkeypatch.setattr(client.time, "time", clock)
    items = [(f"image {i}".encode(), "image/jpeg") for i in range(6)]
    marks: dict[str, float] = {}

    client.run_batch("http://x", "t", "resnet50", items, connections=2, marks=marks)

    log = server.log
    assert marks == {"opened": 100.0, "submitted": 101.0, "listed": 102.0}
    assert log.index("clock 100") < log.index("POST /v1/batches")
    last_submit = max(i for i, entry in enumerate(log) if entry.startswith("submit"))
    first_wait = min(i for i, entry in enumerate(log) if entry.startswith("GET /v1/batches/"))
    assert last_submit < log.index("clock 101") < first_wait
    last_page = max(i for i, entry in enumerate(log) if entry.startswith("GET /v1/jobs"))
    assert log.index("clock 102") > last_page


def test_run_batch_in_bulk_sends_each_connections_share_in_requests_of_at_most_that_many(
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeBatchServer(page_size=1000)
    monkeypatch.setattr(client, "Client", server.client)
    monkeypatch.setattr(client.time, "sleep", lambda s: None)
    items = [(f"image {i}".encode(), "image/jpeg") for i in range(11)]

    _, jobs = client.run_batch("http://x", "t", "resnet50", items, connections=2, per_request=4)

    by_input = {job["input"]: job["id"] for job in server.jobs}
    assert [job["id"] for job in jobs] == [by_input[f"image {i}"] for i in range(11)]
    # Shares of 6 and 5: requests of 4 + 2 and 4 + 1 inputs.
    assert sorted(entry for entry in server.log if entry.startswith("bulk")) == ["bulk 1", "bulk 2", "bulk 4",
                                                                                 "bulk 4"]
    assert all(entry == "submit b1" for entry in server.log if entry.startswith("submit"))


def test_a_multipart_body_is_read_by_django_as_the_items_in_order() -> None:
    import io

    from django.core.files.uploadhandler import MemoryFileUploadHandler
    from django.http.multipartparser import MultiPartParser

    items = [(b"\xff\xd8 one \r\n--", "image/jpeg"), (b"", "image/png"), (bytes(range(256)), "application/x-npy")]
    body, content_type = client.multipart(items)

    meta = {"CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body))}
    _, files = MultiPartParser(meta, io.BytesIO(body), [MemoryFileUploadHandler()]).parse()
    assert [(f.read(), f.content_type) for f in files.getlist("input")] == items
