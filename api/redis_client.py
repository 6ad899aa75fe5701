"""The shared Redis client for InferQ's own keys (heartbeats, job events); tests swap in fakeredis."""

from __future__ import annotations

import redis
from django.conf import settings

_client: redis.Redis | None = None


def get_redis() -> redis.Redis:
    """One client per process (redis-py pools connections and is thread-safe)."""
    global _client
    if _client is None:
        # Short timeouts: a dead Redis must turn into a quick 503, not a hung request.
        # No CLIENT SETINFO greeting: two round trips on every new connection, for a name in CLIENT LIST.
        _client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=2,
                                       health_check_interval=30, lib_name=None, lib_version=None)
    return _client


def set_redis(client: redis.Redis | None) -> None:
    """Replace the process's client (tests use fakeredis); None resets to REDIS_URL."""
    global _client
    _client = client
