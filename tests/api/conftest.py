"""API fixtures: a per-test media root, the in-memory broker's model queues, and jobs made by the service."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import broker_messages

MODEL_QUEUES = ("inferq.model.tinyimg", "inferq.model.vec", "inferq.model.echo")


@pytest.fixture(autouse=True)
def media_root(tmp_path: Path, settings: Any) -> Path:
    """Stored inputs land in this test's own directory."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    return root


@pytest.fixture(autouse=True)
def empty_queues() -> Iterator[None]:
    """The memory broker is process-wide: start and end every test with empty model queues."""
    for name in MODEL_QUEUES:
        broker_messages(name)
    yield
    for name in MODEL_QUEUES:
        broker_messages(name)


@pytest.fixture
def make_job(user: Any, echo_model: Path) -> Callable[..., Any]:
    """Create a queued echo job through the real service (input stored, message published)."""
    from api.inputs import ModelInput
    from api.services import job_create, model_spec_get

    def make(data: bytes = b"hello", *, owner: Any = None) -> Any:
        spec = model_spec_get(name="echo")
        return job_create(owner=owner or user, spec=spec, model_input=ModelInput(data, "application/octet-stream"))

    return make
