"""WSGI middleware that refuses a request body over the limit before a byte of it is read.

uWSGI's `limit-post` is a backstop that drops the connection without an answer; this answers
`413 too_large` in the one error shape from the declared Content-Length alone, and reads a
chunked body (no Content-Length) only up to the limit. It closes the connection after a
refusal, because the unread rest of the body must not be parsed as the next request.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings

from api.exceptions import error_body

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def body_limit() -> int:
    """Django's own cap on a request body, which is the input limit plus room for JSON or multipart framing."""
    return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


class BodyLimit:
    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        limit = body_limit()
        declared = environ.get("CONTENT_LENGTH") or ""
        if declared.isdigit() and int(declared) > limit:
            return too_large(start_response, limit)
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            try:
                body = read_chunked(limit)
            except OSError:
                return refuse(start_response, "400 Bad Request", "bad_request",
                              "The chunked request body could not be read (malformed, stalled, or a chunk over "
                              "uWSGI's chunked-input-limit).")
            if body is None:
                return too_large(start_response, limit)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            environ.pop("HTTP_TRANSFER_ENCODING", None)

        def closing_start_response(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            # The app refused a body it did not read: close, so that body is not parsed as a request.
            if status.startswith("413") and not any(k.lower() == "connection" for k, _ in headers):
                headers = [*headers, ("Connection", "close")]
            return start_response(status, headers, *args)

        return self.app(environ, closing_start_response)


def read_chunked(limit: int) -> bytes | None:
    """The whole chunked body under uWSGI, or None once it passes `limit` (the rest is never read).

    Raises OSError when uWSGI cannot read a chunk (malformed framing, a stalled client).
    """
    try:
        import uwsgi  # type: ignore[import-not-found]  # only inside uWSGI
    except ImportError:
        return b""  # other servers de-chunk (or refuse) bodies themselves
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = uwsgi.chunked_read(30)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def too_large(start_response: StartResponse, limit: int) -> list[bytes]:
    return refuse(start_response, "413 Request Entity Too Large", "too_large",
                  f"The request body is larger than the {limit}-byte limit.")


def refuse(start_response: StartResponse, status: str, code: str, message: str) -> list[bytes]:
    body = json.dumps(error_body(code, message)).encode()
    start_response(status, [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ])
    return [body]
