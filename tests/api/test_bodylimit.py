"""The WSGI body limit: an over-limit body is refused from its Content-Length without being read."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from api.bodylimit import BodyLimit, body_limit


class Unreadable(io.RawIOBase):
    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the body must not be read")


def call(app: Any, environ: dict[str, Any]) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(BodyLimit(app)(environ, start_response))
    return seen["status"], seen["headers"], body


def ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))]


@pytest.fixture
def limit(settings: Any) -> int:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    return body_limit()


def test_a_declared_length_over_the_limit_is_413_unread_and_closes(limit: int) -> None:
    status, headers, body = call(ok_app, {"CONTENT_LENGTH": str(limit + 1), "wsgi.input": Unreadable()})

    assert status.startswith("413")
    assert headers["Connection"] == "close"
    assert json.loads(body)["error"]["code"] == "too_large"


def test_a_body_at_the_limit_reaches_the_app(limit: int) -> None:
    status, _, body = call(ok_app, {"CONTENT_LENGTH": str(limit), "wsgi.input": io.BytesIO(b"x" * limit)})

    assert status.startswith("200") and body == b"x" * limit


def test_a_413_from_the_app_closes_the_connection(limit: int) -> None:
    def refusing_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("413 Request Entity Too Large", [("Content-Type", "application/json")])
        return [b"{}"]

    _, headers, _ = call(refusing_app, {"CONTENT_LENGTH": "10", "wsgi.input": Unreadable()})

    assert headers["Connection"] == "close"


def test_other_answers_keep_the_connection(limit: int) -> None:
    _, headers, _ = call(ok_app, {"CONTENT_LENGTH": "2", "wsgi.input": io.BytesIO(b"ok")})

    assert "Connection" not in headers
