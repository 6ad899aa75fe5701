"""Publish a task message: on a Redis broker one LPUSH of the message Celery's `send_task` would send.

`send_task` costs more than the rest of a submit's broker work: it builds two throwaway
redis-py clients per call inside kombu, reprs its arguments twice, and routes through
producer pools. On Redis a Celery message is a JSON envelope pushed onto the queue's list, so
this builds the same headers with Celery's own `as_task_v2`, wraps them as kombu's Redis
transport does (base64 body, delivery tag, delivery info), and pushes it with one
long-lived client that keeps the broker's socket timeouts. Any other broker (the unit tests'
`memory://`, AMQP) goes through `send_task` unchanged.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from typing import Any

import redis

_lock = threading.Lock()
_clients: dict[str, redis.Redis] = {}


def broker_client(app: Any) -> redis.Redis | None:
    """A Redis client for the app's broker (one per process), or None when the broker is not Redis."""
    url = app.conf.broker_url or ""
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


def envelope(app: Any, *, name: str, task_id: str, kwargs: dict[str, Any], queue: str,
             time_limit: float | None, soft_time_limit: float | None) -> bytes:
    """The bytes kombu's Redis transport pushes for `send_task(name, kwargs=..., queue=queue, task_id=...)`."""
    # The reprs Flower shows, given rather than left to Celery's saferepr (a tenth of a publish): for a short
    # dict of strings `repr` writes the same text.
    kwargsrepr = repr(kwargs)
    headers, properties, body, _ = app.amqp.as_task_v2(
        task_id, name, kwargs=kwargs, time_limit=time_limit, soft_time_limit=soft_time_limit, ignore_result=True,
        argsrepr="()", kwargsrepr=kwargsrepr if len(kwargsrepr) <= app.amqp.kwargsrepr_maxsize else None)
    payload = json.dumps(body).encode()
    message = {
        "body": base64.b64encode(payload).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            **properties,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(message).encode()


def task_publish(app: Any, *, name: str, task_id: str, kwargs: dict[str, Any], queue: str,
                 time_limit: float | None = None, soft_time_limit: float | None = None) -> None:
    """Put one task message on `queue`; raises the broker's error (redis or kombu) when it cannot."""
    client = broker_client(app)
    if client is None:
        options = {"soft_time_limit": soft_time_limit, "time_limit": time_limit} if time_limit else {}
        app.send_task(name, kwargs=kwargs, queue=queue, task_id=task_id, retry=True, **options)
        return
    data = envelope(app, name=name, task_id=task_id, kwargs=kwargs, queue=queue, time_limit=time_limit,
                    soft_time_limit=soft_time_limit)
    retries = int((app.conf.task_publish_retry_policy or {}).get("max_retries", 0))
    for attempt in range(retries + 1):
        try:
            client.lpush(queue, data)
            return
        except (redis.ConnectionError, redis.TimeoutError):
            # A connection Redis dropped is retried on a fresh one; a Redis that is down fails fast.
            if attempt == retries:
                raise
