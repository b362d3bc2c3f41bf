"""Stopping: the final drain, what stop refuses, releases and accounts for."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from typing import Any

import pykka
import pytest
import structlog
from support import Outcome, conservation_holds

import wbactor
from wbactor import DropReason, Flush, Policy, Push, PushMany
from wbactor._flusher import FlusherActor
from wbactor.testing import (
    DropRecorder,
    FlakyFlusher,
    GatedFlusher,
    ManualClock,
    RecordingFlusher,
)


def join_flusher_threads() -> None:
    """Wait for retired flusher actors' threads (e.g. after a gate opens)."""
    for thread in threading.enumerate():
        if thread.name.startswith("FlusherActor"):
            thread.join(timeout=5)
            assert not thread.is_alive()


# -- the final drain -------------------------------------------------------------


def test_stop_drains_everything_in_batch_size_batches(clock: ManualClock) -> None:
    flusher: GatedFlusher[int] = GatedFlusher()
    config = wbactor.Config(capacity=1_000, flusher=flusher, batch_size=10, clock=clock)
    wb = wbactor.start(config)
    wb.ref.tell(PushMany(range(10)))  # a full batch: the flusher holds it
    assert flusher.entered.wait(5)
    wb.ref.tell(PushMany(range(10, 105)))  # a backlog of 95 behind it
    assert wb.depth() == 95
    stopper = Outcome(lambda: wb.stop(timeout=5))
    flusher.release()
    stopper.join()
    assert stopper.error is None
    stats = stopper.result
    assert isinstance(stats, wbactor.Stats)
    assert flusher.items == list(range(105))
    assert len(flusher.batches) == math.ceil(105 / 10)
    assert max(map(len, flusher.batches)) == 10
    assert (stats.flushed, stats.batches) == (105, 11)
    assert stats.depth == stats.in_flight == 0


def test_stop_is_idempotent_and_returns_the_same_stats(clock: ManualClock) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher, clock=clock))
    wb.push(1)
    wb.push(2)
    first = wb.stop(timeout=5)
    assert (first.pushed, first.flushed) == (2, 2)
    assert wb.stop(timeout=5) == first
    assert wb.stop() == first
    assert flusher.batches == [[1, 2]]  # the second stop flushed nothing again


def test_context_manager_stops_the_queue_on_exit(clock: ManualClock) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(capacity=10, flusher=flusher, clock=clock)
    with wbactor.start(config) as wb:
        wb.ref.tell(Push(1))
        assert flusher.batches == []
    assert flusher.items == [1]
    with pytest.raises(wbactor.QueueClosedError):
        wb.push(2)
    assert pykka.ActorRegistry.get_all() == []


def test_context_manager_stops_the_queue_when_the_block_raises(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(capacity=10, flusher=flusher, clock=clock)
    handles: list[wbactor.WriteBehind[int]] = []

    def use_queue() -> None:
        with wbactor.start(config) as wb:
            handles.append(wb)
            wb.push(1)
            raise KeyError(1)

    with pytest.raises(KeyError):
        use_queue()
    [wb] = handles
    assert flusher.items == [1]
    with pytest.raises(pykka.ActorDeadError):
        wb.ref.tell(Push(2))


def test_after_stop_tell_raises_actor_dead_and_push_and_flush_queue_closed(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher, clock=clock))
    wb.push(1)
    stats = wb.stop(timeout=5)
    with pytest.raises(pykka.ActorDeadError):
        wb.ref.tell(Push(1))
    with pytest.raises(pykka.ActorDeadError):
        wb.ref.tell(PushMany([1, 2]))
    with pytest.raises(pykka.ActorDeadError):
        wb.ref.tell(Flush())
    with pytest.raises(wbactor.QueueClosedError):
        wb.push(1)
    with pytest.raises(wbactor.QueueClosedError):
        wb.flush()
    with pytest.raises(wbactor.QueueClosedError):
        wb.flush(timeout=0.1)
    assert issubclass(wbactor.QueueClosedError, pykka.ActorDeadError)
    assert wb.stats() == stats  # nothing refused after stop was counted
    assert pykka.ActorRegistry.get_all() == []


def test_stop_returns_with_every_actor_stopped(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # White-box: make the (idle, healthy) flusher actor's thread slow to get
    # to its stop message, as a busy scheduler can; stop() must still return
    # with it stopped, not merely asked to stop.
    slow = threading.Event()
    handle_receive = FlusherActor._handle_receive

    def slow_stop(self: Any, message: Any) -> Any:
        if type(message).__name__ == "_ActorStop":
            slow.wait(0.1)
        return handle_receive(self, message)

    monkeypatch.setattr(FlusherActor, "_handle_receive", slow_stop)
    flusher: RecordingFlusher[int] = RecordingFlusher()
    wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher, clock=clock))
    try:
        wb.push(1)
        wb.stop(timeout=5)
        assert flusher.items == [1]
        assert pykka.ActorRegistry.get_all() == []
    finally:
        slow.set()


# -- waiters released at stop -----------------------------------------------------


def full_block_queue(
    clock: ManualClock, drops: DropRecorder[int], **extra: Any
) -> tuple[wbactor.WriteBehind[int], GatedFlusher[int]]:
    """A BLOCK queue of capacity 2, full, with item 1 held by the flusher."""
    flusher: GatedFlusher[int] = GatedFlusher()
    config = wbactor.Config(
        capacity=2,
        flusher=flusher,
        batch_size=1,
        policy=Policy.BLOCK,
        on_drop=drops,
        clock=clock,
        **extra,
    )
    wb = wbactor.start(config)
    wb.push(1)
    assert flusher.entered.wait(5)
    wb.push(2)
    wb.push(3)
    assert wb.depth() == 2
    return wb, flusher


def test_push_blocked_for_room_gets_queue_closed_error_at_stop(
    clock: ManualClock,
) -> None:
    drops: DropRecorder[int] = DropRecorder()
    wb, flusher = full_block_queue(clock, drops)
    try:
        pusher = Outcome(lambda: wb.push(4))  # no timeout: waits for room
        assert pusher.started.wait(5)
        assert not pusher.returned.wait(0.05)  # blocked: the queue is full
        stopper = Outcome(lambda: wb.stop(timeout=5))
        pusher.join()  # released by stop, while the flusher is still held
        assert isinstance(pusher.error, wbactor.QueueClosedError)
    finally:
        flusher.release()
    stopper.join()
    assert stopper.error is None
    stats = stopper.result
    assert isinstance(stats, wbactor.Stats)
    assert flusher.items == [1, 2, 3]
    assert (stats.pushed, stats.flushed) == (3, 3)  # 4 was not accepted
    assert drops.calls == []


def test_tell_blocked_for_room_is_dropped_with_closed_at_stop(
    clock: ManualClock,
) -> None:
    drops: DropRecorder[int] = DropRecorder()
    wb, flusher = full_block_queue(clock, drops, block_timeout=None)
    try:
        teller = Outcome(lambda: wb.ref.tell(Push(4)))
        assert teller.started.wait(5)
        assert not teller.returned.wait(0.05)  # blocked: the queue is full
        stopper = Outcome(lambda: wb.stop(timeout=5))
        teller.join()
        assert teller.error is None  # tell does not raise: the item is dropped
        assert drops.calls == [(4, "closed")]
    finally:
        flusher.release()
    stopper.join()
    stats = stopper.result
    assert isinstance(stats, wbactor.Stats)
    assert flusher.items == [1, 2, 3]
    assert stats.pushed == 4
    assert stats.flushed == 3
    assert dict(stats.dropped) == {DropReason.CLOSED: 1}
    assert conservation_holds(stats)


# -- nothing lost at stop ----------------------------------------------------------


def test_a_batch_waiting_out_a_retry_backoff_at_stop_is_dropped_with_closed(
    clock: ManualClock,
) -> None:
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=10**9)
    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=10,
        flusher=flusher,
        batch_size=3,
        max_retries=-1,
        on_drop=drops,
        clock=clock,
    )
    wb = wbactor.start(config)
    wb.ref.tell(PushMany([1, 2, 3]))
    wb.wait_for(lambda s: s.retries == 1, 5)  # now waiting out the backoff
    wb.push(4)
    wb.push(5)
    started = time.monotonic()
    stats = wb.stop(timeout=0.3)
    assert time.monotonic() - started < 3
    assert flusher.attempts == 1  # the clock never moved: no retry ran
    assert sorted(drops.items) == [1, 2, 3, 4, 5]
    assert set(drops.reasons) == {DropReason.CLOSED}
    assert dict(stats.dropped) == {DropReason.CLOSED: 5}
    assert stats.depth == stats.in_flight == 0
    assert stats.flushed == 0
    assert conservation_holds(stats)


def test_a_push_racing_with_stop_is_flushed_or_dropped_exactly_once() -> None:
    for _ in range(20):
        clock = ManualClock()
        flusher: RecordingFlusher[int] = RecordingFlusher()
        drops: DropRecorder[int] = DropRecorder()
        config = wbactor.Config(
            capacity=1_000_000,
            flusher=flusher,
            batch_size=500,
            on_drop=drops,
            clock=clock,
        )
        wb = wbactor.start(config)
        told: list[int] = []
        going = threading.Event()

        def produce(
            wb: wbactor.WriteBehind[int] = wb,
            told: list[int] = told,
            going: threading.Event = going,
        ) -> int:
            item = 0
            while True:
                try:
                    wb.ref.tell(Push(item))
                except pykka.ActorDeadError:
                    return item
                told.append(item)
                item += 1
                if item == 50:
                    going.set()

        producer = Outcome(produce)
        assert going.wait(5)
        wb.stop(timeout=5)
        producer.join()
        assert producer.error is None
        outcomes = Counter(flusher.items) + Counter(drops.items)
        assert outcomes == Counter(told)  # each told item exactly once
        assert set(drops.reasons) <= {DropReason.CLOSED}
        stats = wb.stats()
        assert stats.pushed == len(told)
        assert stats.flushed == len(flusher.items)
        assert stats.depth == stats.in_flight == 0
        assert conservation_holds(stats)


def test_stop_timeout_with_a_hung_flusher_drops_leftovers_and_ignores_late_result(
    clock: ManualClock,
) -> None:
    flusher: GatedFlusher[int] = GatedFlusher()
    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=10, flusher=flusher, batch_size=2, on_drop=drops, clock=clock
    )
    wb = wbactor.start(config)
    try:
        wb.push(1)
        wb.push(2)
        assert flusher.entered.wait(5)  # 1 and 2 in flight, held
        for item in (3, 4, 5):
            wb.push(item)
        started = time.monotonic()
        with structlog.testing.capture_logs() as logs:
            stats = wb.stop(timeout=0.2)
        elapsed = time.monotonic() - started
        assert 0.15 <= elapsed < 3
        assert dict(stats.dropped) == {DropReason.CLOSED: 5}
        assert (stats.flushed, stats.depth, stats.in_flight) == (0, 0, 0)
        assert conservation_holds(stats)
        assert sorted(drops.items) == [1, 2, 3, 4, 5]
        assert set(drops.reasons) == {DropReason.CLOSED}
        closed_logged = [
            e["count"]
            for e in logs
            if e["event"] == "items_dropped" and e["reason"] == "closed"
        ]
        assert sum(closed_logged) == 5
    finally:
        flusher.release()
    # The abandoned attempt completes late: the store got it (at-least-once)...
    assert flusher.wait_for_batches(1) == [1, 2]
    join_flusher_threads()
    # ...but it is not counted as flushed: the items stay dropped, once.
    assert wb.stats() == stats
    assert len(drops.calls) == 5


# -- Flush --------------------------------------------------------------------------


def test_flush_with_a_timeout_raises_timeout_error_when_the_flusher_hangs(
    clock: ManualClock,
) -> None:
    flusher: GatedFlusher[int] = GatedFlusher()
    wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher, clock=clock))
    try:
        wb.push(1)
        with pytest.raises(TimeoutError):
            wb.flush(timeout=0.05)
        assert flusher.entered.is_set()
        assert wb.stats().in_flight == 1
    finally:
        flusher.release()
    wb.flush(timeout=5)
    assert flusher.items == [1]
    assert wb.stop(timeout=5).flushed == 1


def test_ask_flush_blocks_until_the_flush_is_done(clock: ManualClock) -> None:
    flusher: GatedFlusher[int] = GatedFlusher()
    wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher, clock=clock))
    try:
        for item in range(5):
            wb.ref.tell(Push(item))
        future = wb.ref.ask(Flush(), block=False)
        assert flusher.entered.wait(5)
        with pytest.raises(pykka.Timeout):
            future.get(timeout=0.05)  # the flusher holds the batch: not done
        flusher.release()
        assert future.get(timeout=5) is None
        assert flusher.items == [0, 1, 2, 3, 4]
        wb.push(5)
        assert wb.ref.ask(Flush(), timeout=5) is None
        assert flusher.items == [0, 1, 2, 3, 4, 5]
        assert clock.now() == 0.0
    finally:
        flusher.release()
        wb.stop(timeout=5)


def test_tell_flush_triggers_a_flush(clock: ManualClock) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    with wbactor.start(wbactor.Config(capacity=10, flusher=flusher, clock=clock)) as wb:
        for item in range(5):
            wb.ref.tell(Push(item))
        assert wb.ref.tell(Flush()) is None  # type: ignore[func-returns-value]
        assert flusher.wait_for_items(5) == [0, 1, 2, 3, 4]
        assert flusher.batches == [[0, 1, 2, 3, 4]]
        assert clock.now() == 0.0
