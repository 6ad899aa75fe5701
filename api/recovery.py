"""Sweeper: give a new message to every queued job whose broker message was lost.

The Job row is the record; a Redis message is only the wake-up call for it, and Redis can lose
it: a restarted Redis that keeps nothing on disk, a web process killed between the commit and the
publish, a publish that failed while the sweeper requeued an orphan, a worker killed with a
message it had reserved but not started (Redis would hand that back only after the visibility
timeout). Two checks, cheapest first:

1. A marker key in the broker's Redis. When it is missing, Redis lost its data (a restart without
   persistence, a flush, a failover to an empty replica) or this is the first sweep: every queued
   job is published again, and the marker set (SET NX, so one sweeper does it).
2. Per model with queued jobs older than INFERQ_LOST_MESSAGE_SECONDS, and only when the model's
   queue holds fewer messages than the model has queued jobs: read the queue and kombu's
   `unacked` hash in one MULTI, and republish the stale jobs found in neither. A message reserved
   longer ago than the threshold by a worker that never claimed its job counts as lost.

A duplicate message is harmless (its delivery finds the job running or ended and is skipped);
republishing is a compare-and-set on `enqueued_at`, so two sweepers never both republish a job.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from api.exceptions import ServiceUnavailable
from api.models import Job, JobStatus
from api.services import job_enqueue
from workers.store import StoreError, get_store, queue_name

logger = logging.getLogger("inferq.jobs")

MARKER_KEY = "inferq:broker:marker"
# kombu's Redis transport: a queue is a list per priority step; reserved messages wait in a hash.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
CHUNK = 500


@contextmanager
def broker_redis() -> Iterator[Any | None]:
    """The broker's own Redis client (key prefix and timeouts included), or None for another broker."""
    from project.celery import app

    with app.connection_for_write() as conn:
        if conn.transport.driver_type != "redis":
            yield None
            return
        yield conn.default_channel.client


def job_republish_lost(*, client: Any | None = None) -> dict[str, int]:
    """Publish a new message for each queued job that has none; returns what was done."""
    if client is None:
        try:
            with broker_redis() as broker:
                return job_republish_lost(client=broker) if broker is not None else _counts()
        except (KombuOperationalError, RedisError, OSError) as exc:
            logger.warning("lost-message sweep skipped, broker unreachable: %s", exc)
            return _counts()
    counts = _counts()
    try:
        if client.set(MARKER_KEY, timezone.now().isoformat(), nx=True):
            counts["broker_reset"] = 1
            try:
                counts["republished"] += _republish_all(client)
            except (ServiceUnavailable, RedisError):
                client.delete(MARKER_KEY)  # the next sweep starts over
                raise
        else:
            counts["republished"] += _republish_stale(client)
    except (ServiceUnavailable, RedisError) as exc:
        logger.warning("lost-message sweep stopped, broker unreachable: %s", exc)
    return counts


def _counts() -> dict[str, int]:
    return {"republished": 0, "broker_reset": 0}


def _republish_all(client: Any) -> int:
    """The broker lost everything: every job queued before now needs a message."""
    started = timezone.now()
    done = 0
    last: tuple[datetime, UUID] | None = None
    while True:
        page = Job.objects.filter(status=JobStatus.QUEUED, created_at__lt=started).order_by("created_at", "id")
        if last is not None:
            page = page.filter(Q(created_at__gt=last[0]) | Q(created_at=last[0], id__gt=last[1]))
        rows = list(page.values_list("id", "created_at", "enqueued_at")[:CHUNK])
        if not rows:
            break
        done += sum(_republish(job_id, enqueued_at) for job_id, _, enqueued_at in rows)
        last = (rows[-1][1], rows[-1][0])
    if done:
        logger.warning("broker lost its messages; republished %d queued jobs", done)
    return done


def _republish_stale(client: Any) -> int:
    cutoff = timezone.now() - timedelta(seconds=settings.INFERQ_LOST_MESSAGE_SECONDS)
    stale = Job.objects.filter(status=JobStatus.QUEUED).filter(
        Q(enqueued_at__lt=cutoff) | Q(enqueued_at__isnull=True, created_at__lt=cutoff))
    done = 0
    for model in sorted(set(stale.values_list("model_name", flat=True))):
        lists = [queue_name(model) + suffix for suffix in PRIORITY_SUFFIXES]
        pipe = client.pipeline(transaction=False)
        for name in lists:
            pipe.llen(name)
        waiting = sum(pipe.execute())
        # Cheap test first: a queue at least as long as the model's queued jobs loses nothing we could
        # find now (a lost message still shows up once the queue drains below that).
        if waiting >= Job.objects.filter(status=JobStatus.QUEUED, model_name=model).count():
            continue
        live = live_message_ids(client, lists, reserved_since=time.time() - settings.INFERQ_LOST_MESSAGE_SECONDS)
        candidates = stale.filter(model_name=model).order_by("created_at").values_list("id", "enqueued_at")
        for job_id, enqueued_at in candidates[:CHUNK * 2]:
            if str(job_id) not in live:
                done += _republish(job_id, enqueued_at)
    if done:
        logger.warning("republished %d queued jobs whose message was lost", done)
    return done


def live_message_ids(client: Any, lists: list[str], *, reserved_since: float) -> set[str]:
    """Task ids of the messages waiting in `lists`, or reserved by a worker since `reserved_since`."""
    pipe = client.pipeline(transaction=True)  # one snapshot: a message moving list → unacked is seen once
    for name in lists:
        pipe.lrange(name, 0, -1)
    pipe.hgetall(UNACKED_KEY)
    pipe.zrangebyscore(UNACKED_INDEX_KEY, reserved_since, "+inf")
    *waiting, unacked, recent = pipe.execute()
    ids = {_task_id(raw) for items in waiting for raw in items}
    fresh = {tag.decode() if isinstance(tag, bytes) else tag for tag in recent}
    for tag, value in unacked.items():
        if (tag.decode() if isinstance(tag, bytes) else tag) in fresh:
            try:
                ids.add(_task_id(json.loads(value)[0]))
            except (ValueError, TypeError, IndexError, KeyError):
                continue
    ids.discard("")
    return ids


def _task_id(raw: Any) -> str:
    try:
        message = json.loads(raw) if isinstance(raw, bytes | str) else raw
        return str(message["headers"]["id"])
    except (ValueError, TypeError, KeyError):
        return ""


def _republish(job_id: UUID, seen_enqueued_at: datetime | None) -> int:
    """Compare-and-set `enqueued_at`, then publish: of two sweepers only one wins a job."""
    claim = Job.objects.filter(id=job_id, status=JobStatus.QUEUED)
    claim = claim.filter(enqueued_at=seen_enqueued_at) if seen_enqueued_at else claim.filter(enqueued_at__isnull=True)
    if not claim.update(enqueued_at=timezone.now()):
        return 0
    job = Job.objects.filter(id=job_id).first()
    if job is None:
        return 0
    try:
        spec = get_store().get(job.model_name, job.model_version)
    except StoreError:
        spec = None
    job_enqueue(job=job, spec=spec)
    logger.info("job republished", extra={"job_id": str(job.id), "model": job.model_name, "status": "queued"})
    return 1
