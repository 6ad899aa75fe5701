"""project.sqlite queues write transactions on a flock, so none sees "database is locked" even with no busy timeout;
a single write statement outside a transaction takes no flock and waits in SQLite's busy handler instead."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db.utils import ConnectionHandler

THREADS, EACH = 8, 25
INSERT = "INSERT INTO t (k) VALUES ('row')"
COUNT = "SELECT count(*) FROM t"


def handler_for(name: str, timeout: float = 0) -> ConnectionHandler:
    """Busy timeout 0 by default: a writer that finds SQLite's write lock taken fails at once instead of retrying."""
    options = {"timeout": timeout, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    return ConnectionHandler({"default": {"ENGINE": "project.sqlite", "NAME": name, "OPTIONS": options}})


@pytest.fixture(autouse=True)
def db_access(django_db_blocker: Any) -> Iterator[None]:
    with django_db_blocker.unblock():  # these tests open their own connections, not the test database
        yield


@pytest.fixture
def handler(tmp_path: Path) -> Iterator[ConnectionHandler]:
    """A WAL file database; the main thread's connection stays open throughout, as a server's would."""
    handler = handler_for(str(tmp_path / "db.sqlite3"))
    main = handler["default"]
    main.cursor().execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, n INTEGER NOT NULL DEFAULT 0)")
    main.cursor().execute("INSERT INTO t (k) VALUES ('counter')")
    yield handler
    main.close()


@contextmanager
def write_transaction(w: Any) -> Iterator[Any]:
    """What atomic() does around its block: BEGIN IMMEDIATE, then COMMIT, or ROLLBACK on an exception."""
    w.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
    try:
        yield w.cursor()
    except BaseException:
        w.rollback()
        raise
    else:
        w.commit()
    finally:
        w.set_autocommit(True)


def start(handler: ConnectionHandler, work: Callable[[Any], None], errors: list[Exception]) -> threading.Thread:
    """Runs work on the thread's own connection (ConnectionHandler keeps one per thread), then closes it."""
    def run() -> None:
        w = handler["default"]
        try:
            work(w)
        except Exception as error:
            errors.append(error)
        finally:
            w.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def run_all(handler: ConnectionHandler, works: list[Callable[[Any], None]]) -> list[Exception]:
    errors: list[Exception] = []
    barrier = threading.Barrier(len(works))

    def together(work: Callable[[Any], None]) -> Callable[[Any], None]:
        def connected_then_work(w: Any) -> None:
            w.ensure_connection()
            barrier.wait()  # every thread connected, so they all start writing at once
            work(w)

        return connected_then_work

    threads = [start(handler, together(work), errors) for work in works]
    deadline = time.monotonic() + 5
    for thread in threads:
        thread.join(timeout=max(0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads)
    return errors


def transactions(w: Any) -> None:
    for _ in range(EACH):
        with write_transaction(w) as cursor:
            cursor.execute(INSERT)
            time.sleep(0.001)  # hold SQLite's write lock long enough that the others run into it


def autocommit_writes(w: Any) -> None:
    for _ in range(EACH):
        w.cursor().execute("UPDATE t SET n = n + 1 WHERE k = 'counter'")
        time.sleep(0.001)


def scalar(handler: ConnectionHandler, sql: str) -> Any:
    return handler["default"].cursor().execute(sql).fetchone()[0]


def test_concurrent_write_transactions_queue_instead_of_failing(handler: ConnectionHandler) -> None:
    assert run_all(handler, [transactions] * THREADS) == []
    assert scalar(handler, COUNT) == 1 + THREADS * EACH


def test_autocommit_writes_wait_for_write_transactions_in_the_busy_handler(tmp_path: Path) -> None:
    handler = handler_for(str(tmp_path / "db.sqlite3"), timeout=5)  # the busy timeout settings.py sets
    main = handler["default"]
    main.cursor().execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, n INTEGER NOT NULL DEFAULT 0)")
    main.cursor().execute("INSERT INTO t (k) VALUES ('counter')")
    half = THREADS // 2
    assert run_all(handler, [autocommit_writes] * half + [transactions] * half) == []
    assert scalar(handler, "SELECT n FROM t WHERE k = 'counter'") == half * EACH
    assert scalar(handler, COUNT) == 1 + half * EACH


def test_a_writer_waits_for_an_open_transaction_and_a_reader_does_not(handler: ConnectionHandler) -> None:
    errors: list[Exception] = []
    seen: list[int] = []
    with write_transaction(handler["default"]) as cursor:
        cursor.execute(INSERT)
        reader = start(handler, lambda w: seen.append(w.cursor().execute(COUNT).fetchone()[0]), errors)
        reader.join(timeout=2)
        assert not reader.is_alive() and seen == [1]  # the snapshot from before this transaction
        writer = start(handler, transactions, errors)
        time.sleep(0.2)
        assert writer.is_alive() and errors == []  # queued on the lock, not failed with "database is locked"
    writer.join(timeout=5)
    assert not writer.is_alive() and errors == []
    assert scalar(handler, COUNT) == 2 + EACH


def test_a_single_write_statement_takes_no_flock_and_a_transaction_does(handler: ConnectionHandler,
                                                                       tmp_path: Path) -> None:
    """Held across the statement, the flock made it wait for the GIL twice while every other writer waited for it."""
    fd = os.open(tmp_path / "db.sqlite3-writelock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a transaction in another process would hold it
    errors: list[Exception] = []
    try:
        statement = start(handler, lambda w: w.cursor().execute(INSERT), errors)
        statement.join(timeout=2)
        assert not statement.is_alive() and errors == []
        transaction = start(handler, transactions, errors)
        time.sleep(0.2)
        assert transaction.is_alive()  # queued on the flock
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    transaction.join(timeout=5)
    assert not transaction.is_alive() and errors == []
    assert scalar(handler, COUNT) == 1 + 1 + EACH


def test_a_single_write_locked_out_past_its_busy_timeout_queues_on_the_flock(tmp_path: Path) -> None:
    """A transaction held longer than the busy timeout: the statement waits for it instead of failing."""
    handler = handler_for(str(tmp_path / "db.sqlite3"), timeout=0.2)
    main = handler["default"]
    main.cursor().execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, n INTEGER NOT NULL DEFAULT 0)")
    errors: list[Exception] = []
    with write_transaction(main) as cursor:
        cursor.execute(INSERT)
        statement = start(handler, lambda w: w.cursor().execute(INSERT), errors)
        time.sleep(0.6)  # three busy timeouts
        assert statement.is_alive() and errors == []  # queued behind the transaction, not failed
    statement.join(timeout=5)
    assert not statement.is_alive() and errors == []
    assert scalar(handler, COUNT) == 2
    main.close()


def test_the_lock_is_released_after_a_commit_a_rollback_or_an_exception(handler: ConnectionHandler) -> None:
    main = handler["default"]

    def rolled_back() -> None:
        main.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
        main.cursor().execute(INSERT)
        main.rollback()
        main.set_autocommit(True)

    def raised() -> None:
        with pytest.raises(RuntimeError), write_transaction(main) as cursor:
            cursor.execute(INSERT)
            raise RuntimeError

    def committed() -> None:
        with write_transaction(main) as cursor:
            cursor.execute(INSERT)

    def one_transaction(w: Any) -> None:
        with write_transaction(w) as cursor:
            cursor.execute(INSERT)

    for then in (committed, rolled_back, raised):
        then()  # main's connection stays open: only the release, not a close, can let the next writer in
        errors: list[Exception] = []
        writer = start(handler, one_transaction, errors)
        writer.join(timeout=2)
        assert not writer.is_alive() and errors == []
    assert scalar(handler, COUNT) == 1 + 1 + 3


def test_an_in_memory_database_takes_no_lock(handler: ConnectionHandler) -> None:
    memory = handler_for(":memory:")["default"]
    memory.ensure_connection()
    assert memory._write_lock is None and handler["default"]._write_lock is not None
    memory.cursor().execute("CREATE TABLE t (x INTEGER)")
    memory.cursor().execute("INSERT INTO t VALUES (1)")
    memory.close()
