"""PreparedGet builds the instance the ORM would have built, from SQL rendered once."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from api.models import Batch, Job, JobStatus
from api.prepared import PreparedGet

pytestmark = pytest.mark.django_db


def field_values(job: Job) -> dict[str, Any]:
    return {f.attname: getattr(job, f.attname) for f in Job._meta.concrete_fields}


def test_the_row_equals_the_orms_in_every_field(user: Any, make_job: Any) -> None:
    job = make_job(b"x")
    batch = Batch.objects.create(owner=user, name="b")
    Job.objects.filter(id=job.id).update(
        status=JobStatus.SUCCEEDED, result={"predictions": [{"index": 3, "probability": 0.5}], "ok": True},
        started_at=timezone.now(), finished_at=timezone.now(), queue_ms=1.5, inference_ms=2.25, total_ms=4.0,
        batch_size=4, batch=batch, idempotency_key="k", cached=True, attempts=2)

    prepared = PreparedGet(Job, "id", "owner")(id=job.id, owner=user.pk)

    assert prepared is not None
    assert field_values(prepared) == field_values(Job.objects.get(id=job.id))
    assert prepared.result["predictions"][0]["index"] == 3
    assert prepared._state.adding is False and prepared._state.db == "default"


def test_no_row_is_none(user: Any, other_user: Any, make_job: Any) -> None:
    job = make_job(b"x")
    get = PreparedGet(Job, "id", "owner")
    assert get(id=job.id, owner=other_user.pk) is None
    assert get(id=job.id, owner=user.pk) is not None


def test_it_is_one_query(user: Any, make_job: Any) -> None:
    job = make_job(b"x")
    get = PreparedGet(Job, "id", "owner")
    with CaptureQueriesContext(connection) as queries:
        get(id=job.id, owner=user.pk)
        get(id=job.id, owner=user.pk)
    assert len(queries.captured_queries) == 2
    assert "LIMIT 1" in queries.captured_queries[0]["sql"]


# What differs between two jobs anyway.
SKIP = {"id", "input", "input_data", "input_sha256", "created_at", "enqueued_at"}


def test_update_where_writes_what_the_orm_would(user: Any, make_job: Any) -> None:
    from api.prepared import update_where

    job, twin = make_job(b"x"), make_job(b"y")
    now = timezone.now()
    values = {"status": JobStatus.SUCCEEDED, "result": {"top": [1, 2], "label": "ü"}, "finished_at": now,
              "total_ms": 12.5, "lease_expires_at": None, "error_code": ""}

    changed = update_where(Job, values=values, exact={"id": job.id}, within={"status": ("queued", "running")})
    Job.objects.filter(id=twin.id).update(**values)

    assert changed == 1
    written, expected = Job.objects.get(id=job.id), Job.objects.get(id=twin.id)
    assert {k: v for k, v in field_values(written).items() if k not in SKIP} == \
        {k: v for k, v in field_values(expected).items() if k not in SKIP}
    assert written.result == {"top": [1, 2], "label": "ü"} and written.finished_at == now


def test_update_where_changes_nothing_when_a_condition_fails(make_job: Any) -> None:
    from api.prepared import update_where

    job = make_job(b"x")
    assert update_where(Job, values={"worker": "w"}, exact={"id": job.id, "attempts": 5}) == 0
    assert update_where(Job, values={"worker": "w"}, exact={"id": job.id}, within={"status": ("failed",)}) == 0
    assert Job.objects.get(id=job.id).worker == ""


def new_job(owner: Any, **fields: Any) -> Job:
    return Job(owner=owner, model_name="echo", model_version="1", input_content_type="text/plain", input_size=1,
               input_sha256="0" * 64, **fields)


def test_insert_row_stores_what_save_would(user: Any) -> None:
    from api.prepared import insert_row

    mine, theirs = new_job(user, idempotency_key="a"), new_job(user, idempotency_key="b")
    insert_row(mine)
    theirs.save(force_insert=True)

    assert mine._state.adding is False
    stored, saved = Job.objects.get(id=mine.id), Job.objects.get(id=theirs.id)
    skip = SKIP | {"idempotency_key"}
    assert {k: v for k, v in field_values(stored).items() if k not in skip} == \
        {k: v for k, v in field_values(saved).items() if k not in skip}
    assert stored.created_at is not None and stored.status == JobStatus.QUEUED  # auto_now_add and defaults


def test_only_djangos_own_fields_skip_preparing_a_none() -> None:
    from django.db import models

    from api.prepared import _prep_save

    class EmptyForNone(models.CharField):  # a project's field may store None as something else
        def get_db_prep_save(self, value: Any, connection: Any) -> Any:
            return "" if value is None else value

    assert _prep_save(EmptyForNone(max_length=5), None, connection) == ""
    assert _prep_save(Job._meta.get_field("started_at"), None, connection) is None
    assert _prep_save(Job._meta.get_field("result"), None, connection) is None  # SQL NULL, not JSON null


@pytest.mark.django_db(transaction=True)
def test_insert_row_outside_a_transaction_refuses_a_duplicate_key_and_keeps_nothing(user: Any) -> None:
    from django.db import IntegrityError

    from api.prepared import insert_row

    insert_row(new_job(user, idempotency_key="same"))
    with pytest.raises(IntegrityError):
        insert_row(new_job(user, idempotency_key="same"))
    assert Job.objects.filter(owner=user).count() == 1


def test_a_deferred_field_is_left_out_of_the_select_and_loads_on_access(user: Any, make_job: Any,
                                                                        django_assert_num_queries: Any) -> None:
    from api.prepared import PreparedGet

    job = make_job(b"inline bytes")
    read = PreparedGet(Job, "id", defer=("input_data",))
    with django_assert_num_queries(1) as queries:
        got = read(id=job.id)
    assert got is not None and '"input_data"' not in queries.captured_queries[0]["sql"]
    assert got.get_deferred_fields() == {"input_data"}
    with django_assert_num_queries(1):
        assert bytes(got.input_data) == b"inline bytes"


def test_newest_and_not_null_pick_what_order_by_first_would(user: Any, make_job: Any) -> None:
    from datetime import timedelta

    from api.prepared import PreparedGet

    jobs = [make_job(b"same") for _ in range(4)]
    now = timezone.now()
    for job, (minutes, result) in zip(jobs, [(1, {"r": 1}), (3, None), (2, {"r": 2}), (0, {"r": 0})], strict=True):
        Job.objects.filter(id=job.id).update(status=JobStatus.SUCCEEDED, result=result,
                                             finished_at=now + timedelta(minutes=minutes))
    read = PreparedGet(Job, "input_sha256", "status", not_null=("result",), newest="finished_at")
    expected = Job.objects.filter(input_sha256=jobs[0].input_sha256, status=JobStatus.SUCCEEDED,
                                  result__isnull=False).order_by("-finished_at").first()

    found = read(input_sha256=jobs[0].input_sha256, status=JobStatus.SUCCEEDED)

    assert found is not None and expected is not None
    assert found.id == expected.id == jobs[2].id and found.result == {"r": 2}
    assert read(input_sha256="0" * 64, status=JobStatus.SUCCEEDED) is None


def test_a_model_with_init_signal_receivers_is_built_through_its_init(user: Any, make_job: Any) -> None:
    """Without receivers the row goes straight into the instance; with one, `from_db` runs and it fires."""
    from django.db.models.signals import post_init

    job = make_job(b"x")
    get = PreparedGet(Job, "id", defer=("input_data",))
    seen: list[Any] = []

    def receiver(sender: Any, instance: Any, **kwargs: Any) -> None:
        seen.append(instance)

    plain = get(id=job.id)
    post_init.connect(receiver, sender=Job)
    try:
        built = get(id=job.id)
    finally:
        post_init.disconnect(receiver, sender=Job)
    assert seen == [built]
    assert plain is not None and built is not None
    assert plain.get_deferred_fields() == built.get_deferred_fields() == {"input_data"}
    assert field_values(plain) == field_values(built) == field_values(Job.objects.get(id=job.id))
    assert plain._state.adding is built._state.adding is False and plain._state.db == built._state.db == "default"
