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
