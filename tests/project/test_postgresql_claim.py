"""A batch's claim on a real PostgreSQL takes at most the jobs it asks for.

As `id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` the planner ran the locking subquery once per queued row (a
nested-loop semi join), each run past the rows already claimed: a claim of 31 took 274 of 1350 queued jobs, and a
worker ran batches of 450 where its manifest says 32. Needs a PostgreSQL server; `INFERQ_TEST_POSTGRES_URL`
(default: the local one, trust auth) names one whose user may create databases. Skipped where none answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.processes import ROOT, base_env, postgres_database

psycopg = pytest.importorskip("psycopg")

SERVER = os.environ.get("INFERQ_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")

# In a process with DATABASE_URL set: queue QUEUED jobs of one model version, claim LIMIT of them, print how many
# the claim returned and how many rows it marked running.
CLAIM = """
import django; django.setup()
from django.contrib.auth import get_user_model
from django.utils import timezone
from api.models import Job, JobStatus
from api.services import job_claim_queued
owner = get_user_model().objects.create_user("claimer")
now = timezone.now()
Job.objects.bulk_create([Job(owner=owner, model_name="m", model_version="1", input_content_type="x", input_size=1,
                             input_sha256="0" * 64, input_data=b"x", created_at=now, enqueued_at=now)
                         for _ in range({queued})])
claimed = job_claim_queued(model_name="m", model_version="1", worker="w", limit={limit})
print(len(claimed), Job.objects.filter(status=JobStatus.RUNNING).count())
"""


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A fresh, migrated database on the server, dropped afterwards; the environment that points at it."""
    monkeypatch.delenv("INFERQ_INTEGRATION_POSTGRES_URL", raising=False)  # base_env makes no second one
    try:
        url, drop = postgres_database(SERVER)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server answers at {SERVER}: {exc}")
    env = {**base_env(tmp_path, tmp_path / "models"), "DATABASE_URL": url}
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, env=env, check=True,
                       timeout=120)
        yield env
    finally:
        drop()


def test_a_claim_takes_at_most_its_limit_of_the_queued_jobs(database: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-c", CLAIM.format(queued=400, limit=31)], cwd=ROOT, env=database,
                         check=True, capture_output=True, text=True, timeout=120)

    assert out.stdout.split() == ["31", "31"]
