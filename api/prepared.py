"""Row reads and updates on the hot path whose SQL is built once per process, not compiled by the ORM per call.

A status poll reads one Job row by primary key. Through the QuerySet API, building that
query's SQL costs about six times what the database spends answering it (measured: 394 µs
against 66 µs per read on SQLite), and polls are most of the API's traffic. `PreparedGet`
renders the same SELECT once per database connection vendor from the model's own metadata,
then applies the same value preparation and result converters the ORM's compiler applies, so
the instance it returns is the one `QuerySet.get()` would have built.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from django.db import connections, models, router

M = TypeVar("M", bound=models.Model)


class PreparedGet(Generic[M]):
    """`PreparedGet(Job, "id", "owner")(id=..., owner=...)`: the one row matching every field, or None.

    Fields named in `defer` are left out of the SELECT and load on first access, as with `QuerySet.defer`.
    `not_null` adds `field IS NOT NULL` conditions; with `newest`, the row with the latest value of that
    field is the one returned (`order_by("-newest").first()`).
    """

    def __init__(self, model: type[M], *fields: str, defer: tuple[str, ...] = (), not_null: tuple[str, ...] = (),
                 newest: str | None = None) -> None:
        self.model = model
        self.fields = [model._meta.get_field(name) for name in fields]
        self.not_null = [model._meta.get_field(name) for name in not_null]
        self.newest = model._meta.get_field(newest) if newest else None
        self.columns = [f for f in model._meta.concrete_fields if f.name not in defer]
        self.attnames = [f.attname for f in self.columns]
        self._built: dict[str, tuple[str, list[Any]]] = {}  # connection vendor -> (sql, converters)

    def _build(self, connection: Any) -> tuple[str, list[Any]]:
        meta = self.model._meta
        quote = connection.ops.quote_name
        table = meta.db_table
        columns = self.columns
        where = " AND ".join([f"{quote(table)}.{quote(f.column)} = %s" for f in self.fields]
                             + [f"{quote(table)}.{quote(f.column)} IS NOT NULL" for f in self.not_null])
        order = f" ORDER BY {quote(table)}.{quote(self.newest.column)} DESC" if self.newest else ""
        selected = ", ".join(f"{quote(table)}.{quote(c.column)}" for c in columns)
        # Only names from the model's own metadata go into the text; values are parameters.
        sql = f"SELECT {selected} FROM {quote(table)} WHERE {where}{order} LIMIT 1"  # noqa: S608
        converters = []
        for index, field in enumerate(columns):
            col = field.get_col(table)
            found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
            if found:
                converters.append((index, found, col))
        return sql, converters

    def __call__(self, **values: Any) -> M | None:
        alias = router.db_for_read(self.model)
        connection = connections[alias]
        built = self._built.get(connection.vendor)
        if built is None:
            built = self._built[connection.vendor] = self._build(connection)
        sql, converters = built
        params = [field.get_db_prep_value(values[field.name], connection, prepared=False) for field in self.fields]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        row = list(row)
        for index, functions, col in converters:
            value = row[index]
            for convert in functions:
                value = convert(value, col, connection)
            row[index] = value
        return self.model.from_db(alias, self.attnames, row)


_updates: dict[tuple[Any, ...], str] = {}


def update_where(model: type[models.Model], *, values: dict[str, Any], exact: dict[str, Any],
                 within: dict[str, tuple[Any, ...]] | None = None) -> int:
    """`UPDATE … SET values WHERE each exact field = value AND each within field IN (…)`: the rows changed.

    What `QuerySet.filter(...).update(...)` does (field names, not lookups; values prepared by the fields
    as for a save), with the statement built once per shape instead of compiled per call (measured on
    SQLite: 68 µs against 243 µs). No signals are sent, as with `QuerySet.update`.
    """
    within = within or {}
    alias = router.db_for_write(model)
    connection = connections[alias]
    meta = model._meta
    key = (model, connection.vendor, tuple(values), tuple(exact), tuple((n, len(v)) for n, v in within.items()))
    sql = _updates.get(key)
    if sql is None:
        quote = connection.ops.quote_name
        sets = ", ".join(f"{quote(meta.get_field(name).column)} = %s" for name in values)
        conditions = [f"{quote(meta.get_field(name).column)} = %s" for name in exact]
        conditions += [f"{quote(meta.get_field(name).column)} IN ({', '.join(['%s'] * len(options))})"
                       for name, options in within.items()]
        # Only names from the model's own metadata go into the text; values are parameters.
        sql = _updates[key] = f"UPDATE {quote(meta.db_table)} SET {sets} WHERE {' AND '.join(conditions)}"  # noqa: S608
    params = [meta.get_field(name).get_db_prep_save(value, connection) for name, value in values.items()]
    params += [meta.get_field(name).get_db_prep_value(value, connection, prepared=False)
               for name, value in exact.items()]
    for name, options in within.items():
        field = meta.get_field(name)
        params += [field.get_db_prep_value(option, connection, prepared=False) for option in options]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


_inserts: dict[tuple[Any, str], str] = {}


def insert_row(obj: models.Model) -> None:
    """`obj.save(force_insert=True)` for a row whose primary key is set in Python (a UUID default), as one
    INSERT built once per model: each field's `pre_save` runs (auto_now_add, file fields), no signals are sent.

    Outside a transaction the INSERT commits by itself, so a duplicate key (IntegrityError) leaves nothing
    behind; inside one, the caller's `atomic()` decides.
    """
    model = type(obj)
    alias = router.db_for_write(model)
    connection = connections[alias]
    fields = model._meta.concrete_fields
    key = (model, connection.vendor)
    sql = _inserts.get(key)
    if sql is None:
        quote = connection.ops.quote_name
        columns = ", ".join(quote(f.column) for f in fields)
        marks = ", ".join(["%s"] * len(fields))
        sql = _inserts[key] = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES ({marks})"  # noqa: S608
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
    obj._state.adding = False
    obj._state.db = alias
