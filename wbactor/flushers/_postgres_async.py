"""`AsyncPostgresFlusher`: `PostgresFlusher` on `psycopg.AsyncConnection`.

The three forms, their SQL, their rows and their errors are
`PostgresFlusher`'s own: an `AsyncPostgresFlusher` holds one (never
connected) for them, and does only the I/O itself, awaited on the event loop
its flusher actor or worker owns for its whole life.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from wbactor.flushers._errors import StoreError, log_store_error
from wbactor.flushers._postgres import (
    _COLUMNS_QUERY,
    _PLAIN_TOO_BIG,
    PostgresFlusher,
    _BadRowError,
    _CopyPlan,
    _describe_bad_row,
    _refusal,
    unnest_arrays,
    unsent,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import psycopg
    from psycopg import sql as pgsql

__all__ = ["AsyncPostgresFlusher"]

T = TypeVar("T")


class AsyncPostgresFlusher(Generic[T]):
    """Write each batch to PostgreSQL in one transaction, with psycopg's asyncio API.

    The same three forms as `PostgresFlusher`, with the same SQL, rows and
    errors: `AsyncPostgresFlusher.upsert(...)` and `.append(...)` (binary
    COPY), and `AsyncPostgresFlusher(dsn, sql, params)` (`executemany`).
    `flush` is a coroutine: the queue runs it on the event loop its flusher
    actor (or worker process, with `flusher_process=True`) owns for its
    whole life, so one connection serves every batch. Use it where the rest
    of your code is asyncio already; as a flusher it writes no faster than
    `PostgresFlusher`.

    `close()` is synchronous, as the queue calls it: it closes the
    connection's socket at once, without a round trip, and is safe to call
    more than once.

    Args:
        dsn: A libpq connection string or URI.
        sql: The statement run for every item: a `str` or a
            `psycopg.sql.Composable`.
        params: Returns the statement's parameters for an item.
        setup: Statements run, in order, on each new connection, then
            committed.
        connect_timeout: Seconds a connection attempt may take.

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
        self._start(
            PostgresFlusher(
                dsn, sql, params, setup=setup, connect_timeout=connect_timeout
            )
        )

    @classmethod
    def upsert(  # noqa: PLR0913 - as PostgresFlusher.upsert
        cls,
        conninfo: str,
        table: str | tuple[str, str],
        columns: Sequence[str],
        key: str | Sequence[str],
        *,
        values: Callable[[Any], Sequence[Any]] | None = None,
        version: str | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> AsyncPostgresFlusher[Any]:
        """Upsert each batch into `table`, as `PostgresFlusher.upsert` does.

        One `INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE` per batch, in
        one transaction, its rows sent as binary arrays (or, for the types
        that cannot go that way, copied into a temporary table first); of
        rows of a batch that repeat a key the last wins, or with `version`
        the highest. Arguments as for `PostgresFlusher.upsert`.
        """
        return cls._of(
            PostgresFlusher.upsert(
                conninfo,
                table,
                columns,
                key,
                values=values,
                version=version,
                connect_kwargs=connect_kwargs,
            )
        )

    @classmethod
    def append(
        cls,
        conninfo: str,
        table: str | tuple[str, str],
        columns: Sequence[str],
        *,
        values: Callable[[Any], Sequence[Any]] | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> AsyncPostgresFlusher[Any]:
        """Append each batch to `table` with binary COPY, as `PostgresFlusher.append`.

        Arguments as for `PostgresFlusher.append`.
        """
        return cls._of(
            PostgresFlusher.append(
                conninfo, table, columns, values=values, connect_kwargs=connect_kwargs
            )
        )

    @classmethod
    def _of(cls, core: PostgresFlusher[Any]) -> AsyncPostgresFlusher[Any]:
        flusher: AsyncPostgresFlusher[Any] = cls.__new__(cls)
        flusher._start(core)
        return flusher

    def _start(self, core: PostgresFlusher[Any]) -> None:
        self._core = core  # the SQL, the rows and the errors; never connected
        self._psycopg = core._psycopg  # noqa: SLF001 - the same package's
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._plan: _CopyPlan | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle the settings only (as `PostgresFlusher` does): no connection."""
        return (_restore, (type(self), self._core))

    async def flush(self, batch: Sequence[T]) -> None:
        """Write `batch` in one transaction: all of it, or none of it.

        Raises:
            PermanentStoreError: The server refused the batch, as for
                `PostgresFlusher.flush`.
            TransientStoreError: The server could not take it now.
        """
        core = self._core
        rows = core._rows(batch)  # noqa: SLF001
        try:
            conn = await self._connect()
            if self._plan is None:
                await self._execute_many(conn, rows)
            else:
                await self._copy_batch(conn, self._plan, rows)
        except self._psycopg.Error as error:
            broken = not await self._rollback()
            store_error = core._classify(error, broken=broken)  # noqa: SLF001
            raise self._logged(store_error, broken=broken) from error
        except _BadRowError as error:
            broken = not await self._rollback()
            store_error = _refusal(error, broken=broken)
            raise self._logged(store_error, broken=broken) from error.__cause__
        except StoreError as error:  # found by the flusher: a missing column
            log_store_error(error)
            raise
        except BaseException:
            self.close()  # closing rolls back
            raise

    def close(self) -> None:
        """Close the connection, if open, at once. Safe to call more than once."""
        conn, self._conn = self._conn, None
        self._plan = None
        if conn is not None:
            # Not `await conn.close()`: the queue closes a flusher from its
            # own thread, where this connection's loop is not running.
            conn.pgconn.finish()

    # ------------------------------------------------------------------ I/O

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is not None:
            return conn
        settings = self._core._settings  # noqa: SLF001
        copying = settings.target is not None
        conn = cast(
            "psycopg.AsyncConnection[Any]",
            await self._psycopg.AsyncConnection.connect(
                settings.conninfo, autocommit=copying, **settings.connect_kwargs
            ),
        )
        try:
            async with conn.cursor() as cursor:
                for statement in settings.setup:
                    await cursor.execute(cast("Any", statement))
            await conn.commit()
            if copying:
                self._plan = await self._make_plan(conn)
        except BaseException:
            conn.pgconn.finish()
            raise
        self._conn = conn
        return conn

    async def _make_plan(self, conn: psycopg.AsyncConnection[Any]) -> _CopyPlan:
        core = self._core
        name = core._table_name(conn)  # noqa: SLF001
        found = await (await conn.execute(_COLUMNS_QUERY, [name])).fetchall()
        plan = core._plan(found, conn)  # noqa: SLF001
        if plan.insert:
            await self._create_stage(conn, plan, wide=core._wide)  # noqa: SLF001
        return plan

    async def _create_stage(
        self, conn: psycopg.AsyncConnection[Any], plan: _CopyPlan, *, wide: bool
    ) -> None:
        async with conn.transaction():
            for statement in self._core._stage_statements(plan, wide=wide):  # noqa: SLF001
                await conn.execute(statement)
        plan.wide = wide

    async def _execute_many(
        self, conn: psycopg.AsyncConnection[Any], rows: list[Any]
    ) -> None:
        statement = self._core._settings.statement  # noqa: SLF001
        async with conn.cursor() as cursor:
            await cursor.executemany(cast("Any", statement), rows)
        await conn.commit()

    async def _copy_batch(
        self, conn: psycopg.AsyncConnection[Any], plan: _CopyPlan, rows: list[Any]
    ) -> None:
        core = self._core
        rows = core._prepared(rows, plan)  # noqa: SLF001
        if not plan.insert:  # append: one COPY, its own transaction
            async with conn.cursor() as cursor:
                await self._copy_rows(cursor, plan, rows)
            return
        arrays = unnest_arrays(plan, rows)
        if arrays is not None and await self._unnested(conn, plan, arrays):
            return
        try:
            await self._upsert(conn, plan, rows)
        except self._psycopg.Error as error:
            if error.sqlstate != _PLAIN_TOO_BIG or plan.wide:
                raise
            # A row too wide for the plain stage: stage with TOAST from now on.
            await conn.rollback()
            core._wide = True  # noqa: SLF001
            await self._create_stage(conn, plan, wide=True)
            await self._upsert(conn, plan, rows)

    async def _unnested(
        self, conn: psycopg.AsyncConnection[Any], plan: _CopyPlan, arrays: list[Any]
    ) -> bool:
        """As `PostgresFlusher._unnested`: one statement, or False if unsent."""
        try:
            await conn.execute(plan.unnest, arrays)
        except BaseException as error:  # sorted by unsent(): re-raised or False
            if unsent(self._psycopg, error):
                return False
            raise
        return True

    async def _upsert(
        self, conn: psycopg.AsyncConnection[Any], plan: _CopyPlan, rows: list[Any]
    ) -> None:
        async with conn.cursor() as cursor:
            await cursor.execute("BEGIN")
            await self._copy_rows(cursor, plan, rows)
            await cursor.execute(plan.insert)

    async def _copy_rows(
        self, cursor: psycopg.AsyncCursor[Any], plan: _CopyPlan, rows: list[Any]
    ) -> None:
        psycopg = self._psycopg
        async with cursor.copy(plan.copy) as copy:
            if plan.types is not None:
                copy.set_types(plan.types)
            row: Any = None
            try:
                for row in rows:
                    await copy.write_row(row)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise  # the connection, not the data
            except Exception as error:
                raise _BadRowError(
                    _describe_bad_row(psycopg, cursor.connection, plan, row, error)  # type: ignore[arg-type]
                ) from error

    # --------------------------------------------------------------- errors

    async def _rollback(self) -> bool:
        """Roll back an open transaction; return whether the connection works."""
        conn = self._conn
        if conn is None:
            return True
        if conn.broken or conn.closed:
            return False
        try:
            await conn.rollback()
        except self._psycopg.Error:
            return False
        return True

    def _logged(self, store_error: StoreError, *, broken: bool) -> StoreError:
        """Drop the connection after a transient error; log; return the error."""
        if broken or not store_error.permanent:
            self.close()
        log_store_error(store_error)
        return store_error


def _restore(
    cls: type[AsyncPostgresFlusher[Any]], core: PostgresFlusher[Any]
) -> AsyncPostgresFlusher[Any]:
    """Rebuild a pickled flusher around its unpickled settings."""
    return cls._of(core)
