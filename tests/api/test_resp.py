"""The lean LPUSH connection (api/resp.py) against a real Redis server: what it pushes, and how it fails."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from api.resp import RespPusher
from tests.integration.processes import free_port, private_redis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A private Redis with a password, listening on TCP and on a Unix socket."""
    home = tmp_path_factory.mktemp("redis")
    unix = str(home / "redis.sock")
    with private_redis(home, "--unixsocket", unix, "--requirepass", "s3cret") as port:
        yield {"port": port, "unix": unix, "client": redis.Redis(port=port, password="s3cret")}


@pytest.fixture
def redis_db(server: dict[str, Any]) -> dict[str, Any]:
    server["client"].flushall()
    return server


def read(server: dict[str, Any], key: str, db: int = 0) -> list[bytes]:
    return redis.Redis(port=server["port"], password="s3cret", db=db).lrange(key, 0, -1)


def test_it_pushes_onto_the_database_the_url_names_with_the_password_it_gives(redis_db: dict[str, Any]) -> None:
    pusher = RespPusher.from_url(f"redis://:s3cret@127.0.0.1:{redis_db['port']}/3", timeout=1, connect_timeout=1)
    assert pusher is not None

    assert pusher.lpush("q", b"first") == 1
    assert pusher.lpush("q", b"\r\n$5\r\nbinary \x00 safe") == 2  # RESP framing in the value is only data

    assert read(redis_db, "q", db=3) == [b"\r\n$5\r\nbinary \x00 safe", b"first"]
    assert read(redis_db, "q", db=0) == []


def test_several_values_go_in_one_push_in_redis_order(redis_db: dict[str, Any]) -> None:
    pusher = RespPusher.from_url(f"redis://:s3cret@127.0.0.1:{redis_db['port']}/0", timeout=1, connect_timeout=1)
    assert pusher is not None

    assert pusher.lpush("q", b"a", b"b\r\nc", b"") == 3

    assert read(redis_db, "q") == [b"", b"b\r\nc", b"a"]


def test_a_unix_socket_url_and_a_db_in_the_query(redis_db: dict[str, Any]) -> None:
    pusher = RespPusher.from_url(f"unix://:s3cret@{redis_db['unix']}?db=2", timeout=1, connect_timeout=1)
    assert pusher is not None and pusher.path == redis_db["unix"]

    pusher.lpush("q", b"over the socket")

    assert read(redis_db, "q", db=2) == [b"over the socket"]


def test_only_plain_redis_and_unix_urls_get_one() -> None:
    assert RespPusher.from_url("rediss://127.0.0.1:6380/0") is None
    assert RespPusher.from_url("amqp://guest@localhost//") is None
    pusher = RespPusher.from_url("redis://user:p%40ss@example.com/5", timeout=0.5)
    assert pusher is not None
    assert (pusher.host, pusher.port, pusher.db, pusher.username, pusher.password, pusher.timeout) == \
        ("example.com", 6379, 5, "user", "p@ss", 0.5)


def test_each_thread_keeps_one_connection_of_its_own(redis_db: dict[str, Any]) -> None:
    pusher = RespPusher.from_url(f"redis://:s3cret@127.0.0.1:{redis_db['port']}/0", timeout=1)
    assert pusher is not None
    client = redis_db["client"]
    before = client.info("stats")["total_connections_received"]

    def push(n: int) -> None:
        for i in range(n):
            pusher.lpush("q", b"%d" % i)

    threads = [threading.Thread(target=push, args=(50,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    push(10)

    assert client.llen("q") == 4 * 50 + 10
    # One connection per thread that pushed, not one per push.
    assert client.info("stats")["total_connections_received"] - before == 5


def test_a_wrong_password_a_refused_connection_and_an_error_reply_raise_redis_pys_errors(
        redis_db: dict[str, Any]) -> None:
    wrong = RespPusher.from_url(f"redis://:nope@127.0.0.1:{redis_db['port']}/0", timeout=1)
    assert wrong is not None
    with pytest.raises(redis.AuthenticationError):
        wrong.lpush("q", b"x")

    closed = RespPusher.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout=1, connect_timeout=1)
    assert closed is not None
    with pytest.raises(redis.ConnectionError):
        closed.lpush("q", b"x")

    redis_db["client"].set("not-a-list", "x")
    pusher = RespPusher.from_url(f"redis://:s3cret@127.0.0.1:{redis_db['port']}/0", timeout=1)
    assert pusher is not None
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        pusher.lpush("not-a-list", b"x")
    assert pusher.lpush("q", b"after the error") == 1  # a fresh connection, nothing left unread on it


def test_a_server_that_does_not_answer_times_out_and_the_connection_is_dropped(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog) but never answers
    port = listener.getsockname()[1]
    pusher = RespPusher.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.2, connect_timeout=0.2)
    assert pusher is not None
    try:
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            pusher.lpush("q", b"x")
        assert 0.15 < time.monotonic() - started < 2
        assert getattr(pusher._local, "sock", None) is None
    finally:
        listener.close()


def test_a_connection_redis_closed_fails_once_and_the_next_push_reconnects(redis_db: dict[str, Any]) -> None:
    pusher = RespPusher.from_url(f"redis://:s3cret@127.0.0.1:{redis_db['port']}/0", timeout=1)
    assert pusher is not None
    pusher.lpush("q", b"one")
    redis_db["client"].client_kill_filter(_type="normal", skipme=True)
    time.sleep(0.05)

    with pytest.raises(redis.ConnectionError):  # used again at once: not checked first
        pusher.lpush("q", b"lost")
    pusher.lpush("q", b"two")

    assert read(redis_db, "q") == [b"two", b"one"]


def test_a_connection_left_idle_is_checked_first_so_one_the_server_closed_is_replaced_without_an_error(
        redis_db: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    pusher = RespPusher.from_url(f"redis://:s3cret@127.0.0.1:{redis_db['port']}/0", timeout=1)
    assert pusher is not None
    pusher.lpush("q", b"one")
    first = pusher._local.sock
    monkeypatch.setattr(RespPusher, "IDLE_CHECK_S", 0.0)

    pusher.lpush("q", b"two")  # idle but open: kept
    assert pusher._local.sock is first
    redis_db["client"].client_kill_filter(_type="normal", skipme=True)  # as a server's idle `timeout` would
    time.sleep(0.05)
    pusher.lpush("q", b"three")  # no error: the closed connection was seen and replaced

    assert pusher._local.sock is not first
    assert read(redis_db, "q") == [b"three", b"two", b"one"]


def test_a_forked_child_opens_its_own_connection(redis_db: dict[str, Any]) -> None:
    pusher = RespPusher.from_url(f"redis://:s3cret@127.0.0.1:{redis_db['port']}/0", timeout=1)
    assert pusher is not None
    pusher.lpush("q", b"parent")
    parent_socket = pusher._local.sock

    pid = os.fork()
    if pid == 0:  # the child: push, and report whether it reused the parent's socket
        try:
            pusher.lpush("q", b"child")
            os._exit(0 if pusher._local.sock is not parent_socket else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    pusher.lpush("q", b"parent again")  # the parent's connection is still in step
    assert read(redis_db, "q") == [b"parent again", b"child", b"parent"]
