"""`PostgresFlusher`: each batch in one PostgreSQL transaction, with psycopg 3.

psycopg is imported when a `PostgresFlusher` is made, not when this module is,
so `import wbactor.flushers` works without it.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from wbactor.flushers._errors import (
    PermanentStoreError,
    StoreError,
    TransientStoreError,
    log_store_error,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    import psycopg

__all__ = ["PostgresFlusher"]

T = TypeVar("T")

_DATA_EXCEPTION = "22"
"""SQLSTATE class whose messages may quote the offending value."""


class PostgresFlusher(Generic[T]):
    """Write each batch to PostgreSQL in one transaction, with psycopg 3.

    Every item becomes one row of parameters, `params(item)`, and the whole
    batch is one `executemany(sql, rows)` (which psycopg pipelines: one round
    trip for the batch, not one per row) and one `COMMIT`: the batch is
    written whole or not at all. Make `sql` an upsert (`INSERT ... ON
    CONFLICT (...) DO UPDATE SET ...`) so that writing a batch twice does no
    harm, as delivery is at least once.

    `sql` and `setup` are used as given and data never goes into them: values
    travel only as parameters (`%s` or `%(name)s` placeholders). Identifiers
    (table and column names) are never formatted into SQL from data; write
    them into `sql` yourself, from your code.

    The connection is opened on the first `flush`, on the flusher actor's
    thread, and `setup` runs on it (and is committed), so `__init__` does no
    I/O. On an error the transaction is rolled back and a
    `PermanentStoreError` or `TransientStoreError` is raised from the psycopg
    error, with its SQLSTATE (and `store_error` logged); after a transient
    error, or when the connection broke, the connection is closed, so the next
    attempt reconnects. Build the flusher in
    `Config(flusher_factory=lambda: PostgresFlusher(...))`, so each restart
    gets a fresh one and the queue closes it when it retires it.

    Needs psycopg 3: `pip install 'wbactor[postgres]'`.

    Args:
        dsn: A libpq connection string or URI, such as
            `"postgresql://app@db.example/game"`.
        sql: The statement run for every item, with `%s` or `%(name)s`
            placeholders.
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
        sql: str,
        params: Callable[[T], Sequence[Any] | Mapping[str, Any]],
        *,
        setup: Sequence[str] = (),
        connect_timeout: float = 5.0,
    ) -> None:
        """Describe the writes; connect on the first flush, not here."""
        try:
            import psycopg  # noqa: PLC0415 - optional: needed only from here on
        except ImportError as error:
            msg = (
                "PostgresFlusher needs psycopg 3, which is not installed: "
                "pip install 'wbactor[postgres]'"
            )
            raise ImportError(msg, name="psycopg") from error
        self._psycopg = psycopg
        self._dsn = dsn
        self._sql = sql
        self._params = params
        self._setup = tuple(setup)
        self._connect_timeout = max(1, math.ceil(connect_timeout))
        self._conn: psycopg.Connection[Any] | None = None
        # flush() and close() may come from different threads (a shared
        # flusher is closed by the supervisor), never at once.
        self._lock = threading.Lock()

    def flush(self, batch: Sequence[T]) -> None:
        """Write `batch` in one transaction: all of it, or none of it.

        Raises:
            PermanentStoreError: The server refused the batch (a constraint
                violation, a syntax error, an undefined table or column, a
                data error), or psycopg could not adapt a parameter.
            TransientStoreError: The server could not take it now (connection
                refused or lost, serialization failure, deadlock, shutdown).
        """
        rows = [self._params(item) for item in batch]
        with self._lock:
            try:
                conn = self._connect()
                with conn.cursor() as cursor:
                    cursor.executemany(self._sql, rows)
                conn.commit()
            except self._psycopg.Error as error:
                raise self._failed(error) from error
            except BaseException:
                self._discard()  # closing rolls back
                raise

    def close(self) -> None:
        """Close the connection, if open. Safe to call more than once."""
        with self._lock:
            self._discard()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle what describes the writes: not the connection, nor the lock.

        So a flusher, or a factory holding one, can be sent to a worker
        process (`Config.flusher_process=True`); the copy connects on its
        first flush. `params` must pickle too (a module-level function).
        """
        state = self.__dict__.copy()
        state["_conn"] = None
        del state["_lock"], state["_psycopg"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled flusher, unconnected."""
        import psycopg  # noqa: PLC0415 - as in __init__: imported when made

        self.__dict__.update(state)
        self._psycopg = psycopg
        self._lock = threading.Lock()

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            conn = self._psycopg.connect(
                self._dsn, connect_timeout=self._connect_timeout
            )
            try:
                with conn.cursor() as cursor:
                    for statement in self._setup:
                        cursor.execute(statement)
                conn.commit()
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _failed(self, error: psycopg.Error) -> StoreError:
        """Roll back, classify `error`, drop the connection if needed, log."""
        broken = not self._rollback()
        store_error = self._classify(error, broken=broken)
        if not store_error.permanent:
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
        if conn is not None:
            conn.close()

    def _classify(self, error: psycopg.Error, *, broken: bool) -> StoreError:
        """Wrap `error`, naming its condition and SQLSTATE, never its values."""
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
        permanent = not broken and isinstance(
            error,
            psycopg.IntegrityError
            | psycopg.ProgrammingError
            | psycopg.DataError
            | psycopg.NotSupportedError,
        )
        kind = PermanentStoreError if permanent else TransientStoreError
        return kind(message, store="postgresql", sqlstate=sqlstate)
