"""PreparedGet builds the instance the ORM would have built, from SQL rendered once."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, connections
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



def test_a_fixed_value_is_a_condition_written_into_the_sql(make_job: Any) -> None:
    job = make_job(b"x")
    get = PreparedGet(Job, "id", fixed={"status": str(JobStatus.SUCCEEDED)})
    assert "= 'succeeded'" in get._build(connection)[0]
    assert get(id=job.id) is None  # still queued
    Job.objects.filter(id=job.id).update(status=JobStatus.SUCCEEDED)
    found = get(id=job.id)
    assert found is not None and found.status == JobStatus.SUCCEEDED


@pytest.mark.parametrize("value", ["it's", "a b", "x;--", "", 3, "é"])
def test_a_fixed_value_must_be_a_plain_word(value: Any) -> None:
    with pytest.raises(ValueError, match="plain word"):
        PreparedGet(Job, "id", fixed={"status": value})

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

    from api.prepared import _preparer

    class EmptyForNone(models.CharField):  # a project's field may store None as something else
        def get_db_prep_save(self, value: Any, connection: Any) -> Any:
            return "" if value is None else value

    assert _preparer(EmptyForNone(max_length=5), connection)(None) == ""
    assert _preparer(Job._meta.get_field("started_at"), connection)(None) is None
    assert _preparer(Job._meta.get_field("result"), connection)(None) is None  # SQL NULL, not JSON null


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


def test_on_sqlite_a_read_goes_straight_to_the_sqlite3_connection_when_nothing_watches(
        user: Any, make_job: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    job = make_job(b"x")
    get = PreparedGet(Job, "id", "owner")
    expected = field_values(Job.objects.get(id=job.id))

    def no_cursor(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a read with nothing watching must not need Django's cursor")

    monkeypatch.setattr(connections["default"], "cursor", no_cursor)
    found = get(id=job.id, owner=user.pk)
    assert found is not None and field_values(found) == expected


def test_an_execute_wrapper_still_sees_every_read(user: Any, make_job: Any) -> None:
    job = make_job(b"x")
    seen: list[str] = []

    def watch(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(watch):
        assert PreparedGet(Job, "id", "owner")(id=job.id, owner=user.pk) is not None
    assert len(seen) == 1 and "LIMIT 1" in seen[0]


def test_a_transaction_marked_for_rollback_refuses_the_read_as_djangos_cursor_does(user: Any, make_job: Any) -> None:
    from django.db import transaction
    from django.db.transaction import TransactionManagementError

    job = make_job(b"x")
    with transaction.atomic():
        transaction.set_rollback(True)
        with pytest.raises(TransactionManagementError):
            PreparedGet(Job, "id", "owner")(id=job.id, owner=user.pk)


def test_a_database_error_on_the_plain_read_is_djangos_error(user: Any, make_job: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from django.db import OperationalError

    get = PreparedGet(Job, "id", "owner")
    get(id=make_job(b"x").id, owner=user.pk)  # built
    monkeypatch.setitem(get._built, connection.vendor, ("SELECT no_such_column FROM api_job WHERE id = %s AND "
                                                        "owner_id = %s LIMIT 1", []))
    with pytest.raises(OperationalError) as raised:
        get(id=make_job(b"y").id, owner=user.pk)
    assert type(raised.value).__module__ == "django.db.utils"


def test_a_string_in_a_plain_text_column_is_passed_as_is_and_anything_else_prepared() -> None:
    from django.db import models

    from api.prepared import _preparer

    class Upper(models.CharField):  # a project's own text field keeps its preparation
        def get_db_prep_save(self, value: Any, connection: Any) -> Any:
            return str(value).upper()

    name = Job._meta.get_field("model_name")
    assert _preparer(name, connection)("digits") == "digits"
    assert _preparer(Upper(max_length=5), connection)("digits") == "DIGITS"
    assert _preparer(name, connection)(7) == "7"  # not a str: CharField's own to_python runs
    assert _preparer(Job._meta.get_field("status"), connection)(JobStatus.QUEUED) == "queued"  # an enum member


def test_new_instance_sets_what_init_sets(user: Any) -> None:
    from api.prepared import new_instance

    batch = Batch.objects.create(owner=user, name="b")
    values = {"owner": user, "model_name": "m", "model_version": "1", "input_content_type": "image/png",
              "input_size": 3, "input_sha256": "0" * 64, "batch": batch, "idempotency_key": None, "attempts": 2}
    ours, djangos = new_instance(Job, **values), Job(**values)

    assert type(ours) is Job and ours.id != djangos.id and ours.id.version == 4
    assert {k: v for k, v in field_values(ours).items() if k != "id"} == \
        {k: v for k, v in field_values(djangos).items() if k != "id"}
    assert ours.__dict__.keys() == djangos.__dict__.keys()
    assert ours.owner is user and ours.batch is batch and ours.owner_id == user.pk  # related objects cached
    assert ours.status == JobStatus.QUEUED and ours.input.name == "" and ours.result is None  # defaults
    assert ours._state.adding is djangos._state.adding is True and ours._state.db == djangos._state.db
    by_id = new_instance(Job, owner_id=user.pk, model_name="m")
    assert by_id.owner_id == user.pk and by_id.owner == user
    with pytest.raises(TypeError, match="no_such_field"):
        new_instance(Job, no_such_field=1)


def test_new_instance_goes_through_init_when_something_listens(user: Any) -> None:
    from django.db.models.signals import pre_init

    from api.prepared import new_instance

    seen: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        seen.append(dict(kwargs["kwargs"]))

    pre_init.connect(receiver, sender=Job)
    try:
        job = new_instance(Job, owner=user, model_name="m")
    finally:
        pre_init.disconnect(receiver, sender=Job)
    assert seen == [{"owner": user, "model_name": "m"}] and job.model_name == "m"


def test_each_shortcut_prepares_what_get_db_prep_save_does() -> None:
    import datetime
    import uuid

    from django.db import models

    from api.prepared import _preparer

    job = Job(input="inputs/2026/12/06/x")
    aware = timezone.now()
    cases: list[tuple[Any, Any]] = [
        (Job._meta.get_field("id"), uuid.uuid4()),
        (Job._meta.get_field("created_at"), aware),
        (Job._meta.get_field("created_at"), aware.astimezone(datetime.timezone(datetime.timedelta(hours=5)))),
        (Job._meta.get_field("input_data"), b"\x00\x01binary"),
        (Job._meta.get_field("input"), job.input),
        (Job._meta.get_field("input_size"), 12345),
        (Job._meta.get_field("attempts"), 0),
        (Job._meta.get_field("cached"), True),
        (Job._meta.get_field("queue_ms"), 1.25),
        (Job._meta.get_field("status"), "queued"),
        (models.IntegerField(), 7),
        (models.SmallIntegerField(), -3),
        (models.BigIntegerField(), 2**40),
    ]
    for field, value in cases:
        expected = field.get_db_prep_save(value, connection)
        got = _preparer(field, connection)(value)
        assert type(got) is type(expected) and got == expected, (field, value, got, expected)


def test_a_value_a_shortcut_does_not_cover_takes_the_full_preparation() -> None:
    import datetime

    from api.prepared import _preparer

    created = Job._meta.get_field("created_at")
    naive = datetime.datetime(2026, 1, 2, 3, 4, 5)  # noqa: DTZ001 - the case under test
    with pytest.warns(RuntimeWarning, match="naive datetime"):  # Django's own warning: the full chain ran
        expected = created.get_db_prep_save(naive, connection)
    with pytest.warns(RuntimeWarning, match="naive datetime"):
        assert _preparer(created, connection)(naive) == expected
    size = Job._meta.get_field("input_size")
    assert _preparer(size, connection)("12") == 12  # a string in an integer column: to_python ran
    assert _preparer(Job._meta.get_field("cached"), connection)(1) is True
    key = Job._meta.get_field("id")
    assert _preparer(key, connection)("0" * 31 + "1") == key.get_db_prep_save("0" * 31 + "1", connection)


def test_an_integer_goes_as_it_is_only_where_the_backend_does_not_adapt_integers(monkeypatch: pytest.MonkeyPatch,
                                                                                 ) -> None:
    from api.prepared import _preparer

    size = Job._meta.get_field("input_size")
    assert _preparer(size, connection)(5) == 5
    adapted: list[Any] = []

    def adapt(value: Any, internal_type: str) -> Any:
        adapted.append(value)
        return value

    monkeypatch.setattr(type(connection.ops), "adapt_integerfield_value", lambda self, value, kind: adapt(value, kind))
    assert _preparer(size, connection)(5) == 5
    assert adapted == [5]  # PostgreSQL's kind of backend: its own adaptation still runs


def test_on_sqlite_the_insert_goes_straight_to_the_sqlite3_connection_when_nothing_watches(
        user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.prepared import insert_row

    job = new_job(user)

    def no_cursor(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an insert with nothing watching must not need Django's cursor")

    monkeypatch.setattr(connections["default"], "cursor", no_cursor)
    insert_row(job)
    monkeypatch.undo()
    assert Job.objects.filter(id=job.id).exists()


def test_an_execute_wrapper_still_sees_the_insert(user: Any) -> None:
    from api.prepared import insert_row

    seen: list[str] = []

    def watch(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(watch):
        insert_row(new_job(user))
    assert len(seen) == 1 and seen[0].startswith("INSERT")


@pytest.mark.django_db(transaction=True)
def test_an_insert_still_locked_out_after_its_busy_timeout_goes_through_djangos_cursor(
        user: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from api import prepared

    class Locked:
        def execute(self, *args: Any) -> Any:
            raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(prepared, "_plain_sqlite", lambda connection: Locked())
    job = new_job(user)
    prepared.insert_row(job)  # through the cursor (which queues it on the project's backend)
    assert Job.objects.filter(id=job.id).exists()


def test_any_other_error_on_the_plain_insert_is_djangos_error(user: Any) -> None:
    from django.db import IntegrityError

    from api.prepared import insert_row

    first = new_job(user)
    insert_row(first)
    twin = new_job(user)
    twin.id = first.id
    with pytest.raises(IntegrityError) as raised:
        insert_row(twin)
    assert type(raised.value).__module__ == "django.db.utils"


def test_on_sqlite_updates_go_straight_to_the_sqlite3_connection_when_nothing_watches(
        user: Any, make_job: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.prepared import PreparedUpdateReturning, update_where

    job, other = make_job(b"x"), make_job(b"y")
    claim = PreparedUpdateReturning(Job, sets=("worker",), where=("id",))
    claim(values={"worker": "warm"}, match={"id": other.id})  # SQL built

    def no_cursor(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a write with nothing watching must not need Django's cursor")

    monkeypatch.setattr(connections["default"], "cursor", no_cursor)
    assert update_where(Job, values={"worker": "w1"}, exact={"id": job.id}) == 1  # the rows changed, as rowcount
    assert update_where(Job, values={"worker": "w1"}, exact={"id": job.id, "attempts": 9}) == 0
    returned = claim(values={"worker": "w2"}, match={"id": other.id})
    monkeypatch.undo()
    assert returned is not None and returned[0].id == other.id and returned[0].worker == "w2"
    assert Job.objects.get(id=job.id).worker == "w1" and Job.objects.get(id=other.id).worker == "w2"


def test_updates_prepare_plain_values_without_djangos_chain(make_job: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's claim and finish prepare their SET values as a new job's INSERT does (`_preparer`): a str, a
    float, None and an aware datetime skip `get_db_prep_save`'s chain; what they write is what the ORM writes."""
    from django.db.models import Field

    from api.prepared import PreparedUpdateReturning, update_where

    job, other, twin = make_job(b"x"), make_job(b"y"), make_job(b"z")
    now = timezone.now()
    values = {"worker": "w", "total_ms": 2.5, "lease_expires_at": None, "finished_at": now}
    claim = PreparedUpdateReturning(Job, sets=tuple(values), where=("id",))
    calls: list[str] = []
    chain = Field.get_db_prep_save

    def counted(field: Any, value: Any, connection: Any) -> Any:
        calls.append(field.name)
        return chain(field, value, connection)

    monkeypatch.setattr(Field, "get_db_prep_save", counted)
    assert update_where(Job, values=values, exact={"id": job.id}) == 1
    returned = claim(values=values, match={"id": other.id})
    assert calls == []
    update_where(Job, values={"result": {"a": 1}}, exact={"id": job.id})  # a JSON value takes the chain
    assert calls == ["result"]
    monkeypatch.undo()

    Job.objects.filter(id=twin.id).update(**values)
    expected = {k: v for k, v in field_values(Job.objects.get(id=twin.id)).items() if k in values}
    assert returned is not None and {k: v for k, v in field_values(returned[0]).items() if k in values} == expected
    assert {k: v for k, v in field_values(Job.objects.get(id=other.id)).items() if k in values} == expected
    written = Job.objects.get(id=job.id)
    assert {k: v for k, v in field_values(written).items() if k in values} == expected
    assert written.result == {"a": 1}

@pytest.mark.parametrize("use_tz", [True, False])
def test_each_quicker_converter_gives_what_djangos_gives(settings: Any, use_tz: bool) -> None:
    """Every converter a Job row's columns take, as `_converters` hands them out, against Django's own, on every
    kind of value a column gives back: the same type, the same value, the same time zone."""
    import datetime

    from api.prepared import _converters

    settings.USE_TZ = use_tz
    conn = connections["default"]
    table = Job._meta.db_table
    built = _converters(conn, table, list(Job._meta.concrete_fields))
    naive = datetime.datetime(2026, 12, 6, 15, 4, 10, 123456)
    values = [None, naive, naive.replace(microsecond=0), naive.replace(tzinfo=datetime.UTC),
              "2026-12-06 15:04:10.123456"]
    checked = 0
    for _index, functions, col in built:
        djangos = conn.ops.get_db_converters(col) + col.get_db_converters(conn)
        assert len(functions) == len(djangos)
        if col.target.get_internal_type() != "DateTimeField":
            assert functions == djangos  # only SQLite's datetime converter has a quicker twin
            continue
        assert conn.vendor != "sqlite" or functions != djangos
        for value in values:
            got = expected = value
            for quick, theirs in zip(functions, djangos, strict=True):
                got, expected = quick(got, col, conn), theirs(expected, col, conn)
            assert type(got) is type(expected) and got == expected, (col, value, got, expected)
            assert getattr(got, "tzinfo", None) == getattr(expected, "tzinfo", None)
            checked += 1
    if conn.vendor == "sqlite":
        assert checked == 5 * len(values)  # the five datetime columns (PostgreSQL's come back aware, unconverted)
