"""The job table keeps only indexes that some read needs: each one is written on every submit."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from api.models import Batch, Job
from api.selectors import batch_counts

pytestmark = pytest.mark.django_db


def job_indexes() -> dict[str, tuple[str, ...]]:
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, Job._meta.db_table)
    return {name: tuple(info["columns"]) for name, info in found.items() if info["index"] and not info["primary_key"]}


def test_no_index_is_a_leading_part_of_another() -> None:
    # Such an index answers no read the longer one cannot, and costs every INSERT one more write.
    indexes = job_indexes()
    redundant = [(name, other) for name, columns in indexes.items() for other, longer in indexes.items()
                 if other != name and longer[: len(columns)] == columns]
    assert redundant == []
    assert indexes["job_owner_created"][0] == "owner_id"  # what serves the owner's reads and cascades


def test_the_batch_index_holds_only_jobs_in_a_batch_and_serves_their_reads(user: Any, make_job: Any) -> None:
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT sql FROM sqlite_master WHERE name = 'job_batch'")
        else:
            cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'job_batch'")
        (definition,) = cursor.fetchone()
    assert "WHERE batch_id IS NOT NULL" in definition.replace('"', "").replace("(", "").replace(")", "")

    batch = Batch.objects.create(owner=user, name="b")
    job = make_job(b"x")
    Job.objects.filter(id=job.id).update(batch=batch)
    make_job(b"y")  # no batch
    query = Job.objects.filter(batch=batch).order_by().values("status")
    if connection.vendor == "sqlite":
        assert "USING INDEX job_batch" in query.explain()  # a batch's jobs are still found through it
    assert batch_counts(batch=batch)["queued"] == 1


def index_definition(name: str) -> str:
    """The index's SQL (SQLite) or definition (PostgreSQL), without quotes, parentheses and casts."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT sql FROM sqlite_master WHERE name = %s", [name])
        else:
            cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [name])
        (definition,) = cursor.fetchone()
    for noise in ('"', "'", "(", ")", "::text"):
        definition = definition.replace(noise, "")
    return definition


def query_plan(sql: str, params: list[Any]) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        return " | ".join(str(row[-1]) for row in cursor.fetchall())


def test_a_submit_writes_neither_a_second_status_index_nor_the_result_cache_index() -> None:
    # Each index of the job table is one more B-tree write in every submit's INSERT (about 25 µs on SQLite).
    indexes = job_indexes()
    assert indexes["job_queue"] == ("status", "model_name", "model_version", "created_at")
    assert [name for name, columns in indexes.items() if columns[0] == "status"] == ["job_queue"]
    assert "job_status_model" not in indexes and "job_claim" not in indexes
    # A queued job (what a submit inserts) is not in the cache's index: only succeeded jobs are.
    assert indexes["job_cache_key"] == ("model_name", "model_version", "input_sha256")
    assert "WHERE status = succeeded" in index_definition("job_cache_key")


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's EXPLAIN QUERY PLAN")
def test_the_cache_lookup_and_every_read_by_status_find_their_index(user: Any) -> None:
    from django.utils import timezone

    from api.cache import _latest_answer, _latest_own_answer
    from api.models import JobStatus
    from api.services import _ANY_QUEUED

    for lookup in (_latest_answer, _latest_own_answer):
        sql, _ = lookup._build(connection)
        assert "'succeeded'" in sql  # written into the SQL, so the partial index's condition is seen to hold
        params = ["echo", "1", "0" * 64] + ([user.pk] if lookup is _latest_own_answer else [])
        assert "USING INDEX job_cache_key" in query_plan(sql, params)
    sql, _ = _ANY_QUEUED._build(connection)
    assert "USING INDEX job_queue (status=? AND model_name=? AND model_version=?)" in query_plan(
        sql, ["echo", "1", "queued", 0])
    claim = Job.objects.filter(model_name="echo", model_version="1", status=JobStatus.QUEUED,
                               attempts=0).order_by("created_at")[:8]
    assert "USING INDEX job_queue (status=? AND model_name=? AND model_version=?)" in claim.explain()
    assert "TEMP B-TREE" not in claim.explain()  # oldest first, straight from the index
    queued = Job.objects.filter(model_name="echo", status=JobStatus.QUEUED).order_by()
    assert "INDEX job_queue (status=? AND model_name=?)" in queued.explain()  # the queue bound's count
    orphans = Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=timezone.now()).order_by()
    assert "USING INDEX job_queue (status=?)" in orphans.explain()
