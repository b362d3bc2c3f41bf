"""Configuration: `Config`, `Policy` and `default_backoff`.

`Config` checks every value once, in its constructor, so that nothing on the
hot path has to.
"""

from __future__ import annotations

import enum
import math
import os
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, Protocol, TypeGuard, TypeVar

from wbactor._errors import (
    CapacityRequiredError,
    CoalesceNeedsKeyError,
    ConfigError,
    FlusherRequiredError,
)

if TYPE_CHECKING:
    from wbactor._clock import Clock
    from wbactor._failures import Failure
    from wbactor._stats import DropReason

__all__ = [
    "Config",
    "Flusher",
    "FlusherLike",
    "Policy",
    "check_wait_timeout",
    "clamp_backoff",
    "default_backoff",
]

T = TypeVar("T")
_C = TypeVar("_C", bound=type)


class Policy(enum.Enum):
    """What happens to a push when the queue already holds `capacity` items."""

    DROP_OLDEST = "drop_oldest"
    """Evict the oldest queued item (`on_drop(old, "drop_oldest")`)."""

    DROP_NEWEST = "drop_newest"
    """Refuse the new item (`on_drop(item, "drop_newest")`)."""

    BLOCK = "block"
    """Make the producer wait for room (`push(timeout=)`, `block_timeout`)."""

    COALESCE_BY_KEY = "coalesce_by_key"
    """Replace a queued item with the same key in place; a new key evicts the oldest."""


class Flusher(Protocol[T]):
    """An object that writes one batch to the store.

    `flush` may raise anything: the attempt counts as failed, and
    `Config.classify` reads the error. A transient one (the default) is
    retried with backoff; a `PermanentError` splits the batch until only the
    bad items are left, which are dropped as `rejected`. It should be
    idempotent (an upsert): an attempt abandoned after `flush_timeout` may
    still complete later.
    """

    def flush(self, batch: list[T], /) -> object:
        """Write `batch`, in push order; raise to have it retried or split."""


FlusherLike = Flusher[T] | Callable[[list[T]], object]
"""A `Flusher`, or a plain callable taking the batch."""


_MIN_FLUSH_INTERVAL: Final = 0.001
"""The shortest `flush_interval`, in seconds: a shorter one would spin the timer."""

_BACKOFF_MAX: Final = 3600.0  # an hour: the longest retry backoff clamp_backoff allows

_BACKOFF_CAPPED_FROM = 7  # 0.1 * 2**6 = 6.4 s, already past the 5 s cap


def default_backoff(attempt: int) -> float:
    """Return seconds to wait before retry `attempt` (1-based).

    `0.1 * 2 ** (attempt - 1)`, capped at 5.0; `attempt <= 1` gives 0.1.
    """
    if attempt <= 1:
        return 0.1
    # Past attempt 7 the cap holds; stopping there keeps 2**n small.
    return min(0.1 * 2.0 ** (min(attempt, _BACKOFF_CAPPED_FROM) - 1), 5.0)


class _Required:
    """The run-time default of a field the typed signature makes required."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<required>"


_REQUIRED: Final = _Required()
"""Left in `capacity` when it is not given, so that `__post_init__` can say so."""


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_wait_timeout(timeout: float | None, what: str) -> float | None:
    """Check a `timeout` argument, such as `flush(timeout)` or `stop(timeout)`.

    Meant to run before the call changes anything, so that a bad value
    leaves the queue as it was. None and `math.inf` mean no limit, and so
    does a finite value above `threading.TIMEOUT_MAX` (292 years on Linux,
    49 days on Windows), which no `threading` wait accepts anyway.

    Args:
        timeout: Seconds to wait, or None for no limit.
        what: Names the argument in the error message, e.g. `"stop() timeout"`.

    Returns:
        The seconds as a `float` (at least 0.0), or None for no limit.

    Raises:
        TypeError: `timeout` is not None, an int or a float (a bool is refused
            too: `flush(True)` is a mistake, not one second).
        ValueError: `timeout` is NaN or negative.
    """
    if timeout is None:
        return None
    value: object = timeout
    if not _is_number(value):
        msg = f"{what} must be None or a number of seconds, got {type(value).__name__}"
        raise TypeError(msg)
    if isinstance(value, float) and math.isnan(value):
        msg = f"{what} must be None or a number of seconds, got nan"
        raise ValueError(msg)
    if value < 0:
        msg = f"{what} must be None or at least 0 seconds, got {value!r}"
        raise ValueError(msg)
    if value > threading.TIMEOUT_MAX:  # math.inf too, and ints past any float
        return None
    return float(value) + 0.0  # + 0.0 turns -0.0 into 0.0


def clamp_backoff(delay: object) -> float:
    """Return a `retry_backoff` result as seconds within `[0, 3600]`.

    `retry_backoff` is user code: a negative delay or NaN means no wait (0.0),
    and anything above an hour (`math.inf` included) waits an hour, so that a
    bad answer can neither overflow the timer nor park a batch for ever.

    Args:
        delay: What `retry_backoff(attempt)` returned.

    Returns:
        The delay as a `float`, clamped to `[0.0, 3600.0]`.

    Raises:
        TypeError: `delay` is not an int or a float (a bool is refused too);
            the caller logs that and falls back to `default_backoff`.
    """
    if not _is_number(delay):
        # The type only: this runs on an actor, and a hostile repr() may raise.
        msg = (
            f"retry_backoff must return a number of seconds, got {type(delay).__name__}"
        )
        raise TypeError(msg)
    if isinstance(delay, float) and math.isnan(delay):
        return 0.0
    # Compare before converting: an int too large for a float compares fine.
    if delay >= _BACKOFF_MAX:
        return _BACKOFF_MAX
    if delay <= 0:
        return 0.0
    return float(delay)


def _is_duration(value: object, *, zero_ok: bool = False) -> TypeGuard[int | float]:
    """Return whether `value` is seconds a timer can wait for.

    That is a number above 0 (or at least 0, with `zero_ok`), and at most
    `threading.TIMEOUT_MAX`, past which `Condition.wait` raises
    `OverflowError`. Comparisons rather than `math.isfinite`: NaN and the
    infinities fail them, and an int too large for a float compares exactly.
    """
    if not _is_number(value):
        return False
    above_zero = value >= 0 if zero_ok else value > 0
    return above_zero and value <= threading.TIMEOUT_MAX


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_flusher(value: object) -> bool:
    return callable(getattr(value, "flush", None)) or callable(value)


def _repoint_frozen_setattr(cls: _C) -> _C:
    """Make a frozen slots dataclass's `__setattr__` refer to the class it is on.

    `dataclass(slots=True)` builds a second class, but the frozen
    `__setattr__`/`__delattr__` it generated close over the first one, so
    setting any non-field attribute raises a confusing `TypeError` from
    `super()` instead of `FrozenInstanceError` (CPython gh-116669, fixed in
    3.14). `typing` sets `__orig_class__` on the result of `Config[int](...)`
    and tolerates only `AttributeError`, so without this the documented
    generic call fails.
    """
    for name in ("__setattr__", "__delattr__"):
        function = cls.__dict__.get(name)
        for cell in getattr(function, "__closure__", None) or ():
            old = cell.cell_contents
            if (
                isinstance(old, type)
                and old is not cls
                and old.__qualname__ == cls.__qualname__
                and old.__module__ == cls.__module__
            ):
                cell.cell_contents = cls
    return cls


MAX_LANES = 1024
"""Most lanes a queue may have: each is a flusher actor (or worker process)."""


@_repoint_frozen_setattr
@dataclass(frozen=True, kw_only=True, slots=True)
class Config(Generic[T]):
    """How a queue is bounded, batched, flushed and retried.

    Every value is checked here, in this order: `capacity`, the flusher,
    `key_func` for coalescing, then the rest. A bad value raises a
    `ConfigError` subclass naming the field. Every duration is in seconds,
    finite and at most `threading.TIMEOUT_MAX` (the longest wait `threading`
    accepts).
    """

    if TYPE_CHECKING:
        # No default for a type checker, so leaving capacity out is its error;
        # at run time the sentinel default below lets `__post_init__` raise
        # CapacityRequiredError instead of a bare TypeError.
        capacity: int
        """Most items held in the queue (the batch in flight is not counted).
        Required: leaving it out raises `CapacityRequiredError`."""
    else:
        capacity: int = _REQUIRED

    flusher: FlusherLike[T] | None = None
    """Writes batches: an object with `flush(batch)` or a callable. Required
    unless `flusher_factory` is given."""

    batch_size: int = 100
    """Most items per flush call, also during the final drain."""

    flush_interval: float = 1.0
    """Seconds between ticks; a tick flushes whatever is queued. It bounds how
    long a healthy queue lets an item wait. At least 0.001 (a shorter interval
    would spin) and at most `threading.TIMEOUT_MAX`."""

    policy: Policy = Policy.DROP_OLDEST
    """The overflow policy, applied when `capacity` items are queued."""

    key_func: Callable[[T], Hashable] | None = None
    """Item to hashable key; required for `Policy.COALESCE_BY_KEY`."""

    retry_backoff: Callable[[int], float] | None = None
    """Attempt number (1-based) to seconds before the retry; None means
    `default_backoff`."""

    max_retries: int = 3
    """Retries after the first attempt before a batch that keeps failing
    transiently is dropped with `retries_exhausted`; 0 means none, -1 retries
    forever. A permanent failure is not retried: its bad items are rejected."""

    on_drop: Callable[[T, DropReason], object] | None = None
    """Called once for each dropped item, outside any lock, with the reason.
    Exceptions it raises are logged and swallowed."""

    flush_timeout: float | None = None
    """Seconds an attempt may run before it counts as failed and the flusher
    is replaced; None means no limit. Above 0 and at most
    `threading.TIMEOUT_MAX`."""

    block_timeout: float | None = None
    """`Policy.BLOCK`: seconds a `tell(Push)` waits for room before the item is
    dropped with `push_timeout`; None waits until room or stop. Above 0 and at
    most `threading.TIMEOUT_MAX`."""

    flusher_factory: Callable[[], FlusherLike[T]] | None = None
    """Makes a fresh flusher at start and at every restart, so a broken
    connection is rebuilt."""

    clock: Clock | None = None
    """The time source; None means the monotonic clock. Tests pass a
    `wbactor.testing.ManualClock`."""

    name: str = "wbactor"
    """The queue's name, a non-empty str, to tell several queues apart: its log
    lines carry it as `queue=name`, and its metrics as the `queue` attribute."""

    exit_timeout: float = 5.0
    """Seconds a process that exits without calling `stop()` spends draining
    the queue; what is left then is dropped with `closed`. 0 means no drain:
    everything still queued is dropped with `closed` at once. At least 0 and
    at most `threading.TIMEOUT_MAX`."""

    classify: Callable[[BaseException], Failure] | None = None
    """What a flush error means: exception to `wbactor.Failure`
    (`TRANSIENT`: retry; `PERMANENT`: isolate and reject the culprits); None
    means `wbactor.default_classify`."""

    flusher_process: bool = False
    """Run each flusher in a worker process of its own (spawned), out of the
    producers' GIL; needs a picklable `flusher_factory`."""

    lanes: int = 1
    """Flushers writing at once, each with one batch in flight and its own
    retries (a positive int, at most 1024). With a `key_func`, an item goes
    to lane `hash(key) % lanes`, so one key's items keep their push order;
    without one, batches go to whichever lane is free, in push order.
    `capacity` and the policy count the whole queue."""
    journal: str | os.PathLike[str] | None = None
    """A file (SQLite, WAL) that keeps every accepted item until it is
    flushed, coalesced away or dropped, so that a crash loses at most the
    last `journal_interval`; at start, its items are queued first (see
    the Journal page). None: no journal."""

    journal_interval: float = 0.05
    """Seconds between two group commits to the journal: what a crash may
    lose. Finite, above 0 and at most `threading.TIMEOUT_MAX`."""

    def __post_init__(self) -> None:
        """Check every field, in the documented order."""
        capacity: object = self.capacity
        if not _is_int(capacity) or self.capacity <= 0:
            given = "none given" if capacity is _REQUIRED else f"got {capacity!r}"
            msg = (
                "capacity is required and must be a positive int (the most items "
                f"to hold while the store is slow), {given}"
            )
            raise CapacityRequiredError(msg)
        if self.flusher is None and self.flusher_factory is None:
            msg = "a flusher is required: pass flusher= or flusher_factory="
            raise FlusherRequiredError(msg)
        if self.flusher is not None and not _is_flusher(self.flusher):
            msg = (
                "flusher must have a flush(batch) method or be callable, "
                f"got {type(self.flusher).__name__}"
            )
            raise FlusherRequiredError(msg)
        factory: object = self.flusher_factory
        if factory is not None and not callable(factory):
            msg = f"flusher_factory must be callable, got {factory!r}"
            raise FlusherRequiredError(msg)
        if self.policy is Policy.COALESCE_BY_KEY and self.key_func is None:
            msg = "Policy.COALESCE_BY_KEY needs key_func= (item -> hashable key)"
            raise CoalesceNeedsKeyError(msg)
        self._check_rest()
        if self.flusher_process:  # worker-process wiring
            self._check_process()

    def _check_process(self) -> None:
        """Check `flusher_process=True`: a worker calls the pickled factory."""
        # worker-process wiring: _worker imports multiprocessing, and only
        # this needs it.
        from wbactor._worker import check_picklable  # noqa: PLC0415

        if self.flusher_factory is None:
            msg = (
                "flusher_process=True needs flusher_factory= (called in each "
                "worker process): a flusher= object cannot be moved into one"
            )
            raise FlusherRequiredError(msg)
        check_picklable(self.flusher_factory, "flusher_factory")

    def _check_rest(self) -> None:
        """Check the fields after the three that come first, group by group."""
        policy: object = self.policy
        if not isinstance(policy, Policy):
            msg = f"policy must be a wbactor.Policy, got {policy!r}"
            raise ConfigError(msg)
        if not _is_int(self.batch_size) or self.batch_size <= 0:
            msg = f"batch_size must be a positive int, got {self.batch_size!r}"
            raise ConfigError(msg)
        if not _is_int(self.max_retries) or self.max_retries < -1:
            msg = (
                "max_retries must be an int >= -1 (-1 retries forever), "
                f"got {self.max_retries!r}"
            )
            raise ConfigError(msg)
        lanes: object = self.lanes
        if not _is_int(lanes) or not 1 <= self.lanes <= MAX_LANES:
            msg = f"lanes must be an int from 1 to {MAX_LANES}, got {lanes!r}"
            raise ConfigError(msg)
        self._check_durations()
        self._check_hooks()
        name: object = self.name
        if not isinstance(name, str) or not name:
            msg = f"name must be a non-empty str, got {name!r}"
            raise ConfigError(msg)

    def _check_durations(self) -> None:
        interval: object = self.flush_interval
        if not _is_duration(interval) or interval < _MIN_FLUSH_INTERVAL:
            msg = (
                f"flush_interval must be a number of seconds >= {_MIN_FLUSH_INTERVAL}"
                " (a shorter one would spin the timer) and <= "
                f"threading.TIMEOUT_MAX, got {interval!r}"
            )
            raise ConfigError(msg)
        for field in ("flush_timeout", "block_timeout"):
            value = getattr(self, field)
            if value is not None and not _is_duration(value):
                msg = (
                    f"{field} must be None or a number of seconds > 0 and <= "
                    f"threading.TIMEOUT_MAX, got {value!r}"
                )
                raise ConfigError(msg)
        if not _is_duration(self.exit_timeout, zero_ok=True):
            msg = (
                "exit_timeout must be a number of seconds >= 0 and <= "
                f"threading.TIMEOUT_MAX, got {self.exit_timeout!r}"
            )
            raise ConfigError(msg)

    def _check_hooks(self) -> None:
        flusher_process: object = self.flusher_process
        if not isinstance(flusher_process, bool):
            msg = f"flusher_process must be a bool, got {flusher_process!r}"
            raise ConfigError(msg)
        for field in ("key_func", "retry_backoff", "on_drop", "classify"):
            value = getattr(self, field)
            if value is not None and not callable(value):
                msg = f"{field} must be callable or None, got {value!r}"
                raise ConfigError(msg)
        self._check_journal()
        clock = self.clock
        if clock is not None and not (
            callable(getattr(clock, "now", None))
            and callable(getattr(clock, "wait", None))
        ):
            msg = f"clock must be a wbactor.Clock (now() and wait()), got {clock!r}"
            raise ConfigError(msg)

    def _check_journal(self) -> None:
        journal: object = self.journal
        if journal is not None:
            if not isinstance(journal, (str, os.PathLike)):
                msg = (
                    "journal must be None or a path (str or os.PathLike), "
                    f"got {journal!r}"
                )
                raise ConfigError(msg)
            path = os.fspath(journal)
            if not isinstance(path, str) or not path:
                msg = f"journal must be a non-empty str path, got {journal!r}"
                raise ConfigError(msg)
        if not _is_duration(self.journal_interval):
            msg = (
                "journal_interval must be a number of seconds > 0 and <= "
                f"threading.TIMEOUT_MAX, got {self.journal_interval!r}"
            )
            raise ConfigError(msg)
