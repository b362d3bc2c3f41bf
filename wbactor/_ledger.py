"""The ledger: the one lock-guarded record of where every item is.

It owns the lock and its conditions, the `PolicyBuffer` (queued items, the
batch in flight, the counters) and, as `ledger.attempts` (`_attempts.py`),
the attempt record of the batch in flight (`epoch`, `failures`, `started`,
`abandoned`). Every actor and producer reads and writes the queue's state
through their methods, which take the lock: admission (`_admission.py`), the
mailbox (`_mailbox.py`), the queue actor, the flusher and the supervisor.

Epochs fence out late results: each flusher runs for one epoch, and a
failure or an abandon moves the epoch on, so a result reported for an older
epoch is ignored (`STALE`). Callers learn the current epoch only from what
these methods return.

Pending `Flush` requests are settled here too, as each batch completes or
is dropped, so `flush()` returns under a sustained backlog, while the
flusher never goes idle.

Nothing here calls user code or logs: what a method evicts it returns, as a
list of items with their reason, and the caller reports it outside the lock
(`_drops.py`).

The lock is re-entrant so that code interrupted while holding it (by a signal
handler on the same thread, see `WriteBehind.stop`) can be recognised with
`owned()` instead of deadlocking.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pykka

from wbactor._attempts import Attempts
from wbactor._buffer import PolicyBuffer
from wbactor._errors import QueueClosedError
from wbactor._stats import DropReason, LaneState, LaneStats, Stats

if TYPE_CHECKING:
    from collections.abc import Callable

    from wbactor._clock import Clock
    from wbactor._config import Config
    from wbactor._drops import ActorThreads
    from wbactor._flight import Flight
    from wbactor._journal import Journal

__all__ = ["Dropped", "Ledger"]

T = TypeVar("T")

_CLOSED = DropReason.CLOSED
_PUSH_TIMEOUT = DropReason.PUSH_TIMEOUT

Dropped = tuple[list[T], DropReason]
"""Items a ledger method evicted, and why: the caller reports them."""

_Lane = tuple[int, int, int, LaneState]
"""A lane's `LaneStats` fields, copied under the lock."""


def _built(counters: dict[str, Any], lanes: list[_Lane]) -> Stats:
    """Build the `Stats` of counters a snapshot copied (no lock needed)."""
    return Stats(**counters, lanes=tuple(LaneStats(*lane) for lane in lanes))


class Ledger(Generic[T]):
    """The lock, the `PolicyBuffer` it guards, and `attempts`, the attempt in flight."""

    def __init__(self, config: Config[T], clock: Clock, threads: ActorThreads) -> None:
        """Make an empty, open ledger for `config`."""
        self.lock = threading.RLock()
        self.wake = threading.Condition(self.lock)  # the queue actor waits here
        self.room = threading.Condition(self.lock)  # BLOCK producers wait here
        self._progress = threading.Condition(self.lock)  # outcomes, for waiters
        self._clock = clock
        self._threads = threads
        self.buffer: PolicyBuffer[T] = PolicyBuffer(
            config.capacity,
            config.policy,
            clock.now(),
            lanes=config.lanes,
            routed=config.key_func is not None,
        )
        self.flights = self.buffer.flights
        self.capacity = config.capacity
        self._batch_size = config.batch_size
        # The queues themselves, for admission's lock-free appends and look-ups,
        # and the lock-free count of DROP_NEWEST refusals.
        self.items = self.buffer.items
        self.count_refusal = self.buffer.count_refusal
        self.by_key = self.buffer.by_key
        self.closed = False  # takes no more items
        self._stopped = False  # the queue actor stopped: its final Stats are taken
        self.batch_ready = False  # the queue actor was woken for a full batch
        self._room_waiters = 0
        # Pending flushes: (each queue's position they cover, reply future
        # or None), in order.
        self._flushes: deque[tuple[tuple[int, ...], pykka.Future[Any] | None]] = deque()
        self.forked_from: int | None = None  # the parent's pid, in a forked child
        self.trigger = 0  # set by _retrigger()
        self.journal: Journal[T] | None = None  # set by the journal itself, at start
        self._retrigger()
        observers: list[Callable[[float], object]] = []
        self.lanes: list[Attempts[T]] = [
            Attempts(self, flight, observers) for flight in self.flights
        ]
        """Each lane's attempt record of its batch in flight, under this lock."""
        self.attempts: Attempts[T] = self.lanes[0]
        """Lane 0's attempt record (the only one with one lane)."""

    # -- admission (producers' threads) -------------------------------------

    def after_append(self) -> Dropped[T] | None:
        """Act on a lock-free append that reached `trigger`; return what it evicts.

        Evicts an overshoot of `capacity`, wakes the queue actor for a full
        batch, or drops, with `closed`, an item appended after the final
        accounting.
        """
        # Under a flood into a full queue every push comes here to evict one
        # item, so this is a hot path too: acquire/release, not `with` (it
        # looks up and binds __enter__ and __exit__ each time).
        lock = self.lock
        lock.acquire()
        try:
            buffer = self.buffer
            if self._stopped:
                dropped, reason = buffer.drop_queued(_CLOSED), _CLOSED
            else:
                dropped, reason = buffer.evict_overflow(), buffer.overflow_reason
                self.note_batch_ready()
            if dropped and self._flushes:
                self._answer_flushes()
        finally:
            lock.release()
        return (dropped, reason) if dropped else None

    def evict_keyed(self) -> Dropped[T] | None:
        """Evict (lock held) an overshoot of the keyed queue; wake for a full batch."""
        dropped = self.buffer.evict_overflow()
        self.note_batch_ready()
        if dropped and self._flushes:
            self._answer_flushes()
        return (dropped, self.buffer.overflow_reason) if dropped else None

    def refuse(self, items: list[T], reason: DropReason) -> Dropped[T]:
        """Count items refused at the door; return them for reporting.

        Raises:
            pykka.ActorDeadError: refused as `closed` after the actor stopped.
        """
        with self.lock:
            if reason is _CLOSED:
                self.refuse_if_stopped()
            for _ in items:
                self.buffer.reject(reason)
        return items, reason

    def refuse_if_stopped(self) -> None:
        """Raise (lock held) if the actor stopped: pykka's rule for a dead actor.

        While stopping, told items are still counted (dropped with `closed`);
        once stopped, `stop()` has taken its final `Stats`, so they are refused.
        """
        if self.forked_from is not None:
            raise QueueClosedError(self.fork_message())
        if self._stopped:
            msg = "the queue actor has stopped"
            raise pykka.ActorDeadError(msg)

    def fork_message(self) -> str:
        """Say, in a forked child, whose queue this is and what to do instead."""
        return (
            f"this queue belongs to the parent process (pid {self.forked_from}); "
            "a forked child cannot use it: start a new queue in the child"
        )

    def after_fork_in_child(self, parent: int) -> None:
        """Refuse everything in a child forked from `parent` (no other thread runs).

        The parent's threads, which might have held the lock, do not exist
        here, so the lock and its conditions are made anew.
        """
        self.lock = threading.RLock()
        self.wake = threading.Condition(self.lock)
        self.room = threading.Condition(self.lock)
        self._progress = threading.Condition(self.lock)
        self.forked_from = parent
        self.closed = True
        self._stopped = True
        self.trigger = 0
        self._flushes.clear()

    def owned(self) -> bool:
        """Return whether the calling thread holds the lock."""
        owned: bool = self.lock._is_owned()  # type: ignore[attr-defined]  # noqa: SLF001
        return owned

    def note_batch_ready(self) -> None:
        """Wake the actor (lock held) if a full batch waits for an idle lane."""
        if not self.batch_ready and self._lane_ready():
            self.batch_ready = True
            self.wake.notify()
            self._retrigger()

    def _lane_ready(self) -> bool:
        """Return (lock held) whether an idle lane has a full batch queued."""
        size = self._batch_size
        for flight in self.flights:
            if flight.items is None and len(flight.queue) >= size:
                return True
        return False

    def _all_busy(self) -> bool:
        return all(flight.items is not None for flight in self.flights)

    def take_batch_ready(self) -> bool:
        """Consume (lock held) the full-batch wake-up, if one is pending."""
        if not self.batch_ready:
            return False
        self.batch_ready = False
        self._retrigger()
        return True

    def wait_room(self, timeout: float | None) -> DropReason | None:
        """Wait (lock held) for room under BLOCK; return why not, or None.

        A push from one of the queue's own actors (a flusher or `on_drop`
        pushing back) cannot wait: room is made by that very thread. It
        times out at once instead of deadlocking.
        """
        if self._threads.current():
            return _PUSH_TIMEOUT
        # Producer waits are in real time: the producer's own time, not the clock's.
        deadline = None if timeout is None else _monotonic() + timeout
        self._room_waiters += 1
        try:
            buffer = self.buffer
            while len(buffer) >= buffer.capacity:
                if self.closed:
                    return _CLOSED
                remaining = remaining_until(deadline)
                if remaining is not None and remaining <= 0:
                    return _PUSH_TIMEOUT
                self.room.wait(remaining)
            return _CLOSED if self.closed else None
        finally:
            self._room_waiters -= 1

    def _retrigger(self) -> None:
        """Set (lock held) the queue length at which a lock-free push must act.

        Idle and not yet woken: a full batch (to wake the actor). Busy or
        woken: only an overshoot of `capacity` (to evict). Stopped: any push
        (to refuse it). Writers set it under the lock and then read the
        length, while a producer appends and then reads it, so one of the
        two always sees the other.

        It also follows `capacity` down as the items recovered from a
        journal beyond it leave (it is only above `Config.capacity` then).
        """
        self.capacity = self.buffer.capacity
        if self._stopped:
            self.trigger = 0
        elif self.batch_ready or self._all_busy():
            self.trigger = self.capacity + 1
        else:
            self.trigger = min(self._batch_size, self.capacity + 1)

    # -- batches (the queue actor) ------------------------------------------

    def take(self, *, force: bool) -> list[int]:
        """Put a batch in flight in each idle lane with items; return those lanes.

        Without `force`, only full batches go. Lanes without a queue of their
        own (no `key_func`) cut theirs from the one queue in push order.
        """
        size = self._batch_size
        taken: list[int] = []
        with self.lock:
            for flight in self.flights:
                if flight.items is not None:
                    continue
                queued = len(flight.queue)
                if not queued or (not force and queued < size):
                    continue
                flight.take(size)
                self.lanes[flight.index].reset()
                taken.append(flight.index)
            if taken:
                self._retrigger()
                self._made_room()
        return taken

    def add_flush(self, reply_to: pykka.Future[Any] | None) -> None:
        """Record (lock held) a flush of every position taken so far.

        It is answered (`reply_to` set) once every item before it settled.
        """
        self._flushes.append((self.buffer.tails(), reply_to))
        self._answer_flushes()

    def flush_pending(self) -> bool:
        """Return whether a flush waits: partial batches must go meanwhile."""
        return bool(self._flushes)

    def take_flushes(self) -> list[pykka.Future[Any]]:
        """Remove every pending flush; return the reply futures to fail (at stop)."""
        with self.lock:
            futures = [reply for _, reply in self._flushes if reply is not None]
            self._flushes.clear()
            return futures

    def _answer_flushes(self) -> None:
        """Answer (lock held) the flushes whose items have all settled."""
        flushes = self._flushes
        covered = self.buffer.covered
        while flushes and covered(flushes[0][0]):
            _, reply_to = flushes.popleft()
            if reply_to is not None:
                reply_to.set(None)

    def mark_tick(self) -> None:
        """Note the tick's time, for `Stats.oldest_age`."""
        now = self._clock.now()
        with self.lock:
            self.buffer.mark(now)

    # -- settling (lock held; for `Attempts`) -------------------------------

    def now(self) -> float:
        """Return the clock's time."""
        return self._clock.now()

    def settled(self) -> None:
        """Note (lock held) that items in flight settled, or an attempt failed.

        Answers the flushes now done, recomputes the trigger, lets producers
        waiting for room and waiters on outcomes look again.
        """
        if self._flushes:
            self._answer_flushes()
        self._retrigger()
        self._made_room()
        self._progress.notify_all()

    def settled_batch(self, flight: Flight[T]) -> list[T] | None:
        """Note (lock held) `flight`'s batch settled; take its next full one.

        Returns the next batch, now in flight, if `batch_size` items are
        queued for that lane, so the flusher chains it without a message;
        else None.
        """
        self.settled()  # idle now: retriggered before the length is read
        if len(flight.queue) < self._batch_size:
            return None
        batch = flight.take(self._batch_size)
        self._retrigger()
        self._made_room()
        return batch

    # -- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        """Refuse new items from now on and release producers waiting for room."""
        with self.lock:
            self.closed = True
            self.room.notify_all()

    def mark_stopped(self) -> None:
        """Note the queue actor stopped: refuse every push from now on."""
        with self.lock:
            self.closed = True
            self._stopped = True
            self._retrigger()
            self.room.notify_all()

    @property
    def stopped(self) -> bool:
        """Whether the queue actor stopped."""
        return self._stopped

    # -- reading ------------------------------------------------------------

    def depth(self) -> int:
        """Return the items queued, not counting the batch in flight.

        Never more than `capacity`, though for an instant the buffer may hold
        one more item per producer pushing at that moment.
        """
        return min(len(self.buffer), self.capacity)

    def stats(self) -> tuple[Stats, Dropped[T] | None]:
        """Return a consistent snapshot, and the overshoot it evicted first.

        Only the counters are copied under the lock; the `Stats` is built
        after, so a reader in a loop holds the lock producers evict under
        (DROP_OLDEST, a push into a full queue) for as short a time as it can.
        """
        with self.lock:
            counters, lanes, evicted = self._counters()
        return _built(counters, lanes), evicted

    def peek(self) -> Stats:
        """Return a snapshot that changes nothing (no eviction of an overshoot).

        For a caller that may have interrupted this very ledger's code on its
        own thread (a signal handler): the lock is re-entrant, so this cannot
        deadlock, and it mutates nothing the interrupted code is working on.
        """
        with self.lock:
            buffer = self.buffer
            depth = min(len(buffer), self.capacity)
            return buffer.stats(self._clock.now(), depth, self._lane_stats(depth))

    def _snapshot(self) -> tuple[Stats, Dropped[T] | None]:
        """Snapshot the counters (lock held), first evicting any overshoot."""
        counters, lanes, evicted = self._counters()
        return _built(counters, lanes), evicted

    def _counters(self) -> tuple[dict[str, Any], list[_Lane], Dropped[T] | None]:
        """Copy the counters (lock held), first evicting any overshoot.

        Evicting here is what lets `Stats.depth` never exceed `capacity`.
        """
        buffer = self.buffer
        buffer.fold_refusals()
        length = len(buffer)  # once: producers may append meanwhile
        dropped = [] if self._stopped else buffer.evict_overflow(length)
        if dropped and self._flushes:
            self._answer_flushes()
        depth = length - len(dropped)
        counters = buffer.counters(self._clock.now(), depth)
        lanes = self._lane_figures(depth)
        return counters, lanes, (dropped, buffer.overflow_reason) if dropped else None

    def _lane_stats(self, depth: int) -> tuple[LaneStats, ...]:
        """Return (lock held) each lane's figures; their depths sum to `depth`."""
        return tuple(LaneStats(*lane) for lane in self._lane_figures(depth))

    def _lane_figures(self, depth: int) -> list[_Lane]:
        """Return (lock held) each lane's depth, in flight, failures and state."""
        buffer = self.buffer
        depths = buffer.lane_depths() if buffer.routed else [depth]
        depths += [0] * (len(self.flights) - len(depths))
        return [
            (depths[i], len(flight), *self.lanes[i].lane_state())
            for i, flight in enumerate(self.flights)
        ]

    def abandon(self) -> Dropped[T]:
        """Give up on everything queued or in flight, in every lane (stop ran out).

        Every lane's epoch moves on, so a late result from a hung attempt is
        ignored. Returns the items, now counted as dropped with `closed`. With
        a journal, the items it holds stay there instead (`Stats.journaled`):
        only those that did not pickle are dropped.
        """
        with self.lock:
            for attempts in self.lanes:
                attempts.abandon()
            if self.journal is not None:  # what it journals is kept, not dropped
                items = self.journal.keep_leftovers()
            else:
                buffer = self.buffer
                items = buffer.drop_in_flight(_CLOSED) + buffer.drop_queued(_CLOSED)
            self.settled()
            return items, _CLOSED

    def wait_progress(
        self, predicate: Callable[[Stats], bool], timeout: float
    ) -> tuple[Stats | None, Dropped[T] | None]:
        """Wait until `predicate(stats)` holds after an outcome; None on timeout.

        Outcomes are batch results, failures, restarts and drops of batches;
        pushes do not wake waiters. Also returns what the snapshots evicted.
        """
        deadline = _monotonic() + timeout
        evicted: list[T] = []
        met: Stats | None = None
        with self.lock:
            while True:
                stats, dropped = self._snapshot()
                if dropped is not None:
                    evicted += dropped[0]
                if predicate(stats):
                    met = stats
                    break
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    break
                self._progress.wait(remaining)
        return met, (evicted, self.buffer.overflow_reason) if evicted else None

    def _made_room(self) -> None:
        if self._room_waiters:
            self.room.notify_all()


def remaining_until(deadline: float | None) -> float | None:
    """Return the seconds left until `deadline` on the monotonic clock."""
    return None if deadline is None else deadline - _monotonic()


_monotonic = time.monotonic
