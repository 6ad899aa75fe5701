"""The remote submitter against a scripted HTTP double: retries, error lines, the token, and the polling walk."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from requests.adapters import BaseAdapter

from api.bulk import BulkAbort
from api.bulk_remote import RemoteSubmitter

Answer = tuple[int, dict[str, Any], dict[str, str]]


class ScriptedApi(BaseAdapter):
    """A requests transport that answers from a function and records every request."""

    def __init__(self, answer: Callable[[requests.PreparedRequest], Answer]) -> None:
        super().__init__()
        self.answer = answer
        self.requests: list[requests.PreparedRequest] = []
        self.lock = threading.Lock()

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        with self.lock:
            self.requests.append(request)
            status, body, headers = self.answer(request)
        response = requests.Response()
        response.status_code, response._content, response.request, response.url = (
            status, json.dumps(body).encode(), request, request.url)
        response.headers.update({"Content-Type": "application/json", **headers})
        return response

    def close(self) -> None:
        pass


def submitter(api: ScriptedApi) -> RemoteSubmitter:
    sub = RemoteSubmitter(api="http://inferq.test/", token="t0k", model="m", version=None, stop=threading.Event())
    session = requests.Session()
    session.headers["Authorization"] = "Token t0k"
    session.mount("http://", api)
    sub._session = lambda: session  # type: ignore[method-assign]
    sub.batch_id = "b1"
    return sub


def job(job_id: str, status: str) -> dict[str, Any]:
    return {"id": job_id, "status": status, "model": "m", "version": "1", "batch": "b1", "error": None,
            "result": {"predictions": [{"label": "x", "probability": 1.0}]} if status == "succeeded" else None,
            "timings": {"queue_ms": 1.0, "inference_ms": 2.0, "total_ms": 3.0}}


def test_429_and_503_are_retried_after_retry_after_and_the_post_carries_batch_and_idempotency_key(
        tmp_path: Path) -> None:
    answers = iter([(429, {"error": {"code": "queue_full", "message": "full"}}, {"Retry-After": "0"}),
                    (503, {"error": {"code": "broker_unavailable", "message": "down"}}, {"Retry-After": "0"}),
                    (202, job("j1", "queued"), {})])
    api = ScriptedApi(lambda request: next(answers))
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"\xff\xd8jpeg")
    record = submitter(api).load(str(photo))
    assert record is not None and (record.status, record.job_id) == ("queued", "j1")
    assert len(api.requests) == 3
    keys = {r.headers["Idempotency-Key"] for r in api.requests}
    assert len(keys) == 1 and keys.pop().startswith("bulk:b1:")
    last = api.requests[-1]
    assert parse_qs(urlsplit(last.url).query) == {"batch": ["b1"]} and last.body == b"\xff\xd8jpeg"
    assert last.headers["Content-Type"] == "image/jpeg" and last.headers["Authorization"] == "Token t0k"


def test_a_4xx_answer_is_the_inputs_error_line_and_a_refused_token_stops_the_run(tmp_path: Path) -> None:
    photo = tmp_path / "bad.jpg"
    photo.write_bytes(b"nope")
    bad = submitter(ScriptedApi(lambda r: (400, {"error": {"code": "invalid_image", "message": "not an image"}}, {})))
    record = bad.load(str(photo))
    assert record is not None and (record.status, record.error_code, record.job_id) == ("failed", "invalid_image", "")
    refused = submitter(ScriptedApi(lambda r: (401, {"error": {"code": "authentication_failed",
                                                               "message": "Invalid token."}}, {})))
    with pytest.raises(BulkAbort, match="refused the token"):
        refused.load(str(photo))
    missing = submitter(ScriptedApi(lambda r: (202, job("j", "queued"), {}))).load(str(tmp_path / "gone.jpg"))
    assert missing is not None and missing.error_code == "unreadable"


def test_a_stopped_run_does_not_post_and_a_retry_wait_ends_at_once(tmp_path: Path) -> None:
    api = ScriptedApi(lambda r: (429, {"error": {"code": "queue_full", "message": "full"}}, {"Retry-After": "30"}))
    sub = submitter(api)
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    threading.Timer(0.2, sub.stop.set).start()
    assert sub.load(str(photo)) is None  # was waiting 30 s for the queue; stopping ended the wait
    sent = len(api.requests)
    assert sub.load(str(photo)) is None and len(api.requests) == sent


def listing(states: dict[str, str]) -> Callable[[requests.PreparedRequest], Answer]:
    """`GET /v1/jobs?id=…` over `states` (a job missing from it no longer exists)."""

    def answer(request: requests.PreparedRequest) -> Answer:
        query = parse_qs(urlsplit(request.url).query)
        assert urlsplit(request.url).path == "/v1/jobs" and request.method == "GET"
        wanted = query["id"][0].split(",")
        assert int(query["limit"][0]) >= len(wanted)
        found = [job(job_id, states[job_id]) for job_id in wanted if job_id in states]
        return 200, {"count": len(found), "next": None, "previous": None, "results": found[::-1]}, {}

    return answer


def test_polling_walks_oldest_first_a_chunk_a_request_and_stops_at_a_chunk_still_queued(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("api.bulk_remote.POLL_CHUNK", 2)
    states = {f"j{i}": "succeeded" for i in range(3)} | {"j3": "running"} | {f"j{i}": "queued" for i in range(4, 20)}
    states["j19"] = "succeeded"  # out of order: found once the jobs before it move
    api = ScriptedApi(listing(states))
    sub = submitter(api)
    pending = {f"j{i}": f"/p/{i}.jpg" for i in range(20)}
    ended = sub.poll(pending)
    assert sorted(r.job_id for r in ended) == ["j0", "j1", "j2"]
    assert all(r.status == "succeeded" and r.total_ms == 3.0 and r.path == pending[r.job_id] for r in ended)
    # chunks (j0,j1) (j2,j3) (j4,j5), one request each: the last one all queued
    assert [parse_qs(urlsplit(r.url).query)["id"] for r in api.requests] == [["j0,j1"], ["j2,j3"], ["j4,j5"]]
    states.update(dict.fromkeys(states, "succeeded"))
    remaining = {k: v for k, v in pending.items() if k not in {"j0", "j1", "j2"}}
    assert len(sub.poll(remaining)) == 17
    assert len(api.requests) == 3 + 9


def test_polling_reads_a_hundred_jobs_a_request() -> None:
    states = {f"j{i}": "succeeded" for i in range(250)}
    api = ScriptedApi(listing(states))
    ended = submitter(api).poll({f"j{i}": f"/p/{i}.jpg" for i in range(250)})
    assert len(ended) == 250
    assert [len(parse_qs(urlsplit(r.url).query)["id"][0].split(",")) for r in api.requests] == [100, 100, 50]


def test_a_job_gone_from_the_listing_ends_as_not_found_and_a_failed_request_waits_for_the_next_tick(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("api.bulk_remote.POLL_CHUNK", 2)
    states = {"j0": "succeeded", "j2": "queued", "j3": "queued"}  # j1 was deleted (retention)
    ended = submitter(ScriptedApi(listing(states))).poll({f"j{i}": f"/p/{i}.jpg" for i in range(4)})
    assert [(r.job_id, r.status, r.error_code) for r in ended] == [("j0", "succeeded", ""),
                                                                   ("j1", "failed", "not_found")]
    down = ScriptedApi(lambda r: (503, {"error": {"code": "broker_unavailable", "message": "down"}}, {}))
    assert submitter(down).poll({"j0": "/p/0.jpg", "j1": "/p/1.jpg"}) == []
    assert len(down.requests) == 1


def test_an_unknown_model_version_is_refused_before_any_input_is_sent() -> None:
    from api.bulk import BulkError

    api = ScriptedApi(lambda r: (200, {"name": "m", "version": "2", "versions": ["1", "2"], "top_k": 3}, {}))
    sub = submitter(api)
    assert sub.model_info().top_k == 3
    sub.version = "7"
    with pytest.raises(BulkError, match="no version '7'"):
        sub.model_info()
    sub.version = "1"
    assert sub.model_info().version == "1"


def test_bulk_modules_import_without_torch() -> None:
    from tests.test_import_boundary import import_in_fresh_interpreter

    modules = ("api.bulk", "api.bulk_local", "api.bulk_remote", "api.bulk_results", "api.bulk_report",
               "api.management.commands.submit_bulk")
    report = import_in_fresh_interpreter(modules, ("torch", "torchvision"))
    assert report["imported"] == list(modules) and report["found"] == []


def test_a_server_that_ignores_id_is_read_one_job_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """An older server lists its newest jobs whatever `id` says: no job may be taken for gone because of that."""
    monkeypatch.setattr("api.bulk_remote.POLL_CHUNK", 2)
    states = {"j0": "succeeded", "j1": "running", "j2": "queued", "j3": "queued", "newer": "queued"}

    def old_server(request: requests.PreparedRequest) -> Answer:
        path = urlsplit(request.url).path
        if path == "/v1/jobs":
            newest = [job(job_id, states[job_id]) for job_id in ("newer", "j3")]
            return 200, {"count": 5, "next": None, "previous": None, "results": newest}, {}
        return 200, job(path.rsplit("/", 1)[1], states[path.rsplit("/", 1)[1]]), {}

    api = ScriptedApi(old_server)
    sub = submitter(api)
    pending = {f"j{i}": f"/p/{i}.jpg" for i in range(4)}
    assert [(r.job_id, r.status) for r in sub.poll(pending)] == [("j0", "succeeded")]
    assert [urlsplit(r.url).path for r in api.requests] == ["/v1/jobs", "/v1/jobs/j0", "/v1/jobs/j1", "/v1/jobs/j2",
                                                             "/v1/jobs/j3"]
    states["j1"] = "failed"
    assert [(r.job_id, r.status) for r in sub.poll({"j1": "/p/1.jpg"})] == [("j1", "failed")]
    assert urlsplit(api.requests[-1].url).path == "/v1/jobs/j1"  # no listing asked again
