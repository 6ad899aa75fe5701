"""Tensor in, tensor out: `.npy` bytes of the manifest's shape and dtype, output as nested lists."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from workers.handlers.base import Handler, InputError
from workers.loading import load_module


class TensorHandler(Handler):
    def setup(self, device: torch.device) -> None:
        self.device = device
        self.module = load_module(self.spec, device)
        self.shape = list(self.spec.input["shape"])
        self.dtype = self.spec.input.get("dtype", "float32")
        self.softmax = bool(self.spec.input.get("softmax", False))

    def decode(self, data: bytes, content_type: str) -> torch.Tensor:
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"Input is not a valid .npy array: {exc}", code="invalid_tensor") from exc
        if list(array.shape) != self.shape or array.dtype.name != self.dtype:
            raise InputError(f"Expected {self.dtype}{self.shape}, got {array.dtype.name}{list(array.shape)}.",
                             code="invalid_tensor")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InputError("Tensor contains NaN or infinity.", code="invalid_tensor")
        return torch.from_numpy(np.ascontiguousarray(array))

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.module(batch)
        return torch.softmax(out, dim=1) if self.softmax else out

    def encode(self, output: torch.Tensor) -> dict[str, Any]:
        return {"output": output.tolist(), "shape": list(output.shape)}

    def example_input(self) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=getattr(torch, self.dtype))
