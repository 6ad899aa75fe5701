"""Django's Redis cache backend, minus a redis.Redis object built on every cache call.

Django's RedisCacheClient.get_client() constructs a new client (and its response-callback
table) per operation; on the request path (throttles, cache reads) that cost more than the
round trip. One client per connection pool is enough: redis-py clients are thread-safe.
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient


class PooledRedisCacheClient(RedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            client = self._clients[index] = self._client(connection_pool=self._get_connection_pool(write))
        return client


class PooledRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = PooledRedisCacheClient

    def window_hit(self, previous_key: str, current_key: str, timeout: int, amount: int = 1) -> tuple[int, int]:
        """Read the previous window's counter and add `amount` to the current one (expiring in `timeout`
        seconds), in one round trip: (previous count, current count including these hits)."""
        previous, current = self.make_and_validate_key(previous_key), self.make_and_validate_key(current_key)
        pipe = self._cache.get_client(current, write=True).pipeline(transaction=False)
        pipe.get(previous)
        pipe.incrby(current, amount)
        pipe.expire(current, timeout)
        before, after, _ = pipe.execute()
        return int(before or 0), int(after)
