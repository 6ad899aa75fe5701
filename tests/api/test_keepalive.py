"""A web process near its max-requests recycle answers `Connection: close`; before that, and outside uWSGI,
nothing changes. (tests/integration/test_reliability.py recycles real uWSGI workers under load.)"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from api.keepalive import MARGIN, CloseBeforeRecycle


def fake_uwsgi(monkeypatch: Any, *, served: int, max_requests: str = "1000", delta: str = "50",
               worker: int = 2) -> None:
    module = types.ModuleType("uwsgi")
    module.opt = {"max-requests": max_requests.encode(), "max-requests-delta": delta.encode()}  # type: ignore[attr-defined]
    module.worker_id = lambda: worker  # type: ignore[attr-defined]
    module.workers = lambda: [{"id": 1, "delta_requests": 0}, {"id": worker, "delta_requests": served}]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", module)


def headers_of(app: Any) -> dict[str, str]:
    seen: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen.update(headers)

    list(app({}, start_response))
    return seen


def ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Connection", "keep-alive")])
    return [b"ok"]


@pytest.mark.parametrize(("served", "closes"), [(0, False), (1050 - MARGIN - 1, False), (1050 - MARGIN, True),
                                                (1049, True), (1200, True)])
def test_connections_close_from_the_margin_before_this_workers_limit(monkeypatch: Any, served: int,
                                                                     closes: bool) -> None:
    fake_uwsgi(monkeypatch, served=served)  # worker 2: uWSGI recycles it at 1000 + (2 - 1) * 50
    assert (headers_of(CloseBeforeRecycle(ok)).get("Connection") == "close") is closes


def test_without_max_requests_nothing_changes(monkeypatch: Any) -> None:
    fake_uwsgi(monkeypatch, served=10**9, max_requests="0")
    assert headers_of(CloseBeforeRecycle(ok))["Connection"] == "keep-alive"


def test_outside_uwsgi_nothing_changes(monkeypatch: Any) -> None:
    monkeypatch.delitem(sys.modules, "uwsgi", raising=False)
    assert headers_of(CloseBeforeRecycle(ok))["Connection"] == "keep-alive"
