"""The policy buffer: a pure, single-threaded ledger of where every item is.

It holds the queued items, the batches in flight and every counter, and
applies the overflow policy. It knows nothing of threads, actors or time
sources (the time is passed in), so its rules can be tested directly and
against a model. The ledger (`_ledger.py`) wraps it in a lock; admission
(`_admission.py`) applies the policies to it.

Queues and lanes: items wait in a `LaneQueue`. With one lane, or several
lanes without a `key_func`, there is one queue, and each lane's `Flight`
(`_flight.py`) cuts its batches from it in push order. With several lanes
and a `key_func` ("routed"), each lane has a queue of its own, which an
item enters by its key; `capacity` and the policies still count the whole
queue (DROP_OLDEST evicts the oldest item of all queues, found through
`_order`, the queues' entries in arrival order).

Positions: every item that enters a queue's tail takes that queue's next
position (`tail`); items leave from the front (`head`), into a batch or
evicted. A coalesced item takes over the position of the item it replaces.
So "every item pushed before now" is "every position below each queue's
`tail` now", which is how `Flush` knows when it is done.

A journal (`_journal.py`) follows the same positions: `track_journal()` turns
on the few records it needs (the positions of the batch in flight, the lowest
tail a DROP_NEWEST eviction rewound to, the keys replaced in place), which
cost nothing while no journal is on. Recovered items enter first
(`recover()`), counted in `recovered`; what `stop(timeout)` leaves goes to
the journal (`leave_to_journal()`), counted in `journaled`. A journal
follows each queue's positions on its own (its lane in the file).

Nothing counts items as they are appended: `tail` is `head + len`, and
`pushed` follows from it. So admission may `append` to `items` without the
lock (a single, GIL-atomic `deque.append`), as long as everything that
*removes* items holds it; the counts stay exact at every snapshot. A
DROP_NEWEST refusal of a full queue takes no lock either: it ticks a count
(`count_refusal`, `_ticks.py`), and `fold_refusals()`, lock held, counts the
ticks into `rejected` and `dropped` before a snapshot.
Until then a refusal is in neither `pushed` nor `dropped`, so every snapshot
still adds up.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from wbactor._config import Policy
from wbactor._flight import Flight
from wbactor._stats import DropReason, LaneStats, Stats
from wbactor._ticks import Ticks

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

__all__ = ["LaneQueue", "PolicyBuffer"]

T = TypeVar("T")

_OLDEST = DropReason.DROP_OLDEST
_NEWEST = DropReason.DROP_NEWEST


class LaneQueue(Generic[T]):
    """Items waiting for a batch: a deque, or a key index (COALESCE_BY_KEY)."""

    __slots__ = ("by_key", "head", "items", "keyed", "marks", "total")

    def __init__(
        self, *, keyed: bool, now: float, total: list[int] | None = None
    ) -> None:
        """Make an empty queue; `keyed` for COALESCE_BY_KEY.

        `total`, if given, is a one-item list counting the items of several
        queues together: every item this queue gives up is taken off it.
        """
        self.keyed = keyed
        self.total = total
        self.items: deque[T] = deque()
        self.by_key: OrderedDict[Hashable, T] = OrderedDict()
        self.head = 0
        # (time, tail) marks, at least one per tick: the oldest queued item
        # entered after the last mark whose tail is <= head.
        self.marks: deque[tuple[float, int]] = deque([(now, 0)])

    def __len__(self) -> int:
        """Return the items queued."""
        return len(self.by_key) if self.keyed else len(self.items)

    @property
    def tail(self) -> int:
        """Return the position the next new item takes."""
        return self.head + len(self)

    def pop_oldest(self, n: int) -> list[T]:
        """Remove and return up to `n` of the oldest items."""
        k = min(n, len(self))
        if self.keyed:
            popitem = self.by_key.popitem
            batch = [popitem(last=False)[1] for _ in range(k)]
        else:
            # popleft, not list() + clear(): another thread may append meanwhile.
            popleft = self.items.popleft
            batch = [popleft() for _ in range(k)]
        self.head += k
        if self.total is not None:
            self.total[0] -= k
        return batch

    def values(self) -> list[T]:
        """Return the queued items, oldest first (a copy)."""
        return list(self.by_key.values()) if self.keyed else list(self.items)

    def mark(self, now: float) -> None:
        """Note the time against the tail position (once per tick)."""
        marks, tail = self.marks, self.tail
        if marks[-1][1] == tail:
            marks[-1] = (now, tail)  # nothing entered since: tighter bound
        else:
            marks.append((now, tail))
        self.prune_marks()

    def prune_marks(self) -> None:
        """Forget the marks no queued item needs any more."""
        marks, head = self.marks, self.head
        while len(marks) > 1 and marks[1][1] <= head:
            marks.popleft()

    def oldest_age(self, now: float) -> float:
        """Return an upper bound, tight to one tick, on the oldest item's wait."""
        if not len(self):
            return 0.0
        self.prune_marks()
        return max(0.0, now - self.marks[0][0])


class PolicyBuffer(Generic[T]):
    """Queued items, the batches in flight, and the counters that account for them.

    Not thread-safe. `push_keyed` returns `None` when nothing was dropped,
    or a 1-tuple holding the dropped item (its reason is `overflow_reason`);
    the caller reports it. The methods about "the batch in flight" (`take`,
    `complete`, ...) are lane 0's `Flight`; the ledger drives each lane's
    through `flights`.
    """

    def __init__(
        self,
        capacity: int,
        policy: Policy,
        now: float = 0.0,
        *,
        lanes: int = 1,
        routed: bool = False,
    ) -> None:
        """Make an empty buffer holding at most `capacity` queued items.

        `lanes` flights; with `routed`, a queue of its own for each.
        """
        self.capacity = capacity
        self.policy = policy
        self.overflow_reason = _NEWEST if policy is Policy.DROP_NEWEST else _OLDEST
        self._keyed = keyed = policy is Policy.COALESCE_BY_KEY
        self.routed = routed and lanes > 1
        count = lanes if self.routed else 1
        # Routed: the items of every lane's queue, kept as they enter and leave.
        self._total = [0]
        total = self._total if self.routed else None
        self.queues: list[LaneQueue[T]] = [
            LaneQueue(keyed=keyed, now=now, total=total) for _ in range(count)
        ]
        self._queue = self.queues[0]
        self._items = self._queue.items
        self._by_key = self._queue.by_key
        self.flights: list[Flight[T]] = [
            Flight(self, self.queues[i if self.routed else 0], i) for i in range(lanes)
        ]
        self._flight = self.flights[0]
        # Routed: (queue, position) of each entry, oldest first; entries of
        # items already gone are skipped when met, and pruned now and then.
        self._order: deque[tuple[int, int]] = deque()
        self.coalesced = 0
        self.rejected = 0
        self.flushed = 0
        self.batches = 0
        self.retries = 0
        self.restarts = 0
        self.dropped: dict[DropReason, int] = dict.fromkeys(DropReason, 0)
        # DROP_NEWEST refusals counted without the lock, by producers.
        self._refusals = Ticks()
        self.count_refusal: Callable[[], int] = self._refusals.tick
        self._refusals_folded = 0
        # -- journal: off (None, 0) unless track_journal() turned it on.
        self.base_capacity = capacity  # `capacity` stays above it after a recovery
        self.recovered = 0
        self.journaled = 0
        # The lowest tail a DROP_NEWEST eviction left since the journal looked.
        self.rewound: int | None = None
        # Keys replaced in place (COALESCE_BY_KEY) since the journal looked.
        self.replaced: set[Hashable] | None = None

    # -- queue contents ---------------------------------------------------

    def __len__(self) -> int:
        """Return the number of items queued (not counting the batches in flight)."""
        if self.routed:
            return self._total[0]
        return len(self._by_key) if self._keyed else len(self._items)

    def full(self) -> bool:
        """Return whether `capacity` items are queued."""
        return len(self) >= self.capacity

    def queued(self) -> list[T]:
        """Return the queued items, oldest first within each lane (a copy)."""
        return [item for queue in self.queues for item in queue.values()]

    @property
    def items(self) -> deque[T]:
        """The queue of the unkeyed policies, for admission's lock-free appends."""
        return self._items

    @property
    def by_key(self) -> OrderedDict[Hashable, T]:
        """The queue of COALESCE_BY_KEY, for admission's length checks."""
        return self._by_key

    @property
    def head(self) -> int:
        """Return the position of the oldest queued item (of all queues, summed)."""
        if self.routed:
            return sum(queue.head for queue in self.queues)
        return self._queue.head

    @property
    def tail(self) -> int:
        """Return the position the next new item takes (of all queues, summed)."""
        if self.routed:
            return sum(queue.tail for queue in self.queues)
        return self._queue.tail

    @property
    def pushed(self) -> int:
        """Return the items pushed: entered the tail, coalesced, or refused."""
        return self.tail + self.coalesced + self.rejected - self.recovered

    def settled_in(self, queue: LaneQueue[T]) -> int:
        """Return the position below which every item of `queue` settled."""
        settled = queue.head
        for flight in self.flights:
            if flight.items is not None and flight.queue is queue:
                settled = min(settled, flight.start)
        return settled

    def settled(self) -> int:
        """Return the position below which every item of queue 0 settled."""
        return self.settled_in(self._queue)

    def tails(self) -> tuple[int, ...]:
        """Return each queue's tail: what a `Flush` asked now covers."""
        return tuple(queue.tail for queue in self.queues)

    def covered(self, target: tuple[int, ...]) -> bool:
        """Return whether every item below the positions `target` settled.

        A DROP_NEWEST overshoot refused from the tail lowers the tail below
        a target taken meanwhile: a target is never above the tail.
        """
        return all(
            min(position, queue.tail) <= self.settled_in(queue)
            for position, queue in zip(target, self.queues, strict=True)
        )

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
        `length` is the queue length to judge by, if already read. A routed
        buffer never overshoots (its pushes evict as they enter).
        """
        if self.routed:
            return []
        if self._keyed:
            return self._evict_keyed(length)
        items = self._items
        excess = (len(items) if length is None else length) - self.capacity
        if excess <= 0:
            return []
        queue = self._queue
        if excess == 1 and self.overflow_reason is _OLDEST:
            # The common case, once per push into a full queue: no loop.
            queue.head += 1
            self.dropped[_OLDEST] += 1
            return [items.popleft()]
        if self.policy is Policy.DROP_NEWEST:
            dropped = [items.pop() for _ in range(excess)]
            dropped.reverse()
            self.rejected += excess
            if self._flight.positions is not None:  # a journal: those come again
                self._note_rewound()
        else:
            popleft = items.popleft
            dropped = [popleft() for _ in range(excess)]
            queue.head += excess
        self.dropped[self.overflow_reason] += excess
        return dropped

    def _evict_keyed(self, length: int | None) -> list[T]:
        by_key = self._by_key
        excess = (len(by_key) if length is None else length) - self.capacity
        if excess <= 0:
            return []
        popitem = by_key.popitem
        dropped = [popitem(last=False)[1] for _ in range(excess)]
        self._queue.head += excess
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
            self._queue.head += 1
            self.dropped[_OLDEST] += 1
            return (by_key.popitem(last=False)[1],)
        return None

    def reject(self, reason: DropReason) -> None:
        """Count an item refused at the door (`closed`, `push_timeout`, ...)."""
        self.rejected += 1
        self.dropped[reason] += 1

    def fold_refusals(self) -> None:
        """Count (lock held) the `count_refusal` ticks since the last fold.

        Not called by `Ledger.peek`, which changes nothing: there a refusal
        not yet folded is in neither `pushed` nor `dropped`.
        """
        total = self._refusals.read()
        new = total - self._refusals_folded
        if new > 0:  # a fold re-entered from a signal handler may run ahead
            self._refusals_folded = total
            self.rejected += new
            self.dropped[_NEWEST] += new

    # -- pushing into lanes (routed) ------------------------------------------

    def push_routed(self, lane: int, key: Hashable, item: T) -> list[T]:
        """Queue `item` in `lane`'s queue (lock held); return what it evicts.

        COALESCE_BY_KEY replaces a queued item with the same key in place.
        A new entry beyond `capacity` evicts the oldest item of the whole
        queue (DROP_OLDEST, COALESCE_BY_KEY); DROP_NEWEST and BLOCK are
        judged by the caller before (refused, or waited for room).
        """
        queue = self.queues[lane]
        if self._keyed:
            by_key = queue.by_key
            if key in by_key:
                by_key[key] = item
                self.coalesced += 1
                if self.replaced is not None:
                    self.replaced.add(key)
                return []
            by_key[key] = item
            position = queue.head + len(by_key) - 1
        else:
            items = queue.items
            items.append(item)
            position = queue.head + len(items) - 1
        total = self._total
        total[0] += 1
        if self.overflow_reason is _NEWEST or self.policy is Policy.BLOCK:
            return []  # never evicts: the caller made room first, or refused
        order = self._order
        order.append((lane, position))
        if total[0] <= self.capacity:
            if len(order) > 2 * self.capacity + 1024:
                self._prune_order()
            return []
        return [self._evict_oldest_routed()]

    def push_routed_many(self, routed: list[tuple[int, Hashable, T]]) -> list[T]:
        """Queue each `(lane, key, item)` in order (unkeyed); return what they evict.

        `push_routed` for a chunk, with no call per item: for DROP_OLDEST, or
        for a policy that never evicts when the caller saw room for them all.
        """
        queues, order, total = self.queues, self._order, self._total
        capacity = self.capacity
        track = self.policy is Policy.DROP_OLDEST
        evicted: list[T] = []
        for lane, _, item in routed:
            queue = queues[lane]
            items = queue.items
            items.append(item)
            total[0] += 1
            if track:
                order.append((lane, queue.head + len(items) - 1))
                if total[0] > capacity:
                    evicted.append(self._evict_oldest_routed())
        if len(order) > 2 * capacity + 1024:
            self._prune_order()
        return evicted

    def _evict_oldest_routed(self) -> T:
        """Drop the oldest queued item of all lanes' queues; return it."""
        queues, order = self.queues, self._order
        while True:
            lane, position = order.popleft()
            queue = queues[lane]
            if position >= queue.head:  # still queued: the oldest of its queue
                (item,) = queue.pop_oldest(1)
                self.dropped[_OLDEST] += 1
                return item

    def _prune_order(self) -> None:
        """Forget the entries of items no longer queued (taken or evicted)."""
        queues = self.queues
        self._order = deque(
            (lane, position)
            for lane, position in self._order
            if position >= queues[lane].head
        )

    # -- batches (lane 0's flight) ------------------------------------------

    @property
    def in_flight(self) -> list[T] | None:
        """Lane 0's batch in flight, or None."""
        return self._flight.items

    @property
    def in_flight_start(self) -> int:
        """The position of lane 0's first item in flight, or a lower bound."""
        return self._flight.start

    def in_flight_count(self) -> int:
        """Return the items in flight, all lanes together."""
        if len(self.flights) == 1:
            return len(self._flight)
        return sum(len(flight) for flight in self.flights)

    def take(self, n: int) -> list[T]:
        """Move up to `n` of the oldest items into lane 0's flight and return them."""
        return self._flight.take(n)

    def extend_flight(self, n: int) -> None:
        """Take up to `n` more items into lane 0's flight, as a part of their own."""
        self._flight.extend(n)

    def parts(self, most: int) -> list[list[T]]:
        """Return copies of up to `most` parts of lane 0's flight, head first."""
        return self._flight.parts(most)

    def count_parts(self) -> int:
        """Return how many parts lane 0 has in flight."""
        return self._flight.count_parts()

    def head_part(self) -> list[T]:
        """Return a copy of the part of lane 0's flight to flush next."""
        return self._flight.head_part()

    def complete(self) -> int:
        """Count the head part of lane 0's flight as flushed; return its size."""
        return self._flight.complete()

    def split_head(self) -> tuple[int, int]:
        """Split the head part of lane 0's flight in two; return the sizes."""
        return self._flight.split_head()

    def drop_head(self, reason: DropReason) -> list[T]:
        """Drop the head part of lane 0's flight with `reason`; return its items."""
        return self._flight.drop_head(reason)

    def settle_head_partly(
        self, failed: list[int], reason: DropReason | None
    ) -> list[T]:
        """Settle lane 0's head part but for the items at `failed` (see `Flight`)."""
        return self._flight.settle_head_partly(failed, reason)

    def drop_in_flight(self, reason: DropReason) -> list[T]:
        """Drop every lane's batch in flight with `reason`; return the items."""
        return [item for flight in self.flights for item in flight.drop_all(reason)]

    def drop_queued(self, reason: DropReason) -> list[T]:
        """Drop every queued item with `reason`; return them, oldest first per lane."""
        items: list[T] = []
        for queue in self.queues:
            items += queue.pop_oldest(len(queue))
            unkeyed = queue.items
            while unkeyed:  # popleft, not clear(): another thread may append meanwhile
                items += queue.pop_oldest(1)
        self._order.clear()
        self.dropped[reason] += len(items)
        self.after_take()
        return items

    # -- journal ----------------------------------------------------------

    def queue_index(self, flight: Flight[T]) -> int:
        """Return the index in `queues` of the queue `flight` takes from."""
        return flight.index if self.routed else 0

    def track_journal(self) -> None:
        """Keep what a journal needs: flight positions, rewinds, replaced keys."""
        for flight in self.flights:
            flight.positions = []
        if self._keyed:
            self.replaced = set()

    def _note_rewound(self) -> None:
        tail = self.tail
        if self.rewound is None or tail < self.rewound:
            self.rewound = tail

    def recover(self, items: list[T], keys: list[Hashable] | None = None) -> None:
        """Queue items recovered from a journal first, whatever `capacity` says.

        `keys` (one per item) are needed for COALESCE_BY_KEY and for a routed
        buffer, which queues each item in lane `hash(key) % lanes`. They count
        in `recovered`, not in `pushed`; a repeated key replaces the earlier
        item (counted in `coalesced`). Until the queue is below `capacity`
        again, new pushes meet the policy as if it were full.
        """
        self.recovered += len(items)
        if keys is None:
            self._items.extend(items)
        elif self.routed:
            self._recover_routed(items, keys)
        else:
            by_key = self._by_key
            for key, item in zip(keys, items, strict=True):
                if key in by_key:
                    self.coalesced += 1
                by_key[key] = item
        self.capacity = max(self.base_capacity, len(self))

    def _recover_routed(self, items: list[T], keys: list[Hashable]) -> None:
        queues, lanes, order = self.queues, len(self.queues), self._order
        track = self.policy is Policy.DROP_OLDEST or self._keyed
        for key, item in zip(keys, items, strict=True):
            lane = hash(key) % lanes
            queue = queues[lane]
            if self._keyed:
                if key in queue.by_key:
                    self.coalesced += 1
                    queue.by_key[key] = item
                    continue
                queue.by_key[key] = item
            else:
                queue.items.append(item)
            self._total[0] += 1
            if track:
                order.append((lane, queue.tail - 1))

    def after_take(self) -> None:
        """Bring `capacity` down towards the configured one as recovered items go."""
        if self.capacity > self.base_capacity:
            self.capacity = max(self.base_capacity, min(self.capacity, len(self)))

    def leave_to_journal(self, kept: set[tuple[int, int]]) -> list[T]:
        """Move every item in flight or queued out, at stop, to the journal.

        The items at the `(queue index, position)` pairs in `kept` count in
        `journaled`; the others (not journaled: they did not pickle) are
        dropped with `closed` and returned.
        """
        closed: list[T] = []
        count = 0
        for flight in self.flights:
            lane = self.queue_index(flight)
            positions = flight.positions or []
            for position, item in zip(positions, flight.items or [], strict=False):
                if (lane, position) in kept:
                    count += 1
                else:
                    closed.append(item)
            flight.forget()
        heads = [queue.head for queue in self.queues]
        for lane, queue in enumerate(self.queues):
            queued = queue.pop_oldest(len(queue))
            while queue.items:  # popleft: another thread may append meanwhile
                queued += queue.pop_oldest(1)
            for offset, item in enumerate(queued):
                if (lane, heads[lane] + offset) in kept:
                    count += 1
                else:
                    closed.append(item)
        self._order.clear()
        self.after_take()
        self.journaled += count
        self.dropped[DropReason.CLOSED] += len(closed)
        return closed

    # -- time -------------------------------------------------------------

    def mark(self, now: float) -> None:
        """Note the time against each queue's tail position (once per tick)."""
        for queue in self.queues:
            queue.mark(now)

    def oldest_age(self, now: float) -> float:
        """Return an upper bound, tight to one tick, on the oldest item's wait."""
        return max(queue.oldest_age(now) for queue in self.queues)

    def lane_depths(self) -> list[int]:
        """Return each lane's queued items (unrouted: all in lane 0)."""
        depths = [len(queue) for queue in self.queues]
        return depths + [0] * (len(self.flights) - len(depths))

    def stats(
        self,
        now: float,
        depth: int | None = None,
        lanes: tuple[LaneStats, ...] = (),
    ) -> Stats:
        """Return a snapshot of every counter.

        The length is read once (or given as `depth`): another thread may
        append meanwhile, and `pushed` and `depth` must agree on it.
        """
        return Stats(**self.counters(now, depth), lanes=lanes)

    def counters(self, now: float, depth: int | None = None) -> dict[str, Any]:
        """Return the counters of a snapshot as plain values, `lanes` aside.

        Copying them is all a snapshot must do under the lock; the `Stats`
        can be built from them after it is let go (`Ledger.stats`).
        """
        if depth is None:
            depth = len(self)
        pushed = self.head + depth + self.coalesced + self.rejected - self.recovered
        return {
            "pushed": pushed,
            "flushed": self.flushed,
            "coalesced": self.coalesced,
            "dropped": dict(self.dropped),
            "retries": self.retries,
            "restarts": self.restarts,
            "batches": self.batches,
            "depth": depth,
            "in_flight": self.in_flight_count(),
            "oldest_age": self.oldest_age(now) if depth else 0.0,
            "recovered": self.recovered,
            "journaled": self.journaled,
        }
