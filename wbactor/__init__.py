"""wbactor: a typed, non-blocking write-behind persistence queue on pykka actors.

Producers tell `Push(item)` to `wb.ref`; the queue applies a bounded overflow
policy, batches, and hands each batch to your flusher, retrying failures with
backoff under supervision.
"""

from importlib import metadata as _metadata

from wbactor._api import WriteBehind, start
from wbactor._clock import Clock, MonotonicClock
from wbactor._config import Config, Flusher, FlusherLike, Policy, default_backoff
from wbactor._errors import (
    CapacityRequiredError,
    CoalesceNeedsKeyError,
    ConfigError,
    FlusherRequiredError,
    PartialFailure,
    PermanentError,
    PushTimeoutError,
    QueueClosedError,
    RemoteError,
    RetryAfter,
    WorkerDiedError,
    WriteBehindError,
)
from wbactor._failures import Failure, default_classify
from wbactor._lifecycle import stop_on_signals
from wbactor._messages import Flush, FlushTick, Push, PushMany
from wbactor._queue import QueueRef
from wbactor._stats import DropReason, LaneStats, Stats

try:
    __version__: str = _metadata.version("wbactor")
except _metadata.PackageNotFoundError:  # imported from a tree never installed
    __version__ = "0+unknown"

__all__ = [
    "CapacityRequiredError",
    "Clock",
    "CoalesceNeedsKeyError",
    "Config",
    "ConfigError",
    "DropReason",
    "Failure",
    "Flush",
    "FlushTick",
    "Flusher",
    "FlusherLike",
    "FlusherRequiredError",
    "LaneStats",
    "MonotonicClock",
    "PartialFailure",
    "PermanentError",
    "Policy",
    "Push",
    "PushMany",
    "PushTimeoutError",
    "QueueClosedError",
    "QueueRef",
    "RemoteError",
    "RetryAfter",
    "Stats",
    "WorkerDiedError",
    "WriteBehind",
    "WriteBehindError",
    "default_backoff",
    "default_classify",
    "start",
    "stop_on_signals",
]
