"""The attempt record: the batch in flight, settled part by part, and its epoch.

`Attempts` is the ledger's second half, one per lane (`ledger.lanes`;
`ledger.attempts` is lane 0's): it shares the ledger's lock and counters,
drives its lane's `Flight`, and holds what a flush attempt needs: the epoch
that fences out late results, the failed attempts of the current part, when
the current attempt started, and whether one was abandoned. Each lane's
epoch is its own, so one lane's failures and retries leave the others be.

A batch in flight settles as one part, unless a PERMANENT failure splits it:
then its parts are flushed in push order, head first, each at once (no
backoff, no restart: the data is bad, not the flusher). A part of one item
that still fails PERMANENT is rejected; every other item is flushed. With k
bad items in a batch of n, that takes at most 2 * k * ceil(log2 n) extra
flush calls. A TRANSIENT failure of a part is retried with backoff and a
fresh flusher, as a whole batch would be, for that part; a later batch
waits until every part settled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from wbactor._messages import STALE, Stale
from wbactor._stats import DropReason

if TYPE_CHECKING:
    from collections.abc import Callable

    from wbactor._flight import Flight
    from wbactor._ledger import Dropped, Ledger
    from wbactor._stats import LaneState

__all__ = ["Attempt", "Attempts", "Failed", "Isolated"]

T = TypeVar("T")

_REJECTED = DropReason.REJECTED


class Attempt(NamedTuple):
    """What the supervisor needs to know of the attempt in flight."""

    epoch: int
    """The current epoch: only a flusher of this epoch may report."""

    started: float | None
    """Clock time the current attempt started; None if not started yet."""

    in_flight: bool
    """Whether a batch is in flight."""

    batches: int = 1
    """Batches handed over in this attempt (a window: `flush_timeout` each)."""


class Failed(NamedTuple):
    """A transient failure the ledger counted (`Attempts.fail`)."""

    failures: int
    """Failed attempts of the part in flight, this one included."""

    batch_size: int
    """Items in that part; 0 if nothing was in flight."""

    epoch: int
    """The epoch that replaces the failed one."""


class Isolated(NamedTuple, Generic[T]):
    """What a permanent or partial failure settled (`Attempts.isolate`, `.partly`)."""

    batch: list[T] | Stale | None
    """What to flush next, as `Attempts.complete` returns it."""

    rejected: list[T]
    """Items rejected now, for the caller to report (as `rejected`)."""

    split: tuple[int, int] | None
    """The sizes of the two halves, if the failed part was split."""


Next = list[T] | Stale | None


class Attempts(Generic[T]):
    """The epoch and the attempt of the batch in flight, under the ledger's lock."""

    def __init__(
        self,
        ledger: Ledger[T],
        flight: Flight[T],
        observers: list[Callable[[float], object]],
    ) -> None:
        """Keep the attempt record of `flight`, a lane of `ledger`."""
        self._ledger = ledger
        self._buffer = ledger.buffer  # its counters
        self._flight = flight
        self.lane = flight.index
        self._epoch = 0
        self._failures = 0  # transient failures of the head part
        self._started: float | None = None
        self._batches = 1  # batches handed over in the current attempt
        self._abandoned = False  # an attempt was given up on at stop: may hang
        self.observers = observers
        """Called by the flusher actor, outside the lock, with the seconds
        each flush attempt took, failed ones included (for metrics); one list
        for every lane."""

    def reset(self) -> None:
        """Start (lock held) the record of a batch just taken into flight."""
        self._failures = 0
        self._started = None

    # -- the flusher --------------------------------------------------------

    def start(self, epoch: int) -> list[T] | None:
        """Return a copy of the part to flush for `epoch`'s attempt, or None."""
        with self._ledger.lock:
            if epoch != self._epoch or self._flight.items is None:
                return None
            self._started = self._ledger.now()
            self._batches = 1
            return self._flight.head_part()

    def complete(self, epoch: int) -> Next[T]:
        """Count the part in flight as flushed; return what to flush next.

        That is the next part of the batch, or else the next full batch
        (taken into flight now), or None when no full batch waits: the
        flusher goes idle. `STALE` (nothing counted) if `epoch` was replaced.
        """
        with self._ledger.lock:
            if epoch != self._epoch:
                return STALE
            self._flight.complete()
            return self._next()

    def isolate(self, epoch: int) -> Isolated[T]:
        """Act on a PERMANENT failure of the part in flight: reject it, or split it.

        A part of one item is rejected; a longer one is split in two, the
        first ceil(n/2) items first, to be flushed at once. Counts in
        `retries`, restarts nothing.
        """
        with self._ledger.lock:
            if epoch != self._epoch:
                return Isolated(STALE, [], None)
            flight = self._flight
            self._buffer.retries += 1
            if len(flight.head_part()) > 1:
                split = flight.split_head()
                self._failures = 0  # the halves are new parts: their own retries
                self._started = self._ledger.now()
                self._ledger.settled()
                return Isolated(flight.head_part(), [], split)
            rejected = flight.drop_head(_REJECTED)
            return Isolated(self._next(), rejected, None)

    def partly(self, epoch: int, failed: list[int], *, permanent: bool) -> Isolated[T]:
        """Act on a `PartialFailure`: the part's items but `failed` are flushed.

        `failed` are sorted, unique, valid indices into the part. PERMANENT:
        they are rejected, and what follows is returned as by `complete`.
        TRANSIENT: they stay in flight, as the part to retry (the caller
        then reports the failure to the supervisor), and `batch` is None.
        """
        with self._ledger.lock:
            if epoch != self._epoch:
                return Isolated(STALE, [], None)
            if permanent:
                self._buffer.retries += 1
                rejected = self._flight.settle_head_partly(failed, _REJECTED)
                return Isolated(self._next(), rejected, None)
            self._flight.settle_head_partly(failed, None)
            self._ledger.settled()
            return Isolated(None, [], None)

    def _next(self) -> Next[T]:
        """Return (lock held) what to flush after the head part settled."""
        self._failures = 0
        ledger = self._ledger
        self._batches = 1
        if self._flight.items is not None:  # more parts of this batch
            ledger.settled()
            self._started = ledger.now()
            return self._flight.head_part()
        batch = ledger.settled_batch(self._flight)  # its next full batch, if one waits
        if batch is None:
            self._started = None
            return None
        self.reset()
        self._started = ledger.now()
        return list(batch)

    # -- a window of batches (worker processes) -----------------------------

    def window(
        self, epoch: int, most: int, batch_size: int, after: int = 0
    ) -> list[list[T]] | Stale:
        """Return copies of the parts to hand over at once: at most `most`.

        The first `after` parts in flight are out already (windows not yet
        collected): the window is cut behind them, topping the flight up
        with full batches, each a part of its own, so one hand-off to a
        worker process carries several (one hand-off costs the parent up to
        a GIL switch interval under load). Returns [] when nothing more is in
        flight or queued in full, `STALE` if `epoch` was replaced.

        The attempt's clock (`flush_timeout`) starts with the first window
        out; a window cut behind others waits its turn (`complete_parts`).
        """
        ledger = self._ledger
        with ledger.lock:
            if epoch != self._epoch:
                return STALE
            flight = self._flight
            topped = False
            while (
                flight.count_parts() < after + most and len(flight.queue) >= batch_size
            ):
                if flight.items is None:
                    self.reset()
                flight.extend(batch_size)
                topped = True
            if topped:
                ledger.settled()  # room made; the trigger follows the flight
            parts = flight.parts(after + most)[after:]
            if not after:
                self._started = ledger.now() if parts else None
                self._batches = max(1, len(parts))
            return parts

    def complete_parts(self, epoch: int, done: int, following: int = 0) -> bool:
        """Count the first `done` parts in flight as flushed; False if stale.

        `following` is the number of batches of the next window out, if
        one is: the attempt's clock restarts for it, now.
        """
        with self._ledger.lock:
            if epoch != self._epoch:
                return False
            for _ in range(done):
                self._flight.complete()
            if done:
                self._failures = 0
                self._ledger.settled()
            if following:
                self._started = self._ledger.now()
                self._batches = following
            return True

    # -- the supervisor -----------------------------------------------------

    def attempt(self) -> Attempt:
        """Return the current epoch and its attempt."""
        with self._ledger.lock:
            in_flight = self._flight.items is not None
            return Attempt(self._epoch, self._started, in_flight, self._batches)

    def fail(self, epoch: int, started: float | None = None) -> Failed | None:
        """Count a transient failure of `epoch`'s attempt and retire that epoch.

        Returns None if `epoch` was already replaced (a stale report) or,
        when `started` is given, its attempt is no longer the one that
        started then.
        """
        with self._ledger.lock:
            if epoch != self._epoch:
                return None
            if started is not None and started != self._started:
                return None
            self._epoch += 1
            self._started = None
            if self._flight.items is None:
                return Failed(0, 0, self._epoch)
            self._failures += 1
            self._buffer.retries += 1
            self._ledger.settled()
            return Failed(self._failures, len(self._flight.head_part()), self._epoch)

    def rebase(self, epoch: int, started: float, now: float) -> None:
        """Restart the attempt's clock at `now` (the clock stepped back before it)."""
        with self._ledger.lock:
            if epoch == self._epoch and started == self._started:
                self._started = now

    def exhaust(self) -> tuple[Dropped[T], bool]:
        """Drop the part in flight as `retries_exhausted`.

        Returns its items, and whether parts of the batch are still in flight.
        """
        reason = DropReason.RETRIES_EXHAUSTED
        with self._ledger.lock:
            self._failures = 0
            items = self._flight.drop_head(reason)
            more = self._flight.items is not None
            self._ledger.settled()
            return (items, reason), more

    def count_restart(self) -> int:
        """Count a flusher restart; return the total."""
        with self._ledger.lock:
            self._buffer.restarts += 1
            self._ledger.settled()
            return self._buffer.restarts

    # -- stop ---------------------------------------------------------------

    @property
    def abandoned(self) -> bool:
        """Whether an attempt was given up on at stop (it may hang for good)."""
        return self._abandoned

    def abandon(self) -> None:
        """Give up (lock held) on this lane's attempt: stop ran out of time.

        The epoch moves on, so a late result from a hung attempt is ignored;
        `Ledger.abandon` drops what is left, in every lane.
        """
        self._epoch += 1
        self._started = None
        if self._flight.items is not None:
            self._abandoned = True

    def lane_state(self) -> tuple[int, LaneState]:
        """Return (lock held) the failures of the batch in flight, and its state."""
        if self._flight.items is None:
            return 0, "idle"
        if self._failures and self._started is None:
            return self._failures, "backing_off"
        return self._failures, "flushing"
