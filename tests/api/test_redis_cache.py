"""The pooled Redis cache backend: one client per pool, and the one-round-trip window counter."""

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


def test_window_hit_reads_the_previous_window_and_counts_in_the_current_one() -> None:
    cache, server = make_cache()
    cache.set("w:1", 7)

    assert [cache.window_hit("w:1", "w:2", 30) for _ in range(3)] == [(7, 1), (7, 2), (7, 3)]
    assert cache.window_hit("w:0", "w:9", 30) == (0, 1)  # no previous window yet

    full = cache.make_and_validate_key("w:2")
    assert 0 < server.ttl(full) <= 30
    # The counter reads back through the normal cache API (Django stores ints raw), and decr takes a hit back.
    assert cache.get_many(["w:2", "missing"]) == {"w:2": 3}
    assert cache.decr("w:2") == 2
