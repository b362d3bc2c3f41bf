"""`PostgresFlusher`: each batch in one PostgreSQL transaction, with psycopg 3.

Three forms share the connection handling and the error classification:

- `PostgresFlusher.upsert(...)`: one `INSERT ... SELECT * FROM unnest(...)
  ON CONFLICT (key) DO UPDATE` with a binary array per column, or, for the
  types and values that cannot go that way, binary COPY into a temporary
  table then one `INSERT ... SELECT` from it;
- `PostgresFlusher.append(...)`: binary COPY straight into the table;
- `PostgresFlusher(dsn, sql, params)`: any statement, with `executemany`.

psycopg is imported when a `PostgresFlusher` is made, not when this module is,
so `import wbactor.flushers` works without it.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from wbactor.flushers._errors import (
    PermanentStoreError,
    StoreError,
    TransientStoreError,
    log_store_error,
)
from wbactor.flushers._tables import (
    Target,
    check_callable,
    check_pickles,
    latest_rows,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from types import ModuleType

    import psycopg
    from psycopg import sql as pgsql

__all__ = ["PostgresFlusher"]

T = TypeVar("T")

_DATA_EXCEPTION = "22"
"""SQLSTATE class whose messages may quote the offending value."""

_PERMANENT_CLASSES = ("21", "22", "23", "42", "54")
"""SQLSTATE classes of a batch that will fail the same way every time:
cardinality violation, data exception, integrity constraint violation, syntax
error or access rule violation, program limit exceeded (a row too big)."""

_STAGE = ("pg_temp", "wbactor_stage")
"""The temporary table an upsert copies into: one per connection."""

_PLAIN_TOO_BIG = "54000"
"""SQLSTATE of a row too wide for a page, as a staging table without TOAST
(all columns `STORAGE PLAIN`) raises for a row over about 8 kB."""

# Type OIDs (pg_type.oid), fixed for the built-in types.
_INT2, _INT4, _INT8, _FLOAT4, _FLOAT8, _TEXT = 21, 23, 20, 700, 701, 25
_INT2_ARRAY, _INT4_ARRAY, _INT8_ARRAY = 1005, 1007, 1016
_FLOAT4_ARRAY, _FLOAT8_ARRAY = 1021, 1022
_JSON, _JSONB = 114, 3802

_WIDER = {
    _INT2: (_INT8, "bigint"),
    _INT4: (_INT8, "bigint"),
    _FLOAT4: (_FLOAT8, "double precision"),
    _INT2_ARRAY: (_INT8_ARRAY, "bigint[]"),
    _INT4_ARRAY: (_INT8_ARRAY, "bigint[]"),
    _FLOAT4_ARRAY: (_FLOAT8_ARRAY, "double precision[]"),
}
"""Narrow types, staged as the wide type they are assigned from.

psycopg's binary dumpers for int2, int4 and float4 do not check the range (a
2**31 written to an integer column arrives as -2**31), so an upsert stages
them as bigint or double precision, and the server's assignment cast into
the table raises `numeric_value_out_of_range` as an INSERT would."""

_RANGES: dict[int, tuple[float, float, str]] = {
    _INT2: (-(2**15), 2**15 - 1, "smallint"),
    _INT4: (-(2**31), 2**31 - 1, "integer"),
    _FLOAT4: (-3.4028234663852886e38, 3.4028234663852886e38, "real"),
}
"""What an append checks, in Python, before it copies into a narrow column."""

_NARROW_ARRAYS = frozenset({_INT2_ARRAY, _INT4_ARRAY, _FLOAT4_ARRAY})
"""Arrays an append cannot range-check cheaply: such a table is copied as text."""

_COLUMNS_QUERY = """
WITH RECURSIVE col AS (
    SELECT a.attnum, a.attname, a.atttypid AS oid, a.atttypmod AS typmod, 0 AS depth
    FROM pg_catalog.pg_attribute AS a
    WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
    SELECT col.attnum, col.attname, t.typbasetype, t.typtypmod, col.depth + 1
    FROM col JOIN pg_catalog.pg_type AS t ON t.oid = col.oid
    WHERE t.typtype = 'd'
)
SELECT DISTINCT ON (col.attnum)
    col.attname, col.oid, t.typtype, pg_catalog.format_type(col.oid, col.typmod)
FROM col JOIN pg_catalog.pg_type AS t ON t.oid = col.oid
ORDER BY col.attnum, col.depth DESC
"""
"""Each column's name and base type (through domains): OID, kind, SQL name."""


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Everything a flusher is made from, and all that it pickles."""

    conninfo: str
    connect_kwargs: Mapping[str, Any]
    statement: str | pgsql.Composable | None = None
    params: Callable[[Any], Any] | None = None
    setup: tuple[str | pgsql.Composable, ...] = ()
    target: Target | None = None
    values: Callable[[Any], Sequence[Any]] | None = None


@dataclasses.dataclass
class _CopyPlan:
    """How one connection copies a batch: made once, from the table's types.

    The statements are rendered to text once, here: composing them for every
    batch cost a fifth of a millisecond.
    """

    copy: str
    types: list[int] | None  # the dumpers' type OIDs; None: text COPY
    columns: tuple[tuple[str, str], ...]  # (name, SQL type) of each column
    staged: tuple[str, ...] = ()  # upsert: the stage's SQL type of each column
    insert: str = ""  # upsert: "INSERT ... SELECT ... FROM stage ...; COMMIT"
    unnest: str = ""  # upsert: "INSERT ... SELECT * FROM unnest(%b, ...) ..."
    lists: tuple[type[list[Any]], ...] = ()  # unnest: each column's array type
    wide: bool = False  # the stage has TOAST: rows of any width
    ranges: tuple[tuple[int, float, float, str], ...] = ()  # append: checked here


class _BadRowError(Exception):
    """A row that cannot be copied: the wrong length, or a value of a wrong type."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class PostgresFlusher(Generic[T]):
    """Write each batch to PostgreSQL in one transaction, with psycopg 3.

    Make one with `PostgresFlusher.upsert(...)` or `PostgresFlusher.append(...)`:
    they compose their SQL from the table and column names
    (`psycopg.sql.Identifier`, so any name is quoted safely) and write each
    batch with binary COPY, the fastest way into PostgreSQL. The constructor,
    `PostgresFlusher(dsn, sql, params)`, runs a statement of yours for every
    item instead, with `executemany` (which psycopg pipelines: one round trip
    for the batch, not one per row).

    Every form connects on the first `flush`, on the flusher actor's thread,
    so making one does no I/O. On an error the transaction is rolled back and
    a `PermanentStoreError` or `TransientStoreError` is raised from the psycopg
    error, with its SQLSTATE (and `store_error` logged); after a transient
    error, or when the connection broke, the connection is closed, so the next
    attempt reconnects. A permanent error leaves the connection usable: the
    queue may then write the batch's halves on the same flusher.

    Build the flusher in `Config(flusher_factory=...)`, so each restart gets a
    fresh one and the queue closes it when it retires it. A flusher made by
    `upsert` or `append` pickles (its connection does not travel: the copy
    connects on its first flush), so `functools.partial(PostgresFlusher.upsert,
    ...)` can be the factory of a flusher in a worker process, provided
    `values` is a function defined at module level.

    Needs psycopg 3: `pip install 'wbactor[postgres]'` (or
    `'wbactor[postgres-binary]'` where libpq is not installed).

    Args:
        dsn: A libpq connection string or URI, such as
            `"postgresql://app@db.example/game"`.
        sql: The statement run for every item, with `%s` or `%(name)s`
            placeholders: a `str`, or a `psycopg.sql.Composable` (so that
            identifiers can be quoted with `psycopg.sql.Identifier`).
        params: Returns the statement's parameters for an item: a sequence for
            `%s`, a mapping for `%(name)s`.
        setup: Statements run, in order, on each new connection, then
            committed, such as `CREATE TABLE IF NOT EXISTS ...`.
        connect_timeout: Seconds a connection attempt may take (libpq counts
            whole seconds, at least 2).

    Raises:
        ImportError: psycopg 3 is not installed.
    """

    def __init__(
        self,
        dsn: str,
        sql: str | pgsql.Composable,
        params: Callable[[T], Sequence[Any] | Mapping[str, Any]],
        *,
        setup: Sequence[str | pgsql.Composable] = (),
        connect_timeout: float = 5.0,
    ) -> None:
        """Describe the writes; connect on the first flush, not here."""
        psycopg = _import_psycopg()
        if not isinstance(sql, str | psycopg.sql.Composable):
            msg = f"sql must be a str or a psycopg.sql.Composable, not {type(sql)}"
            raise TypeError(msg)
        timeout = max(1, math.ceil(connect_timeout))
        self._start(
            _Settings(
                conninfo=dsn,
                connect_kwargs={"connect_timeout": timeout},
                statement=sql,
                params=params,
                setup=tuple(setup),
            ),
            psycopg,
        )

    @overload
    @classmethod
    def upsert(
        cls,
        conninfo: str,
        table: str | tuple[str, str],
        columns: Sequence[str],
        key: str | Sequence[str],
        *,
        values: Callable[[T], Sequence[Any]],
        version: str | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> PostgresFlusher[T]: ...

    @overload
    @classmethod
    def upsert(
        cls,
        conninfo: str,
        table: str | tuple[str, str],
        columns: Sequence[str],
        key: str | Sequence[str],
        *,
        values: None = None,
        version: str | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> PostgresFlusher[Sequence[Any]]: ...

    @classmethod
    def upsert(  # noqa: PLR0913 - the table's shape, as the contract names it
        cls,
        conninfo: str,
        table: str | tuple[str, str],
        columns: Sequence[str],
        key: str | Sequence[str],
        *,
        values: Callable[[Any], Sequence[Any]] | None = None,
        version: str | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> PostgresFlusher[Any]:
        """Upsert each batch into `table` with one `INSERT ... ON CONFLICT`.

        Each batch is written with one `INSERT INTO table (columns) SELECT
        ... ON CONFLICT (key) DO UPDATE SET` every other column, in one
        transaction: the batch is written whole or not at all. The rows go
        as one binary array per column (`SELECT * FROM unnest(...)`: one
        round trip) when every column is of a built-in base type; with an
        enum, array or composite column, or for a batch with a value its
        column refuses, they are copied (binary COPY) into a temporary table
        the connection keeps, and inserted from there. Rows of one
        batch that repeat a key are reduced to one first: the last in push
        order, or with `version`, the one with the highest version.

        `version="tick"` adds `WHERE excluded.tick > table.tick`: a row is
        only ever replaced by a strictly newer one, so a batch written late or
        twice (delivery is at least once) never moves a row backwards.

        Values are sent in binary, by the type of their column (read from the
        table once per connection): an integer column takes `int`, `numeric`
        an `int` or `Decimal`, `uuid` a `uuid.UUID`, `timestamptz` a
        `datetime`, `json`/`jsonb` a `str` of JSON text or any object
        `json.dumps` takes. A value of another type, or one the column cannot
        hold, is a `PermanentStoreError` naming the column. A table with a
        column of a type psycopg has no binary dumper for (an enum array, a
        composite) is copied as text instead.

        Args:
            conninfo: A libpq connection string or URI.
            table: The table's name, exactly as in the database (quoted
                safely, never split: `"a.b"` is one name), or
                `(schema, table)`.
            columns: The columns written, in the order of `values(item)`.
            key: The column, or columns, of the conflict target: the primary
                key or a unique constraint.
            values: Returns an item's row: a tuple in `columns` order. None
                (the default): the item is that row already.
            version: A column of `columns` (not of `key`) that orders the
                writes of a key, such as a tick or a sequence number.
            connect_kwargs: Keyword arguments for `psycopg.connect`: libpq
                parameters such as `application_name` or `sslmode`, or
                psycopg's own such as `prepare_threshold`. `connect_timeout`
                defaults to 5 s; `autocommit` is the flusher's to set.

        Returns:
            A flusher for `Config(flusher_factory=...)`; it connects on its
            first flush.

        Raises:
            ImportError: psycopg 3 is not installed.
            TypeError, ValueError: A name or an argument is not usable (see
                the messages); nothing was sent anywhere.
        """
        target = Target.of(table, columns, key, version, upsert=True)
        return cls._copying(conninfo, target, values, connect_kwargs)

    @overload
    @classmethod
    def append(
        cls,
        conninfo: str,
        table: str | tuple[str, str],
        columns: Sequence[str],
        *,
        values: Callable[[T], Sequence[Any]],
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> PostgresFlusher[T]: ...

    @overload
    @classmethod
    def append(
        cls,
        conninfo: str,
        table: str | tuple[str, str],
        columns: Sequence[str],
        *,
        values: None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> PostgresFlusher[Sequence[Any]]: ...

    @classmethod
    def append(
        cls,
        conninfo: str,
        table: str | tuple[str, str],
        columns: Sequence[str],
        *,
        values: Callable[[Any], Sequence[Any]] | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> PostgresFlusher[Any]:
        """Append each batch to `table` with one binary COPY, its own transaction.

        For tables of events, logs or history, where every item is a new row.
        A retried batch is appended again (delivery is at least once): give
        the table a unique key and use `upsert` if duplicates matter.

        Values are sent in binary, by the type of their column, as `upsert`
        does; an integer or real column is range-checked here first, as
        psycopg's binary format would not.

        Args:
            conninfo: A libpq connection string or URI.
            table: The table's name, exactly as in the database, or
                `(schema, table)`.
            columns: The columns written, in the order of `values(item)`.
            values: Returns an item's row: a tuple in `columns` order. None
                (the default): the item is that row already.
            connect_kwargs: Keyword arguments for `psycopg.connect`, as for
                `upsert`.

        Returns:
            A flusher for `Config(flusher_factory=...)`; it connects on its
            first flush.

        Raises:
            ImportError: psycopg 3 is not installed.
            TypeError, ValueError: A name or an argument is not usable.
        """
        target = Target.of(table, columns, upsert=False)
        return cls._copying(conninfo, target, values, connect_kwargs)

    @classmethod
    def _copying(
        cls,
        conninfo: str,
        target: Target,
        values: Callable[[Any], Sequence[Any]] | None,
        connect_kwargs: Mapping[str, Any] | None,
    ) -> PostgresFlusher[Any]:
        psycopg = _import_psycopg()
        _check_str("conninfo", conninfo)
        check_callable("values", values)
        kwargs = dict(connect_kwargs or {})
        if "autocommit" in kwargs:
            msg = "connect_kwargs must not set autocommit: the flusher sets it"
            raise ValueError(msg)
        if "connect_timeout" not in kwargs and "connect_timeout" not in (
            psycopg.conninfo.conninfo_to_dict(conninfo)
        ):
            kwargs["connect_timeout"] = 5
        flusher: PostgresFlusher[Any] = cls.__new__(cls)
        flusher._start(
            _Settings(
                conninfo=conninfo,
                connect_kwargs=kwargs,
                target=target,
                values=values,
            ),
            psycopg,
        )
        return flusher

    def _start(self, settings: _Settings, module: ModuleType) -> None:
        self._settings = settings
        self._psycopg = module
        self._conn: psycopg.Connection[Any] | None = None
        self._plan_made: _CopyPlan | None = None
        self._wide = False  # a row too wide for the plain stage was seen
        target = settings.target
        self._key_of = target.key_of() if target is not None and target.key else None
        self._version = None if target is None else target.version_index()
        # flush() and close() may come from different threads (a shared
        # flusher is closed by the supervisor), never at once.
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle the settings only: the copy connects on its first flush.

        Raises:
            pickle.PicklingError: `values` or `params` (or another setting)
                does not pickle; the message names it.
        """
        settings = self._settings
        check_pickles(
            "PostgresFlusher",
            (
                (field.name, getattr(settings, field.name))
                for field in dataclasses.fields(settings)
            ),
        )
        return (_restore, (type(self), settings))

    def flush(self, batch: Sequence[T]) -> None:
        """Write `batch` in one transaction: all of it, or none of it.

        Raises:
            PermanentStoreError: The server refused the batch (a constraint
                violation, a syntax error, an undefined table or column, a
                data error), or a value could not be adapted to its column.
            TransientStoreError: The server could not take it now (connection
                refused or lost, serialization failure, deadlock, shutdown).
        """
        settings = self._settings
        rows = self._rows(batch)
        with self._lock:
            try:
                conn = self._connect()
                if settings.target is None:
                    self._execute_many(conn, rows)
                else:
                    self._copy_batch(conn, rows)
            except self._psycopg.Error as error:
                raise self._failed(error) from error
            except _BadRowError as error:
                raise self._refused(error) from error.__cause__
            except StoreError as error:  # found by the flusher: a missing column
                log_store_error(error)
                raise
            except BaseException:
                self._discard()  # closing rolls back
                raise

    def close(self) -> None:
        """Close the connection, if open. Safe to call more than once."""
        with self._lock:
            self._discard()

    # ---------------------------------------------------------- connecting

    def _connect(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is None:
            settings = self._settings
            copying = settings.target is not None
            conn = self._psycopg.connect(
                settings.conninfo, autocommit=copying, **settings.connect_kwargs
            )
            try:
                with conn.cursor() as cursor:
                    for statement in settings.setup:
                        cursor.execute(statement)
                conn.commit()
                if copying:
                    self._plan_made = self._make_plan(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return conn

    def _make_plan(self, conn: psycopg.Connection[Any]) -> _CopyPlan:
        """Read the table's column types; for an upsert, make the stage."""
        found = conn.execute(_COLUMNS_QUERY, [self._table_name(conn)]).fetchall()
        plan = self._plan(found, conn)
        if plan.insert:
            self._create_stage(conn, plan, wide=self._wide)
        return plan

    def _table_name(self, conn: Any) -> str:
        """The table's name, quoted, as `_COLUMNS_QUERY` takes it."""
        target = self._settings.target
        assert target is not None  # noqa: S101 - only the copying forms plan
        return cast("str", self._psycopg.sql.Identifier(*target.table).as_string(conn))

    def _plan(self, rows: Sequence[tuple[Any, ...]], conn: Any) -> _CopyPlan:
        """Compose the COPY (and upsert) for the column types `_COLUMNS_QUERY` read.

        No I/O: `conn` (a connection, sync or async) renders the SQL and
        holds the adapters; the caller then creates the stage of an upsert.
        """
        target = self._settings.target
        assert target is not None  # noqa: S101 - only the copying forms plan
        sql = self._psycopg.sql
        table = sql.Identifier(*target.table)
        found = {name: (oid, kind, type_sql) for name, oid, kind, type_sql in rows}
        missing = [name for name in target.columns if name not in found]
        if missing:
            msg = (
                f"postgresql: table {'.'.join(map(_quote, target.table))} has no "
                f"column {', '.join(map(_quote, missing))}"
            )
            raise PermanentStoreError(msg, store="postgresql", sqlstate="42703")
        upsert = bool(target.key)
        adapters = conn.adapters
        adapters.register_dumper(None, _json_text_dumper(_JSONB))
        adapters.register_dumper(None, _json_text_dumper(_JSON))
        columns, staged, dumpers, ranges = _column_types(
            self._psycopg, adapters, [found[name] for name in target.columns], upsert
        )
        binary = dumpers is not None
        form = sql.SQL(" (FORMAT BINARY)" if binary else "")
        if not upsert:
            names = sql.SQL(", ").join(map(sql.Identifier, target.columns))
            return _CopyPlan(
                copy=sql.SQL("COPY {} ({}) FROM STDIN{}")
                .format(table, names, form)
                .as_string(conn),
                types=dumpers,
                columns=tuple(zip(target.columns, columns, strict=True)),
                ranges=ranges if binary else (),
            )
        stage = sql.SQL("{} FROM {}").format(
            _stage_columns(sql, len(target.columns)), sql.Identifier(*_STAGE)
        )
        lists = _unnest_lists(self._psycopg, adapters, dumpers, found, target)
        unnest = ""
        if lists:
            arrays = sql.SQL(", ".join(["%b"] * len(lists)))
            source = sql.SQL("* FROM unnest({})").format(arrays)
            head = self._upsert_statement(sql, target, sql.SQL("")).as_string(conn)
            if "%" not in head:  # a name psycopg would read as a placeholder
                unnest = self._upsert_statement(sql, target, source).as_string(conn)
        return _CopyPlan(
            copy=sql.SQL("COPY {} ({}) FROM STDIN{}")
            .format(sql.Identifier(*_STAGE), _stage_columns(sql, len(staged)), form)
            .as_string(conn),
            types=dumpers,
            columns=tuple(zip(target.columns, columns, strict=True)),
            staged=staged,
            # The COMMIT rides with the INSERT: one round trip fewer. Should
            # the INSERT fail, the server skips the COMMIT, and flush() rolls
            # back.
            insert=self._upsert_statement(sql, target, stage).as_string(conn)
            + "; COMMIT",
            unnest=unnest,
            lists=lists if unnest else (),
        )

    def _upsert_statement(self, sql: ModuleType, target: Target, source: Any) -> Any:
        alias = sql.Identifier("t")
        updated = target.updated
        if updated:
            action = sql.SQL("DO UPDATE SET {}").format(
                sql.SQL(", ").join(
                    sql.SQL("{0} = excluded.{0}").format(sql.Identifier(name))
                    for name in updated
                )
            )
            if target.version is not None:
                action = sql.SQL("{} WHERE excluded.{} > {}.{}").format(
                    action,
                    sql.Identifier(target.version),
                    alias,
                    sql.Identifier(target.version),
                )
        else:  # every column is part of the key: nothing to update
            action = sql.SQL("DO NOTHING")
        return sql.SQL(
            "INSERT INTO {table} AS {alias} ({columns}) SELECT {source} "
            "ON CONFLICT ({key}) {action}"
        ).format(
            table=sql.Identifier(*target.table),
            alias=alias,
            columns=sql.SQL(", ").join(map(sql.Identifier, target.columns)),
            source=source,
            key=sql.SQL(", ").join(map(sql.Identifier, target.key)),
            action=action,
        )

    def _create_stage(
        self, conn: psycopg.Connection[Any], plan: _CopyPlan, *, wide: bool
    ) -> None:
        """Create the connection's staging table, emptied at every commit.

        Its columns are `c0`, `c1`, ... (never the table's own names), of the
        table's types, without constraints or defaults. Unless `wide`, every
        column is `STORAGE PLAIN`, so the table has no TOAST table, which
        makes emptying it at commit cheap (with one, each commit truncates
        and rebuilds the TOAST index too: measured 3 ms a batch); a row over
        about 8 kB then fails (SQLSTATE 54000) and `flush` makes it `wide`.
        """
        with conn.transaction():
            for statement in self._stage_statements(plan, wide=wide):
                conn.execute(statement)
        plan.wide = wide

    def _stage_statements(self, plan: _CopyPlan, *, wide: bool) -> list[Any]:
        """The statements that (re)create the stage of `_create_stage`."""
        sql = self._psycopg.sql
        stage = sql.Identifier(*_STAGE)
        # Type names come from the server's format_type(), never from data.
        columns = [
            sql.SQL("ADD COLUMN {} {}").format(sql.Identifier(f"c{i}"), sql.SQL(t))
            for i, t in enumerate(plan.staged)
        ]
        if not wide:
            columns += [
                sql.SQL("ALTER COLUMN {} SET STORAGE PLAIN").format(
                    sql.Identifier(f"c{i}")
                )
                for i in range(len(plan.staged))
            ]
        return [
            sql.SQL("DROP TABLE IF EXISTS {}").format(stage),
            sql.SQL("CREATE TEMPORARY TABLE {} () ON COMMIT DELETE ROWS").format(stage),
            sql.SQL("ALTER TABLE {} {}").format(stage, sql.SQL(", ").join(columns)),
        ]

    # ------------------------------------------------------------- writing

    def _execute_many(self, conn: psycopg.Connection[Any], rows: list[Any]) -> None:
        statement = self._settings.statement
        assert statement is not None  # noqa: S101 - the plain form has one
        with conn.cursor() as cursor:
            # Any Composable psycopg renders; its stubs name fewer.
            cursor.executemany(cast("Any", statement), rows)
        conn.commit()

    def _copy_batch(self, conn: psycopg.Connection[Any], rows: list[Any]) -> None:
        plan = self._plan_made
        assert plan is not None  # noqa: S101 - made with the connection
        rows = self._prepared(rows, plan)
        if self._key_of is None:  # append: one COPY, its own transaction
            with conn.cursor() as cursor:
                self._copy_rows(cursor, plan, rows)
            return
        arrays = unnest_arrays(plan, rows)
        if arrays is not None and self._unnested(conn, plan, arrays):
            return
        try:
            self._upsert(conn, plan, rows)
        except self._psycopg.Error as error:
            if error.sqlstate != _PLAIN_TOO_BIG or plan.wide:
                raise
            # A row too wide for the plain stage: stage with TOAST from now on.
            conn.rollback()
            self._wide = True
            self._create_stage(conn, plan, wide=True)
            self._upsert(conn, plan, rows)

    def _prepared(self, rows: list[Any], plan: _CopyPlan) -> list[Any]:
        """Check the rows COPY would not (ranges); keep the latest row per key."""
        if plan.ranges:
            _check_ranges(rows, plan)
        if self._key_of is None:
            return rows
        try:
            return latest_rows(rows, self._key_of, self._version)
        except (IndexError, KeyError, TypeError) as error:
            raise _BadRowError(_describe_unkeyed(rows, plan)) from error

    def _rows(self, batch: Sequence[Any]) -> list[Any]:
        """The rows of `batch`: the statement's parameters, or the table's rows."""
        settings = self._settings
        if settings.target is None:
            params = settings.params
            assert params is not None  # noqa: S101 - set with the statement
            return list(map(params, batch))
        if settings.values is None:
            return batch if isinstance(batch, list) else list(batch)
        return list(map(settings.values, batch))

    def _unnested(
        self, conn: psycopg.Connection[Any], plan: _CopyPlan, arrays: list[Any]
    ) -> bool:
        """Upsert with one statement, its own transaction (autocommit).

        False if a value could not be dumped by its column's type: nothing
        was sent, and the COPY names the row.
        """
        try:
            conn.execute(plan.unnest, arrays)
        except BaseException as error:  # sorted by unsent(): re-raised or False
            if unsent(self._psycopg, error):
                return False
            raise
        return True

    def _upsert(
        self, conn: psycopg.Connection[Any], plan: _CopyPlan, rows: list[Any]
    ) -> None:
        """Copy into the stage and upsert from it, in one transaction.

        On an error the transaction is left open (failed) for the caller to
        roll back.
        """
        with conn.cursor() as cursor:
            cursor.execute("BEGIN")
            self._copy_rows(cursor, plan, rows)
            cursor.execute(plan.insert)

    def _copy_rows(
        self, cursor: psycopg.Cursor[Any], plan: _CopyPlan, rows: list[Any]
    ) -> None:
        psycopg = self._psycopg
        with cursor.copy(plan.copy) as copy:
            if plan.types is not None:
                copy.set_types(plan.types)
            write_row = copy.write_row
            row: Any = None
            try:
                for row in rows:
                    write_row(row)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise  # the connection, not the data
            except Exception as error:
                # Raised while adapting a row: psycopg then aborts the COPY.
                raise _BadRowError(
                    _describe_bad_row(psycopg, cursor.connection, plan, row, error)
                ) from error

    # -------------------------------------------------------------- errors

    def _failed(self, error: psycopg.Error) -> StoreError:
        """Roll back, classify `error`, drop the connection if needed, log."""
        broken = not self._rollback()
        store_error = self._classify(error, broken=broken)
        if not store_error.permanent:
            self._discard()
        log_store_error(store_error)
        return store_error

    def _refused(self, error: _BadRowError) -> StoreError:
        """A row that cannot be written: permanent, unless the connection broke."""
        broken = not self._rollback()
        store_error = _refusal(error, broken=broken)
        if broken:
            self._discard()
        log_store_error(store_error)
        return store_error

    def _rollback(self) -> bool:
        """Roll back an open transaction; return whether the connection works."""
        conn = self._conn
        if conn is None:
            return True
        if conn.broken or conn.closed:
            return False
        try:
            conn.rollback()
        except self._psycopg.Error:
            return False
        return True

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        self._plan_made = None
        if conn is not None:
            conn.close()

    def _classify(self, error: psycopg.Error, *, broken: bool) -> StoreError:
        """Wrap `error`, naming its condition and SQLSTATE, never its values."""
        if isinstance(error, StoreError):  # raised by the flusher itself
            return error
        psycopg = self._psycopg
        sqlstate = error.sqlstate
        name = type(error).__name__
        if isinstance(error, psycopg.DataError) or (
            sqlstate is not None and sqlstate.startswith(_DATA_EXCEPTION)
        ):
            text = ""  # the message may quote the offending value
        elif sqlstate is not None:
            # The primary message only: DETAIL may show the failing row.
            text = error.diag.message_primary or ""
        else:  # raised by psycopg or libpq, before or without the server
            text = str(error).partition("\n")[0]
        where = f" (SQLSTATE {sqlstate})" if sqlstate else ""
        message = (
            f"postgresql {name}{where}: {text}" if text else f"postgresql {name}{where}"
        )
        permanent = not broken and (
            isinstance(
                error,
                psycopg.IntegrityError
                | psycopg.ProgrammingError
                | psycopg.DataError
                | psycopg.NotSupportedError,
            )
            or (sqlstate is not None and sqlstate[:2] in _PERMANENT_CLASSES)
        )
        kind = PermanentStoreError if permanent else TransientStoreError
        return kind(message, store="postgresql", sqlstate=sqlstate)


def _refusal(error: _BadRowError, *, broken: bool) -> StoreError:
    """A row that cannot be written: permanent, unless the connection broke."""
    kind = TransientStoreError if broken else PermanentStoreError
    return kind(f"postgresql: {error}", store="postgresql", sqlstate=error.sqlstate)


def _check_str(what: str, value: object) -> None:
    if not isinstance(value, str):
        msg = f"{what} must be a str, not {type(value).__name__}"
        raise TypeError(msg)


def _import_psycopg() -> ModuleType:
    try:
        import psycopg  # noqa: PLC0415 - optional: needed only from here on
        import psycopg.conninfo  # noqa: PLC0415 - the same
    except ImportError as error:
        msg = (
            "PostgresFlusher needs psycopg 3, which is not installed: "
            "pip install 'wbactor[postgres]' (or 'wbactor[postgres-binary]' on "
            f"a machine without libpq); psycopg said: {error}"
        )
        raise ImportError(msg, name="psycopg") from error
    return psycopg


def _restore(cls: type[PostgresFlusher[Any]], settings: _Settings) -> Any:
    """Rebuild a pickled flusher: its settings, no connection yet."""
    flusher = cls.__new__(cls)
    flusher._start(settings, _import_psycopg())  # noqa: SLF001 - our own class
    return flusher


def _column_types(
    psycopg: ModuleType,
    adapters: Any,
    found: Sequence[tuple[int, str, str]],
    upsert: bool,  # noqa: FBT001 - private, positional
) -> tuple[
    tuple[str, ...],
    tuple[str, ...],
    list[int] | None,
    tuple[tuple[int, float, float, str], ...],
]:
    """Decide, from each column's (base OID, kind, SQL type), how to copy it.

    Returns each column's SQL type, its type in the stage (an upsert widens
    the narrow ones), the dumpers' OIDs (None: no binary dumper for some
    column, so the COPY is text), and the ranges an append checks.
    """
    dumpers: list[int] | None = []
    types: list[str] = []
    staged: list[str] = []
    ranges: list[tuple[int, float, float, str]] = []
    binary = psycopg.pq.Format.BINARY
    for i, (base, kind, type_sql) in enumerate(found):
        oid = base
        types.append(type_sql)
        if upsert and oid in _WIDER:
            oid, stage_sql = _WIDER[oid]
        else:
            stage_sql = type_sql
            if not upsert and oid in _RANGES:
                ranges.append((i, *_RANGES[oid]))
        staged.append(stage_sql)
        if dumpers is None:
            continue
        if kind == "e":  # an enum's binary form is its label's text
            dumpers.append(_TEXT)
        elif not upsert and oid in _NARROW_ARRAYS:
            dumpers = None
        else:
            try:
                adapters.get_dumper_by_oid(oid, binary)
            except psycopg.ProgrammingError:  # no binary dumper for this type
                dumpers = None
            else:
                dumpers.append(oid)
    return tuple(types), tuple(staged), dumpers, tuple(ranges)


_COLUMN_LISTS: list[type[list[Any]]] = []
"""`list` subclasses, one per column position, that a connection dumps as its
column's array type (`_unnest_lists`)."""


def _unnest_lists(
    psycopg: ModuleType,
    adapters: Any,
    dumpers: list[int] | None,
    found: Mapping[str, tuple[int, str, str]],
    target: Target,
) -> tuple[type[list[Any]], ...]:
    """Register on `adapters` a list type per column, dumped as an array of it.

    Each array's items are dumped by the same dumper as the binary COPY's,
    so a value is refused alike. Empty (no unnest) unless every column is of
    a base type psycopg knows with an array type: not an enum, a composite,
    a range or an array (`unnest` would flatten it).
    """
    if dumpers is None:
        return ()
    binary = psycopg.pq.Format.BINARY
    made: list[type[list[Any]]] = []
    for i, (oid, name) in enumerate(zip(dumpers, target.columns, strict=True)):
        info = adapters.types.get(oid)
        # The registry finds a type by its array's OID too: an array column
        # would then pass as its element type.
        if found[name][1] != "b" or info is None or info.oid != oid:
            return ()
        if not info.array_oid:  # a type without an array type
            return ()
        try:
            array = adapters.get_dumper_by_oid(info.array_oid, binary)
        except psycopg.ProgrammingError:
            return ()
        while len(_COLUMN_LISTS) <= i:
            _COLUMN_LISTS.append(type(f"_Column{len(_COLUMN_LISTS)}", (list,), {}))
        adapters.register_dumper(_COLUMN_LISTS[i], array)
        made.append(_COLUMN_LISTS[i])
    return tuple(made)


def unnest_arrays(plan: _CopyPlan, rows: list[Any]) -> list[Any] | None:
    """The rows as one array per column for `plan.unnest`.

    None if the plan has no unnest, there are no rows, or a row is not one
    of the columns' length: the COPY then writes, or names the bad row.
    """
    if not plan.unnest or not rows:
        return None
    try:
        return [
            of(column)
            for of, column in zip(plan.lists, zip(*rows, strict=True), strict=True)
        ]
    except (TypeError, ValueError):
        return None


def unsent(psycopg: ModuleType, error: BaseException) -> bool:
    """Whether `error` came from dumping a parameter, before anything was sent.

    The server's errors carry a SQLSTATE; a lost connection is an
    `OperationalError` or `InterfaceError`; anything else an `execute`
    raises is a value a dumper refused.
    """
    if not isinstance(error, Exception):
        return False  # KeyboardInterrupt and the like
    if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
        return False
    return not isinstance(error, psycopg.Error) or error.sqlstate is None


def _stage_columns(sql: ModuleType, count: int) -> pgsql.Composed:
    return sql.SQL(", ").join(sql.Identifier(f"c{i}") for i in range(count))  # type: ignore[no-any-return]


_JSON_DUMPERS: dict[int, type[Any]] = {}


def _json_text_dumper(oid: int) -> type[Any]:
    """A binary json/jsonb dumper that takes a `str` as JSON text, as `%s` does.

    psycopg's own dumps every value with `json.dumps`, so a `str` holding a
    JSON document would be stored as one JSON string. Registered by OID only
    (`register_dumper(None, ...)`), on the flusher's connection only.
    """
    if oid not in _JSON_DUMPERS:
        from psycopg.types import json  # noqa: PLC0415 - psycopg is optional

        base = json.JsonbBinaryDumper if oid == _JSONB else json.JsonBinaryDumper
        prefix = b"\x01" if oid == _JSONB else b""  # jsonb's format version

        class JsonTextDumper(base):  # type: ignore[misc, valid-type]
            def dump(self, obj: Any) -> Any:
                if isinstance(obj, str):
                    return prefix + obj.encode()
                return super().dump(obj)

        _JSON_DUMPERS[oid] = JsonTextDumper
    return _JSON_DUMPERS[oid]


def _quote(name: str) -> str:
    """Quote an identifier as PostgreSQL does, for messages."""
    return '"' + name.replace('"', '""') + '"'


def _check_ranges(rows: Sequence[Sequence[Any]], plan: _CopyPlan) -> None:
    """Refuse a value out of its narrow column's range, as the server would."""
    for index, low, high, type_name in plan.ranges:
        try:
            column = [row[index] for row in rows]
        except (IndexError, KeyError, TypeError):
            return  # a row that is not one: the COPY names it
        try:
            if low <= min(column) and max(column) <= high:
                continue
        except (TypeError, ValueError):  # None, or a value the dumper refuses
            pass
        for value in column:
            if (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and not low <= value <= high
                and not (isinstance(value, float) and math.isinf(value))
            ):
                name = _quote(plan.columns[index][0])
                msg = f"a value for column {name} is out of range for {type_name}"
                raise _BadRowError(msg, sqlstate="22003")


def _row_shape(row: Any, columns: int) -> str | None:
    """Say how `row` is not a row of `columns` values, or None if it is one."""
    if isinstance(row, str | bytes) or not hasattr(row, "__len__"):
        return f"a row must be a sequence of values, got {type(row).__name__}"
    if len(row) != columns:
        return f"a row has {len(row)} values for {columns} columns"
    return None


def _describe_unkeyed(rows: Sequence[Any], plan: _CopyPlan) -> str:
    """Say why the rows of a batch could not be reduced to one per key."""
    for row in rows:
        shape = _row_shape(row, len(plan.columns))
        if shape is not None:
            return shape
    return "versions of one key in the batch cannot be compared"


def _describe_bad_row(
    psycopg: ModuleType,
    conn: psycopg.Connection[Any],
    plan: _CopyPlan,
    row: Any,
    error: Exception,
) -> str:
    """Say which column of `row` could not be adapted, never with its value."""
    shape = _row_shape(row, len(plan.columns))
    if shape is not None:
        return shape
    if plan.types is not None:
        binary = psycopg.pq.Format.BINARY
        for (name, type_sql), oid, value in zip(
            plan.columns, plan.types, row, strict=True
        ):
            if value is None:
                continue
            try:
                dumper = conn.adapters.get_dumper_by_oid(oid, binary)
                dumper(type(value), conn).dump(value)
            except Exception:  # noqa: BLE001 - this is the one: name it
                return (
                    f"a {type(value).__name__} value for column {_quote(name)} "
                    f"({type_sql}) cannot be written ({type(error).__name__})"
                )
    return f"a row cannot be written ({type(error).__name__})"
