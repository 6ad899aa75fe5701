"""Keeps the leases of the jobs this worker process is running fresh, from a background thread.

A lease that is not renewed (the process died, or froze) runs out after INFERQ_LEASE_SECONDS
and the job is claimed again; a live process renews every third of that.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from django.conf import settings
from django.db import close_old_connections

from api.services import job_leases_renew

logger = logging.getLogger("inferq.worker")

_lock = threading.Lock()
_in_hand: set[UUID] = set()
_started = {"thread": False}
_worker = {"name": ""}


def _renew_forever() -> None:
    interval = max(0.5, settings.INFERQ_LEASE_SECONDS / 3)
    while True:
        threading.Event().wait(interval)
        with _lock:
            ids = list(_in_hand)
        if not ids:
            continue
        try:
            job_leases_renew(job_ids=ids, worker=_worker["name"])
        except Exception as exc:  # noqa: BLE001 - a blip must not kill the renewer
            logger.warning("could not renew job leases: %s", exc)
            close_old_connections()


def start(worker: str) -> None:
    """Start the renewer once per process (call in the worker child, after fork)."""
    _worker["name"] = worker
    if not _started["thread"]:
        _started["thread"] = True
        threading.Thread(target=_renew_forever, name="inferq-lease", daemon=True).start()


@contextmanager
def holding(job_ids: list[UUID]) -> Iterator[None]:
    """Renew these jobs' leases while the block runs."""
    with _lock:
        _in_hand.update(job_ids)
    try:
        yield
    finally:
        with _lock:
            _in_hand.difference_update(job_ids)
