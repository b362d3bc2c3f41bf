"""Admission: each overflow policy as a class, applied on the producer's thread.

A policy decides what happens to an item as it arrives: `tell` (the queue
ref's, for `Push`/`PushMany`), `offer` (`tell(Push)`), `offer_many`
(`tell(PushMany)`) and `push` (`WriteBehind.push()`, which raises rather than
refuses). `ADMISSIONS` maps each `Policy` to its class, chosen once at start,
as structlog picks its bound-logger methods per level, so the hot path has
no policy branch.

Under DROP_OLDEST and DROP_NEWEST a push takes no lock: one `deque.append`
(atomic under the GIL) and one length check against `Ledger.trigger`, the
length at which something must happen (a full batch to announce, or an
overshoot of `capacity` to evict). Everything that removes items holds the
lock, and the counts derive from positions, so they stay exact; concurrent
producers can overshoot `capacity` by one item each, for an instant, until
one of them evicts. A lock on every push convoys under the GIL (four
producers went 4x slower than one, with a context switch every other push).
So a DROP_NEWEST refusal of a full queue takes no lock either: it ticks a
count the next snapshot folds in (`Ledger.count_refusal`), and its
report ticks too (`_ticks.py`). Taken for each refusal, the lock let four
producers flooding a full queue, with a thread reading `stats()`, keep the
flusher from it for seconds.
BLOCK and COALESCE_BY_KEY take the lock: one waits, the other must look up
and replace a key atomically.

A new policy is a subclass here and a row in `ADMISSIONS`.
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import pykka

from wbactor._config import Policy
from wbactor._errors import PushTimeoutError, QueueClosedError
from wbactor._log import KEY_FUNC_FAILED, PUSH_MANY_FAILED, describe
from wbactor._messages import Push, PushMany
from wbactor._stats import DropReason

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Iterator

    from wbactor._config import Config
    from wbactor._drops import DropReporter
    from wbactor._ledger import Dropped, Ledger
    from wbactor._log import QueueLog

__all__ = ["ADMISSIONS", "Admission", "admission_for"]

T = TypeVar("T")

_CLOSED = DropReason.CLOSED
_NEWEST = DropReason.DROP_NEWEST
_OLDEST = DropReason.DROP_OLDEST
_KEY_ERROR = DropReason.KEY_ERROR

CHUNK = 1024
"""Items a `PushMany` takes per step: its memory stays bounded by `capacity`
plus one chunk whatever the iterable's length, infinite included."""

_CLOSED_MESSAGE = "the queue is stopping or stopped; the item was not accepted"


class Admission(Generic[T]):
    """An overflow policy: how an arriving item enters the ledger."""

    policy: ClassVar[Policy]

    def __init__(
        self,
        config: Config[T],
        ledger: Ledger[T],
        drops: DropReporter[T],
        log: QueueLog,
    ) -> None:
        """Admit items into `ledger` under `config`'s policy; report to `drops`."""
        self._log = log
        self._ledger = ledger
        self._drops = drops
        self._items = ledger.items
        self._capacity = config.capacity  # the configured one; ledger.capacity moves
        self._tell_other: Callable[[Any], None] = _unbound_tell

    # -- the queue ref's tell ------------------------------------------------

    def bind_tell(self, tell_other: Callable[[Any], None]) -> Callable[[Any], None]:
        """Return the queue ref's `tell`; messages other than pushes go to `tell_other`.

        `tell_other` is pykka's `ActorRef.tell`, bound to the ref. The `tell`
        returned is this policy's, so that a push costs one call, not a call
        to the ref and another into the policy.
        """
        self._tell_other = tell_other
        return self.tell

    def tell(self, message: Any) -> None:
        """Take a told message: pushes under the policy, the rest through pykka."""
        cls = message.__class__
        if cls is Push:
            self.offer(message.item)
        elif cls is PushMany:
            self.offer_many(message.items)
        else:
            self._tell_other(message)

    # -- what each policy defines ---------------------------------------------

    def offer(self, item: T) -> None:
        """Take one item (`tell(Push)`): never raises for a full queue."""
        raise NotImplementedError

    def _take_chunk(self, chunk: list[T]) -> None:
        """Take the items of one chunk of a `PushMany`, in order."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------

    def offer_many(self, items: Iterable[T]) -> None:
        """Take many items (`tell(PushMany)`), lazily, a chunk at a time.

        If the iterable raises, the items before stay accepted, the error is
        logged as `push_many_failed`, and nothing after it is taken.
        """
        cls = items.__class__
        if cls is list or cls is tuple:  # cannot raise midway: no guard needed
            sequence: list[T] | tuple[T, ...] = items  # type: ignore[assignment]
            if len(sequence) <= CHUNK:
                self._take_chunk(sequence)  # type: ignore[arg-type]
                return
            for start in range(0, len(sequence), CHUNK):
                self._take_chunk(list(sequence[start : start + CHUNK]))
            return
        failed: list[Exception] = []
        stream = _guarded(iter(items), failed)
        while True:
            chunk = list(islice(stream, CHUNK))
            if chunk:
                self._take_chunk(chunk)
            if len(chunk) < CHUNK:
                break
        if failed:
            self._log.logger.warning(PUSH_MANY_FAILED, error=describe(failed[0]))

    def push(self, item: T, timeout: float | None) -> None:  # noqa: ARG002 - BLOCK's
        """Queue one item from `WriteBehind.push()`; raise rather than refuse.

        Only `Policy.BLOCK` waits (up to `timeout`); the others never do.

        Raises:
            QueueClosedError: the queue is stopping or stopped.
            PushTimeoutError: `Policy.BLOCK` found no room within `timeout`.
        """
        if self._ledger.closed:
            raise QueueClosedError(_CLOSED_MESSAGE)
        try:
            self.offer(item)
        except pykka.ActorDeadError:  # stopped since the check above
            raise QueueClosedError(_CLOSED_MESSAGE) from None

    def _refuse(self, items: list[T], reason: DropReason) -> None:
        self._report(self._ledger.refuse(items, reason))

    def _report(self, dropped: Dropped[T] | None) -> None:
        if dropped is not None:
            self._drops.report(*dropped)


class DropOldest(Admission[T]):
    """`Policy.DROP_OLDEST`: a full queue evicts its oldest item for the new one."""

    policy = Policy.DROP_OLDEST

    def tell(self, message: Any) -> None:
        """Take a told message; a `Push` is `offer` written out here.

        The hottest path: a call costs ~700 of a push's ~4,000 instructions.
        """
        if message.__class__ is Push:
            ledger = self._ledger
            if not ledger.closed:
                items = self._items
                items.append(message.item)
                if len(items) >= ledger.trigger:
                    self._report(ledger.after_append())
                return
        super().tell(message)

    def offer(self, item: T) -> None:
        """Append `item` without a lock; act only at the trigger length."""
        ledger = self._ledger
        if ledger.closed:
            self._refuse([item], _CLOSED)
            return
        items = self._items
        items.append(item)
        if len(items) >= ledger.trigger:
            self._report(ledger.after_append())

    def _take_chunk(self, chunk: list[T]) -> None:
        ledger = self._ledger
        if ledger.closed:
            self._refuse(chunk, _CLOSED)
            return
        items = self._items
        items.extend(chunk)
        if len(items) >= ledger.trigger:
            self._report(ledger.after_append())


class DropNewest(Admission[T]):
    """`Policy.DROP_NEWEST`: a full queue refuses the new item."""

    policy = Policy.DROP_NEWEST

    def offer(self, item: T) -> None:
        """Append `item` without a lock unless the queue is full."""
        ledger = self._ledger
        if ledger.closed:
            self._refuse([item], _CLOSED)
            return
        items = self._items
        if len(items) >= ledger.capacity:
            ledger.count_refusal()  # no lock: a snapshot folds it in
            self._drops.report([item], _NEWEST)
            return
        items.append(item)
        if len(items) >= ledger.trigger:
            self._report(ledger.after_append())

    def _take_chunk(self, chunk: list[T]) -> None:
        ledger = self._ledger
        if ledger.closed:
            self._refuse(chunk, _CLOSED)
            return
        items = self._items
        room = max(0, ledger.capacity - len(items))
        if room < len(chunk):
            self._refuse(chunk[room:], _NEWEST)
            chunk = chunk[:room]
        items.extend(chunk)
        if len(items) >= ledger.trigger:
            self._report(ledger.after_append())


class _Locked(Admission[T]):
    """The policies that take the lock for every item: BLOCK and COALESCE_BY_KEY."""

    def offer(self, item: T) -> None:
        """Take one item, as a chunk of one."""
        self._take_chunk([item])

    def _take_chunk(self, chunk: list[T]) -> None:
        keyed = self._keyed(chunk)
        drops: list[tuple[T, DropReason]] = []
        ledger = self._ledger
        try:
            with ledger.lock:
                if ledger.closed:
                    ledger.refuse_if_stopped()
                for key, item, key_ok in keyed:
                    dropped = self._place(key, item, key_ok=key_ok)
                    if dropped is not None:
                        drops.append(dropped)
                ledger.note_batch_ready()
        finally:  # also when the queue stopped midway: what was counted is told
            for item, reason in drops:
                self._drops.report([item], reason)

    def _keyed(self, items: list[T]) -> list[tuple[Hashable, T, bool]]:
        """Pair each item with its key, outside the lock (`key_func` is user code)."""
        return [(None, item, True) for item in items]

    def _place(
        self, key: Hashable, item: T, *, key_ok: bool
    ) -> tuple[T, DropReason] | None:
        """Queue one item (lock held); return it or its evictee if dropped."""
        raise NotImplementedError


class Block(_Locked[T]):
    """`Policy.BLOCK`: a full queue makes the producer wait for room."""

    policy = Policy.BLOCK

    def __init__(
        self,
        config: Config[T],
        ledger: Ledger[T],
        drops: DropReporter[T],
        log: QueueLog,
    ) -> None:
        """Admit items, waiting up to `config.block_timeout` for room."""
        super().__init__(config, ledger, drops, log)
        self._block_timeout = config.block_timeout

    def _place(
        self,
        key: Hashable,  # noqa: ARG002 - unkeyed
        item: T,
        *,
        key_ok: bool,  # noqa: ARG002 - unkeyed
    ) -> tuple[T, DropReason] | None:
        # `block_timeout` bounds each item's wait, also within a PushMany.
        ledger = self._ledger
        buffer = ledger.buffer
        refused = None
        if ledger.closed:
            refused = _CLOSED
        elif len(buffer) >= buffer.capacity:
            refused = ledger.wait_room(self._block_timeout)
            if refused is _CLOSED:
                # Stopped while it waited: its final Stats are taken, so the
                # item is refused (pykka's ActorDeadError), not counted late.
                ledger.refuse_if_stopped()
        if refused is not None:
            buffer.reject(refused)
            return (item, refused)
        buffer.append(item)
        return None

    def push(self, item: T, timeout: float | None) -> None:
        """Queue `item`, waiting up to `timeout` for room (None: until room or stop).

        Raises:
            QueueClosedError: the queue is stopping or stopped.
            PushTimeoutError: no room within `timeout`.
        """
        ledger = self._ledger
        with ledger.lock:
            if ledger.closed:
                raise QueueClosedError(_CLOSED_MESSAGE)
            if len(ledger.buffer) >= ledger.buffer.capacity:
                refused = ledger.wait_room(timeout)
                if refused is _CLOSED:
                    msg = "the queue stopped while push() waited for room"
                    raise QueueClosedError(msg)
                if refused is not None:
                    msg = f"no room in the queue within {timeout} s"
                    raise PushTimeoutError(msg)
            ledger.buffer.append(item)  # there is room: BLOCK drops nothing
            ledger.note_batch_ready()


class CoalesceByKey(_Locked[T]):
    """`Policy.COALESCE_BY_KEY`: a queued key is replaced in place."""

    policy = Policy.COALESCE_BY_KEY

    def __init__(
        self,
        config: Config[T],
        ledger: Ledger[T],
        drops: DropReporter[T],
        log: QueueLog,
    ) -> None:
        """Admit items by `config.key_func`'s key."""
        super().__init__(config, ledger, drops, log)
        assert config.key_func is not None  # noqa: S101 - Config guarantees it
        self._key_of: Callable[[T], Hashable] = config.key_func
        self._by_key = ledger.by_key

    def tell(self, message: Any) -> None:  # noqa: C901 - the hot path, written out
        """Take a told message; a `Push` is `offer` and `_offer_keyed` written out.

        The replace of a queued key and the entry of a new one, under one
        lock; a closed queue or an unhashable key goes through
        `_offer_keyed`. Measured under callgrind: 6,686 -> 6,003
        instructions per push.
        """
        if message.__class__ is not Push:
            super().tell(message)
            return
        item = message.item
        try:
            key = self._key_of(item)
        except Exception as error:  # noqa: BLE001 - user code; logged, item dropped
            self._key_failed(item, error)
            return
        by_key = self._by_key
        ledger = self._ledger
        lock = ledger.lock
        slow = True  # closed, or an unhashable key: _offer_keyed sorts it out
        dropped: Dropped[T] | None = None
        lock.acquire()  # not `with`: see _offer_keyed
        try:
            if not ledger.closed:
                if key in by_key:
                    by_key[key] = item  # an OrderedDict keeps the key's place
                    buffer = ledger.buffer
                    buffer.coalesced += 1
                    if buffer.replaced is not None:  # a journal rewrites it
                        buffer.replaced.add(key)
                    return
                by_key[key] = item  # a new key takes the next position
                slow = False
        except Exception:  # noqa: BLE001, S110 - unhashable: _offer_keyed reports it
            pass
        else:
            # As on the lock-free path: act only at the trigger length.
            if len(by_key) >= ledger.trigger:
                dropped = ledger.evict_keyed()
        finally:
            lock.release()
        if slow:
            self._offer_keyed(key, item)
        elif dropped is not None:
            self._drops.report(*dropped)

    def offer(self, item: T) -> None:
        """Queue `item` under its key: `key_func` outside the lock."""
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
        failed: Exception | None = None
        dropped: Dropped[T] | None = None
        ledger = self._ledger
        lock = ledger.lock
        # acquire/release, not `with`: `with` looks up and binds __enter__ and
        # __exit__ on every push (2,078 vs 1,271 instructions under callgrind).
        lock.acquire()
        try:
            if ledger.closed:
                ledger.refuse_if_stopped()
                ledger.buffer.reject(_CLOSED)
                dropped = [item], _CLOSED
            else:
                try:
                    evicted = ledger.buffer.push_keyed(key, item)
                except Exception as error:  # noqa: BLE001 - unhashable, or its __eq__
                    failed = error
                else:
                    if evicted is not None:
                        dropped = [evicted[0]], _OLDEST
                    if len(self._by_key) >= ledger.trigger:  # as on the lock-free path
                        ledger.note_batch_ready()
        finally:
            lock.release()
        if failed is not None:
            self._key_failed(item, failed)
        elif dropped is not None:
            self._drops.report(*dropped)

    def _key_failed(self, item: T, error: Exception) -> None:
        """Log a failed `key_func` (or key hash) and drop the item as `key_error`."""
        self._log.logger.warning(KEY_FUNC_FAILED, error=describe(error))
        self._refuse([item], _KEY_ERROR)

    def _keyed(self, items: list[T]) -> list[tuple[Hashable, T, bool]]:
        key_of = self._key_of
        keyed: list[tuple[Hashable, T, bool]] = []
        for item in items:
            try:
                key = key_of(item)
                hash(key)
            except Exception as error:  # noqa: BLE001 - user code; logged, item dropped
                self._log.logger.warning(KEY_FUNC_FAILED, error=describe(error))
                keyed.append((None, item, False))
            else:
                keyed.append((key, item, True))
        return keyed

    def _place(
        self,
        key: Hashable,
        item: T,
        *,
        key_ok: bool,
    ) -> tuple[T, DropReason] | None:
        ledger = self._ledger
        buffer = ledger.buffer
        if not key_ok:
            buffer.reject(_KEY_ERROR)
            return (item, _KEY_ERROR)
        if ledger.closed:
            buffer.reject(_CLOSED)
            return (item, _CLOSED)
        try:
            evicted = buffer.push_keyed(key, item)
        except Exception as error:  # noqa: BLE001 - the key's __eq__ raised
            self._log.logger.warning(KEY_FUNC_FAILED, error=describe(error))
            buffer.reject(_KEY_ERROR)
            return (item, _KEY_ERROR)
        return None if evicted is None else (evicted[0], _OLDEST)


ADMISSIONS: dict[Policy, type[Admission[Any]]] = {
    Policy.DROP_OLDEST: DropOldest,
    Policy.DROP_NEWEST: DropNewest,
    Policy.BLOCK: Block,
    Policy.COALESCE_BY_KEY: CoalesceByKey,
}
"""Each policy's class; `admission_for` picks one at start."""


def admission_for(
    config: Config[T], ledger: Ledger[T], drops: DropReporter[T], log: QueueLog
) -> Admission[T]:
    """Return the admission of `config.policy` over `ledger`.

    With several lanes and a `key_func`, items are routed by key
    (`_routing.py`), whatever the policy.
    """
    if config.lanes > 1 and config.key_func is not None:
        from wbactor._routing import Routed  # noqa: PLC0415 - it imports this module

        return Routed(config, ledger, drops, log)
    return ADMISSIONS[config.policy](config, ledger, drops, log)


def _guarded(items: Iterator[T], failed: list[Exception]) -> Iterator[T]:
    """Yield from `items`; on an exception, note it in `failed` and stop."""
    try:
        yield from items
    except Exception as error:  # noqa: BLE001 - user code; logged by the caller
        failed.append(error)


def _unbound_tell(message: Any) -> None:  # noqa: ARG001 - until bind_tell()
    msg = "the queue ref's tell is not bound yet"
    raise RuntimeError(msg)
