"""Shared by the worker tests that run jobs in this process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tests.api.helpers import broker_messages
from workers import runner


@contextmanager
def acting_as_worker(tmp_path: Path, settings: Any, hostname: str) -> Iterator[None]:
    """This process acts as one worker: a known hostname, the CPU, inputs in a temp media root.

    Afterwards the runner's state is put back and the echo model's queue emptied.
    """
    settings.MEDIA_ROOT = tmp_path / "media"
    saved = dict(runner._state)
    runner.configure(device=torch.device("cpu"), hostname=hostname)
    yield
    runner._state.update(saved)
    broker_messages("inferq.model.echo")
