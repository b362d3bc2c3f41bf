"""Store errors, and the `store_error` log line.

The tree::

    WriteBehindError
    ├── PermanentError
    │   └── PermanentStoreError (also StoreError)
    └── StoreError
        ├── PermanentStoreError
        └── TransientStoreError
"""

from __future__ import annotations

from typing import Any, ClassVar

from wbactor._errors import PermanentError, WriteBehindError
from wbactor._log import describe, flusher_logger

__all__ = [
    "STORE_ERROR",
    "PermanentStoreError",
    "StoreError",
    "TransientStoreError",
    "log_store_error",
]

STORE_ERROR = "store_error"


class StoreError(WriteBehindError):
    """A store flusher could not write its batch; raised from the driver's error.

    Raised by `SQLiteFlusher.flush` and `PostgresFlusher.flush`, and so shown
    (as `error`) in the supervisor's `flush_failed` and `retries_exhausted`
    log lines. The batch is retried as any failed attempt is. The message
    names the store, the driver's condition and, for PostgreSQL, the SQLSTATE;
    it never holds item contents or statement parameters.

    A flusher of your own may raise them too, to say which of its errors are
    worth a retry: `TransientStoreError("timed out", store="redis")`.

    Attributes:
        store: `"sqlite"` or `"postgresql"` for the flushers here; any name
            for your own.
        sqlstate: The five-character PostgreSQL SQLSTATE, or None (SQLite, or
            an error raised before the server answered).
    """

    permanent: ClassVar[bool]
    """Whether retrying the same batch is expected to fail the same way."""

    def __init__(
        self, message: str, *, store: str, sqlstate: str | None = None
    ) -> None:
        """Describe a failed write to `store`."""
        super().__init__(message)
        self.store = store
        self.sqlstate = sqlstate

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with its keywords, so that a flusher's worker process can send it."""
        message = str(self.args[0]) if self.args else ""
        return (
            _rebuild,
            (type(self), message, self.store, self.sqlstate),
            self.__dict__,
        )


class PermanentStoreError(StoreError, PermanentError):
    """The store refused the batch: retrying it will not help.

    A constraint violation, a syntax error, an undefined table or column, a
    value of the wrong type. It is a `wbactor.PermanentError`, so with
    `default_classify` the queue isolates the rows that fail on their own by
    bisection, drops just those with `rejected`, and writes the rest.
    """

    permanent = True


class TransientStoreError(StoreError):
    """The store could not take the batch now: a retry may succeed.

    A lost or refused connection, a locked database, a serialization failure
    or deadlock. The flusher dropped its connection, so the next attempt
    reconnects.
    """

    permanent = False


def _rebuild(
    kind: type[StoreError], message: str, store: str, sqlstate: str | None
) -> StoreError:
    """Make a `StoreError` again from what `__reduce__` saved."""
    return kind(message, store=store, sqlstate=sqlstate)


def log_store_error(error: StoreError) -> None:
    """Log `store_error` for `error`: which store, permanent or not, SQLSTATE.

    Called from a queue's flusher, the line carries the queue's name too.
    """
    flusher_logger().warning(
        STORE_ERROR,
        store=error.store,
        permanent=error.permanent,
        sqlstate=error.sqlstate,
        error=describe(error),
    )
