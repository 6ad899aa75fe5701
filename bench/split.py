"""Worker processes x torch threads (x streams) on this machine: end-to-end images/s for a large and a small model.

A process with more than one thread is measured both ways it can run a batch: one forward pass on all its
threads, and one single-thread pass per thread side by side (`streams`, which the worker otherwise chooses at
load by measuring both).

`python -m bench.split` (or `make bench-split`) prints the table the README's guidance comes from.
"""

from __future__ import annotations

import os
import sys

from bench.__main__ import CLIENTS, ROOT, ensure_store, log, restart_worker, throughput
from bench.images import photos
from bench.stack import stack

CORES = len(os.sched_getaffinity(0))


def splits() -> list[tuple[int, int, int]]:
    """(processes, threads, streams) with processes x threads = cores, plus the 1 x 1 floor."""
    found = [(p, CORES // p) for p in range(1, CORES + 1) if CORES % p == 0] + [(1, 1)]
    return [(p, t, s) for p, t in found for s in sorted({1, t})]


def main() -> int:
    models = {"large": "resnet152", "small": "mobilenet_v3_small"}
    store = ROOT / "var" / "bench" / "store"
    ensure_store(store, models["small"], models["large"])
    images = photos(48)
    rows = []
    with stack(store, ROOT / "var" / "bench" / "split", models=[models["small"]]) as svc:
        for size, model in models.items():
            count = 32 if size == "large" else 48
            for procs, threads, streams in splits():
                log(f"{model}: {procs} process(es) x {threads} thread(s) as {streams} stream(s)")
                restart_worker(svc, models=[model], concurrency=procs, threads=threads, INFERQ_STREAMS=str(streams))
                rows.append((size, model, procs, threads, streams,
                             throughput(svc, model, images[:count], CLIENTS)))
    print(f"\nprocesses x threads x streams, end to end over HTTP ({CORES} cores, {CLIENTS} jobs in flight)")
    print(f"{'model':<28}{'processes':>10}{'threads':>9}{'streams':>9}{'img/s':>9}")
    for size, model, procs, threads, streams, rate in rows:
        print(f"{size + ': ' + model:<28}{procs:>10}{threads:>9}{streams:>9}{rate:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
