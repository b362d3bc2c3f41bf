"""Routed lanes over the real admission and buffer, against a list model.

Several lanes with a `key_func`: each lane has a queue, but capacity and the
policies count the whole queue. Items are `(key, serial)`, with int keys (an
int hashes to itself, so key k goes to lane k % lanes).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from support import MODEL_SCALE, conservation_holds

import wbactor
from wbactor import DropReason, Policy, PushTimeoutError
from wbactor._admission import admission_for
from wbactor._drops import ActorThreads, DropReporter
from wbactor._ledger import Ledger
from wbactor._log import DropLog, QueueLog
from wbactor.testing import ManualClock

Item = tuple[int, int]
KEYS = st.integers(min_value=0, max_value=7)


def key_of(item: Item) -> int:
    return item[0]


class LanesModel(RuleBasedStateMachine):
    policy: Policy

    @initialize(
        capacity=st.integers(min_value=1, max_value=6),
        lanes=st.integers(min_value=2, max_value=4),
        batch_size=st.integers(min_value=1, max_value=4),
    )
    def start(self, capacity: int, lanes: int, batch_size: int) -> None:
        config: wbactor.Config[Item] = wbactor.Config(
            capacity=capacity,
            flusher=lambda batch: None,
            policy=self.policy,
            key_func=key_of,
            lanes=lanes,
            batch_size=batch_size,
        )
        clock = ManualClock()
        threads = ActorThreads()
        log = QueueLog("lanes-model")
        self.dropped: list[tuple[Item, DropReason]] = []
        drops: DropReporter[Item] = DropReporter(
            DropLog(clock, log),
            lambda item, reason: self.dropped.append((item, reason)),
            threads,
            log,
        )
        self.ledger: Ledger[Item] = Ledger(config, clock, threads)
        self.admission: Any = admission_for(config, self.ledger, drops, log)
        self.capacity, self.lanes, self.batch_size = capacity, lanes, batch_size
        self.serial = 0
        # the model
        self.queued: list[Item] = []  # every lane's, in arrival order
        self.flights: list[list[Item] | None] = [None] * lanes
        self.expected_drops: list[tuple[Item, DropReason]] = []
        self.flushed = 0
        self.pushed = 0

    def lane(self, item: Item) -> int:
        return item[0] % self.lanes

    @rule(key=KEYS)
    def push(self, key: int) -> None:
        self.serial += 1
        item = (key, self.serial)
        full = len(self.queued) >= self.capacity
        if self.policy is Policy.BLOCK:
            if full:
                with pytest.raises(PushTimeoutError):
                    self.admission.push(item, 0)
                return
            self.admission.push(item, 0)
        else:
            self.admission.offer(item)
        self.pushed += 1
        if self.policy is Policy.COALESCE_BY_KEY:
            for i, queued in enumerate(self.queued):
                if queued[0] == key:
                    self.queued[i] = item
                    return
        if self.policy is Policy.DROP_NEWEST and full:
            self.expected_drops.append((item, DropReason.DROP_NEWEST))
            return
        self.queued.append(item)
        if len(self.queued) > self.capacity:
            self.expected_drops.append((self.queued.pop(0), DropReason.DROP_OLDEST))

    @rule(lane=st.integers(min_value=0, max_value=3))
    def take(self, lane: int) -> None:
        lane %= self.lanes
        with self.ledger.lock:
            flight = self.ledger.flights[lane]
            if flight.items is not None:
                return
            batch = flight.take(self.batch_size)
        mine = [item for item in self.queued if self.lane(item) == lane]
        expected = mine[: self.batch_size]
        assert batch == expected
        if expected:
            self.flights[lane] = expected
            self.queued = [item for item in self.queued if item not in expected]

    @rule(lane=st.integers(min_value=0, max_value=3), ok=st.booleans())
    def settle(self, lane: int, ok: bool) -> None:
        lane %= self.lanes
        expected = self.flights[lane]
        with self.ledger.lock:
            flight = self.ledger.flights[lane]
            if ok:
                flight.complete()
            else:
                dropped = flight.drop_head(DropReason.RETRIES_EXHAUSTED)
        if expected is None:
            return
        if ok:
            self.flushed += len(expected)
        else:
            assert dropped == expected
        self.flights[lane] = None

    @invariant()
    def matches_the_model(self) -> None:
        stats, evicted = self.ledger.stats()
        assert evicted is None  # routed pushes evict as they enter
        assert conservation_holds(stats)
        assert stats.pushed == self.pushed
        assert stats.flushed == self.flushed
        assert stats.depth == len(self.queued) <= self.capacity
        assert self.dropped == self.expected_drops
        for lane, lane_stats in enumerate(stats.lanes):
            mine = [item for item in self.queued if self.lane(item) == lane]
            assert self.ledger.buffer.queues[lane].values() == mine
            assert lane_stats.depth == len(mine)
            assert lane_stats.in_flight == len(self.flights[lane] or [])


LANES_SETTINGS = settings(
    max_examples=60 * MODEL_SCALE, stateful_step_count=40, deadline=None
)


@LANES_SETTINGS
class DropOldestLanes(LanesModel):
    policy = Policy.DROP_OLDEST


@LANES_SETTINGS
class DropNewestLanes(LanesModel):
    policy = Policy.DROP_NEWEST


@LANES_SETTINGS
class BlockLanes(LanesModel):
    policy = Policy.BLOCK


@LANES_SETTINGS
class CoalesceByKeyLanes(LanesModel):
    policy = Policy.COALESCE_BY_KEY


TestDropOldestLanes = DropOldestLanes.TestCase
TestDropNewestLanes = DropNewestLanes.TestCase
TestBlockLanes = BlockLanes.TestCase
TestCoalesceByKeyLanes = CoalesceByKeyLanes.TestCase
