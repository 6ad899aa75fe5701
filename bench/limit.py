"""The physical limit: decode + preprocess + forward in one in-process loop.

`python -m bench.limit STORE MODEL --batch-sizes 1,4,8 --images N` prints JSON:
images/s per batch size, the wall-clock start and end of the last one's loop, and single-input
latencies for `--latency N`: back to back, or with `--gap-ms` of idle time before each call, as a
served client's requests reach the model (on the VMs measured here, a call after 5 ms or more of
idle took twice as long as one straight after the last: 1.5 against 0.7 ms for digits).
`make bench` runs the same measurement (`measure`) inside its lab process (bench/lab.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.images import photos
from bench.layout import layout_key
from workers import conv1x1
from workers.digits import holdout_pngs
from workers.handlers import Handler, get_handler
from workers.malloc import tune_malloc
from workers.store import ModelStore

PHOTO = (640, 480)


def inputs_for(model: str, count: int, size: tuple[int, int] = PHOTO) -> list[tuple[bytes, str]]:
    if model == "digits":
        pngs = holdout_pngs()
        return [(pngs[i % len(pngs)][0], "image/png") for i in range(count)]
    return [(img, "image/jpeg") for img in photos(count, size)]


def idle(seconds: float) -> None:
    """The pause before a paced call (its own name, so a test can count it without touching time.sleep)."""
    time.sleep(seconds)


def load(store: Path, model: str) -> Handler:
    """The model's handler, set up on the CPU in a process whose allocator is tuned as a worker's is."""
    tune_malloc()
    handler = get_handler(ModelStore(store).get(model))
    handler.setup(torch.device("cpu"))
    return handler


def measure(handler: Handler, items: list[tuple[bytes, str]], *, batch_sizes: list[int], threads: int,
            streams: tuple[int, ...] = (1,), latency: int = 0, gap_ms: float = 0.0,
            onednn_1x1: dict[str, bool] | None = None) -> dict[str, Any]:
    """images/s (and CPU ms per image) per batch size and layout over `items` with `threads` torch threads (one
    forward pass per batch, or `streams` side-by-side passes over its shares, as the worker may run it; see
    `Handler.plan_streams`), then `latency` single calls. A layout whose passes run on one thread is measured
    with its 1x1 convolutions where PyTorch puts them and on oneDNN (workers/conv1x1.py), and the faster
    counts (`onednn_1x1` per layout: measured only as given)."""
    torch.set_num_threads(threads)
    module = handler.torch_module()
    out: dict[str, Any] = {"threads": threads, "rates": {}, "cpu_ms_per_item": {}, "onednn_1x1": {}}
    for bs in batch_sizes:
        for count in sorted({s for s in streams if 1 <= s <= min(bs, threads)}):
            key, handler.streams = layout_key(bs, count), count
            routings = [False]
            if onednn_1x1 is not None and key in onednn_1x1:
                routings = [onednn_1x1[key]]
            elif threads // count == 1 and conv1x1.route(module, False):
                routings = [False, True]
            for onednn in routings:
                conv1x1.route(module, onednn)
                handler.run_batch(items[:bs])  # warm this shape
                out["started"] = time.time()
                started, cpu = time.perf_counter(), os.times()
                for i in range(0, len(items), bs):
                    handler.run_batch(items[i:i + bs])
                rate = len(items) / (time.perf_counter() - started)
                done = os.times()
                if rate > out["rates"].get(key, 0.0):
                    out["rates"][key], out["onednn_1x1"][key] = rate, onednn
                    out["cpu_ms_per_item"][key] = (done.user + done.system - cpu.user - cpu.system) * 1000 / len(items)
                out["finished"] = time.time()
    conv1x1.route(module, False)
    handler.streams = 1
    if latency:
        times = []
        for i in range(latency):
            data, content_type = items[i % len(items)]
            if gap_ms:
                idle(gap_ms / 1000.0)
            started = time.perf_counter()
            handler(data, content_type)
            times.append((time.perf_counter() - started) * 1000)
        out["latency_ms"] = {"p50": statistics.median(times), "mean": statistics.fmean(times)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("model")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--latency", type=int, default=0)
    parser.add_argument("--gap-ms", type=float, default=0.0,
                        help="with --latency: idle this long before each timed call (a served client's pace)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--streams", default="1", help="comma list: side-by-side passes per batch to try")
    args = parser.parse_args()
    out = measure(load(args.store, args.model), inputs_for(args.model, args.images),
                  batch_sizes=[int(b) for b in args.batch_sizes.split(",")], threads=args.threads,
                  streams=tuple(int(s) for s in args.streams.split(",")), latency=args.latency, gap_ms=args.gap_ms)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
