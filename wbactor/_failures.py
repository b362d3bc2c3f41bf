"""Failures by kind: `Failure`, `default_classify`, and how a failure is read.

A failed flush attempt is either TRANSIENT (the store could not take the
batch now: retry it with backoff, as in Part 1) or PERMANENT (the data will
never be written: isolate the culprits by bisection and reject just them).
`Config.classify` decides, from the exception; `default_classify` is used
when it is None.
"""

from __future__ import annotations

import enum
import pickle

from wbactor._errors import PermanentError

__all__ = ["Failure", "default_classify"]


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
