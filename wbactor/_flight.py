"""A lane's batch in flight, settled part by part: the buffer's other half.

A `Flight` holds the items one flusher is writing, cut from the head of its
lane's queue (`LaneQueue`, in `_buffer.py`), with the position of its first
item. A batch settles as one part, unless a permanent failure splits it
(bisection) or a window of several batches is handed over at once: then
its parts settle head first, in push order. Every counter it moves
(`flushed`, `batches`, `dropped`) is the buffer's, so the queue's totals stay
one set of numbers whatever the lanes.

Not thread-safe: the ledger's lock guards it, as it guards the buffer.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from wbactor._buffer import LaneQueue, PolicyBuffer
    from wbactor._stats import DropReason

__all__ = ["Flight"]

T = TypeVar("T")


class Flight(Generic[T]):
    """The batch in flight of one lane: its items, their first position, its parts."""

    __slots__ = ("_buffer", "_parts", "index", "items", "positions", "queue", "start")

    def __init__(
        self, buffer: PolicyBuffer[T], queue: LaneQueue[T], index: int
    ) -> None:
        """Make lane `index`'s empty flight, cutting its batches from `queue`."""
        self._buffer = buffer
        self.queue = queue
        self.index = index
        self.items: list[T] | None = None
        self.start = 0  # position of items[0], or a lower bound
        self._parts: deque[int] = deque()
        # With a journal: the position of each item in flight, in order.
        self.positions: list[int] | None = None

    def __len__(self) -> int:
        """Return the items in flight."""
        return 0 if self.items is None else len(self.items)

    # -- handing over ---------------------------------------------------------

    def take(self, n: int) -> list[T]:
        """Move up to `n` of the queue's oldest items into flight and return them."""
        if self.items is not None:
            msg = "a batch is already in flight"
            raise RuntimeError(msg)
        self.start = head = self.queue.head
        batch = self.queue.pop_oldest(n)
        self.items = batch
        self._parts = deque([len(batch)])
        if self.positions is not None:
            self.positions = list(range(head, head + len(batch)))
        self._buffer.after_take()
        return batch

    def extend(self, n: int) -> None:
        """Take up to `n` more of the oldest items into flight, as a part of their own.

        For a window of several batches handed over at once: the part goes
        behind those in flight, in push order.
        """
        if self.items is None:
            self.take(n)
            return
        head = self.queue.head
        more = self.queue.pop_oldest(n)
        self.items.extend(more)
        self._parts.append(len(more))
        if self.positions is not None:
            self.positions.extend(range(head, head + len(more)))
        self._buffer.after_take()

    def parts(self, most: int) -> list[list[T]]:
        """Return copies of up to `most` parts in flight, head first."""
        if self.items is None:
            return []
        parts, start = [], 0
        for size in list(self._parts)[:most]:
            parts.append(self.items[start : start + size])
            start += size
        return parts

    def count_parts(self) -> int:
        """Return how many parts are in flight."""
        return len(self._parts)

    def head_part(self) -> list[T]:
        """Return a copy of the part to flush next."""
        if self.items is None:
            return []
        return self.items[: self._parts[0]]

    # -- settling -------------------------------------------------------------

    def complete(self) -> int:
        """Count the head part as flushed; return its size.

        With one part (no failure split the batch), that is the whole batch.
        """
        if self.items is None:
            return 0
        size = self._settle_head()
        self._buffer.flushed += size
        self._buffer.batches += 1
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
        if self.items is None:
            return []
        items = self.items[: self._parts[0]]
        self._buffer.dropped[reason] += self._settle_head()
        return items

    def settle_head_partly(
        self, failed: list[int], reason: DropReason | None
    ) -> list[T]:
        """Count the head part flushed but for the items at `failed` (sorted, unique).

        With a `reason`, those are dropped with it and returned; without,
        they stay in flight, in order, as the new head part (retried), and
        nothing is returned.
        """
        assert self.items is not None  # noqa: S101 - the ledger checks
        size = self._parts[0]
        head = self.items[:size]
        failures = [head[i] for i in failed]
        self._buffer.flushed += size - len(failures)
        if reason is not None:
            self._buffer.dropped[reason] += len(failures)
            self._settle_head()
            return failures
        # The first failed item's position is at least that far on.
        self.start += failed[0]
        self.items[:size] = failures
        self._parts[0] = len(failures)
        if self.positions is not None:
            positions = self.positions
            positions[:size] = [positions[i] for i in failed]
        return []

    def _settle_head(self) -> int:
        """Take the head part out of flight; return its size."""
        assert self.items is not None  # noqa: S101 - callers check
        size = self._parts.popleft()
        del self.items[:size]
        if self.positions is not None:
            del self.positions[:size]
        self.start += size
        if not self._parts:
            self.items = None
        return size

    def drop_all(self, reason: DropReason) -> list[T]:
        """Drop the whole batch in flight, every part, with `reason`; return it."""
        batch = self.items or []
        self.forget()
        self._buffer.dropped[reason] += len(batch)
        return batch

    def forget(self) -> None:
        """Empty the flight without counting its items (the caller does)."""
        self.items = None
        self._parts.clear()
        if self.positions is not None:
            self.positions = []
