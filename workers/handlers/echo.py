"""A test double shipped as code: echoes the input's size and digest, no model at all.

Used by tests and benchmarks to measure InferQ's own overhead, and by reliability tests:
an input starting with `crash` makes the worker process exit abruptly (as a segfaulting
model would), and one starting with `sleep:<seconds>` holds the worker that long.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import torch

from workers.handlers.base import Handler, InputError


class EchoHandler(Handler):
    def setup(self, device: torch.device) -> None:
        self.device = device
        self.allow_crash = bool(self.spec.input.get("allow_crash", False))

    def decode(self, data: bytes, content_type: str) -> torch.Tensor:
        if data.startswith(b"invalid"):
            raise InputError("Echo refuses inputs that start with 'invalid'.", code="invalid_input")
        if self.allow_crash and data.startswith(b"crash"):
            os._exit(70)
        if data.startswith(b"sleep:"):
            time.sleep(float(data[6:20].split(b"\n")[0]))
        digest = hashlib.sha256(data).digest()
        return torch.tensor([len(data), *digest[:8]], dtype=torch.int64)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        return batch

    def encode(self, output: torch.Tensor) -> dict[str, Any]:
        values = output.tolist()
        return {"size": values[0], "sha256_prefix": bytes(values[1:]).hex()}

    def example_input(self) -> torch.Tensor:
        return torch.zeros(9, dtype=torch.int64)
