"""The exceptions wbactor raises.

The tree::

    WriteBehindError
    ├── ConfigError (also ValueError)
    │   ├── CapacityRequiredError
    │   ├── FlusherRequiredError
    │   └── CoalesceNeedsKeyError
    ├── QueueClosedError (also pykka.ActorDeadError)
    └── PushTimeoutError (also TimeoutError)

Outside that tree, as they are not raised to callers: `FlushTimeoutError` and
`FlusherDiedError`, the `error` of a failed attempt's log line when the
attempt hung past `flush_timeout` or its flusher actor died.
"""

from __future__ import annotations

import pykka

__all__ = [
    "CapacityRequiredError",
    "CoalesceNeedsKeyError",
    "ConfigError",
    "FlushTimeoutError",
    "FlusherDiedError",
    "FlusherRequiredError",
    "PushTimeoutError",
    "QueueClosedError",
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


class FlushTimeoutError(Exception):
    """A flush attempt ran past `flush_timeout` (the `error` of its log line)."""


class FlusherDiedError(Exception):
    """The flusher actor stopped without being asked (the `error` of its log line)."""
