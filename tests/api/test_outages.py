"""Outages answer 503 with Retry-After in the error shape, never 500: the database, Redis behind the
throttles and cache, Redis behind a view. (The broker refusing a publish is in test_job_create_api.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from api.models import Job
from tests.api.helpers import assert_error
from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.django_db

IMAGE_URL = "/v1/models/tinyimg/jobs"


def database_down(*args: Any, **kwargs: Any) -> None:
    raise OperationalError("could not connect to server: Connection refused")


def redis_down(*args: Any, **kwargs: Any) -> None:
    raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def test_submit_with_the_database_down_is_503(api_client: Any, image_model_manifest: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("api.services.check_queue_capacity", database_down)

    response = api_client.post(IMAGE_URL, data=jpeg_bytes(), content_type="image/jpeg")

    body = assert_error(response, 503, "database_unavailable")
    assert int(response["Retry-After"]) > 0
    assert "Connection refused" not in body["error"]["message"]


def test_reading_a_job_with_the_database_down_is_503(api_client: Any, make_job: Any, monkeypatch: Any) -> None:
    job = make_job()
    monkeypatch.setattr("api.views.job_get", database_down)

    assert_error(api_client.get(f"/v1/jobs/{job.id}"), 503, "database_unavailable")


def test_redis_failing_inside_a_view_is_503_broker_unavailable(api_client: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr("api.views.job_list", redis_down)

    response = api_client.get("/v1/jobs")

    body = assert_error(response, 503, "broker_unavailable")
    assert int(response["Retry-After"]) > 0
    assert "6379" not in body["error"]["message"]


def test_submit_with_the_throttles_redis_down_is_a_fast_503(api_client: Any, image_model_manifest: Path,
                                                            settings: Any) -> None:
    """The real throttle and cache code against a Redis that refuses connections."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": "redis://127.0.0.1:1/0",
                                   "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 2}}}
    settings.INFERQ_THROTTLE_RATES = {"submit": "100/min", "api": "100/min"}

    started = time.monotonic()
    response = api_client.post(IMAGE_URL, data=jpeg_bytes(), content_type="image/jpeg")

    assert time.monotonic() - started <= 2.0
    assert_error(response, 503, "broker_unavailable")
    assert not Job.objects.exists()
