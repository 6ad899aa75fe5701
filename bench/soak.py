"""Soak test (not run in CI): measure capacity, then hold ~70% of it for ten minutes.

    .venv/bin/python -m bench.soak                 # 10 minutes at 70% of measured capacity
    .venv/bin/python -m bench.soak --minutes 3     # shorter

Starts the whole service (embedded Redis, a Celery worker, beat, uWSGI) on the trained digits model,
finds how many jobs a second it completes end to end, then submits at `--load` of that rate from an
open-loop client for `--minutes`. Reports submit errors, failed or unfinished jobs, 5xx lines in the
web log, the queue depth it saw, and the worker processes' memory (RSS and PSS) at the start and the
end of the soak: the run passes with zero errors and worker RSS growth under 5%.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import requests

from bench import memory
from tests.integration.harness import Stack, start_stack, stop_stack

# Production-like recovery timings (the harness defaults are shortened for tests).
SOAK_ENV = {"INFERQ_LEASE_SECONDS": "30", "INFERQ_SWEEP_SECONDS": "10", "INFERQ_LOST_MESSAGE_SECONDS": "60",
            "LOG_LEVEL": "WARNING", "INFERQ_MAX_QUEUED": "1000000"}


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def add_digits(store: Path) -> None:
    from workers.export import export_digits
    from workers.store import ModelStore

    export_digits(ModelStore(store), version="1", epochs=20)


def inputs() -> list[bytes]:
    from workers.digits import holdout_pngs

    return [png for png, _ in holdout_pngs()]


def worker_memory(stack: Stack) -> dict[str, float]:
    """RSS and PSS (MiB) of the worker parent and its pool, summed."""
    parent = psutil.Process(stack.procs["worker"].pid)
    procs = [parent, *parent.children(recursive=True)]
    rss = sum(p.memory_info().rss for p in procs) / 2**20
    pss = sum(memory.pss_kib(p.pid) for p in procs) / 1024
    return {"rss_mib": round(rss, 1), "pss_mib": round(pss, 1), "processes": len(procs)}


class Client:
    """Submits from a pool of keep-alive sessions and counts what came back."""

    def __init__(self, stack: Stack, bodies: list[bytes], threads: int = 16) -> None:
        self.stack, self.bodies = stack, bodies
        self.pool = ThreadPoolExecutor(max_workers=threads)
        self.local = threading.local()
        self.lock = threading.Lock()
        self.statuses: dict[int, int] = {}
        self.exceptions = 0
        self.sent = 0

    def _session(self) -> requests.Session:
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def _submit(self, i: int) -> None:
        body = self.bodies[i % len(self.bodies)]
        try:
            response = self._session().post(f"{self.stack.base}/v1/models/digits/jobs", data=body, timeout=30,
                                            headers={**self.stack.headers, "Content-Type": "image/png"})
            code = response.status_code
        except requests.RequestException:
            with self.lock:
                self.exceptions += 1
            return
        with self.lock:
            self.statuses[code] = self.statuses.get(code, 0) + 1

    def submit(self) -> None:
        with self.lock:
            i = self.sent
            self.sent += 1
        self.pool.submit(self._submit, i)

    def errors(self) -> int:
        return self.exceptions + sum(n for code, n in self.statuses.items() if code != 202)


def counts(stack: Stack) -> dict[str, int]:
    found = {}
    for status in ("queued", "running", "succeeded", "failed", "canceled"):
        page = requests.get(f"{stack.base}/v1/jobs", params={"status": status, "limit": 1},
                            headers=stack.headers, timeout=30).json()
        found[status] = int(page["count"])
    return found


def succeeded(stack: Stack) -> int:
    page = requests.get(f"{stack.base}/v1/jobs", params={"status": "succeeded", "limit": 1}, headers=stack.headers,
                        timeout=30).json()
    return int(page["count"])


def drain(stack: Stack, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        now = counts(stack)
        if now["queued"] + now["running"] == 0 or time.monotonic() > deadline:
            return now
        time.sleep(1)


def measure_capacity(stack: Stack, bodies: list[bytes], seconds: float) -> float:
    """Jobs a second completed end to end while the queue is never empty."""
    client = Client(stack, bodies, threads=16)
    before = succeeded(stack)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if client.sent - (succeeded(stack) - before) < 400:
            for _ in range(100):
                client.submit()
        time.sleep(0.2)
    done = succeeded(stack) - before
    rate = done / (time.monotonic() - started)
    client.pool.shutdown(wait=True)
    drain(stack, 120)
    return rate


def soak(stack: Stack, bodies: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    client = Client(stack, bodies, threads=16)
    depth: list[int] = []
    started = time.monotonic()
    next_sample = started
    n = 0
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) * rate)
        while n < due:
            client.submit()
            n += 1
        if now >= next_sample:
            depth.append(int(requests.get(f"{stack.base}/v1/models/digits", headers=stack.headers,
                                          timeout=30).json()["queued"]))
            next_sample = now + 10
            elapsed = now - started
            log(f"{elapsed:5.0f}s  sent {client.sent}  errors {client.errors()}  queued {depth[-1]}")
        time.sleep(0.005)
    client.pool.shutdown(wait=True)
    return {"sent": client.sent, "statuses": client.statuses, "exceptions": client.exceptions,
            "submit_errors": client.errors(), "max_queued": max(depth or [0]),
            "mean_queued": round(sum(depth) / max(1, len(depth)), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="soak duration (default 10)")
    parser.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity (default 0.7)")
    parser.add_argument("--capacity-seconds", type=float, default=30.0, help="capacity measurement (default 30)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep processes' files here")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="inferq-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"starting the service in {workdir}")
    stack = start_stack(workdir, [], env=SOAK_ENV, concurrency=args.concurrency, prepare=add_digits)
    try:
        bodies = inputs()
        log(f"measuring capacity for {args.capacity_seconds:.0f}s")
        capacity = measure_capacity(stack, bodies, args.capacity_seconds)
        rate = capacity * args.load
        log(f"capacity {capacity:.1f} jobs/s; soaking at {rate:.1f} jobs/s for {args.minutes:g} min")
        memory_start = worker_memory(stack)
        before = counts(stack)
        result = soak(stack, bodies, rate, args.minutes * 60)
        memory_end = worker_memory(stack)
        after = drain(stack, 300)
        web_5xx = [line for line in stack.log("web").read_text(errors="replace").splitlines()
                   if "(HTTP/1.1 5" in line and "/readyz" not in line]
        failed = after["failed"] - before["failed"]
        unfinished = after["queued"] + after["running"]
        done = after["succeeded"] - before["succeeded"]
        growth = (memory_end["rss_mib"] - memory_start["rss_mib"]) / memory_start["rss_mib"] * 100
        report = {
            "minutes": args.minutes, "capacity_jobs_per_s": round(capacity, 1), "load": args.load,
            "rate_jobs_per_s": round(rate, 1), **result, "succeeded": done, "failed": failed,
            "unfinished": unfinished, "web_5xx": len(web_5xx), "worker_memory_start": memory_start,
            "worker_memory_end": memory_end, "worker_rss_growth_pct": round(growth, 2),
        }
        errors = result["submit_errors"] + failed + unfinished + len(web_5xx) + abs(result["sent"] - done)
        report["errors"] = errors
        report["passed"] = errors == 0 and growth < 5.0
        print(json.dumps(report, indent=2))
        return 0 if report["passed"] else 1
    finally:
        stop_stack(stack)


if __name__ == "__main__":
    sys.exit(main())
