"""Shared fixtures: users and API clients, fakeredis, and tiny model store entries built in the test."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest


@pytest.fixture(autouse=True)
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    """Unit tests never touch a real Redis: InferQ's own Redis client becomes fakeredis.

    Autouse, so no test can reach a Redis on the machine by accident (CI has one on 6379; a
    newcomer's machine has none). Integration tests talk to their own servers in subprocesses.
    """
    from api.redis_client import set_redis

    client = fakeredis.FakeRedis()
    set_redis(client)
    yield client
    set_redis(None)


@pytest.fixture(autouse=True)
def store_rechecked_on_every_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests write model store entries and use them at once: every lookup asks the file system, as with
    STAT_SECONDS 0. The recheck interval itself is tested in tests/workers/test_store.py."""
    import workers.store

    monkeypatch.setattr(workers.store, "STAT_SECONDS", 0.0)


@pytest.fixture(autouse=True)
def fresh_process_memory() -> Iterator[None]:
    """What a process remembers between requests (tokens, throttle tallies, unsent metrics) starts empty."""
    from api.authentication import token_cache_clear
    from api.metrics import metrics_tally_clear
    from api.throttling import throttle_tallies_clear

    for clear in (token_cache_clear, throttle_tallies_clear, metrics_tally_clear):
        clear()
    yield
    for clear in (token_cache_clear, throttle_tallies_clear, metrics_tally_clear):
        clear()


@pytest.fixture
def store(tmp_path: Path, settings: Any) -> Path:
    """An empty model store for this test, set as MODEL_STORE."""
    root = tmp_path / "models"
    root.mkdir()
    settings.MODEL_STORE = root
    return root


def write_entry(root: Path, manifest: dict[str, Any]) -> Path:
    path = root / manifest["name"] / str(manifest["version"])
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture
def echo_model(store: Path) -> Path:
    """The echo test double: no weights, any bytes in."""
    return write_entry(store, {"name": "echo", "version": "1", "handler": "echo", "input": {"kind": "bytes"}})


@pytest.fixture
def image_model_manifest(store: Path) -> Path:
    """An image model's manifest (no weights: enough for web-tier validation, which never loads them)."""
    return write_entry(store, {
        "name": "tinyimg", "version": "1", "handler": "image_classifier", "architecture": "resnet18",
        "format": "state_dict", "weights": "weights.pt",
        "input": {"kind": "image", "mode": "RGB", "resize": 32, "crop": 32}, "labels": ["a", "b"],
    })


@pytest.fixture
def tensor_model_manifest(store: Path) -> Path:
    return write_entry(store, {
        "name": "vec", "version": "1", "handler": "tensor", "architecture": "digits_mlp",
        "format": "state_dict", "weights": "weights.pt", "input": {"kind": "tensor", "shape": [1, 8, 8],
                                                                  "dtype": "float32"},
    })


@pytest.fixture
def user(db: Any) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username="alice", password="x")


@pytest.fixture
def other_user(db: Any) -> Any:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(username="mallory", password="x")


@pytest.fixture
def api_client(user: Any) -> Any:
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    token = Token.objects.create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def jpeg_bytes(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_bytes(width: int = 32, height: int = 32) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()
