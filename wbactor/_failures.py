"""Failures by kind: `Failure`, `default_classify`, and how a failure is read.

A failed flush attempt is either TRANSIENT (the store could not take the
batch now: retry it with backoff on a fresh flusher) or PERMANENT (the data
will never be written: isolate the culprits by bisection and reject just
them).
`Config.classify` decides, from the exception; `default_classify` is used
when it is None.
"""

from __future__ import annotations

import enum
import pickle
from typing import TYPE_CHECKING, NamedTuple

from wbactor._errors import PartialFailure, PermanentError
from wbactor._log import CLASSIFY_FAILED, FLUSHER_BUG, describe

if TYPE_CHECKING:
    from collections.abc import Callable

    from wbactor._log import QueueLog

__all__ = ["Failure", "Verdict", "default_classify", "read_failure"]


class Failure(enum.Enum):
    """What a failed flush attempt means for its batch."""

    TRANSIENT = "transient"
    """The store could not take the batch now: retry it after a backoff."""

    PERMANENT = "permanent"
    """This data will never be written: isolate and reject the culprits."""


def default_classify(error: BaseException) -> Failure:
    """Return `PERMANENT` for a `PermanentError` or a pickling error, else `TRANSIENT`.

    `wbactor.flushers.PermanentStoreError` is a `PermanentError`, so a
    constraint or data error from the ready flushers is permanent; a lost
    connection, a timeout or anything else is transient.
    """
    if isinstance(error, PermanentError | pickle.PicklingError):
        return Failure.PERMANENT
    return Failure.TRANSIENT


class Verdict(NamedTuple):
    """How a flush error reads (`read_failure`)."""

    kind: Failure
    """What `classify` said (TRANSIENT when it could not say)."""

    failed: list[int] | None
    """For a valid `PartialFailure`: the failed indices, sorted and unique."""


def read_failure(
    error: BaseException,
    batch_size: int,
    classify: Callable[[BaseException], Failure],
    log: QueueLog,
) -> Verdict:
    """Classify a flush attempt's `error` for a batch of `batch_size` items.

    A `PartialFailure` is classified by its `error`; a negative or
    out-of-range index in it is a flusher bug (`flusher_bug`), and the whole
    batch then failed TRANSIENT. A `classify` that raises, or returns
    anything but a `Failure`, is logged as `classify_failed`, and the
    failure is TRANSIENT.
    """
    failed = None
    cause = error
    if isinstance(error, PartialFailure):
        indices = _valid_indices(error.failed, batch_size)
        if indices is None:
            log.logger.error(
                FLUSHER_BUG,
                batch_size=batch_size,
                error="PartialFailure lists an index out of the batch's range",
            )
            return Verdict(Failure.TRANSIENT, None)
        failed, cause = indices, error.error
    try:
        kind: object = classify(cause)
    except Exception as problem:  # noqa: BLE001 - user code; logged, transient
        log.logger.warning(CLASSIFY_FAILED, error=describe(problem))
        return Verdict(Failure.TRANSIENT, failed)
    if not isinstance(kind, Failure):
        log.logger.warning(
            CLASSIFY_FAILED,
            error=f"classify returned {type(kind).__name__}, not a wbactor.Failure",
        )
        return Verdict(Failure.TRANSIENT, failed)
    return Verdict(kind, failed)


def _valid_indices(failed: object, batch_size: int) -> list[int] | None:
    """Return `failed` sorted and unique if every one indexes the batch, else None."""
    try:
        indices = sorted(set(failed))  # type: ignore[call-overload]
    except Exception:  # noqa: BLE001 - not a collection of ints: a flusher bug
        return None
    for index in indices:
        if not isinstance(index, int) or isinstance(index, bool):
            return None
        if not 0 <= index < batch_size:
            return None
    return indices
