"""The PostgreSQL backend's health check: skipped for a connection that served a request within the last second."""

from __future__ import annotations

import os
from typing import Any

import pytest

from project.postgresql import base

# A kept, health-checked connection's settings, as settings.py makes them from a postgres:// DATABASE_URL.
SETTINGS = {"ENGINE": "project.postgresql", "NAME": "x", "USER": "", "PASSWORD": "", "HOST": "", "PORT": "",
            "CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True, "AUTOCOMMIT": True, "OPTIONS": {}, "TIME_ZONE": None,
            "ATOMIC_REQUESTS": False, "TEST": {}}


def wrapper(monkeypatch: pytest.MonkeyPatch) -> tuple[base.DatabaseWrapper, list[str]]:
    """A wrapper as a kept, health-checked connection looks between requests (no database needed)."""
    db = base.DatabaseWrapper(dict(SETTINGS))
    checks: list[str] = []
    db.connection = object()
    db.health_check_enabled = True
    monkeypatch.setattr(db, "get_autocommit", lambda: True)
    monkeypatch.setattr(db, "is_usable", lambda: checks.append("SELECT 1") or True)
    return db, checks


def request(db: base.DatabaseWrapper, *, error: bool = False) -> None:
    """One request that uses the connection, as Django runs it: checked at its start, at its first query, at
    its end."""
    db.close_if_unusable_or_obsolete()  # request_started
    db.close_if_health_check_failed()  # the first cursor of the request
    if error:
        db.errors_occurred = True
    db.close_if_unusable_or_obsolete()  # request_finished


def test_a_connection_that_just_served_a_request_is_not_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    db, checks = wrapper(monkeypatch)

    request(db)  # first use: checked, as Django does
    assert checks == ["SELECT 1"]
    for _ in range(5):
        request(db)
    assert checks == ["SELECT 1"]  # trusted: it worked a moment ago


def test_one_left_idle_longer_is_checked_and_a_failed_check_closes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    db, checks = wrapper(monkeypatch)
    request(db)
    monkeypatch.setattr(base, "HEALTHY_FOR_S", 0.0)  # as if a second had passed

    request(db)
    assert checks == ["SELECT 1", "SELECT 1"]

    closed: list[bool] = []
    monkeypatch.setattr(db, "is_usable", lambda: False)
    monkeypatch.setattr(db, "close", lambda: closed.append(True))
    db.close_if_unusable_or_obsolete()
    db.close_if_health_check_failed()
    assert closed == [True]


def test_a_request_that_met_a_database_error_earns_no_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    db, checks = wrapper(monkeypatch)
    request(db)
    request(db, error=True)  # ends with Django's own check (errors_occurred), which passes here
    checks.clear()
    monkeypatch.setattr(db, "is_usable", lambda: checks.append("SELECT 1") or False)
    monkeypatch.setattr(db, "close", lambda: checks.append("closed"))

    request(db, error=True)

    # Trusted only from the check Django made as the failed request ended, then: this request's error is
    # checked at its end and the connection closed, never trusted.
    assert checks == ["SELECT 1", "closed"]


def test_closing_forgets_it() -> None:
    db = base.DatabaseWrapper(dict(SETTINGS))
    db._healthy_at = 1e18
    db.close()
    assert db._healthy_at == float("-inf")


@pytest.mark.skipif(not os.environ.get("DATABASE_URL", "").startswith("postgres"),
                    reason="needs DATABASE_URL pointing at a PostgreSQL server")
def test_on_a_real_server_only_the_first_request_of_a_busy_connection_is_checked(
        monkeypatch: pytest.MonkeyPatch, django_db_blocker: Any) -> None:
    import dj_database_url

    settings: dict[str, Any] = dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=60,
                                                     conn_health_checks=True)
    settings.update(ENGINE="project.postgresql", AUTOCOMMIT=True, TIME_ZONE=None, ATOMIC_REQUESTS=False, TEST={})
    settings.setdefault("OPTIONS", {})
    db = base.DatabaseWrapper(settings)
    checks: list[bool] = []
    usable = db.is_usable
    monkeypatch.setattr(db, "is_usable", lambda: checks.append(True) or usable())
    with django_db_blocker.unblock():
        try:
            for _ in range(3):
                db.close_if_unusable_or_obsolete()
                with db.cursor() as cursor:
                    cursor.execute("SELECT 1")
                db.close_if_unusable_or_obsolete()
            assert checks == []  # the first request opened the connection (nothing to check), then trusted it
            monkeypatch.setattr(base, "HEALTHY_FOR_S", 0.0)
            db.close_if_unusable_or_obsolete()
            with db.cursor() as cursor:
                cursor.execute("SELECT 1")
            assert checks == [True]
        finally:
            db.close()
