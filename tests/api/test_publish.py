"""The lean publisher: on Redis, one LPUSH of the message Celery's send_task builds; elsewhere send_task."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis
from kombu import Connection

from api import publish
from api.resp import RespPusher
from project.celery import app


def test_the_envelope_decodes_as_the_task_celery_would_run() -> None:
    data = publish.envelope(app, name="inference.run", task_id="t-1", kwargs={"job_id": "t-1", "model": "m"},
                            queue="inferq.model.m", time_limit=15.0, soft_time_limit=5.0)
    with Connection("memory://") as conn:
        channel = conn.default_channel
        message = channel.Message(json.loads(data), channel=channel)
        args, kwargs, embed = message.decode()

    assert (args, kwargs) == ([], {"job_id": "t-1", "model": "m"})
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    assert message.headers["task"] == "inference.run" and message.headers["id"] == "t-1"
    assert message.headers["timelimit"] == [15.0, 5.0]
    assert message.content_type == "application/json"
    assert message.delivery_info["routing_key"] == "inferq.model.m"
    assert message.properties["priority"] == 0  # the plain list, not a priority sub-queue
    assert message.delivery_tag


def test_the_envelope_shows_flower_what_celery_would() -> None:
    from celery.utils.saferepr import saferepr

    kwargs = {"job_id": "5b1e…-ü", "model": "digits"}
    data = publish.envelope(app, name="inference.run", task_id="t-1", kwargs=kwargs, queue="q", time_limit=None,
                            soft_time_limit=None)
    headers = json.loads(data)["headers"]
    assert (headers["argsrepr"], headers["kwargsrepr"]) == (saferepr(()), saferepr(kwargs))
    long = {"job_id": "x" * 5000}
    data = publish.envelope(app, name="inference.run", task_id="t-2", kwargs=long, queue="q", time_limit=None,
                            soft_time_limit=None)
    assert json.loads(data)["headers"]["kwargsrepr"] == saferepr(long, app.amqp.kwargsrepr_maxsize)


def celery_message(task_id: str, kwargs: dict[str, Any], queue: str, limits: tuple[float | None, float | None]) -> Any:
    """The message as Celery's as_task_v2 builds it whole for this job, wrapped as kombu's Redis transport does."""
    from celery.utils.saferepr import saferepr

    headers, properties, body, _ = app.amqp.as_task_v2(
        task_id, "inference.run", kwargs=kwargs, time_limit=limits[0], soft_time_limit=limits[1], ignore_result=True,
        argsrepr="()", kwargsrepr=saferepr(kwargs, app.amqp.kwargsrepr_maxsize))
    message = {"body": body, "content-encoding": "utf-8", "content-type": "application/json", "headers": headers,
               "properties": {**properties, "delivery_mode": 2, "priority": 0,
                              "delivery_info": {"exchange": "", "routing_key": queue}, "body_encoding": "base64"}}
    return json.loads(json.dumps(message))  # as it reads back (tuples become lists)


def test_each_message_from_the_reused_template_is_the_one_celery_builds_for_that_job() -> None:
    import base64

    jobs = [("t-1", {"job_id": "t-1", "model": "m"}, "inferq.model.m", (None, None)),
            ("t-2", {"job_id": "t-2", "model": "m"}, "inferq.model.m", (None, None)),
            ("t-3", {"job_id": "5b1e…-ü", "model": "other"}, "inferq.model.other", (15.0, 5.0)),
            ("t-4", {"job_id": "x" * 5000}, "inferq.model.m", (None, None))]  # a repr Celery cuts short
    tags = set()
    for _ in range(2):  # the second round reuses every template the first one made
        for task_id, kwargs, queue, limits in jobs:
            message = json.loads(publish.envelope(app, name="inference.run", task_id=task_id, kwargs=kwargs,
                                                  queue=queue, time_limit=limits[0], soft_time_limit=limits[1]))
            tags.add(message["properties"].pop("delivery_tag"))
            message["body"] = json.loads(base64.b64decode(message["body"]))
            assert message == celery_message(task_id, kwargs, queue, limits)
    assert len(tags) == 2 * len(jobs)  # a fresh delivery tag for every message


def test_a_delivery_tag_is_a_version_4_uuid_made_without_the_kernels_random_source(monkeypatch: Any) -> None:
    import os
    import uuid

    def no_syscall(size: int) -> bytes:
        raise AssertionError("os.urandom called")

    publish.envelope(app, name="inference.run", task_id="t", kwargs={}, queue="inferq.model.m", time_limit=None,
                     soft_time_limit=None)  # the process's generator, seeded from the kernel once
    monkeypatch.setattr(os, "urandom", no_syscall)
    tags = [json.loads(publish.envelope(app, name="inference.run", task_id=f"t-{i}", kwargs={"job_id": f"t-{i}"},
                                        queue="inferq.model.m", time_limit=None, soft_time_limit=None)
                       )["properties"]["delivery_tag"] for i in range(500)]
    assert len(set(tags)) == 500
    assert all(uuid.UUID(tag).version == 4 and str(uuid.UUID(tag)) == tag for tag in tags)


def test_a_forked_process_draws_other_delivery_tags_than_its_parent() -> None:
    import os

    def tag() -> str:
        message = publish.envelope(app, name="inference.run", task_id="t", kwargs={}, queue="inferq.model.m",
                                   time_limit=None, soft_time_limit=None)
        return str(json.loads(message)["properties"]["delivery_tag"])

    tag()  # the parent's generator exists before the fork
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        os.write(write, "\n".join(tag() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    with os.fdopen(read) as pipe:
        childs = set(pipe.read().split("\n"))
    parents = {tag() for _ in range(50)}
    assert len(childs) == 50 and not childs & parents


def test_on_redis_it_is_one_push_onto_the_queue(monkeypatch: Any) -> None:
    server = fakeredis.FakeRedis()
    monkeypatch.setattr(publish, "broker_pusher", lambda app: server)

    publish.task_publish(app, name="inference.run", task_id="t-2", kwargs={"job_id": "t-2"}, queue="inferq.model.x")

    assert server.llen("inferq.model.x") == 1
    assert json.loads(server.lpop("inferq.model.x"))["headers"]["id"] == "t-2"


def test_many_messages_are_one_push_taken_in_the_order_given(monkeypatch: Any) -> None:
    server = fakeredis.FakeRedis()
    pushes: list[int] = []
    monkeypatch.setattr(publish, "broker_pusher", lambda app: server)
    monkeypatch.setattr(server, "lpush", lambda key, *values: pushes.append(len(values)) or
                        fakeredis.FakeRedis.lpush(server, key, *values))

    publish.task_publish_many(app, name="inference.run", tasks=[(f"t-{i}", {"job_id": f"t-{i}"}) for i in range(3)],
                              queue="inferq.model.x")

    assert pushes == [3]
    # A worker takes from the far end (BRPOP): the first job given is the first taken.
    assert waiting(server, "inferq.model.x") == ["t-0", "t-1", "t-2"]


def test_a_dropped_connection_is_retried_and_a_dead_broker_raises(monkeypatch: Any) -> None:
    import redis

    class Flaky:
        def __init__(self, failures: int) -> None:
            self.failures, self.pushed = failures, 0

        def lpush(self, *args: Any) -> None:
            if self.failures:
                self.failures -= 1
                raise redis.ConnectionError("dropped")
            self.pushed += 1

    monkeypatch.setattr(app.conf, "task_publish_retry_policy", {"max_retries": 1})
    once = Flaky(1)
    monkeypatch.setattr(publish, "broker_pusher", lambda app: once)
    publish.task_publish(app, name="inference.run", task_id="t-3", kwargs={}, queue="q")
    assert once.pushed == 1

    dead = Flaky(5)
    monkeypatch.setattr(publish, "broker_pusher", lambda app: dead)
    with pytest.raises(redis.ConnectionError):
        publish.task_publish(app, name="inference.run", task_id="t-4", kwargs={}, queue="q")


def test_an_apps_broker_url_is_read_once() -> None:
    from types import SimpleNamespace

    reads: list[str] = []

    class Conf:
        broker_transport_options: dict[str, Any] = {}

        @property
        def broker_url(self) -> str:
            reads.append("read")
            return "redis://127.0.0.1:1/4"

    app = SimpleNamespace(conf=Conf())
    first = publish.broker_pusher(app)
    assert first is not None and publish.broker_pusher(app) is first and publish.broker_client(app) is not None
    assert reads == ["read"]
    other = SimpleNamespace(conf=SimpleNamespace(broker_url="memory://", broker_transport_options={}))
    assert publish.broker_pusher(other) is None  # each app its own URL


def test_only_a_redis_broker_gets_the_lean_path() -> None:
    from types import SimpleNamespace

    def app_on(url: str) -> Any:
        return SimpleNamespace(conf=SimpleNamespace(broker_url=url, broker_transport_options={"socket_timeout": 0.5}))

    assert publish.broker_client(app_on("memory://")) is None
    assert publish.broker_client(app_on("amqp://guest@localhost//")) is None
    redis_app = app_on("redis://127.0.0.1:1/3")
    client = publish.broker_client(redis_app)
    assert client is not None and client is publish.broker_client(redis_app)  # one per process
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 0.5

    # Messages go out over api/resp.py's connection on plain Redis, through redis-py on TLS, not at all elsewhere.
    assert publish.broker_pusher(app_on("memory://")) is None
    pusher = publish.broker_pusher(redis_app)
    assert isinstance(pusher, RespPusher) and pusher is publish.broker_pusher(redis_app)
    assert (pusher.port, pusher.db, pusher.timeout) == (1, 3, 0.5)
    assert isinstance(publish.broker_pusher(app_on("unix:///run/redis.sock?db=1")), RespPusher)
    assert isinstance(publish.broker_pusher(app_on("rediss://127.0.0.1:1/0")), redis.Redis)


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """A private Redis server for what fakeredis cannot run: Lua scripts."""
    from tests.integration.processes import private_redis

    with private_redis(tmp_path_factory.mktemp("redis")) as port:
        yield redis.Redis(port=port)


@pytest.fixture
def queue_on_redis(real_redis: redis.Redis, monkeypatch: Any) -> redis.Redis:
    real_redis.flushall()
    monkeypatch.setattr(publish, "broker_client", lambda app: real_redis)
    monkeypatch.setattr(publish, "broker_pusher", lambda app: real_redis)
    return real_redis


def publish_jobs(ids: list[str], queue: str = "inferq.model.m") -> None:
    for task_id in ids:
        publish.task_publish(app, name="inference.run", task_id=task_id, kwargs={"job_id": task_id}, queue=queue)


def waiting(client: redis.Redis, queue: str = "inferq.model.m") -> list[str]:
    """The task ids on a queue's list, in the order a worker takes them (oldest first)."""
    return [json.loads(item)["headers"]["id"] for item in reversed(client.lrange(queue, 0, -1))]


@pytest.mark.integration
def test_finished_tasks_messages_are_taken_off_their_queue_and_the_rest_keep_their_order(
        queue_on_redis: redis.Redis) -> None:
    ids = [str(uuid.uuid4()) for _ in range(6)]
    publish_jobs(ids)
    publish_jobs([ids[1]], queue="inferq.model.other")  # another queue's message is not touched
    absent = str(uuid.uuid4())

    taken = publish.task_dequeue(app, queue="inferq.model.m", task_ids=[ids[1], ids[4], absent])

    assert sorted(taken) == sorted([ids[1], ids[4]])
    assert waiting(queue_on_redis) == [ids[0], ids[2], ids[3], ids[5]]
    assert waiting(queue_on_redis, "inferq.model.other") == [ids[1]]
    assert publish.task_dequeue(app, queue="inferq.model.m", task_ids=[ids[1]]) == []  # taken once


@pytest.mark.integration
def test_the_script_goes_by_its_sha_once_redis_has_it(queue_on_redis: redis.Redis) -> None:
    ids = [str(uuid.uuid4()) for _ in range(3)]
    publish_jobs(ids)
    queue_on_redis.script_flush()  # as after a restart: Redis knows no script
    assert publish.task_dequeue(app, queue="inferq.model.m", task_ids=[ids[0]]) == [ids[0]]  # loaded by EVAL
    assert queue_on_redis.script_exists(publish._DEQUEUE_SHA) == [True]
    before = queue_on_redis.info("commandstats")
    assert publish.task_dequeue(app, queue="inferq.model.m", task_ids=[ids[1]]) == [ids[1]]
    after = queue_on_redis.info("commandstats")

    def calls(stats: dict[str, Any], command: str) -> int:
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    assert calls(after, "evalsha") == calls(before, "evalsha") + 1 and calls(after, "eval") == calls(before, "eval")
    assert waiting(queue_on_redis) == [ids[2]]


@pytest.mark.integration
def test_only_the_end_workers_take_from_is_searched(queue_on_redis: redis.Redis, monkeypatch: Any) -> None:
    monkeypatch.setattr(publish, "DEQUEUE_MIN_DEPTH", 2)
    monkeypatch.setattr(publish, "DEQUEUE_DEPTH_PER_TASK", 1)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    publish_jobs(ids)

    # Two ids: the two oldest messages are searched, so the newest one stays.
    assert publish.task_dequeue(app, queue="inferq.model.m", task_ids=[ids[0], ids[4]]) == [ids[0]]
    assert waiting(queue_on_redis) == ids[1:]


def test_nothing_is_taken_off_a_broker_other_than_redis_or_a_redis_that_fails(monkeypatch: Any,
                                                                               caplog: Any) -> None:
    assert publish.task_dequeue(app, queue="inferq.model.m", task_ids=["t-1"]) == []  # memory:// in the tests

    class Down:
        def evalsha(self, *args: Any) -> None:
            raise redis.ConnectionError("refused")

    monkeypatch.setattr(publish, "broker_client", lambda app: Down())
    assert publish.task_dequeue(app, queue="inferq.model.m", task_ids=["t-1"]) == []
    assert "could not take finished jobs' messages off inferq.model.m" in caplog.text
