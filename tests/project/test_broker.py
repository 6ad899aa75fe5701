"""The Redis transport keeps one redis-py client per connection pool instead of building one per operation."""

from __future__ import annotations

import runpy
from typing import Any

import celeryconfig
from project.broker import Channel, Transport


class Client:
    def __init__(self, connection_pool: Any) -> None:
        self.connection_pool = connection_pool


def bare_channel() -> Channel:
    """A channel without a server: only what _create_client reads (its pools and its client class)."""
    channel = Channel.__new__(Channel)
    channel._pool, channel._async_pool, channel.Client = object(), object(), Client  # type: ignore[assignment]
    return channel


def test_one_client_per_pool() -> None:
    channel = bare_channel()
    first = channel._create_client()
    assert channel._create_client() is first and first.connection_pool is channel._pool
    waiting = channel._create_client(asynchronous=True)
    assert waiting is not first and waiting.connection_pool is channel._async_pool
    assert channel._create_client(asynchronous=True) is waiting


def test_a_new_pool_gets_a_new_client() -> None:
    channel = bare_channel()
    first = channel._create_client()
    channel._pool = object()  # kombu drops its pools after a connection error
    second = channel._create_client()
    assert second is not first and second.connection_pool is channel._pool


def test_celery_uses_it_on_a_redis_broker_only(monkeypatch: Any) -> None:
    def config_for(url: str) -> dict[str, Any]:
        monkeypatch.setenv("CELERY_BROKER_URL", url)
        return runpy.run_path(celeryconfig.__file__)

    assert Transport.Channel is Channel
    assert config_for("redis://127.0.0.1:6379/0")["broker_transport"] == "project.broker:Transport"
    assert config_for("rediss://cache.example:6380/0")["broker_transport"] == "project.broker:Transport"
    assert "broker_transport" not in config_for("memory://")
