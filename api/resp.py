"""The one Redis command a submit sends, LPUSH, over a plain socket per thread: two system calls instead of nine.

redis-py spends more on a command than Redis does: it takes a connection from its pool and checks it for
unread data (two `ioctl`s and a `recv` that fails), waits in `poll` before the send and again before the
reply (its socket has a timeout, so every call goes through `select`), and reads the pid twice. Each of
those calls lets go of the GIL, and in a web process whose other request threads are waiting for it every
release is a hand-off between threads. Measured on the 2-core host: in one thread an LPUSH cost 57–73 µs
of CPU through redis-py and 23–27 here; under `make bench` (f)'s submit load (4 processes x 4 threads, 16
clients; ten alternating pairs of 2-s runs on one stack) the web tier spent 7% less CPU per submit (the
median of the pairs' ratios, 0.926) and answered 5% more submits a second.

`RespPusher` keeps one blocking socket per thread, with the broker's socket timeout set in the kernel
(SO_RCVTIMEO / SO_SNDTIMEO) rather than through `poll`, sends the command and reads the one-line reply.
Any failure closes the socket, so a reply is never read by the wrong command; the caller decides whether
to try again (api/publish.py). Errors are redis-py's own exception classes, raised where redis-py would
raise them. Plain TCP (`redis://`) and Unix sockets (`unix://`) only: a TLS broker (`rediss://`) is
published to through redis-py.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from urllib.parse import parse_qs, unquote, urlsplit

import redis

# Longest reply read before the line must have ended: an integer reply (`:<length>`) or an error line.
MAX_REPLY = 64 * 1024


def _bulk(*parts: bytes) -> bytes:
    """A command as RESP: an array of bulk strings."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)


class RespPusher:
    """`RespPusher.from_url("redis://:pw@host:6379/2", timeout=0.5, connect_timeout=0.5).lpush(key, value)`."""

    # A connection unused this long is checked before use (one non-blocking peek), so that one the server
    # closed meanwhile is replaced instead of failing the next push (redis-py PINGs after 30 s for the same).
    IDLE_CHECK_S = 5.0

    def __init__(self, *, host: str | None = None, port: int = 6379, path: str | None = None, db: int = 0,
                 username: str | None = None, password: str | None = None, timeout: float | None = None,
                 connect_timeout: float | None = None) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self.username, self.password = username, password
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._local = threading.local()

    @classmethod
    def from_url(cls, url: str, *, timeout: float | None = None,
                 connect_timeout: float | None = None) -> RespPusher | None:
        """A pusher for a `redis://` or `unix://` URL (as redis-py reads them); None for any other scheme."""
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        db_text = query.get("db", [""])[0] or (parts.path.strip("/") if parts.scheme == "redis" else "") or "0"
        common = {"db": int(db_text), "timeout": timeout, "connect_timeout": connect_timeout,
                  "username": unquote(parts.username) if parts.username else None,
                  "password": unquote(parts.password) if parts.password else None}
        if parts.scheme == "redis":
            return cls(host=parts.hostname or "localhost", port=parts.port or 6379, **common)  # type: ignore[arg-type]
        if parts.scheme == "unix":
            return cls(path=unquote(parts.path), **common)  # type: ignore[arg-type]
        return None

    def lpush(self, key: str, *values: bytes) -> int:
        """LPUSH `values` onto `key` (one command: all or none); the list's length after it. Raises
        redis.ConnectionError, TimeoutError or ResponseError (as redis-py would) and then leaves no connection
        behind for the next call."""
        sock = self._socket()
        try:
            return int(self._call(sock, _bulk(b"LPUSH", key.encode(), *values)))
        except BaseException:
            self._drop(sock)
            raise

    # -- one connection per thread (and per process: a forked child opens its own) --

    def _socket(self) -> socket.socket:
        local = self._local
        sock = getattr(local, "sock", None)
        now = time.monotonic()
        if sock is not None and local.pid == os.getpid():
            if now - local.used < self.IDLE_CHECK_S or self._alive(sock):
                local.used = now
                return sock
            self._drop(sock)
        sock = self._connect()
        local.sock, local.pid, local.used = sock, os.getpid(), now
        return sock

    @staticmethod
    def _alive(sock: socket.socket) -> bool:
        """Whether a connection left idle is still open: a server that closed it (its `timeout` setting, a
        restart) has left an end-of-file to read, which one non-blocking peek sees without sending anything."""
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # nothing to read: open, and nothing unread on it
        except OSError:
            return False
        return False  # the end of the stream, or bytes no command asked for

    def _drop(self, sock: socket.socket) -> None:
        if getattr(self._local, "sock", None) is sock:
            self._local.sock = None
        sock.close()

    def _connect(self) -> socket.socket:
        try:
            if self.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.connect_timeout)
                try:
                    sock.connect(self.path)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError as exc:
            raise redis.TimeoutError(f"Timeout connecting to Redis: {exc}") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error connecting to Redis: {exc}") from exc
        try:
            # Blocking from here on, with the time limit kept by the kernel: no `poll` before each call.
            sock.settimeout(None)
            if self.timeout:
                limit = struct.pack("ll", int(self.timeout), int(self.timeout % 1 * 1_000_000))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
            if self.password is not None:
                credentials = (self.username, self.password) if self.username else (self.password,)
                self._call(sock, _bulk(b"AUTH", *(c.encode() for c in credentials)))
            if self.db:
                self._call(sock, _bulk(b"SELECT", str(self.db).encode()))
        except BaseException:
            sock.close()
            raise
        return sock

    @staticmethod
    def _call(sock: socket.socket, command: bytes) -> bytes:
        """Send one command and read its one-line reply (status or integer); its text after the type byte."""
        try:
            sock.sendall(command)
            reply = sock.recv(256)
            while not reply.endswith(b"\r\n"):
                if not reply or len(reply) > MAX_REPLY:
                    raise redis.ConnectionError("Connection closed by server." if not reply else
                                                "Redis answered with an unexpected reply.")
                more = sock.recv(256)
                if not more:
                    raise redis.ConnectionError("Connection closed by server.")
                reply += more
        except BlockingIOError as exc:  # SO_RCVTIMEO / SO_SNDTIMEO ran out
            raise redis.TimeoutError("Timeout reading from Redis") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"Error talking to Redis: {exc}") from exc
        kind, text = reply[:1], reply[1:-2]
        if kind in (b":", b"+"):
            return text
        if kind == b"-":
            message = text.decode(errors="replace")
            if message.startswith("LOADING"):
                raise redis.BusyLoadingError(message)
            if message.startswith(("NOAUTH", "WRONGPASS", "NOPERM")) or "invalid password" in message:
                raise redis.AuthenticationError(message)
            raise redis.ResponseError(message)
        raise redis.ConnectionError(f"Redis answered with an unexpected reply: {reply[:80]!r}")
