"""celeryconfig.py: every key is a real Celery setting, and the reliability and safety settings hold."""

from __future__ import annotations

import pickle
import types
from typing import Any

import pytest
from celery.app.defaults import SETTING_KEYS
from kombu import Queue
from kombu.exceptions import ContentDisallowed
from kombu.message import Message
from kombu.serialization import dumps, prepare_accept_content

import celeryconfig


def unknown_settings(module: types.ModuleType) -> list[str]:
    """Public lowercase names in a config module that Celery does not know (it ignores them silently)."""
    return sorted(
        name for name, value in vars(module).items()
        if not name.startswith("_") and name.islower() and not isinstance(value, types.ModuleType)
        and name not in SETTING_KEYS
    )


def test_every_key_is_a_celery_setting() -> None:
    assert unknown_settings(celeryconfig) == []


def test_a_misspelt_key_is_caught() -> None:
    module = types.ModuleType("misspelt")
    module.task_acks_late = True  # type: ignore[attr-defined]
    module.worker_prefetch_multiplyer = 1  # type: ignore[attr-defined]
    module.broker_url = "memory://"  # type: ignore[attr-defined]
    assert unknown_settings(module) == ["worker_prefetch_multiplyer"]


def test_the_config_covers_the_important_settings() -> None:
    names = set(vars(celeryconfig))
    assert {"broker_url", "accept_content", "task_serializer", "task_acks_late", "task_reject_on_worker_lost",
            "worker_prefetch_multiplier", "task_ignore_result", "imports"} <= names


def test_json_only() -> None:
    assert celeryconfig.accept_content == ["json"]
    assert celeryconfig.result_accept_content == ["json"]
    assert celeryconfig.task_serializer == "json"
    assert celeryconfig.result_serializer == "json"


def test_reliability_settings() -> None:
    assert celeryconfig.task_acks_late is True
    assert celeryconfig.task_reject_on_worker_lost is True
    assert celeryconfig.worker_prefetch_multiplier == 1
    assert celeryconfig.task_ignore_result is True
    # Redis redelivers unacked messages after the visibility timeout: it must outlast the hard time limit.
    assert celeryconfig.broker_transport_options["visibility_timeout"] > celeryconfig.task_time_limit
    assert celeryconfig.task_soft_time_limit < celeryconfig.task_time_limit


def test_the_app_uses_the_config() -> None:
    from project.celery import app

    assert app.conf.accept_content == ["json"]
    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_ignore_result is True
    assert app.conf.broker_url == "memory://"  # tests/settings.py points the broker at memory


def test_the_inference_task_has_its_stable_name() -> None:
    import tasks.inference
    from project.celery import app

    assert tasks.inference.run.name == "inference.run"
    assert app.tasks["inference.run"].ignore_result is True


def test_pickle_body_is_refused_by_the_apps_accept_list() -> None:
    from project.celery import app

    accept = prepare_accept_content(app.conf.accept_content)
    body = pickle.dumps([[], {"job_id": "x"}, {}])
    message = Message(body=body, content_type="application/x-python-serialize", content_encoding="binary",
                      accept=accept)
    with pytest.raises(ContentDisallowed):
        message.decode()

    content_type, encoding, json_body = dumps([[], {"job_id": "x"}, {}], serializer="json")
    ok = Message(body=json_body, content_type=content_type, content_encoding=encoding, accept=accept)
    assert ok.decode() == [[], {"job_id": "x"}, {}]


def test_worker_task_consumer_rejects_a_pickled_message() -> None:
    """Publish a pickle and a JSON message; the app's task consumer decodes only the JSON one."""
    from project.celery import app

    queue = Queue("inferq.test.pickle", routing_key="inferq.test.pickle")
    received: list[Any] = []
    refused: list[tuple[str, Exception]] = []
    with app.connection_for_write() as conn, conn.channel() as channel:
        queue(channel).declare()
        producer = app.amqp.Producer(channel)
        producer.publish({"job_id": "evil"}, routing_key=queue.routing_key, exchange="", serializer="pickle")
        producer.publish({"job_id": "good"}, routing_key=queue.routing_key, exchange="", serializer="json")
        consumer = app.amqp.TaskConsumer(
            channel, queues=[queue], callbacks=[lambda body, message: received.append(body)],
            on_decode_error=lambda message, exc: refused.append((message.content_type, exc)),
        )
        with consumer:
            for _ in range(2):
                conn.drain_events(timeout=1)
        queue(channel).purge()

    assert received == [{"job_id": "good"}]
    assert len(refused) == 1
    assert refused[0][0] == "application/x-python-serialize"
    assert isinstance(refused[0][1], ContentDisallowed)
