"""`SQLiteFlusher`: each batch in one SQLite transaction, standard library only."""

from __future__ import annotations

import sqlite3
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from wbactor.flushers._errors import (
    PermanentStoreError,
    StoreError,
    TransientStoreError,
    log_store_error,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Mapping, Sequence

__all__ = ["SQLiteFlusher"]

T = TypeVar("T")

_SQLITE_ERROR = 1
"""SQLite's generic error code: no such table or column, a syntax error."""


class SQLiteFlusher(Generic[T]):
    """Write each batch to an SQLite database in one transaction.

    Every item becomes one row of parameters, `params(item)`, and the whole
    batch is one `executemany(sql, rows)` between `BEGIN` and `COMMIT`: the
    batch is written whole or not at all. Make `sql` an upsert (`INSERT ...
    ON CONFLICT (...) DO UPDATE SET ...`) so that writing a batch twice does
    no harm, as delivery is at least once.

    `sql` and `setup` are used as given and data never goes into them: values
    travel only as parameters (`?` or `:name` placeholders). Identifiers
    (table and column names) are never formatted into SQL from data; write
    them into `sql` yourself, from your code.

    The connection is opened on the first `flush`, on the flusher actor's
    thread, and `setup` runs on it, so `__init__` does no I/O. On an error
    the transaction is rolled back and a `PermanentStoreError` or
    `TransientStoreError` is raised from the `sqlite3` error (and
    `store_error` logged); after a transient error the connection is closed,
    so the next attempt reconnects. Build the flusher in
    `Config(flusher_factory=lambda: SQLiteFlusher(...))`, so each restart gets
    a fresh one and the queue closes it when it retires it.

    Args:
        database: Path of the database file.
        sql: The statement run for every item, with `?` or `:name` placeholders.
        params: Returns the statement's parameters for an item: a sequence for
            `?`, a mapping for `:name`.
        setup: Statements run, in order, on each new connection, such as
            `CREATE TABLE IF NOT EXISTS ...` or `PRAGMA journal_mode = WAL`.
        timeout: Seconds to wait for a lock held by another connection before
            failing with "database is locked" (a transient error).
    """

    def __init__(
        self,
        database: str | os.PathLike[str],
        sql: str,
        params: Callable[[T], Sequence[Any] | Mapping[str, Any]],
        *,
        setup: Sequence[str] = (),
        timeout: float = 5.0,
    ) -> None:
        """Describe the writes; connect on the first flush, not here."""
        self._database = database
        self._sql = sql
        self._params = params
        self._setup = tuple(setup)
        self._timeout = timeout
        self._db: sqlite3.Connection | None = None
        # flush() and close() may come from different threads (a shared
        # flusher is closed by the supervisor), never at once.
        self._lock = threading.Lock()

    def flush(self, batch: Sequence[T]) -> None:
        """Write `batch` in one transaction: all of it, or none of it.

        Raises:
            PermanentStoreError: The database refused the batch (a constraint,
                an unknown table or column, a syntax error, a bad parameter).
            TransientStoreError: The database could not take it now (locked,
                cannot be opened, the connection was closed).
        """
        rows = [self._params(item) for item in batch]
        with self._lock:
            try:
                db = self._connect()
                db.execute("BEGIN")
                db.executemany(self._sql, rows)
                db.execute("COMMIT")
            except sqlite3.Error as error:
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
        state["_db"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled flusher, unconnected."""
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            # isolation_level=None: no implicit transactions; flush() issues
            # BEGIN and COMMIT itself, whatever the statement looks like.
            # check_same_thread=False: close() may come from another thread;
            # the lock keeps uses apart.
            db = sqlite3.connect(
                self._database,
                timeout=self._timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                for statement in self._setup:
                    db.execute(statement)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def _failed(self, error: sqlite3.Error) -> StoreError:
        """Roll back, classify `error`, drop the connection if needed, log."""
        broken = not self._rollback()
        store_error = _classify(error, broken=broken)
        if not store_error.permanent:
            self._discard()
        log_store_error(store_error)
        return store_error

    def _rollback(self) -> bool:
        """Roll back an open transaction; return whether the connection works."""
        db = self._db
        if db is None:
            return True
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error:
            return False
        return True

    def _discard(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


def _classify(error: sqlite3.Error, *, broken: bool) -> StoreError:
    """Wrap `error`: transient if the connection broke or the store was busy."""
    name = getattr(error, "sqlite_errorname", None) or type(error).__name__
    message = f"sqlite {name}: {error}"
    if broken:
        return TransientStoreError(message, store="sqlite", sqlstate=None)
    if isinstance(error, sqlite3.OperationalError):
        code = getattr(error, "sqlite_errorcode", None)
        if code is None or code & 0xFF != _SQLITE_ERROR:
            # Locked, busy, cannot open, disk I/O: worth another try.
            return TransientStoreError(message, store="sqlite", sqlstate=None)
    # Constraints, unknown tables and columns, syntax, bad parameters.
    return PermanentStoreError(message, store="sqlite", sqlstate=None)
