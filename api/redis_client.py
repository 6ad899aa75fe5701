"""The shared Redis client for InferQ's own keys (heartbeats, job events); tests swap in fakeredis."""

from __future__ import annotations

import functools

import redis
from django.conf import settings


@functools.cache
def get_redis() -> redis.Redis:
    # Short timeouts: a dead Redis must turn into a quick 503, not a hung request.
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=2,
                                health_check_interval=30)
