"""`SQLiteFlusher`: each batch in one SQLite transaction, standard library only.

Three forms share the connection handling and the error classification:
`SQLiteFlusher.upsert(...)` and `SQLiteFlusher.append(...)` compose their
statement from the table and column names, quoted; `SQLiteFlusher(path, sql,
params)` runs a statement of yours. Each writes a batch with one
`executemany` between `BEGIN` and `COMMIT`, and a batch the database refuses
row by row, to tell the bad rows from the good.
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3
import threading
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, overload

from wbactor._errors import PartialFailure
from wbactor.flushers._errors import (
    PermanentStoreError,
    StoreError,
    TransientStoreError,
    log_store_error,
)
from wbactor.flushers._tables import (
    Target,
    check_callable,
    check_flag,
    check_pickles,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Mapping, Sequence

__all__ = ["SQLiteFlusher"]

T = TypeVar("T")

_SQLITE_ERROR = 1
"""SQLite's generic error code: no such table or column, a syntax error."""

_DEFAULT_PRAGMAS: Mapping[str, str | int] = MappingProxyType(
    {"journal_mode": "WAL", "synchronous": "NORMAL"}
)

_PRAGMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
_PRAGMA_VALUE = re.compile(r"-?[A-Za-z0-9_.]+")
"""PRAGMA values cannot be parameters: only plain words and numbers pass."""


def _quote(name: str) -> str:
    """Quote an identifier for SQLite: in double quotes, doubling any inside."""
    return '"' + name.replace('"', '""') + '"'


def _pragma_statements(
    pragmas: Mapping[str, str | int | None] | None,
) -> tuple[str, ...]:
    merged: dict[str, str | int | None] = dict(_DEFAULT_PRAGMAS)
    merged.update(pragmas or {})
    statements = []
    for name, value in merged.items():
        if not isinstance(name, str) or not _PRAGMA_NAME.fullmatch(name):
            msg = f"not a PRAGMA name: {name!r}"
            raise ValueError(msg)
        if value is None:
            continue
        text = str(value)
        if isinstance(value, bool) or not _PRAGMA_VALUE.fullmatch(text):
            msg = f"PRAGMA {name}: not a plain word or number: {value!r}"
            raise ValueError(msg)
        statements.append(f"PRAGMA {name} = {text}")
    return tuple(statements)


def _statement(target: Target) -> str:
    table = ".".join(map(_quote, target.table))
    columns = ", ".join(map(_quote, target.columns))
    marks = ", ".join("?" * len(target.columns))
    # Every name is quoted by _quote and every value is a ? parameter, so
    # nothing from the caller reaches the statement raw.
    if not target.key:
        return f"INSERT INTO {table} ({columns}) VALUES ({marks})"  # noqa: S608
    alias = '"t"'
    key = ", ".join(map(_quote, target.key))
    updated = target.updated
    if not updated:
        action = "DO NOTHING"
    else:
        sets = ", ".join(f"{_quote(c)} = excluded.{_quote(c)}" for c in updated)
        action = f"DO UPDATE SET {sets}"
        if target.version is not None:
            version = _quote(target.version)
            action += f" WHERE excluded.{version} > {alias}.{version}"
    return (
        f"INSERT INTO {table} AS {alias} ({columns}) VALUES ({marks}) "  # noqa: S608
        f"ON CONFLICT ({key}) {action}"
    )


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Everything a flusher is made from, and all that it pickles."""

    database: str | os.PathLike[str]
    statement: str
    params: Callable[[Any], Any] | None  # the plain form's
    setup: tuple[str, ...]
    timeout: float
    values: Callable[[Any], Sequence[Any]] | None = None  # upsert's and append's
    isolate_rows: bool = False


class SQLiteFlusher(Generic[T]):
    """Write each batch to an SQLite database in one transaction.

    Make one with `SQLiteFlusher.upsert(...)` or `SQLiteFlusher.append(...)`,
    which compose their statement from the table and column names (each
    quoted, so any name is safe) and set `DEFAULT_PRAGMAS` (WAL and
    `synchronous = NORMAL`); or with `SQLiteFlusher(path, sql, params)`, which
    runs a statement of yours for every item.

    Every form writes a batch with one `executemany` between `BEGIN` and
    `COMMIT`: the batch is written whole or not at all. The connection is
    opened on the first `flush`, on the flusher actor's thread, and the setup
    runs on it, so making a flusher does no I/O. On an error the transaction
    is rolled back and a `PermanentStoreError` or `TransientStoreError` is
    raised from the `sqlite3` error (and `store_error` logged); after a
    transient error the connection is closed, so the next attempt reconnects.
    With `isolate_rows=True`, when the database refuses a batch of several
    rows for good (a constraint, a bad parameter), the flusher writes its
    rows again one statement each, in one transaction, commits the good ones
    and raises `PartialFailure` naming the bad ones: the queue rejects those
    alone in one more call, where its bisection needs up to `2 * k *
    ceil(log2 n)` calls for `k` bad rows in `n`, each of which a flaky store
    may fail.
    Build the flusher in `Config(flusher_factory=...)`, so each restart gets
    a fresh one and the queue closes it when it retires it. A flusher
    pickles (without its connection), so it can be sent to a worker process,
    provided `values` or `params` is a function defined at module level.

    Args:
        database: Path of the database file.
        sql: The statement run for every item, with `?` or `:name` placeholders.
        params: Returns the statement's parameters for an item: a sequence for
            `?`, a mapping for `:name`.
        setup: Statements run, in order, on each new connection, such as
            `CREATE TABLE IF NOT EXISTS ...` or `PRAGMA journal_mode = WAL`.
        timeout: Seconds to wait for a lock held by another connection before
            failing with "database is locked" (a transient error).
        isolate_rows: On a batch the database refuses for good, tell its bad
            rows from its good ones in one more transaction, one statement
            per row, and raise `PartialFailure` for the bad ones. Off by
            default: the batch is then refused whole, and the queue bisects.
    """

    DEFAULT_PRAGMAS: ClassVar[Mapping[str, str | int]] = _DEFAULT_PRAGMAS
    """The PRAGMAs `upsert` and `append` set on each new connection.

    `journal_mode = WAL` lets readers run beside the writer and makes a commit
    one append to the log; `synchronous = NORMAL` syncs at checkpoints, not at
    every commit: a power loss may lose the last transactions but never
    corrupts the database, and an application crash loses nothing. Override
    either with `pragmas=`, or skip one with `pragmas={"journal_mode": None}`
    (WAL needs shared memory: not on a network file system). The plain
    constructor sets none: put them in its `setup`.
    """

    def __init__(  # noqa: PLR0913 - the statement, and how to run it
        self,
        database: str | os.PathLike[str],
        sql: str,
        params: Callable[[T], Sequence[Any] | Mapping[str, Any]],
        *,
        setup: Sequence[str] = (),
        timeout: float = 5.0,
        isolate_rows: bool = False,
    ) -> None:
        """Describe the writes; connect on the first flush, not here."""
        check_flag("isolate_rows", isolate_rows)
        self._start(
            _Settings(
                database,
                sql,
                params,
                tuple(setup),
                timeout,
                isolate_rows=isolate_rows,
            )
        )

    @overload
    @classmethod
    def upsert(
        cls,
        path: str | os.PathLike[str],
        table: str | tuple[str, str],
        columns: Sequence[str],
        key: str | Sequence[str],
        *,
        values: Callable[[T], Sequence[Any]],
        version: str | None = None,
        pragmas: Mapping[str, str | int | None] | None = None,
        timeout: float = 5.0,
        isolate_rows: bool = False,
    ) -> SQLiteFlusher[T]: ...

    @overload
    @classmethod
    def upsert(
        cls,
        path: str | os.PathLike[str],
        table: str | tuple[str, str],
        columns: Sequence[str],
        key: str | Sequence[str],
        *,
        values: None = None,
        version: str | None = None,
        pragmas: Mapping[str, str | int | None] | None = None,
        timeout: float = 5.0,
        isolate_rows: bool = False,
    ) -> SQLiteFlusher[Sequence[Any]]: ...

    @classmethod
    def upsert(  # noqa: PLR0913 - the table's shape, as the contract names it
        cls,
        path: str | os.PathLike[str],
        table: str | tuple[str, str],
        columns: Sequence[str],
        key: str | Sequence[str],
        *,
        values: Callable[[Any], Sequence[Any]] | None = None,
        version: str | None = None,
        pragmas: Mapping[str, str | int | None] | None = None,
        timeout: float = 5.0,
        isolate_rows: bool = False,
    ) -> SQLiteFlusher[Any]:
        """Upsert each batch into `table`: `INSERT ... ON CONFLICT (key) DO UPDATE`.

        Every column but the key is set from the new row on a conflict. The
        rows of a batch are written in push order, so of rows that repeat a
        key the last wins; with `version="tick"`, the statement gains `WHERE
        excluded.tick > table.tick`, so a row is only ever replaced by a
        strictly newer one: the highest version wins, and a batch written
        late or twice never moves a row backwards.

        Args:
            path: Path of the database file.
            table: The table's name, exactly as in the database (quoted,
                never split: `"a.b"` is one name), or `(schema, table)`, the
                schema being `"main"`, `"temp"` or an attached database.
            columns: The columns written, in the order of `values(item)`.
            key: The column, or columns, of a primary key or unique index.
            values: Returns an item's row: a tuple in `columns` order. None
                (the default): the item is that row already.
            version: A column of `columns` (not of `key`) that orders the
                writes of a key, such as a tick or a sequence number.
            pragmas: PRAGMAs for each new connection, over `DEFAULT_PRAGMAS`,
                `{"synchronous": "FULL"}`; a value of None leaves that PRAGMA
                as SQLite has it.
            timeout: Seconds to wait for another connection's lock.
            isolate_rows: Tell a refused batch's bad rows from its good ones
                in one call, as for the constructor.

        Returns:
            A flusher for `Config(flusher_factory=...)`; it connects on its
            first flush.

        Raises:
            TypeError, ValueError: A name, PRAGMA or argument is not usable.
        """
        target = Target.of(table, columns, key, version, upsert=True)
        return cls._composed(
            path,
            target,
            values=values,
            pragmas=pragmas,
            timeout=timeout,
            isolate_rows=isolate_rows,
        )

    @overload
    @classmethod
    def append(
        cls,
        path: str | os.PathLike[str],
        table: str | tuple[str, str],
        columns: Sequence[str],
        *,
        values: Callable[[T], Sequence[Any]],
        pragmas: Mapping[str, str | int | None] | None = None,
        timeout: float = 5.0,
        isolate_rows: bool = False,
    ) -> SQLiteFlusher[T]: ...

    @overload
    @classmethod
    def append(
        cls,
        path: str | os.PathLike[str],
        table: str | tuple[str, str],
        columns: Sequence[str],
        *,
        values: None = None,
        pragmas: Mapping[str, str | int | None] | None = None,
        timeout: float = 5.0,
        isolate_rows: bool = False,
    ) -> SQLiteFlusher[Sequence[Any]]: ...

    @classmethod
    def append(  # noqa: PLR0913 - as upsert, without the key
        cls,
        path: str | os.PathLike[str],
        table: str | tuple[str, str],
        columns: Sequence[str],
        *,
        values: Callable[[Any], Sequence[Any]] | None = None,
        pragmas: Mapping[str, str | int | None] | None = None,
        timeout: float = 5.0,
        isolate_rows: bool = False,
    ) -> SQLiteFlusher[Any]:
        """Append each batch to `table`: a plain `INSERT` per row, one transaction.

        For tables of events, logs or history. A retried batch is appended
        again (delivery is at least once): use `upsert` if duplicates matter.

        Args:
            path: Path of the database file.
            table: The table's name, exactly as in the database, or
                `(schema, table)`.
            columns: The columns written, in the order of `values(item)`.
            values: Returns an item's row: a tuple in `columns` order. None
                (the default): the item is that row already.
            pragmas: PRAGMAs for each new connection, as for `upsert`.
            timeout: Seconds to wait for another connection's lock.
            isolate_rows: Tell a refused batch's bad rows from its good ones
                in one call, as for the constructor.

        Returns:
            A flusher for `Config(flusher_factory=...)`.

        Raises:
            TypeError, ValueError: A name, PRAGMA or argument is not usable.
        """
        target = Target.of(table, columns, upsert=False)
        return cls._composed(
            path,
            target,
            values=values,
            pragmas=pragmas,
            timeout=timeout,
            isolate_rows=isolate_rows,
        )

    @classmethod
    def _composed(  # noqa: PLR0913 - upsert's and append's arguments, passed on
        cls,
        path: str | os.PathLike[str],
        target: Target,
        *,
        values: Callable[[Any], Sequence[Any]] | None,
        pragmas: Mapping[str, str | int | None] | None,
        timeout: float,
        isolate_rows: bool,
    ) -> SQLiteFlusher[Any]:
        check_callable("values", values)
        check_flag("isolate_rows", isolate_rows)
        flusher: SQLiteFlusher[Any] = cls.__new__(cls)
        flusher._start(
            _Settings(
                path,
                _statement(target),
                None,
                _pragma_statements(pragmas),
                timeout,
                values,
                isolate_rows,
            )
        )
        return flusher

    def _start(self, settings: _Settings) -> None:
        self._settings = settings
        self._db: sqlite3.Connection | None = None
        # flush() and close() may come from different threads (a shared
        # flusher is closed by the supervisor), never at once.
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle the settings only: the copy connects on its first flush.

        Raises:
            pickle.PicklingError: `values` or `params` does not pickle; the
                message names it.
        """
        settings = self._settings
        check_pickles(
            "SQLiteFlusher",
            (
                (field.name, getattr(settings, field.name))
                for field in dataclasses.fields(settings)
            ),
        )
        return (_restore, (type(self), settings))

    def flush(self, batch: Sequence[T]) -> None:
        """Write `batch` in one transaction: all of it, or none of it.

        With `isolate_rows`, a batch refused for good is written again row by
        row, and its good rows are committed.

        Raises:
            PartialFailure: With `isolate_rows`: the database refused some
                rows of the batch for good; the rest are committed. Its
                `error` is the first bad row's `PermanentStoreError`.
            PermanentStoreError: The database refused a batch of one row (a
                constraint, an unknown table or column, a syntax error, a bad
                parameter such as an int too large for SQLite); with
                `isolate_rows`, only a batch of one row, or one whose rows it
                cannot tell apart.
            TransientStoreError: The database could not take it now (locked,
                cannot be opened, the connection was closed).
        """
        settings = self._settings
        convert = settings.params or settings.values
        rows: Any = batch if convert is None else list(map(convert, batch))
        with self._lock:
            try:
                db = self._connect()
                db.execute("BEGIN")
                try:
                    db.executemany(settings.statement, rows)
                except (OverflowError, ValueError, TypeError) as error:
                    # A parameter SQLite cannot take: an int over 64 bits.
                    raise sqlite3.DataError(str(error)) from error
                db.execute("COMMIT")
            except sqlite3.Error as error:
                store_error = self._failed(error)
                if settings.isolate_rows and store_error.permanent and len(rows) > 1:
                    self._row_by_row(rows, store_error)
                    return
                raise store_error from error
            except BaseException:
                self._discard()  # closing rolls back
                raise

    def _row_by_row(self, rows: Sequence[Any], refused: StoreError) -> None:
        """Write `rows` one statement each, in one transaction, keeping the good.

        The batch was refused whole (`refused`, permanent): a statement that
        fails on a constraint or a bad parameter is undone alone, and the
        transaction goes on. One call then finds every bad row, where the
        queue's bisection would need about two per bad row per halving.

        Raises:
            PartialFailure: Some rows were refused; the others are committed.
                Its `error` is the first row's `PermanentStoreError`.
            PermanentStoreError: `refused`, when the rows cannot be told apart
                (the transaction did not survive a failed statement).
            TransientStoreError: The database failed otherwise meanwhile.
        """
        statement = self._settings.statement
        failed: list[int] = []
        first: StoreError | None = None
        try:
            db = self._connect()
            db.execute("BEGIN")
            for index, row in enumerate(rows):
                try:
                    try:
                        db.execute(statement, row)
                    except (OverflowError, ValueError, TypeError) as error:
                        raise sqlite3.DataError(str(error)) from error
                except sqlite3.Error as error:
                    row_error = _classify(error, broken=not db.in_transaction)
                    if not row_error.permanent:
                        raise
                    failed.append(index)
                    first = first or row_error
            db.execute("COMMIT")
        except sqlite3.Error as error:
            if not self._rollback() or not _classify(error, broken=False).permanent:
                raise self._failed(error) from error
            # The failed statement ended the transaction (an ON CONFLICT
            # ROLLBACK clause): the rows cannot be told apart here.
            raise refused from error
        except BaseException:
            self._discard()
            raise
        if failed:
            raise PartialFailure(failed, first or refused)

    def close(self) -> None:
        """Close the connection, if open. Safe to call more than once."""
        with self._lock:
            self._discard()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            settings = self._settings
            # isolation_level=None: no implicit transactions; flush() issues
            # BEGIN and COMMIT itself, whatever the statement looks like.
            # check_same_thread=False: close() may come from another thread;
            # the lock keeps uses apart.
            db = sqlite3.connect(
                settings.database,
                timeout=settings.timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                for statement in settings.setup:
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


def _restore(cls: type[SQLiteFlusher[Any]], settings: _Settings) -> Any:
    """Rebuild a pickled flusher: its settings, no connection yet."""
    flusher = cls.__new__(cls)
    flusher._start(settings)  # noqa: SLF001 - our own class
    return flusher


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
