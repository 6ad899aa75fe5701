"""Django's SQLite backend, with writers queued on a kernel lock instead of SQLite's sleep-and-retry.

SQLite lets one writer in at a time; a second one, told the database is locked, sleeps in
SQLite's busy handler (1, 2, 5, 10… ms) and tries again. A write transaction here holds the
lock for about a tenth of a millisecond, so under concurrent submits most of that sleep was
waste: measured with 16 web threads, a third of the web tier's time was idle while submits
queued for the lock. Here every write transaction (`BEGIN IMMEDIATE`, which `atomic()` issues)
and every write statement outside one first takes an exclusive `flock` on a file beside the
database, which the kernel hands to the next waiter the moment it is released. SQLite's own
busy timeout stays in place for writers that do not go through this backend.

Used when DATABASE_URL is unset (`project/settings.py`); PostgreSQL needs none of this.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from django.db.backends.sqlite3 import base

WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")  # statements that take SQLite's write lock


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


class LockingCursorWrapper(base.SQLiteCursorWrapper):
    write_lock: WriteLock | None = None

    def execute(self, query: str, params: Any = None) -> Any:
        return self._under_write_lock(query, super().execute, params)

    def executemany(self, query: str, param_list: Any) -> Any:
        return self._under_write_lock(query, super().executemany, param_list)

    def _under_write_lock(self, query: str, run: Any, params: Any) -> Any:
        """Run a write statement outside a transaction holding the lock; anything else as it is."""
        lock = self.write_lock
        if lock is None or lock.held or self.connection.in_transaction or not _is_write(query):
            return run(query, params)
        lock.acquire()
        try:
            return run(query, params)
        finally:
            lock.release()


def _is_write(query: str) -> bool:
    return query.lstrip()[:6].upper() in WRITES


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
        cursor = self.connection.cursor(factory=LockingCursorWrapper)
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
