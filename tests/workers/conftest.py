"""Worker fixtures: a fresh handler registry per test, the digits model trained once, tiny weights files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from workers.store import ModelSpec, read_manifest

DIGITS_EPOCHS = 8  # enough for ~95% held-out accuracy in well under a second


@pytest.fixture(autouse=True)
def fresh_registry() -> Iterator[None]:
    """Handlers are cached per (name, version) per process; each test starts with none loaded."""
    from workers import loading, registry

    registry.clear()
    loading._MAPPED.clear()
    yield
    registry.clear()
    loading._MAPPED.clear()


def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def two_threads() -> Iterator[None]:
    """The test process's torch threads set to 2 (as on a 2-core worker), restored afterwards."""
    yield from _threads(2)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The test process's torch threads set to 1 (a one-thread worker process), restored afterwards."""
    yield from _threads(1)


@pytest.fixture(scope="session")
def digits_entry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits demo model exported once for the session into its own store."""
    from workers.export import export_digits
    from workers.store import ModelStore

    store = ModelStore(tmp_path_factory.mktemp("digits-store"))
    return export_digits(store, epochs=DIGITS_EPOCHS)


@pytest.fixture(scope="session")
def digits_spec(digits_entry: Path) -> ModelSpec:
    return read_manifest(digits_entry)


@pytest.fixture
def digits_handler(digits_spec: ModelSpec) -> Any:
    from workers.handlers import get_handler

    handler = get_handler(digits_spec)
    handler.setup(torch.device("cpu"))
    return handler


def save_digits_net(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write a seeded DigitsNet state dict to `path`/weights.pt; return the saved tensors."""
    from workers.architectures import DigitsNet

    torch.manual_seed(seed)
    state = DigitsNet().state_dict()
    torch.save(state, path / "weights.pt")
    return {k: v.clone() for k, v in state.items()}


@pytest.fixture
def tensor_model(tensor_model_manifest: Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The `vec` tensor model from tests/conftest.py, with real DigitsNet weights beside its manifest."""
    state = save_digits_net(tensor_model_manifest)
    return read_manifest(tensor_model_manifest), state


def edit_manifest(path: Path, **changes: Any) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))
