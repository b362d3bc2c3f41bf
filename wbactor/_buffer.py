"""The policy buffer: a pure, single-threaded ledger of where every item is.

It holds the queued items, the batch in flight and every counter, and applies
the overflow policy. It knows nothing of threads, actors or time sources (the
time is passed in), so its rules can be tested directly and against a model.
The ledger (`_ledger.py`) wraps it in a lock; admission (`_admission.py`)
applies the policies to it.

Positions: every item that enters the queue's tail takes the next position
(`tail`); items leave from the front (`head`), into a batch or evicted. A
coalesced item takes over the position of the item it replaces. So "every item
pushed before now" is "every position below `tail` now", which is how `Flush`
knows when it is done.

A journal (`_journal.py`) follows the same positions: `track_journal()` turns
on the few records it needs (the positions of the batch in flight, the lowest
tail a DROP_NEWEST eviction rewound to, the keys replaced in place), which
cost nothing while no journal is on. Recovered items enter first
(`recover()`), counted in `recovered`; what `stop(timeout)` leaves goes to
the journal (`leave_to_journal()`), counted in `journaled`.

Nothing counts items as they are appended: `tail` is `head + len`, and
`pushed` follows from it. So admission may `append` to `items` without the
lock (a single, GIL-atomic `deque.append`), as long as everything that
*removes* items holds it; the counts stay exact at every snapshot.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Generic, TypeVar

from wbactor._config import Policy
from wbactor._stats import DropReason, Stats

if TYPE_CHECKING:
    from collections.abc import Hashable

__all__ = ["PolicyBuffer"]

T = TypeVar("T")

_OLDEST = DropReason.DROP_OLDEST
_NEWEST = DropReason.DROP_NEWEST


class PolicyBuffer(Generic[T]):
    """Queued items, the batch in flight, and the counters that account for them.

    Not thread-safe. `push_keyed` returns `None` when nothing was dropped,
    or a 1-tuple holding the dropped item (its reason is `overflow_reason`);
    the caller reports it.
    """

    def __init__(self, capacity: int, policy: Policy, now: float = 0.0) -> None:
        """Make an empty buffer holding at most `capacity` queued items."""
        self.capacity = capacity
        self.policy = policy
        self.overflow_reason = _NEWEST if policy is Policy.DROP_NEWEST else _OLDEST
        self._keyed = policy is Policy.COALESCE_BY_KEY
        self._items: deque[T] = deque()
        self._by_key: OrderedDict[Hashable, T] = OrderedDict()
        self.head = 0
        self.in_flight: list[T] | None = None
        self.in_flight_start = 0  # position of in_flight[0], or a lower bound
        # The batch in flight settles part by part, head first: one part
        # when taken; more once a permanent failure splits it (bisection).
        self._parts: deque[int] = deque()
        self.coalesced = 0
        self.rejected = 0
        self.flushed = 0
        self.batches = 0
        self.retries = 0
        self.restarts = 0
        self.dropped: dict[DropReason, int] = dict.fromkeys(DropReason, 0)
        # (time, tail) marks, at least one per tick: the oldest queued item
        # entered after the last mark whose tail is <= head.
        self._marks: deque[tuple[float, int]] = deque([(now, 0)])
        # -- journal: off (None, 0) unless track_journal() turned it on.
        self.base_capacity = capacity  # `capacity` stays above it after a recovery
        self.recovered = 0
        self.journaled = 0
        # Positions of the items in flight, in order, parallel to `in_flight`.
        self.flight_pos: list[int] | None = None
        # The lowest tail a DROP_NEWEST eviction left since the journal looked.
        self.rewound: int | None = None
        # Keys replaced in place (COALESCE_BY_KEY) since the journal looked.
        self.replaced: set[Hashable] | None = None

    # -- queue contents ---------------------------------------------------

    def __len__(self) -> int:
        """Return the number of items queued (not counting the batch in flight)."""
        return len(self._by_key) if self._keyed else len(self._items)

    def full(self) -> bool:
        """Return whether `capacity` items are queued."""
        return len(self) >= self.capacity

    def queued(self) -> list[T]:
        """Return the queued items, oldest first (a copy)."""
        return list(self._by_key.values()) if self._keyed else list(self._items)

    @property
    def items(self) -> deque[T]:
        """The queue of the unkeyed policies, for admission's lock-free appends."""
        return self._items

    @property
    def by_key(self) -> OrderedDict[Hashable, T]:
        """The queue of COALESCE_BY_KEY, for admission's length checks."""
        return self._by_key

    @property
    def tail(self) -> int:
        """Return the position the next new item takes."""
        return self.head + len(self)

    @property
    def pushed(self) -> int:
        """Return the items pushed: entered the tail, coalesced, or refused."""
        return self.tail + self.coalesced + self.rejected - self.recovered

    def settled(self) -> int:
        """Return the position below which every item is flushed or dropped."""
        return self.in_flight_start if self.in_flight is not None else self.head

    # -- pushing ----------------------------------------------------------
    #
    # DROP_OLDEST and DROP_NEWEST append to `items` themselves, without the
    # lock (`_admission.py`), and call `evict_overflow` at the trigger length.

    def append(self, item: T) -> None:
        """Queue `item` at the tail (BLOCK, which waits for room first).

        Raises:
            OverflowError: the queue is full; nothing changed.
        """
        items = self._items
        if len(items) >= self.capacity:
            msg = "BLOCK buffer is full: admission must wait for room first"
            raise OverflowError(msg)
        items.append(item)

    def evict_overflow(self, length: int | None = None) -> list[T]:
        """Drop the items beyond `capacity`; return them.

        Appends made without the lock can overshoot `capacity` by one item per
        producer, and so can keys entered into `by_key` before this is called.
        DROP_NEWEST drops the newest (from the right), the others the oldest
        (from the left), each counted as the policy's drop.
        `length` is the queue length to judge by, if already read.
        """
        if self._keyed:
            return self._evict_keyed(length)
        items = self._items
        excess = (len(items) if length is None else length) - self.capacity
        if excess <= 0:
            return []
        if excess == 1 and self.overflow_reason is _OLDEST:
            # The common case, once per push into a full queue: no loop.
            self.head += 1
            self.dropped[_OLDEST] += 1
            return [items.popleft()]
        if self.policy is Policy.DROP_NEWEST:
            dropped = [items.pop() for _ in range(excess)]
            dropped.reverse()
            self.rejected += excess
            if self.flight_pos is not None:  # a journal: those positions come again
                self._note_rewound()
        else:
            popleft = items.popleft
            dropped = [popleft() for _ in range(excess)]
            self.head += excess
        self.dropped[self.overflow_reason] += excess
        return dropped

    def _evict_keyed(self, length: int | None) -> list[T]:
        by_key = self._by_key
        excess = (len(by_key) if length is None else length) - self.capacity
        if excess <= 0:
            return []
        popitem = by_key.popitem
        dropped = [popitem(last=False)[1] for _ in range(excess)]
        self.head += excess
        self.dropped[_OLDEST] += excess
        return dropped

    def push_keyed(self, key: Hashable, item: T) -> tuple[T] | None:
        """Queue `item` under `key` (COALESCE_BY_KEY); return the item dropped.

        A queued item with the same key is replaced in place. A new key when
        full evicts the oldest item. The key index is the `OrderedDict`
        itself, so it cannot go stale.
        """
        by_key = self._by_key
        if key in by_key:
            by_key[key] = item
            self.coalesced += 1
            if self.replaced is not None:
                self.replaced.add(key)
            return None
        by_key[key] = item
        if len(by_key) > self.capacity:
            self.head += 1
            self.dropped[_OLDEST] += 1
            return (by_key.popitem(last=False)[1],)
        return None

    def reject(self, reason: DropReason) -> None:
        """Count an item refused at the door (`closed`, `push_timeout`, ...)."""
        self.rejected += 1
        self.dropped[reason] += 1

    # -- batches ----------------------------------------------------------

    def take(self, n: int) -> list[T]:
        """Move up to `n` of the oldest items into flight and return them."""
        if self.in_flight is not None:
            msg = "a batch is already in flight"
            raise RuntimeError(msg)
        k = min(n, len(self))
        if self._keyed:
            popitem = self._by_key.popitem
            batch = [popitem(last=False)[1] for _ in range(k)]
        else:
            # popleft, not list() + clear(): another thread may append meanwhile.
            popleft = self._items.popleft
            batch = [popleft() for _ in range(k)]
        self.in_flight_start = self.head
        if self.flight_pos is not None:
            self.flight_pos = list(range(self.head, self.head + k))
        self.head += k
        self.in_flight = batch
        self._parts = deque([k])
        if self.capacity > self.base_capacity:
            self._lower_capacity()
        return batch

    def extend_flight(self, n: int) -> None:
        """Take up to `n` more of the oldest items into flight, as a part of their own.

        For a window of several batches handed over at once: the part goes
        behind those in flight, in push order.
        """
        if self.in_flight is None:
            self.take(n)
            return
        k = min(n, len(self))
        if self._keyed:
            popitem = self._by_key.popitem
            self.in_flight.extend(popitem(last=False)[1] for _ in range(k))
        else:
            popleft = self._items.popleft
            self.in_flight.extend(popleft() for _ in range(k))
        if self.flight_pos is not None:
            self.flight_pos.extend(range(self.head, self.head + k))
        self.head += k
        self._parts.append(k)
        if self.capacity > self.base_capacity:
            self._lower_capacity()

    def parts(self, most: int) -> list[list[T]]:
        """Return copies of up to `most` parts in flight, head first."""
        if self.in_flight is None:
            return []
        parts, start = [], 0
        for size in list(self._parts)[:most]:
            parts.append(self.in_flight[start : start + size])
            start += size
        return parts

    def count_parts(self) -> int:
        """Return how many parts are in flight."""
        return len(self._parts)

    def head_part(self) -> list[T]:
        """Return a copy of the part of the batch in flight to flush next."""
        if self.in_flight is None:
            return []
        return self.in_flight[: self._parts[0]]

    def complete(self) -> int:
        """Count the head part of the batch in flight as flushed; return its size.

        With one part (no failure split the batch), that is the whole batch.
        """
        if self.in_flight is None:
            return 0
        size = self._settle_head()
        self.flushed += size
        self.batches += 1
        return size

    def split_head(self) -> tuple[int, int]:
        """Split the head part in two, the first ceil(n/2) items first; return sizes."""
        size = self._parts[0]
        first = (size + 1) // 2
        self._parts[0] = first
        self._parts.insert(1, size - first)
        return first, size - first

    def drop_head(self, reason: DropReason) -> list[T]:
        """Drop the head part with `reason`; return its items."""
        if self.in_flight is None:
            return []
        items = self.in_flight[: self._parts[0]]
        self.dropped[reason] += self._settle_head()
        return items

    def settle_head_partly(
        self, failed: list[int], reason: DropReason | None
    ) -> list[T]:
        """Count the head part flushed but for the items at `failed` (sorted, unique).

        With a `reason`, those are dropped with it and returned; without,
        they stay in flight, in order, as the new head part (retried), and
        nothing is returned.
        """
        assert self.in_flight is not None  # noqa: S101 - the ledger checks
        size = self._parts[0]
        head = self.in_flight[:size]
        failures = [head[i] for i in failed]
        self.flushed += size - len(failures)
        if reason is not None:
            self.dropped[reason] += len(failures)
            self._settle_head()
            return failures
        # The first failed item's position is at least that far on.
        self.in_flight_start += failed[0]
        self.in_flight[:size] = failures
        if self.flight_pos is not None:
            positions = self.flight_pos
            positions[:size] = [positions[i] for i in failed]
        self._parts[0] = len(failures)
        return []

    def _settle_head(self) -> int:
        """Take the head part out of flight; return its size."""
        assert self.in_flight is not None  # noqa: S101 - callers check
        size = self._parts.popleft()
        del self.in_flight[:size]
        if self.flight_pos is not None:
            del self.flight_pos[:size]
        self.in_flight_start += size
        if not self._parts:
            self.in_flight = None
        return size

    def drop_in_flight(self, reason: DropReason) -> list[T]:
        """Drop the whole batch in flight, every part, with `reason`; return it."""
        batch = self.in_flight or []
        self.in_flight = None
        self._parts.clear()
        if self.flight_pos is not None:
            self.flight_pos = []
        self.dropped[reason] += len(batch)
        return batch

    def drop_queued(self, reason: DropReason) -> list[T]:
        """Drop every queued item with `reason`; return them, oldest first."""
        items = list(self._by_key.values())
        self._by_key.clear()
        unkeyed = self._items
        while unkeyed:  # popleft, not clear(): another thread may append meanwhile
            items.append(unkeyed.popleft())
        self.head += len(items)
        self.dropped[reason] += len(items)
        if self.capacity > self.base_capacity:
            self._lower_capacity()
        return items

    # -- journal ----------------------------------------------------------

    def track_journal(self) -> None:
        """Keep what a journal needs: flight positions, rewinds, replaced keys."""
        self.flight_pos = []
        if self._keyed:
            self.replaced = set()

    def _note_rewound(self) -> None:
        tail = self.tail
        if self.rewound is None or tail < self.rewound:
            self.rewound = tail

    def recover(self, items: list[T], keys: list[Hashable] | None = None) -> None:
        """Queue items recovered from a journal first, whatever `capacity` says.

        They count in `recovered`, not in `pushed`; a repeated key replaces
        the earlier item (counted in `coalesced`). Until the queue is below
        `capacity` again, new pushes meet the policy as if it were full.
        """
        self.recovered += len(items)
        if keys is None:
            self._items.extend(items)
        else:
            by_key = self._by_key
            for key, item in zip(keys, items, strict=True):
                if key in by_key:
                    self.coalesced += 1
                by_key[key] = item
        self.capacity = max(self.base_capacity, len(self))

    def _lower_capacity(self) -> None:
        """Bring `capacity` down towards the configured one as recovered items go."""
        self.capacity = max(self.base_capacity, min(self.capacity, len(self)))

    def leave_to_journal(self, kept: set[int]) -> list[T]:
        """Move every item in flight or queued out, at stop, to the journal.

        The items at the positions in `kept` count in `journaled`; the others
        (not journaled: they did not pickle) are dropped with `closed` and
        returned.
        """
        closed: list[T] = []
        count = 0
        positions = self.flight_pos or []
        for position, item in zip(positions, self.in_flight or [], strict=False):
            if position in kept:
                count += 1
            else:
                closed.append(item)
        self.in_flight = None
        self._parts.clear()
        self.flight_pos = []
        head = self.head
        queued = self.drop_queued(DropReason.CLOSED)
        self.dropped[DropReason.CLOSED] -= len(queued)
        for offset, item in enumerate(queued):
            if head + offset in kept:
                count += 1
            else:
                closed.append(item)
        self.journaled += count
        self.dropped[DropReason.CLOSED] += len(closed)
        return closed

    # -- time -------------------------------------------------------------

    def mark(self, now: float) -> None:
        """Note the time against the tail position (once per tick)."""
        marks = self._marks
        if marks[-1][1] == self.tail:
            marks[-1] = (now, self.tail)  # nothing entered since: tighter bound
        else:
            marks.append((now, self.tail))
        self._prune_marks()

    def _prune_marks(self) -> None:
        marks, head = self._marks, self.head
        while len(marks) > 1 and marks[1][1] <= head:
            marks.popleft()

    def oldest_age(self, now: float) -> float:
        """Return an upper bound, tight to one tick, on the oldest item's wait."""
        if not len(self):
            return 0.0
        self._prune_marks()
        return max(0.0, now - self._marks[0][0])

    def stats(self, now: float, depth: int | None = None) -> Stats:
        """Return a snapshot of every counter.

        The length is read once (or given as `depth`): another thread may
        append meanwhile, and `pushed` and `depth` must agree on it.
        """
        if depth is None:
            depth = len(self)
        return Stats(
            pushed=self.head + depth + self.coalesced + self.rejected - self.recovered,
            flushed=self.flushed,
            coalesced=self.coalesced,
            dropped=Stats.freeze_dropped(self.dropped),
            retries=self.retries,
            restarts=self.restarts,
            batches=self.batches,
            depth=depth,
            in_flight=len(self.in_flight) if self.in_flight is not None else 0,
            oldest_age=self.oldest_age(now) if depth else 0.0,
            recovered=self.recovered,
            journaled=self.journaled,
        )
