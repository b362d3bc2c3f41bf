"""The policies as pushes run them, over the ledger's PolicyBuffer, against a model.

Pushes go through each policy's admission (`support.Admitted`), the code
`tell(Push)` runs; batches, drops and counters through the buffer itself.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from support import MODEL_SCALE, Admitted, first

from wbactor import DropReason, Policy, PushTimeoutError

KEYS = st.sampled_from("abcd")
REASONS = st.sampled_from(list(DropReason))

Item = tuple[str, int]


class BufferModel(RuleBasedStateMachine):
    """Drives a policy's admission and buffer and a list-and-counters model.

    Items are `(key, serial)` pairs with a unique serial, so any mix-up of
    items, order or keys shows as a difference from the model.
    """

    policy: Policy

    def __init__(self) -> None:
        super().__init__()
        self.serial = 0
        self.capacity = 1
        self.buf: Any = Admitted(1, self.policy, key_func=first)
        # the model
        self.queue: list[Item] = []
        self.flight: list[Item] | None = None
        self.flight_start = 0
        self.head = 0
        self.tail = 0
        self.pushed = 0
        self.flushed = 0
        self.batches = 0
        self.coalesced = 0
        self.rejected = 0
        self.drops: dict[DropReason, int] = dict.fromkeys(DropReason, 0)

    def new_item(self, key: str) -> Item:
        self.serial += 1
        return (key, self.serial)

    @initialize(capacity=st.integers(min_value=1, max_value=5))
    def make_buffer(self, capacity: int) -> None:
        self.capacity = capacity
        self.buf = Admitted(capacity, self.policy, key_func=first)

    # -- rules ----------------------------------------------------------------

    def is_keyed(self) -> bool:
        return self.policy is Policy.COALESCE_BY_KEY

    @precondition(lambda self: not self.is_keyed())
    @rule(key=KEYS)
    def push(self, key: str) -> None:
        item = self.new_item(key)
        full = len(self.queue) >= self.capacity
        if self.policy is Policy.BLOCK and full:
            with pytest.raises(PushTimeoutError):
                self.buf.push(item)
            return
        result = self.buf.push(item)
        self.pushed += 1
        if not full:
            self.queue.append(item)
            self.tail += 1
            assert result is None
        elif self.policy is Policy.DROP_NEWEST:
            self.rejected += 1
            self.drops[DropReason.DROP_NEWEST] += 1
            assert result == (item,)
        else:
            self.queue.append(item)
            self.tail += 1
            oldest = self.queue.pop(0)
            self.head += 1
            self.drops[DropReason.DROP_OLDEST] += 1
            assert result == (oldest,)

    @precondition(lambda self: self.is_keyed())
    @rule(key=KEYS)
    def push_keyed(self, key: str) -> None:
        item = self.new_item(key)
        result = self.buf.push(item)
        self.pushed += 1
        positions = [i for i, (k, _) in enumerate(self.queue) if k == key]
        assert len(positions) <= 1
        if positions:
            self.queue[positions[0]] = item
            self.coalesced += 1
            assert result is None
            return
        self.queue.append(item)
        self.tail += 1
        if len(self.queue) > self.capacity:
            oldest = self.queue.pop(0)
            self.head += 1
            self.drops[DropReason.DROP_OLDEST] += 1
            assert result == (oldest,)
        else:
            assert result is None

    @rule(reason=REASONS)
    def reject(self, reason: DropReason) -> None:
        self.buf.reject(reason)
        self.pushed += 1
        self.rejected += 1
        self.drops[reason] += 1

    @precondition(lambda self: self.flight is None)
    @rule(n=st.integers(min_value=1, max_value=6))
    def take(self, n: int) -> None:
        batch = self.buf.take(n)
        expected = self.queue[:n]
        del self.queue[:n]
        self.flight = expected
        self.flight_start = self.head
        self.head += len(expected)
        assert batch == expected

    @precondition(lambda self: self.flight is not None)
    @rule(n=st.integers(min_value=1, max_value=3))
    def take_while_in_flight_is_refused(self, n: int) -> None:
        with pytest.raises(RuntimeError):
            self.buf.take(n)

    @rule()
    def complete(self) -> None:
        size = self.buf.complete()
        if self.flight is None:
            assert size == 0
            return
        assert size == len(self.flight)
        self.flushed += size
        self.batches += 1
        self.flight = None

    @rule(reason=REASONS)
    def drop_in_flight(self, reason: DropReason) -> None:
        batch = self.buf.drop_in_flight(reason)
        expected = self.flight or []
        self.drops[reason] += len(expected)
        self.flight = None
        assert batch == expected

    @rule(reason=REASONS)
    def drop_queued(self, reason: DropReason) -> None:
        items = self.buf.drop_queued(reason)
        expected = self.queue
        self.queue = []
        self.head += len(expected)
        self.drops[reason] += len(expected)
        assert items == expected

    # -- invariants ----------------------------------------------------------

    @invariant()
    def contents_match_the_model(self) -> None:
        assert self.buf.queued() == self.queue
        assert len(self.buf) == len(self.queue)
        assert self.buf.in_flight == self.flight

    @invariant()
    def counters_match_the_model(self) -> None:
        buf = self.buf
        assert buf.pushed == self.pushed
        assert buf.flushed == self.flushed
        assert buf.batches == self.batches
        assert buf.coalesced == self.coalesced
        assert buf.rejected == self.rejected
        assert buf.dropped == self.drops
        assert (buf.head, buf.tail) == (self.head, self.tail)
        settled = self.flight_start if self.flight is not None else self.head
        assert buf.settled() == settled
        s = buf.stats(0.0)
        assert dict(s.dropped) == {r: n for r, n in self.drops.items() if n}
        assert (s.depth, s.in_flight) == (len(self.queue), len(self.flight or []))

    @invariant()
    def every_item_is_accounted_for(self) -> None:
        s = self.buf.stats(0.0)
        assert s.pushed == (
            s.flushed + s.coalesced + sum(s.dropped.values()) + s.depth + s.in_flight
        )

    @invariant()
    def capacity_is_never_exceeded(self) -> None:
        assert len(self.buf) <= self.capacity
        assert self.buf.full() == (len(self.queue) >= self.capacity)

    @invariant()
    def keys_are_unique_when_coalescing(self) -> None:
        if self.is_keyed():
            keys = [key for key, _ in self.buf.queued()]
            assert len(keys) == len(set(keys))


MODEL_SETTINGS = settings(
    max_examples=100 * MODEL_SCALE, stateful_step_count=50, deadline=None
)


@MODEL_SETTINGS
class DropOldestModel(BufferModel):
    policy = Policy.DROP_OLDEST


@MODEL_SETTINGS
class DropNewestModel(BufferModel):
    policy = Policy.DROP_NEWEST


@MODEL_SETTINGS
class BlockModel(BufferModel):
    policy = Policy.BLOCK


@MODEL_SETTINGS
class CoalesceByKeyModel(BufferModel):
    policy = Policy.COALESCE_BY_KEY


TestDropOldestModel = DropOldestModel.TestCase
TestDropNewestModel = DropNewestModel.TestCase
TestBlockModel = BlockModel.TestCase
TestCoalesceByKeyModel = CoalesceByKeyModel.TestCase
