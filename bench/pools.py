"""One client's round trip under Celery's prefork pool (the default) and under its solo pool, side by side.

Two stacks run at once, each serving resnet50 and digits from one worker (the default layout: one process with
every core), one with `--pool=prefork` and one with `--pool=solo`; turns of one client's submit-and-wait
requests on digits alternate between them (the order flips each turn), so that the host's drift falls on both.
Solo runs each job in the worker's own process, without the hop to a pool process and back; the README's
*Processes × threads* says what it gives up.

`python -m bench.pools` (or `make bench-pools`) prints each turn's p50 and, over all turns, p50 / p90 / p99.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from contextlib import ExitStack

from bench.__main__ import ROOT, ensure_store, latency, log, percentile
from bench.stack import stack

POOLS = {"prefork": ("--pool=prefork",), "solo": ("--pool=solo",)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=10, help="turns per pool (default 10)")
    parser.add_argument("--requests", type=int, default=100, help="requests per turn (default 100)")
    args = parser.parse_args()
    store = ROOT / "var" / "bench" / "store"
    ensure_store(store, "resnet50")
    times: dict[str, list[float]] = {pool: [] for pool in POOLS}
    turns: dict[str, list[float]] = {pool: [] for pool in POOLS}
    with ExitStack() as stacks:
        services = {pool: stacks.enter_context(stack(store, ROOT / "var" / "bench" / f"pool-{pool}",
                                                     models=["resnet50", "digits"], worker_args=worker_args))
                    for pool, worker_args in POOLS.items()}
        for turn in range(args.turns):
            for pool in list(POOLS)[:: 1 if turn % 2 == 0 else -1]:
                measured = latency(services[pool], args.requests)
                times[pool] += measured
                turns[pool].append(statistics.median(measured))
            log(f"turn {turn + 1}: " + ", ".join(f"{pool} p50 {turns[pool][-1]:.2f} ms" for pool in POOLS))
    faster = sum(s < p for s, p in zip(turns["solo"], turns["prefork"], strict=True))
    print(f"\none client, submit and wait on digits ({len(os.sched_getaffinity(0))} cores; "
          f"{args.turns} turns of {args.requests} requests each, alternating)")
    print(f"{'pool':<10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}   each turn's p50")
    for pool, measured in times.items():
        print(f"{pool:<10}{statistics.median(measured):>9.2f}{percentile(measured, 90):>9.2f}"
              f"{percentile(measured, 99):>9.2f}   " + " ".join(f"{t:.2f}" for t in turns[pool]))
    print(f"solo's p50 below prefork's in {faster} of {args.turns} turns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
