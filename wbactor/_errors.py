"""The exceptions wbactor raises.

The tree:

```text
WriteBehindError
├── ConfigError (also ValueError)
│   ├── CapacityRequiredError
│   ├── FlusherRequiredError
│   └── CoalesceNeedsKeyError
├── QueueClosedError (also pykka.ActorDeadError)
├── PushTimeoutError (also TimeoutError)
├── PermanentError        raised by a flusher: this data will never be written
├── RetryAfter            raised by a flusher: retry after `seconds`
├── PartialFailure        raised by a flusher: these items failed, the rest
│                         were written
├── WorkerDiedError       a flusher's worker process died (`flusher_process`)
└── RemoteError           a worker's flusher raised an exception that does
                          not pickle: its type name and message
```

Outside that tree, as they are not raised to callers: `FlushTimeoutError` and
`FlusherDiedError`, the `error` of a failed attempt's log line when the
attempt hung past `flush_timeout` or its flusher actor died.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pykka

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "CapacityRequiredError",
    "CoalesceNeedsKeyError",
    "ConfigError",
    "FlushTimeoutError",
    "FlusherDiedError",
    "FlusherRequiredError",
    "PartialFailure",
    "PermanentError",
    "PushTimeoutError",
    "QueueClosedError",
    "RemoteError",
    "RetryAfter",
    "WorkerDiedError",
    "WriteBehindError",
]


class WriteBehindError(Exception):
    """Root of every error wbactor raises; catch it to catch them all."""


class ConfigError(WriteBehindError, ValueError):
    """A `Config` value is invalid.

    Raised by the `Config` constructor, never later. The message names the
    field and the value that was given; fix the field and construct again.
    """


class CapacityRequiredError(ConfigError):
    """`capacity` is missing or not a positive integer.

    Every queue is bounded: pass `capacity=` the most items you are willing to
    hold in memory while the store is slow.
    """


class FlusherRequiredError(ConfigError):
    """Neither `flusher` nor `flusher_factory` was given, or one is not usable.

    Pass `flusher=` an object with a `flush(batch)` method or a callable taking
    the batch, or `flusher_factory=` a callable returning one.
    """


class CoalesceNeedsKeyError(ConfigError):
    """`Policy.COALESCE_BY_KEY` was chosen without a `key_func`.

    Pass `key_func=` a function from an item to a hashable key.
    """


class QueueClosedError(WriteBehindError, pykka.ActorDeadError):
    """The queue is stopping or stopped, so it takes no more items.

    Raised by `WriteBehind.push()` and `WriteBehind.flush()` after `stop()`
    began, and by a `push()` waiting for room under `Policy.BLOCK` when the
    queue stops. The item was not accepted and is not counted in `Stats`.
    """


class PushTimeoutError(WriteBehindError, TimeoutError):
    """`WriteBehind.push()` under `Policy.BLOCK` found no room in time.

    The item was not accepted and is not counted in `Stats`. Push again
    later, raise the timeout, or pick a dropping policy.
    """


class PermanentError(WriteBehindError):
    """Raise it (or a subclass) from a flusher: this data will never be written.

    `default_classify` calls it `Failure.PERMANENT`: the queue does not retry
    the batch as it is, but isolates the items that fail on their own by
    bisection and drops just those, with `DropReason.REJECTED`. Every other
    item of the batch is written. `wbactor.flushers.PermanentStoreError` is
    one.
    """


class RetryAfter(WriteBehindError):
    """Raise it from a flusher: a transient failure; retry after `seconds`.

    Used instead of `retry_backoff(attempt)` as that attempt's backoff
    (clamped to `[0, 3600]`, like any backoff), for a store that says when it
    can take the batch: a rate limit, a `Retry-After` header.
    """

    def __init__(self, seconds: float, message: str = "") -> None:
        """Ask for a retry in `seconds`, saying why in `message`."""
        super().__init__(message or f"retry after {seconds} s")
        self.seconds = seconds

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the call that made it (a worker process sends it back)."""
        return (type(self), (self.seconds, _message(self)), self.__dict__)

    @property
    def delay(self) -> float:
        """`seconds` as the backoff to wait: clamped to `[0, 3600]`, NaN as 0."""
        seconds: object = self.seconds
        if not isinstance(seconds, int | float) or isinstance(seconds, bool):
            return 0.0
        if math.isnan(seconds) or seconds <= 0:
            return 0.0
        return float(min(seconds, 3600.0))


class PartialFailure(WriteBehindError):
    """Raise it from a flusher: these items of the batch failed, the rest were written.

    `failed` are indices into the batch the flusher was given. The items not
    listed count as flushed; `classify(error)` decides for the listed ones:
    `Failure.PERMANENT` drops them at once as `rejected`, `Failure.TRANSIENT`
    retries them as a batch of their own, after the backoff, before any
    later batch. A negative or out-of-range index is a flusher bug: the whole
    batch then counts as failed (transient), and `flusher_bug` is logged.
    """

    def __init__(self, failed: Sequence[int], error: BaseException) -> None:
        """Say that the items at `failed` failed with `error`."""
        self.failed: tuple[int, ...] = tuple(failed)
        self.error = error
        # The type only: `error` is user code's, and its repr() may raise.
        kind = getattr(type(error), "__name__", "an error")
        super().__init__(f"{len(self.failed)} item(s) of the batch failed: {kind}")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the call that made it (a worker process sends it back)."""
        return (type(self), (self.failed, self.error), self.__dict__)


class WorkerDiedError(WriteBehindError):
    """A flusher's worker process died (`Config.flusher_process=True`).

    Raised by `ProcessFlusher.flush` when the worker exits, is killed by a
    signal (the out-of-memory killer's is SIGKILL) or stops answering, and
    when it was killed on purpose (an attempt past `flush_timeout`). The
    queue counts it as a death of the flusher (cause `died`), restarts it in
    a new worker and retries the batch, which the dead worker may or may not
    have written (delivery is at least once).

    Attributes:
        exitcode: The worker's exit code, negative for a signal (-9 for
            SIGKILL), or None when it is not known.
    """

    def __init__(self, message: str, exitcode: int | None = None) -> None:
        """Say how the worker died, and with which `exitcode`."""
        super().__init__(message)
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the call that made it."""
        return (type(self), (_message(self), self.exitcode), self.__dict__)


class RemoteError(WriteBehindError):
    """What a flusher raised in its worker process, when that did not pickle.

    A worker sends the exception its flusher raised back to the queue, where
    `classify` reads it; an exception that cannot be pickled (or unpickled
    here) arrives as a `RemoteError` instead, with the type's name and the
    message, so the failure is still logged and retried (as `TRANSIENT` under
    `default_classify`). Make your exceptions pickle (keep `args` what
    `__init__` takes, or define `__reduce__`) to have them classified as
    themselves.

    Attributes:
        type_name: The qualified name of the exception's type, such as
            `"mystore.BrokenError"`.
        message: What its `str()` returned (empty if that raised).
    """

    def __init__(self, type_name: str, message: str) -> None:
        """Stand for an exception of `type_name` whose `str()` was `message`."""
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as the call that made it."""
        return (type(self), (self.type_name, self.message), self.__dict__)


def _message(error: BaseException) -> str:
    """Return the message an exception was made with (its first argument)."""
    return str(error.args[0]) if error.args else ""


class FlushTimeoutError(Exception):
    """A flush attempt ran past `flush_timeout` (the `error` of its log line)."""


class FlusherDiedError(Exception):
    """The flusher actor stopped without being asked (the `error` of its log line)."""
