"""The echo test double: size and digest of its input, refusals and crash switch on request."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.workers.conftest import edit_manifest
from workers.handlers import EchoHandler, InputError, get_handler
from workers.store import read_manifest


class WorkerExited(Exception):
    pass


@pytest.fixture
def echo(echo_model: Path) -> EchoHandler:
    handler = get_handler(read_manifest(echo_model))
    handler.setup(torch.device("cpu"))
    assert isinstance(handler, EchoHandler)
    return handler


@pytest.fixture
def no_exit(monkeypatch: Any) -> list[int]:
    """Record os._exit calls instead of letting them end the test run."""
    calls: list[int] = []

    def fake_exit(code: int) -> None:
        calls.append(code)
        raise WorkerExited(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    return calls


@pytest.mark.parametrize("data", [b"hello", b"\x00" * 1000, bytes(range(256))])
def test_echo_reports_size_and_digest(echo: EchoHandler, data: bytes) -> None:
    assert echo(data, "application/octet-stream") == {"size": len(data),
                                                      "sha256_prefix": hashlib.sha256(data).hexdigest()[:16]}


def test_inputs_starting_with_invalid_are_refused(echo: EchoHandler) -> None:
    with pytest.raises(InputError) as caught:
        echo.decode(b"invalid input", "text/plain")
    assert caught.value.code == "invalid_input"


def test_batch_keeps_inputs_apart(echo: EchoHandler) -> None:
    outcomes = echo.run_batch([(b"a", "x"), (b"invalid", "x"), (b"bcd", "x")])
    assert outcomes[0].result == {"size": 1, "sha256_prefix": hashlib.sha256(b"a").hexdigest()[:16]}
    assert outcomes[1].error is not None and outcomes[1].error.code == "invalid_input"
    assert outcomes[2].result is not None and outcomes[2].result["size"] == 3
    assert outcomes[0].batch_size == outcomes[2].batch_size == 2


def test_crash_input_is_harmless_unless_allowed(echo: EchoHandler, no_exit: list[int]) -> None:
    assert echo(b"crash now", "text/plain")["size"] == 9
    assert no_exit == []


def test_crash_input_exits_the_process_when_allowed(echo_model: Path, no_exit: list[int]) -> None:
    edit_manifest(echo_model, input={"kind": "bytes", "allow_crash": True})
    handler = get_handler(read_manifest(echo_model))
    handler.setup(torch.device("cpu"))
    with pytest.raises(WorkerExited):
        handler(b"crash now", "text/plain")
    assert no_exit == [70]
