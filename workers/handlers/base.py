"""The handler interface: `setup(device)` once per process, then decode → predict → encode per input."""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from workers import conv1x1
from workers.store import ModelSpec

logger = logging.getLogger("inferq.worker")

K = TypeVar("K")


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


_pools: dict[str, tuple[int, int, ThreadPoolExecutor]] = {}  # name -> (pid, size, pool)


def thread_pool(name: str, size: int) -> ThreadPoolExecutor:
    """This process's pool of at least `size` threads named `inferq-<name>` (made after the worker forks)."""
    found = _pools.get(name)
    if found is None or found[0] != os.getpid() or found[1] < size:
        found = _pools[name] = (os.getpid(), size,
                                ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"inferq-{name}"))
    return found[2]


def own_threads(threads: int) -> None:
    """Give the calling thread's own torch (OpenMP) team `threads` threads; other threads keep theirs."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def split_evenly(count: int, parts: int) -> list[range]:
    """`range(count)` cut into `parts` contiguous runs whose lengths differ by at most one."""
    size, extra = divmod(count, parts)
    runs, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        runs.append(range(start, end))
        start = end
    return runs


def fastest_ms(runs: dict[K, Callable[[], None]], *, repeats: int, budget_s: float | None = None,
               before: Callable[[K], object] | None = None) -> dict[K, float]:
    """Each run's fastest time in ms: one unmeasured warm-up of each (threads, shapes, kernels), then up to
    `repeats` tries each, interleaved, no round started once `budget_s` has passed after the first. `before`
    prepares a run outside its timing."""
    timings: dict[K, list[float]] = {key: [] for key in runs}
    began = time.perf_counter()
    for attempt in range(repeats + 1):
        if budget_s is not None and attempt > 1 and time.perf_counter() - began > budget_s:
            break
        for key, run in runs.items():
            if before is not None:
                before(key)
            started = time.perf_counter()
            run()
            if attempt:
                timings[key].append((time.perf_counter() - started) * 1000.0)
    return {key: min(ms) for key, ms in timings.items()}


def configured_streams(spec: ModelSpec) -> int | None:
    """The manifest's `streams`, else INFERQ_STREAMS; None (or 0): measure at load (`Handler.plan_streams`)."""
    if spec.streams:
        return int(spec.streams)
    configured = os.environ.get("INFERQ_STREAMS", "").strip().lower()
    if configured in ("", "0", "auto"):
        return None
    if not configured.isdigit():
        raise ValueError(f"INFERQ_STREAMS must be a whole number of streams or 'auto', not {configured!r}")
    return int(configured)


def configured_conv1x1() -> str:
    """INFERQ_CONV1X1: `auto` (measured at load, `Handler.plan_conv1x1`), `onednn` or `native`."""
    configured = os.environ.get("INFERQ_CONV1X1", "").strip().lower() or "auto"
    if configured not in conv1x1.MODES:
        raise ValueError(f"INFERQ_CONV1X1 must be one of {', '.join(conv1x1.MODES)}, not {configured!r}")
    return configured


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
    # A batch's work on this process's thread pools (side-by-side decoding, streams) until it is collected (a
    # class default too, so that a handler whose __init__ skips this one's still has it).
    _in_flight: tuple[Future[Any], ...] = ()
    # Forward passes shorter than this are not worth cutting into streams (thread hand-offs would dominate).
    STREAMS_MIN_FORWARD_MS = 20.0

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.device = torch.device("cpu")
        # Side-by-side forward passes a batch runs as, each on threads/streams torch threads (see plan_streams).
        self.streams = 1

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
        workers = min(len(inputs), self.threads())
        if not self.parallel_decode or workers <= 1:
            return [self.decode_one(item) for item in inputs]
        return self._side_by_side("decode", workers, self.decode_one, inputs)

    def _side_by_side(self, pool: str, size: int, fn: Any, args: list[Any]) -> list[Any]:
        """`fn` over `args` on this process's thread pool `pool`, results in order. Until all are collected the
        futures stay in `_in_flight`, so that `settle` can wait for work a soft time limit left running."""
        self._in_flight = tuple(thread_pool(pool, size).submit(fn, arg) for arg in args)
        results = [future.result() for future in self._in_flight]
        self._in_flight = ()
        return results

    def settle(self) -> None:
        """Wait for whatever an interrupted batch left running on this process's threads; what has not started
        yet is dropped.

        A soft time limit interrupts the worker's main thread, not the streams or decoders it was waiting for:
        they run on, and the next batch would share the cores (and queue for the pool's threads) with them, or,
        behind a pass that never ends, wait forever, every job timing out in turn. The runner calls this once
        it has failed the batch's jobs; should the work never end, the task's hard time limit replaces the
        process, as it does for a single pass that hangs.
        """
        in_flight, self._in_flight = self._in_flight, ()
        if not in_flight:
            return
        for future in in_flight:
            future.cancel()
        running = sum(not future.done() for future in in_flight)
        if running:
            logger.warning("model %s:%s: waiting for %d thread(s) of an interrupted batch", self.spec.name,
                           self.spec.version, running)
        wait(in_flight)

    def threads(self) -> int:
        """The torch threads this model's forward pass gets in this process."""
        return min(torch.get_num_threads(), self.spec.threads or torch.get_num_threads())

    def run_batch(self, inputs: list[tuple[bytes, str]]) -> list[Outcome]:
        """Decode each input alone (a bad one fails alone), then one forward pass for the rest, or, with
        `streams` > 1 and at least as many inputs, one pass per stream side by side over a share of them."""
        streams = min(self.streams, len(inputs))
        if streams > 1:
            return self._run_streams(inputs, streams)
        outcomes = [Outcome() for _ in inputs]
        decoded = self.decode_batch(inputs)
        with threads_at_most(self.spec.threads):
            self._forward(decoded, outcomes)
        return outcomes

    def _forward(self, decoded: list[torch.Tensor | InputError], outcomes: list[Outcome]) -> int:
        """One forward pass over the decoded samples, filling `outcomes` (errors too); how many ran."""
        samples: list[torch.Tensor] = []
        good: list[int] = []
        for i, item in enumerate(decoded):
            if isinstance(item, InputError):
                outcomes[i].error = item
            else:
                samples.append(item)
                good.append(i)
        if not samples:
            return 0
        started = time.perf_counter()
        with torch.inference_mode():
            output = self.predict(torch.stack(samples).to(self.device)).cpu()
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        for row, i in enumerate(good):
            outcomes[i].result = self.encode(output[row])
            outcomes[i].inference_ms = elapsed_ms
            outcomes[i].batch_size = len(good)
        return len(good)

    def _run_streams(self, inputs: list[tuple[bytes, str]], streams: int) -> list[Outcome]:
        """Each stream decodes its share of the batch (if `parallel_decode`) and runs it through the model on
        threads/streams torch threads, in its own thread (torch ops release the GIL); the batch waits for them
        once, at the end."""
        per_stream = max(1, self.threads() // streams)
        outcomes = [Outcome() for _ in inputs]
        # A handler that has not declared its decode thread-safe (`parallel_decode`) decodes here, in turn.
        decoded_first = None if self.parallel_decode else [self.decode_one(item) for item in inputs]

        def stream(run: range) -> int:
            own_threads(per_stream)
            if decoded_first is not None:
                decoded = [decoded_first[i] for i in run]
            else:
                decoded = [self.decode_one(inputs[i]) for i in run]
            return self._forward(decoded, [outcomes[i] for i in run])

        ran = sum(self._side_by_side("stream", streams, stream, split_evenly(len(inputs), streams)))
        for outcome in outcomes:
            if outcome.error is None:
                outcome.batch_size = ran  # the batch the job ran in; inference_ms is its own stream's
        return outcomes

    def plan_streams(self, *, repeats: int = 2, prefer_within: float = 1.03, max_items: int = 16,
                     budget_s: float = 4.0) -> int:
        """How many side-by-side streams this model's batches run as in this process: the manifest's `streams`
        or INFERQ_STREAMS, else measured here, once, at load: one forward pass over every thread against one
        single-thread pass per thread side by side, on a full batch (the manifest's `batch_size`, at most
        `max_items` samples; fastest of up to `repeats` interleaved tries each, one past `budget_s`). A smaller
        batch measured something else: resnet50 ran batches of 4 faster as one pass (20.43 against 19.85 img/s
        in the limit loop) and batches of 8 faster as two streams (21.53 against 20.45), each stream's share
        twice as big; measured on 4 samples, the worker ran its batches of 8 as one pass.

        Which is faster depends on the host: on one 2-core machine resnet50's limit loop ran 15% faster as two
        streams (batch 8, decoding included), while on another two single-thread worker processes were 22-37%
        slower than one 2-thread process. Streams are kept within 3% because they hold up better beside the web
        tier: a 2-thread pass
        waits at every layer for whichever thread another process interrupted, a stream only for itself
        (resnet50 with a process taking 5% of the machine: 9% slower as one pass, 5% as two streams).
        Only on the CPU, with at least two threads, a batch of at least two and a pass of 20 ms or more. The
        streams are measured with their 1x1 convolutions on oneDNN, as the one pass runs them.
        """
        threads = self.threads()
        configured = configured_streams(self.spec)
        if configured is not None:
            self.streams = max(1, min(configured, threads))
            return self.streams
        self.streams = 1
        if self.device.type != "cpu" or threads < 2 or self.spec.batch_size < 2:
            return 1
        items = min(self.spec.batch_size, max_items)
        example = self.example_input()
        batch = example.unsqueeze(0).expand(items, *example.shape).contiguous()
        runs = split_evenly(items, threads)

        def whole() -> None:
            with torch.inference_mode(), threads_at_most(self.spec.threads):
                self.predict(batch.to(self.device))

        def part(run: range) -> None:
            own_threads(1)
            with torch.inference_mode():
                self.predict(batch[run.start:run.stop].to(self.device))

        def side_by_side() -> None:
            list(thread_pool("stream", threads).map(part, runs))

        # The streams' 1x1 convolutions on oneDNN, where the whole pass has them (unless INFERQ_CONV1X1=native):
        # on PyTorch's single-thread choice they ran resnet50 6-7% slower here (workers/conv1x1.py), enough to
        # lose a choice they win on the same kernels. `plan_conv1x1` then settles where they run.
        module = self.torch_module()
        routed = configured_conv1x1() != "native" and conv1x1.route(module, True) > 0
        try:
            timings = fastest_ms({"whole": whole, "streams": side_by_side}, repeats=repeats, budget_s=budget_s)
        finally:
            if routed:
                conv1x1.route(module, False)
        whole_ms, streams_ms = timings["whole"], timings["streams"]
        if whole_ms >= self.STREAMS_MIN_FORWARD_MS and streams_ms <= whole_ms * prefer_within:
            self.streams = threads
        logger.info("model %s:%s runs batches as %d stream(s): %d inputs in %.0f ms as one %d-thread pass, "
                    "%.0f ms as %d single-thread streams", self.spec.name, self.spec.version, self.streams,
                    items, whole_ms, threads, streams_ms, threads)
        return self.streams

    def torch_module(self) -> torch.nn.Module | None:
        """The handler's model as an `nn.Module` (its `module`), if it has one."""
        module = getattr(self, "module", None)
        return module if isinstance(module, torch.nn.Module) else None

    def pass_threads(self) -> int:
        """The torch threads each forward pass of a full batch runs on (after `plan_streams`)."""
        return max(1, self.threads() // max(1, self.streams))

    def plan_conv1x1(self, *, repeats: int = 3, max_items: int = 8, budget_s: float = 4.0,
                     prefer_below: float = 0.98) -> bool:
        """Whether this model's 1x1 convolutions run on oneDNN in its single-thread passes (workers/conv1x1.py):
        INFERQ_CONV1X1 (`onednn`, `native`), else measured here, once, at load, after `plan_streams`: its
        passes as they run a full batch (side by side when it runs streams; each on a share of the batch, at
        most `max_items` samples) with the 1x1 convolutions where PyTorch puts them against on oneDNN, the
        fastest of up to `repeats` interleaved tries each (one, past `budget_s`). oneDNN is kept only when at
        least 2% faster. Only on the CPU, for a module with such convolutions whose passes run on one thread (on
        more, PyTorch runs them on oneDNN itself), and passes of 20 ms or more.
        """
        module = self.torch_module()
        mode = configured_conv1x1()
        if self.device.type != "cpu" or not conv1x1.route(module, False):
            return False
        if mode != "auto":
            conv1x1.route(module, mode == "onednn")
            return mode == "onednn"
        if self.pass_threads() != 1:
            return False
        streams = max(1, self.streams)
        items = min(max_items, -(-max(1, self.spec.batch_size) // streams))
        example = self.example_input()
        share = example.unsqueeze(0).expand(items, *example.shape).contiguous().to(self.device)

        def one_pass(_: int = 0) -> None:
            own_threads(1)
            with torch.inference_mode():
                self.predict(share)

        def passes() -> None:
            if streams > 1:
                list(thread_pool("stream", streams).map(one_pass, range(streams)))
            else:
                with threads_at_most(1), torch.inference_mode():
                    self.predict(share)

        timings = fastest_ms({False: passes, True: passes}, repeats=repeats, budget_s=budget_s,
                             before=lambda onednn: conv1x1.route(module, onednn))
        native_ms, onednn_ms = timings[False], timings[True]
        chosen = native_ms >= self.STREAMS_MIN_FORWARD_MS and onednn_ms <= native_ms * prefer_below
        conv1x1.route(module, chosen)
        logger.info("model %s:%s runs the 1x1 convolutions of its single-thread passes on %s: %d x %d inputs in "
                    "%.0f ms as PyTorch picks, %.0f ms on oneDNN", self.spec.name, self.spec.version,
                    "oneDNN" if chosen else "PyTorch's choice", streams, items, native_ms, onednn_ms)
        return chosen
