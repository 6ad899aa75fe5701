"""Publish a task message: on a Redis broker one LPUSH of the message Celery's `send_task` would send.

`send_task` costs more than the rest of a submit's broker work: it builds two throwaway
redis-py clients per call inside kombu, reprs its arguments twice, and routes through
producer pools. On Redis a Celery message is a JSON envelope pushed onto the queue's list, so
this builds the same headers with Celery's own `as_task_v2` (once per task, queue and time
limits, then fills in each job's id and arguments), wraps them as kombu's Redis transport does
(base64 body, delivery tag, delivery info), and pushes it over one long-lived connection per thread
that keeps the broker's socket timeouts (api/resp.py; redis-py for TLS). Any other broker (the unit
tests' `memory://`, AMQP) goes through `send_task` unchanged.

`task_dequeue` is the other way: a worker that ran queued jobs in another job's batch takes their
messages, which have nothing left to do, off the queue (on Redis; elsewhere they arrive and end in
the worker's consumer, workers/consumer.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import re
import threading
import uuid
from typing import Any, Protocol

import redis
from celery.utils.saferepr import saferepr

from api.resp import RespPusher

logger = logging.getLogger("inferq.jobs")

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}
# Per app (kept, so its id is not reused): its broker URL, read once. Celery's `conf.broker_url` looks in the
# environment and then through a chain of mappings, a fortieth of a submit's web CPU under load (py-spy); a
# process's broker does not change while it runs (Celery makes its own connection pool once, too).
_broker_urls: dict[int, tuple[Any, str]] = {}


def _broker_url(app: Any) -> str:
    found = _broker_urls.get(id(app))
    if found is None or found[0] is not app:
        found = _broker_urls[id(app)] = (app, app.conf.broker_url or "")
    return found[1]


def broker_client(app: Any) -> redis.Redis | None:
    """A Redis client for the app's broker (one per process), or None when the broker is not Redis."""
    url = _broker_url(app)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    client = _clients.get(url)
    if client is None:
        options = app.conf.broker_transport_options or {}
        with _lock:
            client = _clients.get(url) or redis.Redis.from_url(
                url, socket_timeout=options.get("socket_timeout"),
                socket_connect_timeout=options.get("socket_connect_timeout"),
                retry_on_timeout=False, health_check_interval=30, lib_name=None, lib_version=None)
            _clients[url] = client
    return client


class _Pushes(Protocol):
    def lpush(self, name: str, *values: bytes) -> Any: ...


# Per broker URL, as `_clients`: what task_publish pushes through (one per process).
_pushers: dict[str, _Pushes] = {}


def broker_pusher(app: Any) -> _Pushes | None:
    """What pushes task messages onto the app's Redis broker: api/resp.py's lean connection for `redis://` and
    `unix://`, redis-py for `rediss://`; None when the broker is not Redis (then send_task publishes)."""
    url = _broker_url(app)
    pusher = _pushers.get(url)
    if pusher is None:
        client = broker_client(app)
        if client is None:
            return None
        options = app.conf.broker_transport_options or {}
        pusher = _pushers[url] = RespPusher.from_url(url, timeout=options.get("socket_timeout"),
                                                     connect_timeout=options.get("socket_connect_timeout")) or client
    return pusher


# Per process, task name, queue and time limits: the message's JSON text as Celery and kombu would write it,
# rendered once with placeholders and split around them. Between two jobs' messages only the task id, the
# kwargs (their repr and the body) and the delivery tag differ, so a publish fills four strings in instead of
# building and serialising the nested headers again (71 -> 33 µs per message).
_SLOT = "inferq-slot-"
_SLOTS = re.compile(f'"{_SLOT}(id|kwargsrepr|body|tag)"')
_templates: dict[tuple[Any, ...], tuple[list[str], str]] = {}


def _template(app: Any, name: str, queue: str, time_limit: float | None,
              soft_time_limit: float | None) -> tuple[list[str], str]:
    """(the message's JSON split around its slots: text, slot name, text, …, text; the body's `embed` as JSON)."""
    # Keyed by process too: the headers name their sender (`origin` is host and pid).
    key = (id(app), os.getpid(), name, queue, time_limit, soft_time_limit)
    found = _templates.get(key)
    if found is None:
        headers, properties, body, _ = app.amqp.as_task_v2(
            f"{_SLOT}id", name, kwargs={}, time_limit=time_limit, soft_time_limit=soft_time_limit,
            ignore_result=True, argsrepr="()", kwargsrepr=f"{_SLOT}kwargsrepr")
        message = {
            "body": f"{_SLOT}body",
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                **properties,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": f"{_SLOT}tag",
            },
        }
        found = _templates[key] = (_SLOTS.split(json.dumps(message)), json.dumps(body[2]))
    return found


_tag_source: list[Any] = [None, None]  # [pid, random.Random seeded from the kernel in that process]


def _delivery_tag() -> str:
    """A version-4 UUID, as kombu's `uuid()` makes a message's delivery tag, from a generator seeded once per
    process from the kernel's random source: the tag only has to be unique (kombu keys its unacknowledged
    messages by it), and `uuid.uuid4()` calls `getrandom`, a system call that gives up the GIL, once more per
    submit. Keyed by pid, so a forked process never repeats its parent's tags."""
    pid, source = _tag_source
    if pid != (here := os.getpid()):  # also the first call: no pid yet
        source = random.Random(os.urandom(32))  # noqa: S311 - unique, not secret
        _tag_source[:] = [here, source]
    return str(uuid.UUID(int=source.getrandbits(128), version=4))


def envelope(app: Any, *, name: str, task_id: str, kwargs: dict[str, Any], queue: str,
             time_limit: float | None, soft_time_limit: float | None) -> bytes:
    """The bytes kombu's Redis transport pushes for `send_task(name, kwargs=..., queue=queue, task_id=...)`."""
    # The repr Flower shows: for a short dict of strings `repr` writes what Celery's saferepr would (at a tenth
    # of its cost); a long one is cut as Celery cuts it.
    kwargsrepr = repr(kwargs)
    if len(kwargsrepr) > app.amqp.kwargsrepr_maxsize:
        kwargsrepr = saferepr(kwargs, app.amqp.kwargsrepr_maxsize)
    pieces, embed = _template(app, name, queue, time_limit, soft_time_limit)
    # The body: [args, kwargs, embed] as JSON, base64-encoded as kombu's Redis transport sends it.
    payload = f"[[], {json.dumps(kwargs)}, {embed}]".encode()
    values = {"id": json.dumps(task_id), "kwargsrepr": json.dumps(kwargsrepr),
              "body": f'"{base64.b64encode(payload).decode()}"', "tag": f'"{_delivery_tag()}"'}
    return "".join(values[piece] if i % 2 else piece for i, piece in enumerate(pieces)).encode()


def task_publish(app: Any, *, name: str, task_id: str, kwargs: dict[str, Any], queue: str,
                 time_limit: float | None = None, soft_time_limit: float | None = None) -> None:
    """Put one task message on `queue`; raises the broker's error (redis or kombu) when it cannot."""
    task_publish_many(app, name=name, tasks=[(task_id, kwargs)], queue=queue, time_limit=time_limit,
                      soft_time_limit=soft_time_limit)


def task_publish_many(app: Any, *, name: str, tasks: list[tuple[str, dict[str, Any]]], queue: str,
                      time_limit: float | None = None, soft_time_limit: float | None = None) -> None:
    """Put one message per (task id, kwargs) on `queue`, in that order; raises the broker's error (redis or
    kombu) when it cannot. On Redis they go in one LPUSH, which stores all of them or none."""
    if not tasks:
        return
    pusher = broker_pusher(app)
    if pusher is None:
        options = {"soft_time_limit": soft_time_limit, "time_limit": time_limit} if time_limit else {}
        for task_id, kwargs in tasks:
            app.send_task(name, kwargs=kwargs, queue=queue, task_id=task_id, retry=True, **options)
        return
    messages = [envelope(app, name=name, task_id=task_id, kwargs=kwargs, queue=queue, time_limit=time_limit,
                         soft_time_limit=soft_time_limit) for task_id, kwargs in tasks]
    retries = int((app.conf.task_publish_retry_policy or {}).get("max_retries", 0))
    for attempt in range(retries + 1):
        try:
            pusher.lpush(queue, *messages)
            return
        except (redis.ConnectionError, redis.TimeoutError):
            # A connection Redis dropped is retried on a fresh one; a Redis that is down fails fast.
            if attempt == retries:
                raise


# Takes the messages naming these task ids (ARGV[2:]) off the far end of the list, where the oldest wait and
# kombu's Redis transport pops from, looking at most ARGV[1] messages deep; returns the ids whose message it
# took. A task id is a UUID and appears only in its own message. One script: atomic against the workers'
# BRPOP, so a message is either taken here or delivered, never both.
_DEQUEUE = """
local taken = {}
local items = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
for _, item in ipairs(items) do
  for i = 2, #ARGV do
    if string.find(item, ARGV[i], 1, true) then
      if redis.call('LREM', KEYS[1], -1, item) > 0 then table.insert(taken, ARGV[i]) end
      break
    end
  end
end
return taken
"""
# Sent by its SHA1 (EVALSHA): the text goes over only when Redis does not have it yet (a restarted Redis, a first
# call), and EVAL then loads it.
_DEQUEUE_SHA = hashlib.sha1(_DEQUEUE.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA1
# How deep the script looks: a batch's mates are the oldest queued jobs, so their messages sit at the end
# the worker pops from, behind at most the messages other workers are about to take.
DEQUEUE_DEPTH_PER_TASK = 4
DEQUEUE_MIN_DEPTH = 64


def task_dequeue(app: Any, *, queue: str, task_ids: list[str]) -> list[str]:
    """Take the messages of these tasks off `queue` where they still wait; the ids whose message was taken.

    Only for tasks with nothing left to do (the jobs a batch ended). None are taken on a broker other than
    Redis, nor when Redis fails (logged): their messages then reach a worker as usual, which finds them done.
    """
    client = broker_client(app)
    if client is None or not task_ids:
        return []
    depth = max(DEQUEUE_MIN_DEPTH, DEQUEUE_DEPTH_PER_TASK * len(task_ids))
    try:
        try:
            taken: list[bytes] = client.evalsha(_DEQUEUE_SHA, 1, queue, str(depth), *task_ids)  # type: ignore[assignment]
        except redis.exceptions.NoScriptError:
            taken = client.eval(_DEQUEUE, 1, queue, str(depth), *task_ids)  # type: ignore[assignment]
    except redis.RedisError as exc:
        logger.warning("could not take finished jobs' messages off %s: %s", queue, exc)
        return []
    return [t.decode() for t in taken]
