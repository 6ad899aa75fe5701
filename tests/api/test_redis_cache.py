"""The pooled Redis cache backend: one client per pool, and the one-round-trip counter."""

from __future__ import annotations

import fakeredis

from api.redis_cache import PooledRedisCache


def make_cache() -> tuple[PooledRedisCache, fakeredis.FakeRedis]:
    cache = PooledRedisCache("redis://127.0.0.1:1/0", {"KEY_PREFIX": "t"})
    server = fakeredis.FakeRedis()
    client = cache._cache
    client._clients[client._get_connection_pool_index(True)] = server
    client._clients[client._get_connection_pool_index(False)] = server
    return cache, server


def test_get_client_is_built_once_per_pool() -> None:
    cache = PooledRedisCache("redis://127.0.0.1:1/0", {})
    assert cache._cache.get_client(write=True) is cache._cache.get_client(write=True)


def test_incr_with_ttl_counts_from_nothing_and_sets_an_expiry() -> None:
    cache, server = make_cache()

    assert [cache.incr_with_ttl("hits", 30) for _ in range(3)] == [1, 2, 3]

    full = cache.make_and_validate_key("hits")
    assert 0 < server.ttl(full) <= 30
    # The counter reads back through the normal cache API (Django stores ints raw).
    assert cache.get_many(["hits", "missing"]) == {"hits": 3}
