"""Job-ended events over Redis pub/sub: published on every final transition, awaited without polling.

A waiting request subscribes to `inferq:job:<id>` *before* it re-reads the row, so an event
published between its first read and its subscription cannot be lost; it then blocks on the
pub/sub socket (no CPU, no database polling) until an event arrives or its time is up.
The event carries the row as its ending write committed it (it is published only after that
commit), so the woken request answers from it without reading the row again; an event without
the row (too large, or from an older worker) makes it read the row, as it always did.
Waiting holds a web thread, so each web process lends at most INFERQ_WAIT_SLOTS threads to
waiters; beyond that a request answers at once with the job as it is, and submissions always
find a free thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.fields.files import FieldFile
from redis.exceptions import RedisError

from api.exceptions import InvalidInput
from api.metrics import metrics_record_finished
from api.models import Job
from api.redis_client import get_redis
from api.selectors import job_by_id

logger = logging.getLogger("inferq.jobs")

CHANNEL_PREFIX = "inferq:job:"
# Every ending of a job filed in a batch is also announced here (its status only), for `GET /v1/batches/{id}?wait=`.
BATCH_CHANNEL_PREFIX = "inferq:batch:"
# A batch wait counts the batch's unfinished jobs again after this long without an announcement (one lost to a
# Redis error would otherwise hold it to its end).
BATCH_RECOUNT_S = 5.0
MAX_WAIT_S = 60.0
# Above this, an event names only the new status and its waiters read the row instead.
EVENT_ROW_MAX_BYTES = 64 * 1024

_slots_lock = threading.Lock()
_slots: dict[str, Any] = {"semaphore": None, "size": 0}


def job_channel(job_id: Any) -> str:
    return f"{CHANNEL_PREFIX}{job_id}"


def batch_channel(batch_id: Any) -> str:
    return f"{BATCH_CHANNEL_PREFIX}{batch_id}"


def _json_value(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def job_event_body(job: Job) -> str:
    """The event: the job's row (every column but the input bytes) as JSON, or only its status when that is large."""
    row = {}
    deferred = job.get_deferred_fields()
    for field in Job._meta.concrete_fields:
        if field.attname in deferred or field.attname == "input_data":
            continue
        value = getattr(job, field.attname)
        row[field.attname] = value.name if isinstance(value, FieldFile) else value
    body = json.dumps({"status": str(job.status), "row": row}, default=_json_value, separators=(",", ":"))
    return body if len(body) <= EVENT_ROW_MAX_BYTES else str(job.status)


def job_from_event(job: Job, body: bytes | str) -> bool:
    """Bring `job` up to date from an event's row; False when the event carries none (read the row then)."""
    try:
        row = json.loads(body)["row"]
    except (ValueError, TypeError, KeyError):
        return False
    if not isinstance(row, dict) or row.get("id") != str(job.id):
        return False
    for field in Job._meta.concrete_fields:
        if field.attname in row:
            setattr(job, field.attname, field.to_python(row[field.attname]))
    return True


_together = threading.local()


def job_event_publish(job: Job) -> None:
    """Announce that `job` ended and count it for /metrics; a Redis error is logged, never raised.

    Inside `job_events_together()` the announcement waits for the block's end, to go out with the others.
    """
    held = getattr(_together, "jobs", None)
    if held is not None:
        held.append(job)
        return
    _publish([job])


@contextmanager
def job_events_together() -> Iterator[None]:
    """Jobs that end inside the block (their ending writes committed) are announced when it ends, in one round
    trip to Redis: a worker ending a batch of 8 made 8 (a PUBLISH is about one Redis round trip of work)."""
    outer = getattr(_together, "jobs", None)
    _together.jobs = held = [] if outer is None else outer
    try:
        yield
    finally:
        if outer is None:
            _together.jobs = None
            if held:
                _publish(held)


def _publish(jobs: list[Job]) -> None:
    messages = [(job_channel(job.id), job_event_body(job)) for job in jobs]
    messages += [(batch_channel(job.batch_id), str(job.status)) for job in jobs if job.batch_id is not None]
    try:
        if len(messages) == 1:
            get_redis().publish(*messages[0])
        else:
            pipe = get_redis().pipeline(transaction=False)
            for channel, body in messages:
                pipe.publish(channel, body)
            pipe.execute()
    except RedisError as exc:
        for job in jobs:
            logger.warning("could not publish the end of job %s: %s", job.id, exc,
                           extra={"job_id": str(job.id), "model": job.model_name, "status": str(job.status)})
    for job in jobs:
        metrics_record_finished(job)  # after the waiters are woken: /metrics can wait, they should not


def job_event_publish_on_commit(job: Job) -> None:
    """Publish once the row that says the job ended is committed (at once outside a transaction)."""
    transaction.on_commit(lambda: job_event_publish(job))


def _semaphore() -> threading.BoundedSemaphore:
    size = max(0, int(settings.INFERQ_WAIT_SLOTS))
    with _slots_lock:
        if _slots["semaphore"] is None or _slots["size"] != size:
            _slots["semaphore"] = threading.BoundedSemaphore(max(1, size))
            _slots["size"] = size
        return _slots["semaphore"]


@contextmanager
def wait_slot() -> Iterator[bool]:
    """Yield True holding one of this process's wait slots, or False when all are taken."""
    if int(settings.INFERQ_WAIT_SLOTS) <= 0:
        yield False
        return
    semaphore = _semaphore()
    acquired = semaphore.acquire(blocking=False)
    try:
        yield acquired
    finally:
        if acquired:
            semaphore.release()


def clamp_wait(seconds: float) -> float:
    return max(0.0, min(float(seconds), MAX_WAIT_S))


def _refresh(jobs: list[Job]) -> list[Job]:
    if len(jobs) == 1:
        return [job_by_id(id=jobs[0].id) or jobs[0]]
    fresh = {job.id: job for job in Job.objects.filter(id__in=[j.id for j in jobs])}
    return [fresh.get(job.id, job) for job in jobs]


def _await_subscriptions(pubsub: Any, count: int, deadline: float) -> None:
    """Block until Redis confirms every SUBSCRIBE: only then can no PUBLISH slip past us."""
    confirmed = 0
    while confirmed < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        message = pubsub.get_message(timeout=remaining)
        if message is not None and message.get("type") == "subscribe":
            confirmed += 1


def jobs_wait_held(*, jobs: list[Job], timeout: float) -> list[Job]:
    """Block (caller holds a wait slot) until every job has ended or `timeout` seconds pass.

    Returns the jobs as last read: after a timeout, the states seen at the last event.
    """
    timeout = clamp_wait(timeout)
    if timeout <= 0 or all(job.is_final for job in jobs):
        return jobs
    deadline = time.monotonic() + timeout
    pending = [job for job in jobs if not job.is_final]
    by_id = {str(job.id): job for job in jobs}
    pubsub = _pubsub_for_thread()
    try:
        pubsub.subscribe(*[job_channel(job.id) for job in pending])
        _await_subscriptions(pubsub, len(pending), deadline)
        for job in _refresh(pending):
            by_id[str(job.id)] = job
        while not all(job.is_final for job in by_id.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
            if message is None or message.get("type") != "message":
                continue
            job_id = _channel_name(message).removeprefix(CHANNEL_PREFIX)
            if job_id in by_id and not job_from_event(by_id[job_id], message["data"]):
                by_id[job_id] = _refresh([by_id[job_id]])[0]
    except RedisError as exc:
        # No events without Redis: answer with the rows as they are now.
        logger.warning("waiting on jobs without Redis: %s", exc)
        _pubsub_discard()
        for job in _refresh(list(by_id.values())):
            by_id[str(job.id)] = job
    else:
        _pubsub_release(pubsub)
    return [by_id[str(job.id)] for job in jobs]


_local = threading.local()


def _pubsub_for_thread() -> Any:
    """This web thread's subscriber connection, kept between waits.

    Closing a PubSub closes its socket, so each wait used to open a fresh connection to Redis (a
    TCP handshake and redis-py's greeting); a thread waits on one job at a time, so it keeps one.
    """
    client = get_redis()
    pubsub = getattr(_local, "pubsub", None)
    if pubsub is None or getattr(_local, "client", None) is not client:
        _pubsub_discard()
        pubsub = _local.pubsub = client.pubsub()
        _local.client = client
    return pubsub


def _pubsub_release(pubsub: Any) -> None:
    """Unsubscribe for the next wait (its confirmations, read then, are ignored); a broken one is dropped."""
    try:
        pubsub.unsubscribe()
    except RedisError:
        _pubsub_discard()


def _pubsub_discard() -> None:
    pubsub = getattr(_local, "pubsub", None)
    _local.pubsub = None
    if pubsub is not None:
        try:
            pubsub.close()
        except RedisError:
            pass


def job_wait(*, job: Job, timeout: float) -> tuple[Job, bool]:
    """Wait for one job to end, at most `timeout` (≤ 60) seconds, if a wait slot is free.

    Returns the job and whether the wait was honoured (False when no wait slot was free).
    """
    if job.is_final:
        return job, True
    if clamp_wait(timeout) <= 0:
        return job, False
    with wait_slot() as held:
        if not held:
            return job, False
        return jobs_wait_held(jobs=[job], timeout=timeout)[0], True


def batch_wait(*, batch_id: Any, unfinished: Callable[[], int], timeout: float) -> bool:
    """Wait until none of a batch's jobs is queued or running (`unfinished()` counts them), at most `timeout`
    (≤ 60) seconds, if a wait slot is free; whether the wait was honoured (False when no slot was free).

    One subscription whatever the batch's size: each ending of one of its jobs is announced on the batch's
    channel, and the wait counts them down from the count taken once subscribed, counting again when it
    reaches zero (an ending announced between the subscription and the count is counted twice, so zero is
    checked, never trusted) and after BATCH_RECOUNT_S without an announcement.
    """
    timeout = clamp_wait(timeout)
    if timeout <= 0 or unfinished() == 0:
        return True
    with wait_slot() as held:
        if not held:
            return False
        deadline = time.monotonic() + timeout
        channel = batch_channel(batch_id)
        pubsub = _pubsub_for_thread()
        try:
            pubsub.subscribe(channel)
            _await_subscriptions(pubsub, 1, deadline)
            left = unfinished()
            while left > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                message = pubsub.get_message(ignore_subscribe_messages=True,
                                             timeout=min(remaining, BATCH_RECOUNT_S))
                if message is None:
                    left = unfinished()
                elif message.get("type") == "message" and _channel_name(message) == channel:
                    left -= 1
                    if left <= 0:
                        left = unfinished()
        except RedisError as exc:
            logger.warning("waiting on a batch without Redis: %s", exc)
            _pubsub_discard()
        else:
            _pubsub_release(pubsub)
        return True


def _channel_name(message: dict[str, Any]) -> str:
    channel = message["channel"]
    return channel.decode() if isinstance(channel, bytes) else str(channel)


def parse_prefer_wait(header: str | None) -> float | None:
    """`Prefer: wait=N` (RFC 7240) as seconds capped at 60; None when absent or malformed (ignorable)."""
    if not header:
        return None
    for preference in header.split(","):
        name, _, value = preference.split(";")[0].strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return None
            return clamp_wait(seconds) if seconds == seconds else None  # NaN is not a number of seconds
    return None


def parse_query_wait(value: str | None) -> float | None:
    """`?wait=N` as seconds capped at 60; a malformed value is the caller's mistake (400)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if seconds != seconds or seconds < 0:
        raise InvalidInput("wait must be a number of seconds between 0 and 60.", code="invalid_request")
    return clamp_wait(seconds)
