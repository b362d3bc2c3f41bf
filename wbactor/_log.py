"""Logging: the `wbactor` structlog logger, event names, and drop aggregation.

wbactor logs through `structlog.get_logger("wbactor")` and never configures
structlog. Each queue logs through its own `QueueLog`, so every line it
writes carries `queue=<Config.name>`. Item contents are never logged.
"""

from __future__ import annotations

import contextvars
import threading
from typing import TYPE_CHECKING, Any

import structlog

from wbactor._stats import DropReason
from wbactor._ticks import Ticks

if TYPE_CHECKING:
    from wbactor._clock import Clock

__all__ = [
    "FLUSHING_FOR",
    "DropLog",
    "QueueLog",
    "describe",
    "flusher_logger",
    "logger",
]

logger: Any = structlog.get_logger("wbactor")

FLUSHING_FOR: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "wbactor_flushing_for", default=None
)
"""The name of the queue whose flusher runs here, or None.

Set on each flusher actor's thread and in each flusher worker process, so
that what a flusher logs (a store flusher's `store_error`) carries `queue`
as the queue's own lines do. An async flush's task copies it.
"""


def flusher_logger() -> Any:
    """The logger for a flusher's lines: bound to `queue` inside a queue."""
    name = FLUSHING_FOR.get()
    return logger if name is None else logger.bind(queue=name)


ITEMS_DROPPED = "items_dropped"
FLUSH_FAILED = "flush_failed"
FLUSHER_RESTARTED = "flusher_restarted"
RETRIES_EXHAUSTED = "retries_exhausted"
BATCH_FLUSHED = "batch_flushed"
QUEUE_STARTED = "queue_started"
QUEUE_STOPPED = "queue_stopped"
ON_DROP_FAILED = "on_drop_failed"
KEY_FUNC_FAILED = "key_func_failed"
UNKNOWN_MESSAGE = "unknown_message"
FLUSHER_CLOSE_FAILED = "flusher_close_failed"
RETRY_BACKOFF_FAILED = "retry_backoff_failed"
PUSH_MANY_FAILED = "push_many_failed"
ACTOR_ABANDONED = "actor_abandoned"
ITEMS_REJECTED = "items_rejected"
BATCH_SPLIT = "batch_split"
CLASSIFY_FAILED = "classify_failed"
FLUSHER_BUG = "flusher_bug"
OBSERVER_FAILED = "observer_failed"
JOURNAL_QUARANTINED = "journal_quarantined"
JOURNAL_SKIPPED = "journal_skipped"
JOURNAL_RECOVERED = "journal_recovered"
JOURNAL_FAILED = "journal_failed"

DROP_LOG_INTERVAL = 1.0
"""Seconds between two `items_dropped` lines for the same reason."""


class QueueLog:
    """One queue's loggers: every line carries `queue=<Config.name>`."""

    def __init__(self, name: str, **context: Any) -> None:
        """Log as the queue called `name`, with `context` on every line."""
        self.name = name
        self.logger: Any = structlog.get_logger("wbactor", queue=name, **context)
        """For events that are not per batch: binds anew on every call, so
        configuring structlog later, or `capture_logs()`, takes effect."""
        self._bound: tuple[Any, Any, Any, Any] = (None, None, None, None)

    def for_lane(self, lane: int, lanes: int) -> QueueLog:
        """Return `lane`'s loggers: with several lanes, its lines carry `lane=`."""
        return self if lanes == 1 else QueueLog(self.name, lane=lane)

    def hot(self) -> Any:
        """Return the logger, bound, for events logged once per batch.

        The lazy proxy `get_logger()` returns binds anew on every call (~3 us
        here even when the level is filtered out); a bound logger filters a
        debug call in ~0.2 us. It is rebound whenever structlog is
        reconfigured (`get_config()` is ~0.3 us), so configuring later, or
        `structlog.testing.capture_logs()`, still takes effect.
        """
        config = structlog.get_config()
        wrapper, processors, factory = (
            config["wrapper_class"],
            config["processors"],
            config["logger_factory"],
        )
        cached = self._bound
        if cached[0] is wrapper and cached[1] is processors and cached[2] is factory:
            return cached[3]
        bound = self.logger.bind()
        self._bound = (wrapper, processors, factory, bound)  # swapped atomically
        return bound


def describe(error: BaseException) -> str:
    """Return `Type: message` for an exception, for the `error` key.

    The exception is user code's: if its `str()` raises, or returns no
    `str`, the type name alone is returned.
    """
    name = _type_name(error)
    try:
        text = str(error)
    except Exception:  # noqa: BLE001 - a hostile __str__: the type name will do
        return name
    if text.__class__ is not str:  # a str subclass could misbehave too
        return name
    return f"{name}: {text}" if text else name


def _type_name(error: BaseException) -> str:
    name = getattr(type(error), "__name__", None)
    return name if isinstance(name, str) else "Exception"


class DropLog:
    """Aggregates drops into at most one `items_dropped` line per reason per second.

    Every drop is counted; lines are emitted by `note` once a second has
    passed since the reason's last line, by `flush_due` on every tick, and
    by `flush_all` at stop.
    """

    def __init__(self, clock: Clock, log: QueueLog) -> None:
        """Aggregate on `clock`'s time; log to `log`."""
        self._clock = clock
        self._log = log
        self._lock = threading.Lock()
        self._pending: dict[DropReason, int] = {}
        self._last: dict[DropReason, float] = {}
        # One drop at a time (a refusal, an eviction) ticks without the lock;
        # the ticks are folded into `_pending` under it (`_fold`).
        self._ones = {reason: Ticks() for reason in DropReason}
        self._ones_folded = dict.fromkeys(DropReason, 0)

    def note(self, reason: DropReason, count: int) -> None:
        """Count `count` drops; log them now if this reason's second is up."""
        now = self._clock.now()
        # Called for every drop, once per push under a flood into a full
        # queue: a single drop takes no lock while the reason's second is not
        # up (a lock there makes producers queue up for it, `_ticks.py`).
        if count == 1:
            self._ones[reason].tick()
            last = self._last.get(reason)
            if last is not None and now - last < DROP_LOG_INTERVAL:
                return
        lock = self._lock
        lock.acquire()
        try:
            if count != 1:
                pending = self._pending
                pending[reason] = pending.get(reason, 0) + count
            due = self._take_due(now, reason)
        finally:
            lock.release()
        self._emit(due)

    def _fold(self, reason: DropReason) -> None:
        """Count (lock held) the single drops of `reason` ticked since the last fold."""
        total = self._ones[reason].read()
        new = total - self._ones_folded[reason]
        if new > 0:
            self._ones_folded[reason] = total
            self._pending[reason] = self._pending.get(reason, 0) + new

    def flush_due(self) -> None:
        """Log every reason whose second is up."""
        now = self._clock.now()
        with self._lock:
            due: list[tuple[DropReason, int]] = []
            for reason in DropReason:
                due += self._take_due(now, reason)
        self._emit(due)

    def flush_all(self) -> None:
        """Log whatever is pending, whatever the time (at stop)."""
        with self._lock:
            for reason in DropReason:
                self._fold(reason)
            due = [(r, n) for r, n in self._pending.items() if n]
            self._pending.clear()
        self._emit(due)

    def _take_due(self, now: float, reason: DropReason) -> list[tuple[DropReason, int]]:
        self._fold(reason)
        count = self._pending.get(reason, 0)
        last = self._last.get(reason)
        if count and (last is None or now - last >= DROP_LOG_INTERVAL):
            self._pending[reason] = 0
            self._last[reason] = now
            return [(reason, count)]
        return []

    def _emit(self, due: list[tuple[DropReason, int]]) -> None:
        for reason, count in due:
            self._log.logger.warning(ITEMS_DROPPED, reason=reason.value, count=count)
