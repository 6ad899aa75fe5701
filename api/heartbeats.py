"""Which workers serve which model, from heartbeats each worker writes to Redis."""

from __future__ import annotations

import time

import redis
from django.conf import settings

from api.redis_client import get_redis


def heartbeat_key(model_name: str) -> str:
    return f"inferq:workers:{model_name}"


def heartbeat_record(*, hostname: str, models: list[str], client: redis.Redis | None = None) -> None:
    """Mark `hostname` alive for each model; entries older than the TTL are dropped."""
    client = client or get_redis()
    now = time.time()
    ttl = settings.INFERQ_HEARTBEAT_TTL
    pipe = client.pipeline()
    for model in models:
        key = heartbeat_key(model)
        pipe.zadd(key, {hostname: now})
        pipe.zremrangebyscore(key, "-inf", now - ttl)
        pipe.expire(key, ttl * 4)
    pipe.execute()


def heartbeat_clear(*, hostname: str, models: list[str], client: redis.Redis | None = None) -> None:
    client = client or get_redis()
    pipe = client.pipeline()
    for model in models:
        pipe.zrem(heartbeat_key(model), hostname)
    pipe.execute()


def workers_online(model_name: str, *, client: redis.Redis | None = None) -> list[str]:
    client = client or get_redis()
    cutoff = time.time() - settings.INFERQ_HEARTBEAT_TTL
    members: list[bytes] = client.zrangebyscore(heartbeat_key(model_name), cutoff, "+inf")  # type: ignore[assignment]
    return sorted(m.decode() for m in members)
