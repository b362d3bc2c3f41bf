"""Calls back into the queue from its own actors: clear errors, no deadlock."""

from __future__ import annotations

import threading

import pytest
from support import WAIT

import wbactor
from wbactor.testing import ManualClock, RecordingFlusher


@pytest.mark.parametrize("method", ["stop", "flush"])
def test_stop_or_flush_from_inside_the_flusher_raises_runtime_error(
    clock: ManualClock, method: str
) -> None:
    errors: list[BaseException] = []
    called = threading.Event()
    wb: wbactor.WriteBehind[int]

    def flusher(batch: list[int]) -> None:
        try:
            getattr(wb, method)()
        except RuntimeError as error:
            errors.append(error)
        called.set()

    wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher, clock=clock))
    wb.push(1)
    clock.advance(1.0)
    assert called.wait(WAIT)
    stats = wb.stop(timeout=WAIT)
    assert len(errors) == 1
    assert "would wait for itself" in str(errors[0])
    assert stats.flushed == 1


def test_on_drop_calling_stop_on_an_actor_thread_raises_runtime_error(
    clock: ManualClock,
) -> None:
    errors: list[BaseException] = []
    wb: wbactor.WriteBehind[int]

    def on_drop(item: int, reason: wbactor.DropReason) -> None:
        try:
            wb.stop()
        except RuntimeError as error:
            errors.append(error)

    def failing(batch: list[int]) -> None:
        raise ValueError

    wb = wbactor.start(
        wbactor.Config(
            capacity=10, flusher=failing, max_retries=0, on_drop=on_drop, clock=clock
        )
    )
    wb.push(1)
    clock.advance(1.0)  # the only attempt fails: dropped on the supervisor's thread
    wb.wait_for(lambda s: s.dropped_total == 1, WAIT)
    stats = wb.stop(timeout=WAIT)
    assert len(errors) == 1
    assert stats.dropped == {wbactor.DropReason.RETRIES_EXHAUSTED: 1}


def test_a_blocking_push_from_inside_the_flusher_times_out_instead_of_deadlocking(
    clock: ManualClock,
) -> None:
    outcomes: list[str] = []
    recorder: RecordingFlusher[int] = RecordingFlusher()
    wb: wbactor.WriteBehind[int]

    def flusher(batch: list[int]) -> None:
        if batch == [1]:
            wb.ref.tell(wbactor.Push(2))  # fills the queue: capacity 1
            try:
                wb.push(3)  # no room, and only this thread could make some
            except wbactor.PushTimeoutError:
                outcomes.append("push_timeout")
        recorder.flush(batch)

    wb = wbactor.start(
        wbactor.Config(
            capacity=1, flusher=flusher, policy=wbactor.Policy.BLOCK, clock=clock
        )
    )
    wb.push(1)
    clock.advance(1.0)
    recorder.wait_for_items(1)
    stats = wb.stop(timeout=WAIT)
    assert outcomes == ["push_timeout"]
    assert recorder.items == [1, 2]
    assert (stats.pushed, stats.flushed) == (2, 2)


def test_an_on_drop_raising_a_base_exception_on_an_actor_thread_is_swallowed(
    clock: ManualClock,
) -> None:
    def on_drop(item: int, reason: wbactor.DropReason) -> None:
        raise KeyboardInterrupt

    def failing(batch: list[int]) -> None:
        raise ValueError

    recorder: RecordingFlusher[int] = RecordingFlusher()
    calls = 0

    def flusher(batch: list[int]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            failing(batch)
        recorder.flush(batch)

    wb = wbactor.start(
        wbactor.Config(
            capacity=10, flusher=flusher, max_retries=0, on_drop=on_drop, clock=clock
        )
    )
    wb.push(1)
    clock.advance(1.0)  # fails; dropped on the supervisor's thread
    wb.wait_for(lambda s: s.dropped_total == 1, WAIT)
    wb.push(2)
    wb.flush(WAIT)  # the supervisor and the queue still run
    stats = wb.stop(timeout=WAIT)
    assert recorder.items == [2]
    assert stats.dropped == {wbactor.DropReason.RETRIES_EXHAUSTED: 1}


def test_an_on_drop_raising_a_base_exception_on_a_producer_thread_propagates(
    clock: ManualClock,
) -> None:
    def on_drop(item: int, reason: wbactor.DropReason) -> None:
        raise KeyboardInterrupt

    wb = wbactor.start(
        wbactor.Config(capacity=1, flusher=lambda b: None, on_drop=on_drop, clock=clock)
    )
    wb.push(1)
    with pytest.raises(KeyboardInterrupt):
        wb.push(2)  # evicts 1: the producer's own Ctrl-C is not swallowed
    stats = wb.stop(timeout=WAIT)
    assert stats.dropped == {wbactor.DropReason.DROP_OLDEST: 1}
    assert stats.flushed == 1
