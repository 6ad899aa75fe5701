"""A manifest's `threads` caps intra-op threads for that model's forward passes, never raising the process's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from workers.handlers.base import Handler, threads_at_most
from workers.store import ModelSpec


class Recording(Handler):
    """Records how many threads each forward pass ran with."""

    seen: list[int]

    def setup(self, device: torch.device) -> None:
        self.seen = []

    def decode(self, data: bytes, content_type: str) -> torch.Tensor:
        return torch.zeros(1)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return batch

    def encode(self, output: torch.Tensor) -> dict[str, Any]:
        return {}

    def example_input(self) -> torch.Tensor:
        return torch.zeros(1)


@pytest.mark.parametrize(("threads", "expected"), [(1, 1), (None, 2), (4, 2)])
def test_a_forward_pass_runs_with_the_models_threads(two_threads: None, threads: int | None, expected: int) -> None:
    spec = ModelSpec(name="r", version="1", path=Path("."), handler="recording", architecture="", format="",
                     weights="", input={}, threads=threads)
    handler = Recording(spec)
    handler.setup(torch.device("cpu"))

    handler.run_batch([(b"a", "x"), (b"b", "x")])
    handler(b"c", "x")

    assert handler.seen == [expected, expected]
    assert torch.get_num_threads() == 2  # the process's own setting is back


def test_the_limit_is_lifted_even_when_the_pass_fails(two_threads: None) -> None:
    with pytest.raises(RuntimeError), threads_at_most(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("model bug")
    assert torch.get_num_threads() == 2
