"""Kombu's Redis transport, with one redis-py client per connection pool instead of one per operation.

Kombu's Redis channel builds a new `redis.Redis` object for nearly every broker operation
(reserving a message, acking it, publishing each task event), and building one copies
redis-py's table of response callbacks: measured with py-spy, a tenth of the Celery worker's
main process went to that alone. A client over a given pool is stateless and thread-safe, so
each pool keeps one. `celeryconfig.py` selects this transport when the broker is Redis.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _pooled_clients: dict[bool, tuple[Any, Any]]

    def _create_client(self, asynchronous: bool = False) -> Any:
        pool = self.async_pool if asynchronous else self.pool
        clients = self.__dict__.setdefault("_pooled_clients", {})
        held = clients.get(asynchronous)
        if held is not None and held[0] is pool:
            return held[1]
        client = self.Client(connection_pool=pool)
        clients[asynchronous] = (pool, client)  # a new pool (after a reconnect) gets a new client
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
