"""A running queue against a naive reference model, for every policy.

Each machine starts a real queue (`wbactor.start`) and drives it with
pushes, ticks, flushes, scripted flush failures, retries and stops, while a
few lists and counters in the test predict what the queue must hold, flush
and drop. After every step the queue's `Stats`, the batches the flusher was
given and the `(item, reason)` pairs `on_drop` was given must equal the
model's.

What keeps it deterministic:

- `capacity` is below `batch_size`, so no full batch ever waits: a batch is
  cut only by a tick, by `Flush`, or while stopping, and then it takes every
  queued item. What the queue holds at each push follows from the model.
- Time is a `ManualClock` that only the machine moves. Ticks come every
  `FLUSH_INTERVAL`, far more than the retries between two ticks add up to,
  so the only tick is the one the `tick` rule makes; a retry waits out a
  constant `BACKOFF`, and fires only when the `retry` rule advances by it.
- The flusher succeeds, fails or hangs each attempt as the machine
  scripted it. A hung attempt waits on a gate until the machine advances
  the clock by `FLUSH_TIMEOUT`, which abandons it (a failed attempt, then a
  retry on a fresh flusher); the machine opens its gate later, and what
  the abandoned attempt then returns must change nothing (a late write).
  While an attempt hangs the machine only pushes, times it out or stops.
- After a step that sets actors working, the machine waits (without
  polling) for the `Stats` the model predicts for the next state in which
  nothing more can happen without the machine: a batch flushed, dropped, or
  waiting out its backoff. A tick while a batch waits out its backoff runs
  that backoff out too (it is far longer); the retry goes first, and the
  tick is owed: the queued items go as soon as that batch settles. `Flush`
  is only sent while no batch is in flight.
- Every example ends with a stop: either a draining `stop()` in a helper
  thread while the machine advances the clock for each retry, or (drawn at
  start) a `stop(timeout)` that runs out on a batch waiting out its backoff,
  which nothing can move on.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter, deque
from typing import Any, ClassVar

import pykka
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from support import MODEL_SCALE, WAIT, Outcome, accounted, sync

import wbactor
from wbactor import (
    DropReason,
    Flush,
    Policy,
    Push,
    PushMany,
    PushTimeoutError,
    QueueClosedError,
)
from wbactor.testing import DropRecorder, ManualClock

BATCH_SIZE = 50  # above any capacity drawn: a full batch never waits
FLUSH_INTERVAL = 1000.0  # far above the retries made between two ticks
BACKOFF = 1.0  # every retry waits this long on the manual clock
BLOCK_TIMEOUT = 0.005  # BLOCK: a push to a full queue is refused this fast
ABANDON_AFTER = 0.02  # stop(timeout) that runs out on a batch stuck in backoff
FLUSH_TIMEOUT = 0.5  # a hung attempt is abandoned when the clock moves this far

OK = "ok"
FAIL = "fail"
HANG = "hang"

KEYS = st.integers(min_value=0, max_value=6)  # more keys than capacity


def key_of(item: int) -> int:
    """The `key_func`: an item's last digit is its key."""
    return item % 10


def constant_backoff(attempt: int) -> float:
    """The `retry_backoff`: every retry waits `BACKOFF` on the clock."""
    return BACKOFF


class ScriptedStoreError(Exception):
    """The scripted flusher failed this attempt."""


class ScriptedFlusher:
    """Succeeds or fails each attempt as scripted (`ok` once the script runs out).

    Keeps every attempt as `(batch, outcome)`, in order.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._script: deque[str] = deque()
        self._attempts: list[tuple[list[int], str]] = []
        self._gates: deque[threading.Event] = deque()  # of hung attempts
        self._late: list[list[int]] = []  # what hung attempts wrote once let go
        self._open = False  # every gate let go: no attempt hangs any more

    def script(self, outcome: str, *, first: bool = False) -> None:
        with self._lock:
            if first:
                self._script.appendleft(outcome)
            else:
                self._script.append(outcome)

    def flush(self, batch: list[int]) -> None:
        gate = threading.Event()
        with self._lock:
            outcome = self._script.popleft() if self._script else OK
            self._attempts.append((list(batch), outcome))
            if outcome == HANG:
                self._gates.append(gate)
                if self._open:
                    gate.set()
            self._lock.notify_all()
        if outcome == FAIL:
            msg = f"scripted failure of a batch of {len(batch)}"
            raise ScriptedStoreError(msg)
        if outcome == HANG:
            gate.wait()
            with self._lock:
                self._late.append(list(batch))
                self._lock.notify_all()

    def wait_attempts(self, count: int) -> None:
        with self._lock:
            assert self._lock.wait_for(lambda: len(self._attempts) >= count, WAIT)

    def let_go(self, *, every: bool = False) -> None:
        """Let the oldest hung attempt return, or every one, now and later.

        After `every`, no attempt hangs: a teardown that stops the queue
        must not leave a thread hanging behind it.
        """
        with self._lock:
            self._open = self._open or every
            gates = list(self._gates) if every else [self._gates[0]]
            for gate in gates:
                self._gates.remove(gate)
                gate.set()

    def wait_late(self, count: int) -> list[list[int]]:
        with self._lock:
            assert self._lock.wait_for(lambda: len(self._late) >= count, WAIT)
            return [list(batch) for batch in self._late]

    @property
    def attempts(self) -> list[tuple[list[int], str]]:
        with self._lock:
            return [(list(batch), outcome) for batch, outcome in self._attempts]

    @property
    def remaining(self) -> list[str]:
        with self._lock:
            return list(self._script)


class QueueModel(RuleBasedStateMachine):
    """Drives a running queue and a list-and-counters model side by side.

    Items are unique, increasing ints whose last digit is their key, so any
    mix-up of items, order, keys or reasons shows as a difference.
    """

    policy: ClassVar[Policy]

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.flusher = ScriptedFlusher()
        self.drops: DropRecorder[int] = DropRecorder()
        self._wb: wbactor.WriteBehind[int] | None = None
        self.capacity = 1
        self.max_retries = 0
        self.abandon_at_stop = False  # stop(timeout) with a batch in backoff
        self.serial = 0
        self.final: wbactor.Stats | None = None
        # the model
        self.queue: list[int] = []
        self.flight: list[int] | None = None
        self.failures = 0  # failed attempts of the batch in flight
        self.hanging = False  # its attempt hangs until the clock times it out
        self.abandoned: list[list[int]] = []  # hung attempts timed out, not let go
        self.late: list[list[int]] = []  # what those wrote once let go
        self.tick_owed = False  # a tick found items queued behind the batch
        self.script: deque[str] = deque()
        self.attempts: list[tuple[list[int], str]] = []
        self.dropped: list[tuple[int, DropReason]] = []
        self.pushed = 0
        self.flushed = 0
        self.coalesced = 0
        self.retries = 0
        self.restarts = 0
        self.batches = 0

    @property
    def wb(self) -> wbactor.WriteBehind[int]:
        assert self._wb is not None
        return self._wb

    @initialize(
        capacity=st.integers(min_value=3, max_value=5),
        max_retries=st.sampled_from([-1, 0, 1, 2]),
        abandon_at_stop=st.booleans(),
    )
    def start_queue(
        self, capacity: int, max_retries: int, abandon_at_stop: bool
    ) -> None:
        self.capacity = capacity
        self.max_retries = max_retries
        self.abandon_at_stop = abandon_at_stop
        keyed = self.policy is Policy.COALESCE_BY_KEY
        config: wbactor.Config[int] = wbactor.Config(
            capacity=capacity,
            flusher=self.flusher,
            batch_size=BATCH_SIZE,
            flush_interval=FLUSH_INTERVAL,
            policy=self.policy,
            key_func=key_of if keyed else None,
            retry_backoff=constant_backoff,
            max_retries=max_retries,
            on_drop=self.drops,
            flush_timeout=FLUSH_TIMEOUT,
            block_timeout=BLOCK_TIMEOUT,
            clock=self.clock,
        )
        self._wb = wbactor.start(config)
        # The first tick is on the timer before any rule moves the clock.
        sync(self.wb._timer)

    # -- the model --------------------------------------------------------------

    def new_item(self, key: int) -> int:
        self.serial += 1
        return self.serial * 10 + key

    def full(self) -> bool:
        return len(self.queue) >= self.capacity

    def drop(self, items: list[int], reason: DropReason) -> None:
        self.dropped += [(item, reason) for item in items]

    def model_push(self, item: int) -> None:
        """Predict one item arriving under the policy."""
        self.pushed += 1
        if self.policy is Policy.COALESCE_BY_KEY:
            same = [
                i
                for i, queued in enumerate(self.queue)
                if key_of(queued) == key_of(item)
            ]
            assert len(same) <= 1, "the model holds a key twice"
            if same:
                self.queue[same[0]] = item
                self.coalesced += 1
                return
        if self.full():
            if self.policy is Policy.DROP_NEWEST:
                self.drop([item], DropReason.DROP_NEWEST)
                return
            if self.policy is Policy.BLOCK:
                self.drop([item], DropReason.PUSH_TIMEOUT)
                return
            self.drop([self.queue.pop(0)], DropReason.DROP_OLDEST)
        self.queue.append(item)

    def model_attempt(self) -> None:
        """Predict one flush attempt of the batch in flight."""
        assert self.flight is not None
        outcome = self.script.popleft() if self.script else OK
        self.attempts.append((list(self.flight), outcome))
        if outcome == HANG:
            self.hanging = True  # until the clock times it out
            return
        if outcome == OK:
            self.flushed += len(self.flight)
            self.batches += 1
        elif not self.model_failed():
            return  # it waits out its backoff
        self.model_settled()

    def model_failed(self) -> bool:
        """Predict a failed attempt; return whether its batch was dropped."""
        assert self.flight is not None
        self.retries += 1
        self.failures += 1
        if not 0 <= self.max_retries < self.failures:
            return False
        self.drop(self.flight, DropReason.RETRIES_EXHAUSTED)
        self.restarts += 1  # a fresh flusher for the next batch, at once
        return True

    def model_timeout(self) -> None:
        """Predict the clock passing `flush_timeout` on the hung attempt."""
        assert self.flight is not None
        self.hanging = False
        self.abandoned.append(list(self.flight))
        if self.model_failed():
            self.model_settled()

    def model_settled(self) -> None:
        """The batch in flight is done with: an owed tick cuts the next one."""
        self.flight = None
        if self.tick_owed:  # the owed tick cuts the next batch at once
            self.tick_owed = False
            self.model_cut()

    def model_cut(self) -> None:
        """Predict a tick or `Flush`: every queued item goes, if none is in flight."""
        if self.flight is None and self.queue:
            self.flight = self.queue[:BATCH_SIZE]
            del self.queue[:BATCH_SIZE]
            self.failures = 0
            self.model_attempt()

    def model_retry(self) -> None:
        """Predict the backoff running out: a fresh flusher retries the batch."""
        self.restarts += 1
        self.model_attempt()

    def expected(self) -> dict[str, Any]:
        return {
            "pushed": self.pushed,
            "flushed": self.flushed,
            "coalesced": self.coalesced,
            "dropped": dict(Counter(reason for _, reason in self.dropped)),
            "retries": self.retries,
            "restarts": self.restarts,
            "batches": self.batches,
            "depth": len(self.queue),
            "in_flight": len(self.flight or []),
        }

    @staticmethod
    def observed(stats: wbactor.Stats) -> dict[str, Any]:
        return {
            "pushed": stats.pushed,
            "flushed": stats.flushed,
            "coalesced": stats.coalesced,
            "dropped": dict(stats.dropped),
            "retries": stats.retries,
            "restarts": stats.restarts,
            "batches": stats.batches,
            "depth": stats.depth,
            "in_flight": stats.in_flight,
        }

    def settle(self) -> None:
        """Wait until the queue reaches the state the model predicts."""
        expected = self.expected()
        # First the attempts: a hung one shows in no count, and no outcome
        # wakes wait_for() when a batch merely goes into flight.
        self.flusher.wait_attempts(len(self.attempts))
        try:
            self.wb.wait_for(lambda s: self.observed(s) == expected, WAIT)
        except TimeoutError:
            observed = self.observed(self.wb.stats())
            pytest.fail(f"the queue never reached {expected}; it shows {observed}")
        # Drops of a batch are reported after they show in Stats.
        self.drops.wait_for(len(self.dropped), WAIT)

    # -- pushing ----------------------------------------------------------------

    @precondition(lambda self: not (self.policy is Policy.BLOCK and self.full()))
    @rule(key=KEYS)
    def push(self, key: int) -> None:
        item = self.new_item(key)
        self.wb.ref.tell(Push(item))
        self.model_push(item)

    @precondition(lambda self: self.policy is Policy.BLOCK and self.full())
    @rule(key=KEYS)
    def push_to_a_full_blocking_queue_times_out(self, key: int) -> None:
        item = self.new_item(key)
        self.wb.ref.tell(Push(item))  # nothing can make room: waits block_timeout
        self.model_push(item)

    @rule(keys=st.lists(KEYS, max_size=8))
    def push_many(self, keys: list[int]) -> None:
        items = [self.new_item(key) for key in keys]
        self.wb.ref.tell(PushMany(list(items)))
        for item in items:
            self.model_push(item)

    @rule(key=KEYS)
    def push_from_plain_code(self, key: int) -> None:
        item = self.new_item(key)
        if self.policy is Policy.BLOCK and self.full():
            with pytest.raises(PushTimeoutError):
                self.wb.push(item, timeout=BLOCK_TIMEOUT)
            return  # not counted, not reported to on_drop
        self.wb.push(item, timeout=BLOCK_TIMEOUT)
        self.model_push(item)

    # -- flushing -------------------------------------------------------------

    @precondition(lambda self: len(self.script) < 6)
    @rule(outcome=st.sampled_from([FAIL, FAIL, OK, HANG]))
    def script_next_attempt(self, outcome: str) -> None:
        self.flusher.script(outcome)
        self.script.append(outcome)

    @precondition(lambda self: not self.hanging)
    @rule()
    def tick(self) -> None:
        self.clock.advance(FLUSH_INTERVAL)
        # The tick was sent before advance() returned: once the queue has
        # handled it, the next tick is scheduled; once the timer has that, a
        # later advance() fires it, and nothing earlier.
        sync(self.wb.ref)
        sync(self.wb._timer)
        if self.flight is None:
            self.model_cut()
        else:
            # The backoff ran out too: the batch is retried, and the tick
            # waits for it to settle if it found anything queued.
            self.tick_owed = bool(self.queue)
            event(f"a tick came during a backoff, owed: {self.tick_owed}")
            self.model_retry()
        self.settle()

    @precondition(lambda self: self.flight is None)
    @rule()
    def flush(self) -> None:
        if self.queue and self.script and self.script[0] != OK:
            self.wb.ref.tell(Flush())  # wb.flush() would wait for the retry
        else:
            self.wb.flush(timeout=WAIT)
        self.model_cut()
        self.settle()

    @precondition(lambda self: self.flight is not None and not self.hanging)
    @rule()
    def retry(self) -> None:
        self.clock.advance(BACKOFF)
        self.model_retry()
        self.settle()

    @precondition(lambda self: self.hanging)
    @rule()
    def time_out_the_hang(self) -> None:
        self.clock.advance(FLUSH_TIMEOUT)
        self.model_timeout()
        self.settle()

    @precondition(lambda self: self.abandoned)
    @rule()
    def let_an_abandoned_attempt_return(self) -> None:
        # It writes now, late; the queue counts nothing of it.
        self.flusher.let_go()
        self.late.append(self.abandoned.pop(0))
        assert self.flusher.wait_late(len(self.late)) == self.late

    # -- stopping -------------------------------------------------------------

    def stop_and_drain(self) -> None:
        """Stop from a helper thread, advancing the clock for every retry."""
        stopping = Outcome(lambda: self.wb.stop(timeout=WAIT))
        try:
            while True:
                # The stop's Flush cuts every batch while nothing is in flight.
                while self.flight is None and self.queue:
                    self.model_cut()
                self.settle()
                if self.flight is None:
                    break
                if self.hanging:
                    self.clock.advance(FLUSH_TIMEOUT)  # abandon the hung attempt
                    self.model_timeout()
                    continue
                self.clock.advance(BACKOFF)  # the retry's backoff on the clock
                self.model_retry()
        finally:
            stopping.join(2 * WAIT)  # stop() itself gives up after WAIT
        assert stopping.error is None
        assert isinstance(stopping.result, wbactor.Stats)
        self.final = stopping.result

    def put_a_batch_in_backoff(self) -> None:
        """Unless one already is, fail a batch once so it waits for the clock."""
        if self.flight is not None:
            return
        if not self.queue:
            item = self.new_item(0)
            self.wb.ref.tell(Push(item))
            self.model_push(item)
        self.flusher.script(FAIL, first=True)
        self.script.appendleft(FAIL)
        self.wb.ref.tell(Flush())
        self.model_cut()
        self.settle()

    def stop_runs_out_on_the_batch_in_backoff(self) -> None:
        """Stop with a timeout while the batch in flight waits for the clock.

        Nothing can progress until the clock moves (the batch waits out its
        backoff, or its attempt hangs), so the drain runs out and what is in
        flight, then what is queued, is dropped with `closed`. A hung attempt
        is abandoned: it may still write, late.
        """
        self.final = self.wb.stop(timeout=ABANDON_AFTER)
        assert self.flight is not None
        if self.hanging:
            self.hanging = False
            self.abandoned.append(list(self.flight))
        self.drop(self.flight + self.queue, DropReason.CLOSED)
        self.flight = None
        self.queue = []

    def let_every_abandoned_attempt_return(self) -> None:
        self.flusher.let_go(every=True)
        self.late += self.abandoned
        self.abandoned = []
        late = self.flusher.wait_late(len(self.late))
        assert sorted(late) == sorted(self.late)  # they return in any order
        self.late = late

    def a_stopped_queue_refuses_items(self) -> None:
        item = self.new_item(0)
        with pytest.raises(pykka.ActorDeadError):
            self.wb.ref.tell(Push(item))
        with pytest.raises(pykka.ActorDeadError):
            self.wb.ref.tell(PushMany([item]))
        with pytest.raises(QueueClosedError):
            self.wb.push(item)
        assert self.wb.stop() is self.final

    def note_coverage(self) -> None:
        """Tell `--hypothesis-show-statistics` what the example went through."""
        for reason in sorted({reason for _, reason in self.dropped}):
            event(f"dropped {reason}")
        if self.coalesced:
            event("coalesced")
        if any(outcome == FAIL for _, outcome in self.attempts):
            event("a flush failed")
        if self.late:
            event("an abandoned attempt wrote late")
        if self.batches > 1:
            event("several batches flushed")

    def teardown(self) -> None:
        if self._wb is None:
            return
        if sys.exc_info()[1] is not None:
            # A step failed: the model means nothing now, just stop the queue.
            self.flusher.let_go(every=True)
            self._wb.stop(timeout=ABANDON_AFTER)
            return
        try:
            if self.abandon_at_stop and (self.hanging or self.max_retries != 0):
                self.put_a_batch_in_backoff()
                self.stop_runs_out_on_the_batch_in_backoff()
            else:
                self.stop_and_drain()
            self.let_every_abandoned_attempt_return()
            self.a_stopped_queue_refuses_items()
            self.check_stats()
            self.the_flusher_saw_what_the_model_predicts()
            self.on_drop_saw_what_the_model_predicts()
            self.the_queue_holds_what_the_model_holds()
            self.note_coverage()
        finally:
            self.flusher.let_go(every=True)
            self._wb.stop(timeout=ABANDON_AFTER)  # returns at once once stopped

    # -- invariants -------------------------------------------------------------

    @invariant()
    def check_stats(self) -> None:
        stats = self.wb.stats()
        assert self.observed(stats) == self.expected()
        assert stats.pushed == accounted(stats)
        assert stats.depth <= self.capacity
        assert stats.depth == self.wb.depth()
        assert stats.oldest_age >= 0
        if not stats.depth:
            assert stats.oldest_age == 0
        if self.final is not None:
            assert self.observed(self.final) == self.expected()
            assert self.final.depth == self.final.in_flight == 0

    @invariant()
    def the_flusher_saw_what_the_model_predicts(self) -> None:
        assert self.flusher.attempts == self.attempts
        assert self.flusher.remaining == list(self.script)
        assert self.flusher.wait_late(len(self.late)) == self.late

    @invariant()
    def on_drop_saw_what_the_model_predicts(self) -> None:
        assert self.drops.calls == self.dropped

    @invariant()
    def the_queue_holds_what_the_model_holds(self) -> None:
        ledger = self.wb._ledger
        with ledger.lock:
            queued = ledger.buffer.queued()
            in_flight = ledger.buffer.in_flight
        assert queued == self.queue
        assert in_flight == self.flight
        if self.policy is Policy.COALESCE_BY_KEY:
            keys = [key_of(item) for item in queued]
            assert len(keys) == len(set(keys))


MODEL_SETTINGS = settings(
    max_examples=40 * MODEL_SCALE,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@MODEL_SETTINGS
class DropOldestQueue(QueueModel):
    policy = Policy.DROP_OLDEST


@MODEL_SETTINGS
class DropNewestQueue(QueueModel):
    policy = Policy.DROP_NEWEST


@MODEL_SETTINGS
class BlockQueue(QueueModel):
    policy = Policy.BLOCK


@MODEL_SETTINGS
class CoalesceByKeyQueue(QueueModel):
    policy = Policy.COALESCE_BY_KEY


TestDropOldestQueue = DropOldestQueue.TestCase
TestDropNewestQueue = DropNewestQueue.TestCase
TestBlockQueue = BlockQueue.TestCase
TestCoalesceByKeyQueue = CoalesceByKeyQueue.TestCase
