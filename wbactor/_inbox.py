"""The policy inbox: the queue actor's mailbox, where the overflow policy lives.

pykka calls `put()` for every message told or asked to the queue actor, on the
sender's thread. `Push`/`PushMany` never become envelopes: their items go
straight into the `PolicyBuffer` under the policy, so the mailbox is bounded by
`capacity` whatever producers do. Control messages (pykka's stop, asks,
`Flush`, ticks, outcomes) are queued apart and always get through.

The actor is woken (`get()` returns) for a control message, or once when a
full batch is waiting and no batch is in flight: never per push.

Under DROP_OLDEST and DROP_NEWEST a push takes no lock: it is one
`deque.append` (atomic under the GIL) and one length check against
`_trigger`, the queue length at which something must happen (a full batch to
announce, or an overshoot of `capacity` to evict). Everything that removes
items holds the lock, and the counts derive from positions, so they stay
exact; concurrent producers can overshoot `capacity` by one item each, for
an instant, until one of them evicts. A lock on every push convoys under the
GIL (four producers went 4x slower than one, with a context switch every
other push). BLOCK and COALESCE_BY_KEY take the lock: one waits, the other
must look up and replace a key atomically.

The inbox is also the one lock-guarded place the other actors read and write
the ledger through (batches in flight, generations, counters), so the
flusher can take its next full batch straight from here without a message.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import pykka

from wbactor._buffer import PolicyBuffer
from wbactor._config import Policy
from wbactor._errors import PushTimeoutError, QueueClosedError
from wbactor._log import KEY_FUNC_FAILED, ON_DROP_FAILED, describe, logger
from wbactor._messages import AwaitFlush, BatchReady, Flush, Push, PushMany
from wbactor._stats import DropReason

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable

    from wbactor._clock import Clock
    from wbactor._config import Config
    from wbactor._log import DropLog
    from wbactor._stats import Stats

__all__ = ["STALE", "Envelope", "PolicyInbox", "Stale"]

T = TypeVar("T")


class Envelope(NamedTuple):
    """What the actor loop reads: pykka's envelope shape (message, reply_to)."""

    message: Any
    reply_to: pykka.Future[Any] | None


_BATCH_READY = Envelope(BatchReady(), None)


class Stale:
    """Marker: the caller's flusher generation was replaced."""

    def __repr__(self) -> str:
        return "STALE"


STALE = Stale()

_CLOSED = DropReason.CLOSED
_NEWEST = DropReason.DROP_NEWEST
_OLDEST = DropReason.DROP_OLDEST
_KEY_ERROR = DropReason.KEY_ERROR
_PUSH_TIMEOUT = DropReason.PUSH_TIMEOUT


class PolicyInbox(Generic[T]):
    """The queue actor's inbox and the lock around its `PolicyBuffer`."""

    def __init__(self, config: Config[T], clock: Clock, drop_log: DropLog) -> None:
        """Make an empty, open inbox for `config`."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the queue actor waits here
        self._room = threading.Condition(self._lock)  # BLOCK producers wait here
        self._progress = threading.Condition(self._lock)  # outcomes, for waiters
        self._clock = clock
        self._drop_log = drop_log
        self._buffer: PolicyBuffer[T] = PolicyBuffer(
            config.capacity, config.policy, clock.now()
        )
        self._control: deque[Envelope] = deque()
        self._batch_ready = False
        self._closed = False
        self._stopped = False
        self._capacity = config.capacity
        self._batch_size = config.batch_size
        self._blocking = config.policy is Policy.BLOCK
        self._block_timeout = config.block_timeout
        coalescing = config.policy is Policy.COALESCE_BY_KEY
        self._key_func = config.key_func if coalescing else None
        self._key_of: Callable[[T], Hashable] = config.key_func or _no_key
        self._on_drop = config.on_drop
        self._room_waiters = 0
        self._items = self._buffer.items
        self._by_key = self._buffer.by_key
        self._trigger = 0  # set by _retrigger()
        self._retrigger()
        # offer(item) / offer_many(items): tell(Push) / tell(PushMany), which
        # never raise for a full queue; _tell_fast(message): the queue ref's
        # `tell` (see bind_tell). Bound once to the policy's path.
        self.offer: Callable[[T], None]
        self.offer_many: Callable[[Iterable[T]], None]
        self._tell_fast: Callable[[Any], None] = self.tell
        self._tell_other: Callable[[Any], None] = _unbound_tell
        if config.policy is Policy.DROP_OLDEST:
            self.offer = self._offer_drop_oldest
            self.offer_many = self._offer_many_unlocked
            self._tell_fast = self._tell_drop_oldest
        elif config.policy is Policy.DROP_NEWEST:
            self.offer = self._offer_drop_newest
            self.offer_many = self._offer_many_unlocked
        elif coalescing:
            self.offer = self._offer_coalesce
            self.offer_many = self._offer_many_locked
            self._tell_fast = self._tell_coalesce
        else:
            self.offer = self._offer_locked
            self.offer_many = self._offer_many_locked
        # Supervision state: the current flusher generation, failed attempts
        # of the batch in flight, and when its current attempt started.
        self.generation = 0
        self.failures = 0
        self.attempt_started: float | None = None
        self.abandoned = False  # an attempt was given up on at stop: may hang
        # Threads of this queue's actors that run user code (flush, on_drop,
        # factories): they must not wait for the queue, which waits for them.
        self.actor_threads: set[int] = set()

    # -- pykka's inbox protocol -------------------------------------------

    def put(self, envelope: Any, /) -> None:
        """Take a message told or asked to the queue actor."""
        message = envelope.message
        cls = message.__class__
        if cls is Push or cls is PushMany:
            if cls is Push:
                self.offer(message.item)
            else:
                self.offer_many(message.items)
            if envelope.reply_to is not None:
                envelope.reply_to.set(None)
            return
        with self._lock:
            if cls is Flush:
                reply_to = envelope.reply_to
                if self._stopped:
                    _fail_dead(reply_to)
                    return
                envelope = Envelope(AwaitFlush(self._buffer.tail, reply_to), None)
            self._control.append(envelope)
            self._wake.notify()

    def get(self) -> Any:
        """Block until a control message arrives or a full batch waits."""
        with self._lock:
            while True:
                if self._control:
                    return self._control.popleft()
                if self._batch_ready:
                    self._batch_ready = False
                    self._retrigger()
                    return _BATCH_READY
                self._wake.wait()

    def empty(self) -> bool:
        """Return whether no control message is waiting."""
        return not self._control

    # -- the queue ref's tell ----------------------------------------------

    def bind_tell(self, tell_other: Callable[[Any], None]) -> Callable[[Any], None]:
        """Return the queue ref's `tell`; messages other than pushes go to `tell_other`.

        `tell_other` is pykka's `ActorRef.tell`, bound to the ref. The `tell`
        returned is bound to the policy, so that a push costs one call, not
        a call to the ref and another into the inbox.
        """
        self._tell_other = tell_other
        return self._tell_fast

    def tell(self, message: Any) -> None:
        """Take a told message: pushes under the policy, the rest through pykka."""
        cls = message.__class__
        if cls is Push:
            self.offer(message.item)
        elif cls is PushMany:
            self.offer_many(message.items)
        else:
            self._tell_other(message)

    def _tell_drop_oldest(self, message: Any) -> None:
        # `tell` under DROP_OLDEST, the hottest path: _offer_drop_oldest
        # written out, as a call costs ~700 of a push's ~4,000 instructions.
        if message.__class__ is Push and not self._closed:
            items = self._items
            items.append(message.item)
            if len(items) >= self._trigger:
                self._after_append()
        else:
            self.tell(message)

    def _tell_coalesce(self, message: Any) -> None:
        # `tell` under COALESCE_BY_KEY: the replace of a queued key and the
        # entry of a new one written out, under one lock; a closed queue or
        # an unhashable key goes through _offer_keyed.
        if message.__class__ is not Push:
            self.tell(message)
            return
        item = message.item
        try:
            key = self._key_of(item)
        except Exception as error:  # noqa: BLE001 - user code; logged, item dropped
            self._key_failed(item, error)
            return
        by_key = self._by_key
        lock = self._lock
        slow = True  # closed, or an unhashable key: _offer_keyed sorts it out
        dropped: list[T] | None = None  # not [], which allocates on every push
        lock.acquire()  # not `with`: see _offer_keyed
        try:
            if not self._closed:
                if key in by_key:
                    by_key[key] = item  # an OrderedDict keeps the key's place
                    self._buffer.coalesced += 1
                    return
                by_key[key] = item  # a new key takes the next position
                slow = False
        except Exception:  # noqa: BLE001, S110 - unhashable: _offer_keyed reports it
            pass
        else:
            # As on the lock-free path: act only at the trigger length.
            if len(by_key) >= self._trigger:
                dropped = self._buffer.evict_overflow()
                self._note_batch_ready()
        finally:
            lock.release()
        if slow:
            self._offer_keyed(key, item)
        elif dropped:
            self.report_drops(dropped, _OLDEST)

    # -- producers --------------------------------------------------------

    def _offer_drop_oldest(self, item: T) -> None:
        # The hot path: no lock, no call unless something must happen.
        if self._closed:
            self._reject([item], _CLOSED)
            return
        items = self._items
        items.append(item)
        if len(items) >= self._trigger:
            self._after_append()

    def _offer_drop_newest(self, item: T) -> None:
        if self._closed:
            self._reject([item], _CLOSED)
            return
        items = self._items
        if len(items) >= self._capacity:
            self._reject([item], _NEWEST)
            return
        items.append(item)
        if len(items) >= self._trigger:
            self._after_append()

    def _offer_many_unlocked(self, new: Iterable[T]) -> None:
        if self._closed:
            self._reject(list(new), _CLOSED)
            return
        items = self._items
        if self._buffer.overflow_reason is _NEWEST:
            batch = list(new)
            room = max(0, self._capacity - len(items))
            if room < len(batch):
                self._reject(batch[room:], _NEWEST)
                batch = batch[:room]
            items.extend(batch)
        else:
            items.extend(new)
        if len(items) >= self._trigger:
            self._after_append()

    def _after_append(self) -> None:
        """Evict an overshoot, announce a full batch, or refuse after stop."""
        # Under a flood into a full queue, every push comes here to evict one
        # item, so this is a hot path too: no `with` (see _offer_keyed), and
        # no call to _note_batch_ready while a batch is in flight anyway.
        lock = self._lock
        lock.acquire()
        try:
            buffer = self._buffer
            if self._stopped:
                # Appended after the final accounting: drop it, not lose it.
                dropped, reason = buffer.drop_queued(_CLOSED), _CLOSED
            else:
                dropped, reason = buffer.evict_overflow(), buffer.overflow_reason
                if buffer.in_flight is None:
                    self._note_batch_ready()
        finally:
            lock.release()
        if dropped:
            self.report_drops(dropped, reason)

    def _reject(self, items: list[T], reason: DropReason) -> None:
        """Count and report items refused at the door."""
        with self._lock:
            if reason is _CLOSED:
                self._refuse_if_stopped()
            for _ in items:
                self._buffer.reject(reason)
        self.report_drops(items, reason)

    def _offer_coalesce(self, item: T) -> None:
        # `offer` under COALESCE_BY_KEY (`push()`; `tell` has its own copy of
        # the hot path, _tell_coalesce): key_func outside the lock, where an
        # unhashable key is not caught yet: it raises from the look-up.
        try:
            key = self._key_of(item)
        except Exception as error:  # noqa: BLE001 - user code; logged, item dropped
            self._key_failed(item, error)
            return
        self._offer_keyed(key, item)

    def _offer_keyed(self, key: Hashable, item: T) -> None:
        """Queue `item` under `key` (the lock taken here); report what it drops.

        One lock for the look-up and the replace or entry: a dict read then
        write is not atomic.
        """
        by_key = self._by_key
        failed: Exception | None = None
        dropped: tuple[T] | None = None
        lock = self._lock
        # acquire/release, not `with`: `with` looks up and binds __enter__ and
        # __exit__ on every push (2,078 vs 1,271 instructions under callgrind).
        lock.acquire()
        try:
            if self._closed:
                self._refuse_if_stopped()
                self._buffer.reject(_CLOSED)
                dropped, reason = (item,), _CLOSED
            else:
                reason = _OLDEST
                try:
                    if key in by_key:
                        by_key[key] = item  # an OrderedDict keeps the key's place
                        self._buffer.coalesced += 1
                        return
                    dropped = self._buffer.push_keyed(key, item)
                except Exception as error:  # noqa: BLE001 - unhashable, or its __eq__
                    failed = error
                else:
                    if len(by_key) >= self._trigger:  # as on the lock-free path
                        self._note_batch_ready()
        finally:
            lock.release()
        if failed is not None:
            self._key_failed(item, failed)
        elif dropped is not None:
            self.report_drops(dropped, reason)

    def _key_failed(self, item: T, error: Exception) -> None:
        """Log a failed `key_func` (or key hash) and drop the item as `key_error`."""
        logger.warning(KEY_FUNC_FAILED, error=describe(error))
        self._reject([item], _KEY_ERROR)

    def _offer_locked(self, item: T) -> None:
        """`offer` for BLOCK."""
        self._offer_many_locked((item,))

    def _offer_many_locked(self, items: Iterable[T]) -> None:
        """`offer_many` for BLOCK and COALESCE_BY_KEY, under one lock."""
        keyed = self._keyed(items)
        deadline = None
        if self._blocking and self._block_timeout is not None:
            deadline = _monotonic() + self._block_timeout
        drops: list[tuple[T, DropReason]] = []
        with self._lock:
            if self._closed:
                self._refuse_if_stopped()
            for key, item, key_ok in keyed:
                dropped = self._place(key, item, key_ok=key_ok, deadline=deadline)
                if dropped is not None:
                    drops.append(dropped)
            self._note_batch_ready()
        for item, reason in drops:
            self.report_drops((item,), reason)

    def _place(
        self, key: Hashable, item: T, *, key_ok: bool, deadline: float | None
    ) -> tuple[T, DropReason] | None:
        """Queue one item (lock held); return it or its evictee if dropped."""
        buffer = self._buffer
        refused = None
        if not key_ok:
            refused = _KEY_ERROR
        elif self._closed:
            refused = _CLOSED
        elif self._blocking and len(buffer) >= buffer.capacity:
            refused = self._wait_room(_remaining(deadline))
        if refused is not None:
            buffer.reject(refused)
            return (item, refused)
        dropped = (
            buffer.push(item)
            if self._key_func is None
            else buffer.push_keyed(key, item)
        )
        return None if dropped is None else (dropped[0], buffer.overflow_reason)

    def push(self, item: T, timeout: float | None) -> None:
        """Queue one item from `WriteBehind.push()`; raise rather than refuse.

        Raises:
            QueueClosedError: the queue is stopping or stopped.
            PushTimeoutError: `Policy.BLOCK` found no room within `timeout`.
        """
        closed = "the queue is stopping or stopped; the item was not accepted"
        if self._closed:
            raise QueueClosedError(closed)
        if not self._blocking:  # nothing to wait for: the tell path
            try:
                self.offer(item)
            except pykka.ActorDeadError:  # stopped since the check above
                raise QueueClosedError(closed) from None
            return
        with self._lock:  # BLOCK: wait for room, or raise
            if self._closed:
                raise QueueClosedError(closed)
            if len(self._buffer) >= self._capacity:
                refused = self._wait_room(timeout)
                if refused is _CLOSED:
                    msg = "the queue stopped while push() waited for room"
                    raise QueueClosedError(msg)
                if refused is not None:
                    msg = f"no room in the queue within {timeout} s"
                    raise PushTimeoutError(msg)
            self._buffer.push(item)  # there is room: BLOCK drops nothing
            self._note_batch_ready()

    def _refuse_if_stopped(self) -> None:
        """Raise (lock held) if the actor stopped: pykka's rule for a dead actor.

        While stopping, told items are still counted (dropped with `closed`);
        once stopped, `stop()` has taken its final `Stats`, so they are refused.
        """
        if self._stopped:
            msg = "the queue actor has stopped"
            raise pykka.ActorDeadError(msg)

    def _note_batch_ready(self) -> None:
        """Wake the actor (lock held) if a full batch waits and none is in flight."""
        buffer = self._buffer
        if (
            len(buffer) >= self._batch_size
            and not self._batch_ready
            and buffer.in_flight is None
        ):
            self._batch_ready = True
            self._wake.notify()
            self._retrigger()

    def _retrigger(self) -> None:
        """Set (lock held) the queue length at which a lock-free push must act.

        Idle and not yet woken: a full batch (to wake the actor). Busy or
        woken: only an overshoot of `capacity` (to evict). Stopped: any push
        (to refuse it). Writers set it under the lock and then read the
        length, while a producer appends and then reads it, so one of the
        two always sees the other.
        """
        if self._stopped:
            self._trigger = 0
        elif self._batch_ready or self._buffer.in_flight is not None:
            self._trigger = self._capacity + 1
        else:
            self._trigger = min(self._batch_size, self._capacity + 1)

    def _keyed(self, items: Iterable[T]) -> list[tuple[Hashable, T, bool]]:
        """Pair each item with its key, outside the lock (`key_func` is user code)."""
        key_func = self._key_func
        if key_func is None:
            return [(None, item, True) for item in items]
        keyed: list[tuple[Hashable, T, bool]] = []
        for item in items:
            try:
                key = key_func(item)
                hash(key)
            except Exception as error:  # noqa: BLE001 - user code; logged, item dropped
                logger.warning(KEY_FUNC_FAILED, error=describe(error))
                keyed.append((None, item, False))
            else:
                keyed.append((key, item, True))
        return keyed

    def _wait_room(self, timeout: float | None) -> DropReason | None:
        """Wait (lock held) for room under BLOCK; return why not, or None.

        A push from one of the queue's own actors (a flusher or `on_drop`
        pushing back) cannot wait: room is made by that very thread. It
        times out at once instead of deadlocking.
        """
        if threading.get_ident() in self.actor_threads:
            return _PUSH_TIMEOUT
        # Producer waits are in real time: the producer's own time, not the clock's.
        deadline = None if timeout is None else _monotonic() + timeout
        self._room_waiters += 1
        try:
            buffer = self._buffer
            while len(buffer) >= buffer.capacity:
                if self._closed:
                    return _CLOSED
                remaining = _remaining(deadline)
                if remaining is not None and remaining <= 0:
                    return _PUSH_TIMEOUT
                self._room.wait(remaining)
            return _CLOSED if self._closed else None
        finally:
            self._room_waiters -= 1

    def report_drops(self, items: Iterable[T], reason: DropReason) -> None:
        """Log and hand dropped items to `on_drop`, outside the lock."""
        if items.__class__ is not list:
            items = list(items)
        if not items:
            return
        self._drop_log.note(reason, len(items))
        on_drop = self._on_drop
        if on_drop is None:
            return
        for item in items:
            try:
                on_drop(item, reason)
            except BaseException as error:
                # A KeyboardInterrupt or SystemExit belongs to a producer's
                # thread; in an actor it would make pykka stop every actor.
                if not isinstance(error, Exception) and (
                    threading.get_ident() not in self.actor_threads
                ):
                    raise
                logger.warning(
                    ON_DROP_FAILED, reason=reason.value, error=describe(error)
                )

    # -- the queue actor ----------------------------------------------------

    def dispatch(self, *, force: bool) -> bool:
        """Put the next batch in flight if the flusher is idle; return whether.

        Without `force`, only a full batch goes.
        """
        with self._lock:
            buffer = self._buffer
            if buffer.in_flight is not None or not len(buffer):
                return False
            if not force and len(buffer) < self._batch_size:
                return False
            buffer.take(self._batch_size)
            self.failures = 0
            self.attempt_started = None
            self._retrigger()
            self._made_room()
            return True

    def settled(self) -> int:
        """Return the position below which every item is flushed or dropped."""
        with self._lock:
            return self._buffer.settled()

    def mark_tick(self) -> None:
        """Note the tick's time, for `Stats.oldest_age`."""
        now = self._clock.now()
        with self._lock:
            self._buffer.mark(now)

    def close(self) -> None:
        """Refuse new items from now on and release producers waiting for room."""
        with self._lock:
            self._closed = True
            self._room.notify_all()

    @property
    def closed(self) -> bool:
        """Whether the queue takes no more items."""
        return self._closed

    def mark_stopped(self) -> list[pykka.Future[Any]]:
        """Note the actor stopped; return reply futures of unanswered flushes."""
        with self._lock:
            self._closed = True
            self._stopped = True
            self._retrigger()
            self._room.notify_all()
            futures = [
                env.message.reply_to
                for env in self._control
                if isinstance(env.message, AwaitFlush)
                and env.message.reply_to is not None
            ]
            self._control = deque(
                env for env in self._control if not isinstance(env.message, AwaitFlush)
            )
            return futures

    def abandon(self) -> list[T]:
        """Give up on everything queued or in flight (stop ran out of time).

        The flusher generation moves on, so a late result from a hung attempt
        is ignored. Returns the items, now counted as dropped with `closed`.
        """
        with self._lock:
            self.generation += 1
            self.attempt_started = None
            buffer = self._buffer
            if buffer.in_flight is not None:
                self.abandoned = True
            items = buffer.drop_in_flight(_CLOSED) + buffer.drop_queued(_CLOSED)
            self._retrigger()
            self._progress.notify_all()
            return items

    # -- the flusher --------------------------------------------------------

    def batch_for(self, generation: int) -> list[T] | None:
        """Return a copy of the batch in flight for `generation`'s attempt."""
        with self._lock:
            batch = self._buffer.in_flight
            if generation != self.generation or batch is None:
                return None
            self.attempt_started = self._clock.now()
            return list(batch)

    def batch_done(self, generation: int) -> list[T] | Stale | None:
        """Count the batch in flight as flushed; return the next full batch.

        Returns `STALE` (nothing counted) if `generation` was replaced, and
        None when no full batch waits: the flusher goes idle.
        """
        with self._lock:
            if generation != self.generation:
                return STALE
            buffer = self._buffer
            buffer.complete()
            self.failures = 0
            self._progress.notify_all()
            self._retrigger()  # idle now: before reading the length, see there
            if len(buffer) >= self._batch_size:
                batch = buffer.take(self._batch_size)
                self._retrigger()
                self._made_room()
                self.attempt_started = self._clock.now()
                return list(batch)
            self.attempt_started = None
            return None

    # -- the supervisor -----------------------------------------------------

    def record_failure(
        self, generation: int, started: float | None = None
    ) -> tuple[int, int] | None:
        """Count a failed attempt of `generation` and retire that generation.

        Returns (failed attempts of the batch in flight, its size), with size
        0 if nothing was in flight, or None if `generation` was already
        replaced (a stale report) or, when `started` is given, its attempt
        is no longer the one that started then.
        """
        with self._lock:
            if generation != self.generation:
                return None
            if started is not None and started != self.attempt_started:
                return None
            self.generation += 1
            self.attempt_started = None
            batch = self._buffer.in_flight
            if batch is None:
                return (0, 0)
            self.failures += 1
            self._buffer.retries += 1
            self._progress.notify_all()
            return (self.failures, len(batch))

    def drop_in_flight(self, reason: DropReason) -> list[T]:
        """Drop the batch in flight; return its items for `report_drops`."""
        with self._lock:
            self.failures = 0
            items = self._buffer.drop_in_flight(reason)
            self._retrigger()
            self._progress.notify_all()
            return items

    def count_restart(self) -> int:
        """Count a flusher restart; return the total."""
        with self._lock:
            self._buffer.restarts += 1
            self._progress.notify_all()
            return self._buffer.restarts

    def attempt(self) -> tuple[int, float | None, bool]:
        """Return (generation, start of its attempt, whether a batch is in flight)."""
        with self._lock:
            in_flight = self._buffer.in_flight is not None
            return (self.generation, self.attempt_started, in_flight)

    # -- anyone -------------------------------------------------------------

    def check_not_actor_thread(self, what: str) -> None:
        """Raise RuntimeError if called from one of this queue's actor threads.

        `flush()` and `stop()` wait for the actors; called from a flusher or
        an `on_drop` running on one of them, they would wait for themselves.
        """
        if threading.get_ident() in self.actor_threads:
            msg = (
                f"{what} called from inside the queue (a flusher, flusher_factory "
                "or on_drop running on one of its actors) would wait for itself; "
                "call it from another thread"
            )
            raise RuntimeError(msg)

    def depth(self) -> int:
        """Return the items queued, not counting the batch in flight.

        Never more than `capacity`, though for an instant the buffer may hold
        one more item per producer pushing at that moment.
        """
        return min(len(self._buffer), self._capacity)

    def stats(self) -> Stats:
        """Return a consistent snapshot of the counters."""
        with self._lock:
            stats, dropped = self._snapshot()
        self.report_drops(dropped, self._buffer.overflow_reason)
        return stats

    def _snapshot(self) -> tuple[Stats, list[T]]:
        """Snapshot the counters (lock held), first evicting any overshoot.

        Evicting here is what lets `Stats.depth` never exceed `capacity`; the
        evicted items are returned for `report_drops`, outside the lock.
        """
        buffer = self._buffer
        length = len(buffer)  # once: producers may append meanwhile
        dropped = [] if self._stopped else buffer.evict_overflow(length)
        return buffer.stats(self._clock.now(), length - len(dropped)), dropped

    def wait_progress(
        self, predicate: Callable[[Stats], bool], timeout: float
    ) -> Stats | None:
        """Wait until `predicate(stats)` holds after an outcome; None on timeout.

        Outcomes are batch results, failures, restarts and drops of batches;
        pushes do not wake waiters.
        """
        deadline = _monotonic() + timeout
        dropped: list[T] = []
        try:
            with self._lock:
                while True:
                    stats, evicted = self._snapshot()
                    dropped += evicted
                    if predicate(stats):
                        return stats
                    remaining = deadline - _monotonic()
                    if remaining <= 0:
                        return None
                    self._progress.wait(remaining)
        finally:
            self.report_drops(dropped, self._buffer.overflow_reason)

    def _made_room(self) -> None:
        if self._room_waiters:
            self._room.notify_all()


def _unbound_tell(message: Any) -> None:  # noqa: ARG001 - until bind_tell()
    msg = "the inbox's tell is not bound to a ref yet"
    raise RuntimeError(msg)


def _no_key(item: object) -> None:  # noqa: ARG001 - the unkeyed policies' key
    return None


def _fail_dead(reply_to: pykka.Future[Any] | None) -> None:
    if reply_to is not None:
        error = pykka.ActorDeadError("the queue actor stopped before handling Flush")
        reply_to.set_exception((pykka.ActorDeadError, error, None))


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - _monotonic()


_monotonic = time.monotonic
