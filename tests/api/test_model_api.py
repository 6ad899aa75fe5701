"""GET /v1/models and /v1/models/{model}: what is served, workers online (heartbeats) and queue depth."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from api.heartbeats import heartbeat_clear, heartbeat_record, workers_online
from tests.api.helpers import assert_error

pytestmark = pytest.mark.django_db


def test_list_shows_every_model_with_live_facts(api_client: Any, fake_redis: Any, image_model_manifest: Path,
                                                tensor_model_manifest: Path, echo_model: Path,
                                                make_job: Any) -> None:
    heartbeat_record(hostname="w1@host", models=["tinyimg", "echo"])
    heartbeat_record(hostname="w2@host", models=["tinyimg"])
    make_job()
    make_job()

    response = api_client.get("/v1/models")

    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert set(models) == {"echo", "tinyimg", "vec"}
    assert models["tinyimg"]["workers_online"] == 2
    assert models["tinyimg"]["workers"] == ["w1@host", "w2@host"]
    assert models["echo"]["workers_online"] == 1
    assert models["vec"]["workers_online"] == 0
    assert models["echo"]["queued"] == 2
    assert models["tinyimg"]["queued"] == 0
    assert models["tinyimg"]["input"] == {"kind": "image", "mode": "RGB", "resize": 32, "crop": 32}
    assert models["tinyimg"]["labels"] == 2
    assert "path" not in models["tinyimg"] and "weights" not in models["tinyimg"]


def test_detail_lists_versions_and_counts_only_fresh_heartbeats(api_client: Any, fake_redis: Any,
                                                                  image_model_manifest: Path, settings: Any) -> None:
    from tests.conftest import write_entry

    write_entry(image_model_manifest.parent.parent,
                {"name": "tinyimg", "version": "10", "handler": "image_classifier", "input": {"kind": "image"}})
    heartbeat_record(hostname="fresh@host", models=["tinyimg"])
    fake_redis.zadd("inferq:workers:tinyimg", {"stale@host": time.time() - settings.INFERQ_HEARTBEAT_TTL - 5})

    body = api_client.get("/v1/models/tinyimg").json()

    assert body["version"] == "10"
    assert body["versions"] == ["1", "10"]
    assert body["workers"] == ["fresh@host"]
    assert body["workers_online"] == 1


def test_cleared_heartbeat_takes_the_worker_offline(api_client: Any, fake_redis: Any, echo_model: Path) -> None:
    heartbeat_record(hostname="w1@host", models=["echo"])
    assert workers_online("echo") == ["w1@host"]
    heartbeat_clear(hostname="w1@host", models=["echo"])
    assert api_client.get("/v1/models/echo").json()["workers_online"] == 0


def test_unknown_model_detail_is_404(api_client: Any, fake_redis: Any, echo_model: Path) -> None:
    assert_error(api_client.get("/v1/models/nope"), 404, "unknown_model")


def test_models_need_authentication(fake_redis: Any, echo_model: Path, db: Any) -> None:
    from rest_framework.test import APIClient

    assert_error(APIClient().get("/v1/models"), 401, "not_authenticated")


def test_healthz_is_open_and_ok(client: Any) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_needs_a_worker_for_every_model(client: Any, fake_redis: Any, echo_model: Path,
                                               image_model_manifest: Path) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    assert int(response["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "not_ready"
    assert response.json()["checks"]["models"] == {"echo": 0, "tinyimg": 0}

    heartbeat_record(hostname="w1@host", models=["echo"])
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "tinyimg" in response.json()["error"]["message"]
    assert "echo" not in response.json()["error"]["message"]

    heartbeat_record(hostname="w2@host", models=["tinyimg"])
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "models": {"echo": 1, "tinyimg": 1}}


def test_readyz_with_an_empty_store_is_not_ready(client: Any, fake_redis: Any, store: Path) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "no models" in response.json()["error"]["message"]


@pytest.fixture
def dead_redis(fake_redis: Any) -> Any:
    """A Redis that refuses connections (fakeredis raises ConnectionError, as a dead server would)."""
    import fakeredis

    from api.redis_client import set_redis

    heartbeat_record(hostname="w1@host", models=["echo"], client=fake_redis)
    server = fakeredis.FakeServer()
    server.connected = False
    set_redis(fakeredis.FakeRedis(server=server))
    return server


def test_readyz_with_redis_down_is_not_ready(client: Any, echo_model: Path, dead_redis: Any) -> None:
    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["database"] == "ok"
    assert response.json()["checks"]["broker"] == "error: ConnectionError"


def test_model_list_with_redis_down_still_answers(api_client: Any, echo_model: Path, dead_redis: Any) -> None:
    response = api_client.get("/v1/models")

    assert response.status_code == 200
    (model,) = response.json()["models"]
    assert model["name"] == "echo"
    assert model["workers_online"] is None
