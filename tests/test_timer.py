"""Ticks, the timer actor, the clocks, and `oldest_age`."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

import pykka
import pytest
from support import WAIT, Calls, running, sync

import wbactor
from wbactor._messages import Schedule
from wbactor._timer import TimerActor
from wbactor.testing import GatedFlusher, ManualClock, RecordingFlusher

if TYPE_CHECKING:
    from collections.abc import Iterator

INTERVAL = 1.0


class Recorder(pykka.ThreadingActor):
    """Records every message it receives."""

    def __init__(self, received: Calls[Any]) -> None:
        super().__init__()
        self.received = received

    def on_receive(self, message: Any) -> None:
        self.received.append(message)


class TickCounter:
    """Counts the `FlushTick`s delivered to a queue's mailbox."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch
        self._cond = threading.Condition()
        self.count = 0

    def watch(self, wb: wbactor.WriteBehind[Any]) -> None:
        mailbox = wb.ref.actor_inbox
        put = mailbox.put

        def counting_put(envelope: Any, /) -> None:
            put(envelope)
            if isinstance(envelope.message, wbactor.FlushTick):
                with self._cond:
                    self.count += 1
                    self._cond.notify_all()

        self._monkeypatch.setattr(mailbox, "put", counting_put)

    def wait(self, count: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.count >= count, WAIT), self.count


@pytest.fixture
def ticks(monkeypatch: pytest.MonkeyPatch) -> TickCounter:
    return TickCounter(monkeypatch)


def tick(clock: ManualClock, wb: wbactor.WriteBehind[Any], ticks: TickCounter) -> None:
    """Advance one interval; return once the queue has handled the tick."""
    before = ticks.count
    clock.advance(INTERVAL)
    ticks.wait(before + 1)
    sync(wb.ref)


# -- ticks --------------------------------------------------------------------


def test_first_tick_comes_flush_interval_after_start_and_not_before(
    clock: ManualClock, ticks: TickCounter
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(
        capacity=100, flusher=flusher, flush_interval=INTERVAL, clock=clock
    )
    with running(config) as wb:
        ticks.watch(wb)
        wb.ref.tell(wbactor.Push(1))
        clock.advance(INTERVAL - 0.01)
        sync(wb.ref)
        stats = wb.stats()
        assert (stats.depth, stats.in_flight, stats.flushed) == (1, 0, 0)
        assert ticks.count == 0
        assert flusher.batches == []
        clock.advance(0.01)
        assert flusher.wait_for_items(1) == [1]
        ticks.wait(1)
        sync(wb._timer)
        assert ticks.count == 1


def test_ticks_do_not_pile_up_when_the_clock_jumps(
    clock: ManualClock, ticks: TickCounter
) -> None:
    flusher: RecordingFlusher[str] = RecordingFlusher()
    config = wbactor.Config(
        capacity=100, flusher=flusher, flush_interval=INTERVAL, clock=clock
    )
    with running(config) as wb:
        ticks.watch(wb)
        wb.push("a")
        clock.advance(100 * INTERVAL)
        ticks.wait(1)
        sync(wb._timer)  # it has sent everything that was due
        assert ticks.count == 1
        wb.wait_for(lambda s: s.batches == 1, WAIT)
        wb.push("b")
        sync(wb.ref)
        assert wb.stats().depth == 1
        # The next tick is one interval after the one handled, not earlier.
        clock.advance(INTERVAL - 0.01)
        sync(wb.ref)
        assert (ticks.count, wb.stats().depth) == (1, 1)
        clock.advance(0.01)
        ticks.wait(2)
        flusher.wait_for_batches(2)
        sync(wb._timer)
        assert ticks.count == 2
    assert flusher.batches == [["a"], ["b"]]


def test_a_tick_flushes_a_partial_batch(clock: ManualClock) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=10,
        flush_interval=INTERVAL,
        clock=clock,
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany([1, 2, 3]))
        clock.advance(INTERVAL)
        assert flusher.wait_for_batches(1) == [1, 2, 3]
        stats = wb.wait_for(lambda s: s.batches == 1, WAIT)
    assert flusher.batches == [[1, 2, 3]]
    assert (stats.flushed, stats.depth) == (3, 0)


def test_a_tick_with_an_empty_queue_calls_no_flush(
    clock: ManualClock, ticks: TickCounter
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(
        capacity=100, flusher=flusher, flush_interval=INTERVAL, clock=clock
    )
    with running(config) as wb:
        ticks.watch(wb)
        tick(clock, wb, ticks)
        stats = wb.stats()
        assert (stats.in_flight, stats.batches) == (0, 0)
        wb.push(1)
        tick(clock, wb, ticks)
        flusher.wait_for_batches(1)
        stats = wb.wait_for(lambda s: s.batches == 1, WAIT)
    assert flusher.batches == [[1]]
    assert ticks.count == 2


def test_batches_never_exceed_batch_size_even_with_more_queued_on_a_tick(
    clock: ManualClock, ticks: TickCounter
) -> None:
    flusher: GatedFlusher[int] = GatedFlusher()
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=10,
        flush_interval=INTERVAL,
        clock=clock,
    )
    try:
        with running(config) as wb:
            ticks.watch(wb)
            wb.push(0)
            wb.ref.tell(wbactor.Flush())
            assert flusher.entered.wait(WAIT)
            wb.ref.tell(wbactor.PushMany(range(1, 26)))
            assert wb.depth() == 25
            tick(clock, wb, ticks)
            flusher.release()
            tick(clock, wb, ticks)
            wb.flush(WAIT)
            wb.ref.tell(wbactor.PushMany(range(26, 39)))
    finally:
        flusher.release()
    assert flusher.items == list(range(39))
    assert all(1 <= len(batch) <= 10 for batch in flusher.batches)
    assert len(flusher.batches) >= 6


def test_items_a_tick_found_queued_go_out_when_the_batch_in_flight_completes(
    clock: ManualClock, ticks: TickCounter
) -> None:
    flusher: GatedFlusher[str] = GatedFlusher()
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=10,
        flush_interval=INTERVAL,
        clock=clock,
    )
    try:
        with running(config) as wb:
            ticks.watch(wb)
            wb.push("in flight")
            wb.ref.tell(wbactor.Flush())
            assert flusher.entered.wait(WAIT)
            wb.push("queued")
            tick(clock, wb, ticks)  # finds "queued" waiting, one batch in flight
            flusher.release()
            # No further tick: the healthy queue owes "queued" a flush now.
            flusher.wait_for_items(2, timeout=1.0)
    finally:
        flusher.release()
    assert flusher.batches == [["in flight"], ["queued"]]


# -- the timer actor ------------------------------------------------------------


@contextlib.contextmanager
def timer_and_recorder(
    clock: ManualClock,
) -> Iterator[tuple[pykka.ActorRef[Any], pykka.ActorRef[Any], Calls[Any]]]:
    received: Calls[Any] = Calls()
    timer = TimerActor.start(clock)
    recorder = Recorder.start(received)
    try:
        yield timer, recorder, received
    finally:
        timer.stop()
        recorder.stop()


def test_timer_sends_in_deadline_order_and_ties_in_scheduling_order(
    clock: ManualClock,
) -> None:
    with timer_and_recorder(clock) as (timer, recorder, received):
        for deadline, message in [
            (3.0, "c"),
            (1.0, "a"),
            (2.0, "b1"),
            (4.0, "d"),
            (2.0, "b2"),
            (2.0, "b3"),
        ]:
            timer.tell(Schedule(deadline, recorder, message))
        sync(timer)
        clock.advance(0.5)
        sync(timer)
        sync(recorder)
        assert received.values == []
        clock.advance(1.5)
        assert received.wait_len(4) == ["a", "b1", "b2", "b3"]
        sync(timer)
        sync(recorder)
        assert received.values == ["a", "b1", "b2", "b3"]
        clock.advance(5.0)
        assert received.wait_len(6) == ["a", "b1", "b2", "b3", "c", "d"]


def test_timer_sends_a_past_deadline_at_once(clock: ManualClock) -> None:
    clock.advance(10.0)
    with timer_and_recorder(clock) as (timer, recorder, received):
        timer.tell(Schedule(4.0, recorder, "late"))
        timer.tell(Schedule(clock.now(), recorder, "now"))
        assert received.wait_len(2) == ["late", "now"]


def test_timer_skips_a_dead_target_and_keeps_serving(clock: ManualClock) -> None:
    lost: Calls[Any] = Calls()
    dead = Recorder.start(lost)
    dead.stop()
    with timer_and_recorder(clock) as (timer, recorder, received):
        timer.tell(Schedule(1.0, dead, "lost"))
        timer.tell(Schedule(1.0, recorder, "after"))
        sync(timer)
        clock.advance(1.0)
        assert received.wait_len(1) == ["after"]
        assert timer.is_alive()
        timer.tell(Schedule(2.0, dead, "lost again"))
        timer.tell(Schedule(2.0, recorder, "again"))
        sync(timer)
        clock.advance(1.0)
        assert received.wait_len(2) == ["after", "again"]
        assert timer.is_alive()
    assert lost.values == []


# -- clocks ---------------------------------------------------------------------


def test_manual_clock_cannot_go_back() -> None:
    clock = ManualClock(3.0)
    with pytest.raises(ValueError, match="advance"):
        clock.advance(-1)
    assert clock.now() == 3.0


def test_manual_clock_now_moves_only_by_advance() -> None:
    clock = ManualClock(5.0)
    assert clock.now() == 5.0
    clock.advance(2.5)
    assert clock.now() == 7.5
    clock.advance(0)
    assert clock.now() == 7.5


def test_manual_clock_wait_returns_at_once_when_the_deadline_has_passed() -> None:
    clock = ManualClock(10.0)
    condition = threading.Condition()
    returned = threading.Event()

    def waiter() -> None:
        with condition:
            clock.wait(condition, 9.0)
            clock.wait(condition, 10.0)
        returned.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    try:
        assert returned.wait(WAIT)
    finally:
        with condition:
            condition.notify_all()
        thread.join(WAIT)


def test_manual_clock_advance_wakes_a_waiter_whose_deadline_falls_due() -> None:
    clock = ManualClock()
    condition = threading.Condition()
    returned = threading.Event()

    def waiter() -> None:
        with condition:
            clock.wait(condition, 2.0)
        returned.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    try:
        clock.advance(1.0)
        assert not returned.is_set()
        clock.advance(1.0)
        assert returned.wait(WAIT)
    finally:
        with condition:
            condition.notify_all()
        thread.join(WAIT)


def test_monotonic_clock_never_goes_back() -> None:
    clock = wbactor.MonotonicClock()
    readings = [clock.now() for _ in range(1000)]
    assert readings == sorted(readings)
    assert abs(clock.now() - time.monotonic()) < 1.0


def test_monotonic_clock_wait_with_a_past_deadline_returns_promptly() -> None:
    clock = wbactor.MonotonicClock()
    condition = threading.Condition()
    started = time.monotonic()
    with condition:
        clock.wait(condition, clock.now() - 10.0)
        clock.wait(condition, clock.now())
    assert time.monotonic() - started < 0.5


# -- oldest_age -----------------------------------------------------------------


def test_oldest_age_is_zero_when_nothing_is_queued(
    clock: ManualClock, ticks: TickCounter
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(
        capacity=100, flusher=flusher, flush_interval=INTERVAL, clock=clock
    )
    with running(config) as wb:
        ticks.watch(wb)
        assert wb.stats().oldest_age == 0.0
        tick(clock, wb, ticks)
        tick(clock, wb, ticks)
        assert wb.stats().oldest_age == 0.0
        wb.push(1)
        wb.flush(WAIT)
        clock.advance(0.5)
        assert wb.stats().oldest_age == 0.0


def test_oldest_age_tracks_how_long_the_oldest_queued_item_has_waited(
    clock: ManualClock, ticks: TickCounter
) -> None:
    flusher: GatedFlusher[str] = GatedFlusher()
    config = wbactor.Config(
        capacity=100, flusher=flusher, flush_interval=INTERVAL, clock=clock
    )
    try:
        with running(config) as wb:
            ticks.watch(wb)
            # Hold a batch in flight so later items stay queued across ticks.
            wb.push("held")
            wb.ref.tell(wbactor.Flush())
            assert flusher.entered.wait(WAIT)
            for _ in range(5):
                tick(clock, wb, ticks)
            assert wb.stats().oldest_age == 0.0
            wb.push("waiting")
            wb.push("newer")
            tick(clock, wb, ticks)
            tick(clock, wb, ticks)
            stats = wb.stats()
            assert stats.depth == 2
            assert 1 * INTERVAL <= stats.oldest_age <= 3 * INTERVAL
            flusher.release()
            wb.flush(WAIT)
            assert wb.stats().oldest_age == 0.0
    finally:
        flusher.release()
    assert flusher.items == ["held", "waiting", "newer"]
