"""workers/consumer.py: Flower's task events leave on a timer, after the task reaches its pool process."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery

import celeryconfig
from workers import consumer as consumer_module
from workers.consumer import EVENT_FLUSH_S, BatchMates, Consumer


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


class RecordingEventer:
    """Celery's event dispatcher as the consumer's requests hold it: `send(type, **fields)`."""

    def __init__(self) -> None:
        self.enabled = True
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, type: str, **fields: Any) -> None:  # noqa: A002 - Celery's name
        self.sent.append((type, fields))


class FakeRequest:
    """The parts of a Celery worker Request the batch-mate handler uses."""

    def __init__(self, job_id: str, name: str = "inference.run") -> None:
        self.id = job_id
        self.name = name
        self.kwargs = {"job_id": job_id, "model": "resnet50"}
        self.task = SimpleNamespace(send_events=True)
        self.eventer = RecordingEventer()
        self.acked = False
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.successes: list[tuple[Any, Any, Any]] = []

    def acknowledge(self) -> None:
        self.acked = True

    def send_event(self, type: str, **fields: Any) -> None:  # noqa: A002 - Celery's name
        self.events.append((type, fields))

    def on_success(self, failed__retval__runtime: tuple[Any, Any, Any], **kwargs: Any) -> None:
        self.successes.append(failed__retval__runtime)


def result_repr(value: Any) -> str:
    """What Celery's pool hands the consumer for a task's return value: its repr, within the task's limit."""
    from celery.utils.saferepr import saferepr

    from tasks.inference import run

    return saferepr(value, run.resultrepr_maxsize)


@pytest.fixture
def mates_handler() -> tuple[BatchMates, Any, list[FakeRequest]]:
    mates = BatchMates(kept=4)
    to_pool: list[FakeRequest] = []
    return mates, mates.handler(to_pool.append), to_pool


def test_a_batch_mates_message_ends_in_the_consumer_once_its_leader_has_ended(mates_handler: Any) -> None:
    from celery.worker import state

    mates, handle, to_pool = mates_handler
    leader, mate, other = FakeRequest("job-1"), FakeRequest("job-2"), FakeRequest("job-3")
    handle(leader)
    assert to_pool == [leader]
    leader.on_success((False, result_repr({"batch_mates": ["job-2"]}), 0.5))  # the pool's result comes back
    assert leader.successes == [(False, "{'batch_mates': ['job-2']}", 0.5)]  # Celery's own handling goes on

    state.task_reserved(mate)
    handle(mate)
    assert to_pool == [leader]  # not sent to the pool
    assert mate.acked and mate not in state.reserved_requests
    assert mate.events == [("task-succeeded", {"result": "'ran in the batch of job job-1'", "runtime": 0.0})]

    handle(other)  # not a batch mate: runs
    again = FakeRequest("job-2")
    handle(again)  # a second message for the same job (a redelivery) runs: the pool finds the job ended
    assert to_pool == [leader, other, again] and not other.acked and not again.acked


def test_mates_taken_off_the_queue_are_not_awaited_and_flower_hears_of_them(mates_handler: Any) -> None:
    mates, handle, to_pool = mates_handler
    leader = FakeRequest("job-1")
    handle(leader)
    leader.on_success((False, result_repr({"batch_mates": ["job-2", "job-3"], "dequeued": ["job-2"]}), 0.5))

    assert mates.leader_of("job-2") is None  # its message will not come: nothing to remember
    assert mates.leader_of("job-3") == "job-1"  # still on the queue (or with another worker): ends when it comes
    assert leader.eventer.sent == [
        ("task-received", {"uuid": "job-2", "name": "inference.run", "args": "()",
                           "kwargs": "{'job_id': 'job-2', 'model': 'resnet50'}", "root_id": "job-2",
                           "parent_id": None, "retries": 0, "eta": None, "expires": None}),
        ("task-succeeded", {"uuid": "job-2", "result": "'ran in the batch of job job-1'", "runtime": 0.0}),
    ]
    assert leader.successes == [(False, "{'batch_mates': ['job-2', 'job-3'], 'dequeued': ['job-2']}", 0.5)]

    quiet = FakeRequest("job-4")
    quiet.task = SimpleNamespace(send_events=False)  # a task that sends no events sends none for its mates
    handle(quiet)
    quiet.on_success((False, result_repr({"batch_mates": ["job-5"], "dequeued": ["job-5"]}), 0.5))
    assert quiet.eventer.sent == [] and mates.leader_of("job-5") is None


def test_only_a_successful_inference_run_names_batch_mates(mates_handler: Any) -> None:
    mates, handle, to_pool = mates_handler
    failed, lone, housekeeping = FakeRequest("job-1"), FakeRequest("job-2"), FakeRequest("job-3", name="sweep")
    for request in (failed, lone, housekeeping):
        handle(request)
    failed.on_success((True, "ExceptionInfo", 0.1))
    lone.on_success((False, result_repr(None), 0.1))
    assert housekeeping.on_success.__func__ is FakeRequest.on_success  # other tasks are left alone
    assert mates.leader_of("job-9") is None
    mates.remember("job-1", "{'batch_mates': ['job-4', 'job-")  # cut short: nothing is taken from it
    assert mates.leader_of("job-4") is None
    assert len(to_pool) == 3


def test_the_largest_batch_fits_in_the_result_repr_and_old_mates_age_out() -> None:
    mates = BatchMates(kept=100)
    ids = [f"{i:08d}-0000-0000-0000-000000000000" for i in range(99)]  # batch_size 100: 99 mates
    assert len(ids[0]) == 36
    mates.remember("leader", result_repr({"batch_mates": ids}))
    assert all(mates.leader_of(i) == "leader" for i in ids)
    mates.remember("a", result_repr({"batch_mates": ids[:60]}))
    mates.remember("b", result_repr({"batch_mates": ids[60:]}))
    mates.remember("c", result_repr({"batch_mates": ["x", "y"]}))
    assert mates.leader_of(ids[0]) is None  # 101 remembered, 100 kept: the oldest went
    assert mates.leader_of(ids[1]) == "a" and mates.leader_of(ids[98]) == "b" and mates.leader_of("y") == "c"


def test_the_worker_consumer_wraps_the_task_handler() -> None:
    seen: list[Any] = []
    app = Celery(broker="memory://", set_as_current=False)
    consumer = Consumer(seen.append, app=app, hostname="w@test", pool=None, timer=None,
                        controller=SimpleNamespace(use_eventloop=False))
    mate = FakeRequest("job-2")
    consumer.batch_mates.remember("job-1", "{'batch_mates': ['job-2']}")
    consumer.on_task_request(mate)
    consumer.on_task_request(FakeRequest("job-3"))
    assert mate.acked and [r.id for r in seen] == ["job-3"]
