"""A tiny model store for the benchmark's own tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.export import export_digits
    from workers.store import ModelStore

    root = tmp_path_factory.mktemp("bench-store")
    export_digits(ModelStore(root), version="1", epochs=1)
    return root
