"""The handler interface: `setup(device)` once per process, then decode → predict → encode per input."""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from workers.store import ModelSpec


@contextmanager
def threads_at_most(threads: int | None) -> Iterator[None]:
    """Run with at most `threads` intra-op threads (a manifest's `threads`), never more than the process has.

    A tiny model gains nothing from a second thread and pays for waking it: on the digits model, 2 threads
    turned a 0.2 ms forward pass into 10 ms at the 99th percentile whenever another process held a core.
    """
    current = torch.get_num_threads()
    if not threads or threads >= current:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(current)


_decoders: dict[str, Any] = {"pid": None, "pool": None, "size": 0}


def decode_pool(size: int) -> ThreadPoolExecutor:
    """This process's threads for decoding a batch's inputs side by side (made after the worker forks)."""
    if _decoders["pid"] != os.getpid() or _decoders["size"] < size:
        _decoders.update(pid=os.getpid(), size=size,
                         pool=ThreadPoolExecutor(max_workers=size, thread_name_prefix="inferq-decode"))
    return _decoders["pool"]


class InputError(Exception):
    """The input cannot be used by this model; the job fails with `code`, the worker carries on."""

    def __init__(self, message: str, *, code: str = "invalid_input") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Outcome:
    """One input's fate inside a batch: a JSON result, or an error of its own."""

    result: dict[str, Any] | None = None
    error: InputError | None = None
    inference_ms: float = 0.0
    batch_size: int = 1


class Handler(ABC):
    """Subclasses implement the four verbs; `__call__` and `run_batch` show the whole pipeline.

    A handler whose `decode` is thread-safe and spends its time outside the GIL (Pillow's decoding and
    resizing do) sets `parallel_decode`: a batch's inputs are then decoded side by side on as many threads
    as its forward pass gets.
    """

    parallel_decode = False

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.device = torch.device("cpu")

    @abstractmethod
    def setup(self, device: torch.device) -> None:
        """Load weights onto `device`; called once per worker process."""

    @abstractmethod
    def decode(self, data: bytes, content_type: str) -> torch.Tensor:
        """One input's bytes to one sample tensor (no batch dimension); raise InputError if unusable."""

    @abstractmethod
    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """A forward pass over a batch; called under torch.inference_mode()."""

    @abstractmethod
    def encode(self, output: torch.Tensor) -> dict[str, Any]:
        """One sample's output row to plain JSON (never tensors)."""

    def warmup(self) -> None:
        """Run one forward pass so the first job does not pay for lazy initialisation."""
        example = self.example_input()
        with torch.inference_mode():
            self.predict(example.unsqueeze(0).to(self.device))

    @abstractmethod
    def example_input(self) -> torch.Tensor:
        """A sample tensor of the right shape, for warm-up."""

    def __call__(self, data: bytes, content_type: str) -> dict[str, Any]:
        sample = self.decode(data, content_type)
        with torch.inference_mode(), threads_at_most(self.spec.threads):
            output = self.predict(sample.unsqueeze(0).to(self.device))
        return self.encode(output[0].cpu())

    def decode_one(self, item: tuple[bytes, str]) -> torch.Tensor | InputError:
        try:
            return self.decode(*item)
        except InputError as exc:
            return exc

    def decode_batch(self, inputs: list[tuple[bytes, str]]) -> list[torch.Tensor | InputError]:
        """Each input decoded alone, in order (an unusable one as its InputError); side by side where the
        handler allows it. A 640x480 JPEG for resnet50 takes 4.5 ms here, a tenth of its share of a batch
        of 8's forward pass, during which one of two cores sat idle: on 2 threads, 2.5 ms."""
        workers = min(len(inputs), torch.get_num_threads(), self.spec.threads or torch.get_num_threads())
        if not self.parallel_decode or workers <= 1:
            return [self.decode_one(item) for item in inputs]
        return list(decode_pool(workers).map(self.decode_one, inputs))

    def run_batch(self, inputs: list[tuple[bytes, str]]) -> list[Outcome]:
        """Decode each input alone (a bad one fails alone), then one forward pass for the rest."""
        outcomes = [Outcome() for _ in inputs]
        samples: list[torch.Tensor] = []
        good: list[int] = []
        for i, decoded in enumerate(self.decode_batch(inputs)):
            if isinstance(decoded, InputError):
                outcomes[i].error = decoded
            else:
                samples.append(decoded)
                good.append(i)
        if not samples:
            return outcomes
        started = time.perf_counter()
        with torch.inference_mode(), threads_at_most(self.spec.threads):
            output = self.predict(torch.stack(samples).to(self.device)).cpu()
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        for row, i in enumerate(good):
            outcomes[i].result = self.encode(output[row])
            outcomes[i].inference_ms = elapsed_ms
            outcomes[i].batch_size = len(good)
        return outcomes
