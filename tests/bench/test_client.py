"""bench/client.py's bulk load: every image submitted first, then every result collected, in the items' order."""

from __future__ import annotations

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
