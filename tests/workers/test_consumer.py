"""workers/consumer.py: Flower's task events leave on a timer, after the task reaches its pool process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery

import celeryconfig
from workers import consumer as consumer_module
from workers.consumer import EVENT_FLUSH_S, Consumer


class FakeHub:
    """What the consumer asks of kombu's hub: timers (`call_later`) and next-turn callbacks (`_ready`)."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Callable[[], None]]] = []
        self._ready: set[Any] = set()

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.timers.append((delay, callback))


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch) -> tuple[Consumer, FakeHub, list[tuple[str, list[str]]], list[float]]:
    """The consumer and a real Celery EventDispatcher wired as Celery's Events bootstep wires them."""
    clock = [1000.0]
    monkeypatch.setattr(consumer_module.time, "monotonic", lambda: clock[0])
    app = Celery(broker="memory://")
    consumer = Consumer.__new__(Consumer)
    hub = FakeHub()
    consumer.hub = hub
    dispatcher = app.events.Dispatcher(app.connection_for_write(), hostname="w@test", enabled=True,
                                       buffer_group=["task"], on_send_buffered=consumer.on_send_event_buffered)
    published: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(dispatcher, "_publish",
                        lambda event, producer, routing_key, **kw: published.append(
                            (routing_key, [e["type"] for e in event] if isinstance(event, list) else [event["type"]])))
    consumer.event_dispatcher = dispatcher
    return consumer, hub, published, clock


def test_task_events_wait_for_the_timer_not_the_next_loop_turn(wired: Any) -> None:
    consumer, hub, published, _ = wired
    consumer.event_dispatcher.send("task-received", uuid="t1")
    consumer.event_dispatcher.send("task-started", uuid="t1")
    assert published == []  # nothing on the way to the pool process
    assert hub._ready == set()  # stock Celery would flush at the top of the next loop turn
    assert [delay for delay, _ in hub.timers] == [EVENT_FLUSH_S]  # one timer for the window
    hub.timers[0][1]()
    assert published == [("task.multi", ["task-received", "task-started"])]  # one PUBLISH for both


def test_a_new_window_gets_a_new_timer(wired: Any) -> None:
    consumer, hub, published, clock = wired
    consumer.event_dispatcher.send("task-received", uuid="t1")
    clock[0] += EVENT_FLUSH_S / 2
    consumer.event_dispatcher.send("task-succeeded", uuid="t1")
    assert len(hub.timers) == 1
    clock[0] += EVENT_FLUSH_S
    consumer.event_dispatcher.send("task-received", uuid="t2")
    assert len(hub.timers) == 2  # a lost timer (a reset hub) cannot hold events back past one window


def test_shutdown_sends_what_is_buffered(wired: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    consumer, _, published, _ = wired
    monkeypatch.setattr("celery.worker.consumer.Consumer.shutdown", lambda self: None)
    consumer.event_dispatcher.send("task-succeeded", uuid="t1")
    consumer.shutdown()
    assert published == [("task.multi", ["task-succeeded"])]


def test_celery_uses_this_consumer() -> None:
    app = Celery()
    app.config_from_object(celeryconfig)
    assert app.conf.worker_consumer == "workers.consumer:Consumer"
    assert app.conf.worker_send_task_events is True
