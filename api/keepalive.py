"""WSGI middleware: a uWSGI worker about to be recycled closes its keep-alive connections cleanly first.

uWSGI replaces a web process after `max-requests`; the process then exits with its idle keep-alive
connections open, and a client that sends its next request on one of them in that instant gets a
reset, not an answer (measured: about seven failed requests per recycle under load). From a margin
before the limit on, every answer says `Connection: close`, so each connection ends after a complete
response and the client opens a fresh one, served by a process that stays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

MARGIN = 100  # requests before the limit from which connections are closed


def _option(uwsgi: Any, name: str) -> int:
    value = uwsgi.opt.get(name, b"0")
    if isinstance(value, list | tuple):
        value = value[-1]
    if isinstance(value, bytes):
        value = value.decode()
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def recycle_threshold() -> int | None:
    """Requests after which uWSGI recycles this worker (its own formula), or None outside uWSGI or without it."""
    try:
        import uwsgi  # type: ignore[import-not-found]  # only inside uWSGI
    except ImportError:
        return None
    max_requests = _option(uwsgi, "max-requests")
    if not max_requests:
        return None
    return max_requests + (uwsgi.worker_id() - 1) * _option(uwsgi, "max-requests-delta")


def requests_served() -> int:
    import uwsgi

    me = uwsgi.worker_id()
    return int(next((w["delta_requests"] for w in uwsgi.workers() if w["id"] == me), 0))


class CloseBeforeRecycle:
    def __init__(self, app: WsgiApp) -> None:
        self.app = app
        self.threshold: int | None | bool = False  # False: not read yet (read after fork, in the worker)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self.threshold is False:
            self.threshold = recycle_threshold()
        if self.threshold is None or requests_served() < int(self.threshold) - MARGIN:
            return self.app(environ, start_response)

        def closing(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            headers = [(k, v) for k, v in headers if k.lower() != "connection"] + [("Connection", "close")]
            return start_response(status, headers, *args)

        return self.app(environ, closing)
