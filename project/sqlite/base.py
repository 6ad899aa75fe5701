"""Django's SQLite backend, with write transactions queued on a kernel lock instead of SQLite's sleep-and-retry.

SQLite lets one writer in at a time; a second one, told the database is locked, sleeps in
SQLite's busy handler (1, 2, 5, 10… ms) and tries again. A write transaction (`BEGIN
IMMEDIATE`, which `atomic()` issues) holds SQLite's lock while Python code runs between its
statements, so its waiters would mostly sleep past the moment it ends. Here each one first takes
an exclusive `flock` on a file beside the database, which the kernel hands to the next waiter
the moment it is released.

A single write statement outside a transaction (an INSERT, an UPDATE … RETURNING) takes no
flock. SQLite holds its lock only inside that statement's step, which runs without the GIL, and
a writer that meets it waits in SQLite's busy handler (`busy_timeout`) without the GIL too. Under
the flock such a statement held the lock while it waited, twice, for the GIL (after `flock`
returned and after the step) behind the process's other request threads: with 2 web processes of
8 threads, a submit waited 24 ms (median) for the lock and the web tier sat 15% idle. Only a
statement still locked out when its busy timeout runs out (a transaction held that long) falls
back to queuing on the flock and runs again.

Used when DATABASE_URL is unset (`project/settings.py`); PostgreSQL needs none of this.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from typing import Any

from django.db.backends.sqlite3 import base


class WriteLock:
    """An exclusive flock on `<database>-writelock`, one open file per connection (so threads exclude each other)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.held = False

    def acquire(self) -> None:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.held = True

    def release(self) -> None:
        if self.held and self.fd is not None:
            self.held = False
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self.release()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class QueueWhenLockedCursorWrapper(base.SQLiteCursorWrapper):
    """A single write statement that still finds the database locked when its busy timeout runs out (a write
    transaction held longer than that) queues on the flock behind it and runs again, instead of failing."""

    write_lock: WriteLock | None = None

    def execute(self, query: str, params: Any = None) -> Any:
        try:
            return super().execute(query, params)
        except sqlite3.OperationalError as exc:
            lock = self.write_lock
            if lock is None or lock.held or self.connection.in_transaction or "locked" not in str(exc):
                raise
        # SQLite answered busy, so the statement did nothing: running it again is safe.
        lock.acquire()
        try:
            return super().execute(query, params)
        finally:
            lock.release()


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write_lock: WriteLock | None = None

    def get_new_connection(self, conn_params: Any) -> Any:
        connection = super().get_new_connection(conn_params)
        if not self.is_in_memory_db():
            self._write_lock = WriteLock(f"{self.settings_dict['NAME']}-writelock")
        return connection

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = self.connection.cursor(factory=QueueWhenLockedCursorWrapper)
        cursor.write_lock = self._write_lock
        return cursor

    def _start_transaction_under_autocommit(self) -> None:
        lock = self._write_lock
        if lock is None or lock.held:
            return super()._start_transaction_under_autocommit()
        lock.acquire()
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            lock.release()
            raise

    def _commit(self) -> None:
        try:
            super()._commit()
        finally:
            self._release_write_lock()

    def _rollback(self) -> None:
        try:
            super()._rollback()
        finally:
            self._release_write_lock()

    def _close(self) -> None:
        try:
            super()._close()
        finally:
            if self._write_lock is not None:
                self._write_lock.close()
                self._write_lock = None

    def _release_write_lock(self) -> None:
        if self._write_lock is not None:
            self._write_lock.release()
