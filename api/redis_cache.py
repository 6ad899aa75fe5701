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

    def incr_with_ttl(self, key: str, timeout: int) -> int:
        """Create-or-increment a counter and (re)set its expiry, in one round trip."""
        full = self.make_and_validate_key(key)
        pipe = self._cache.get_client(full, write=True).pipeline(transaction=False)
        pipe.incr(full)
        pipe.expire(full, timeout)
        return int(pipe.execute()[0])
