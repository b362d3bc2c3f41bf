"""The overflow policies, through a running queue.

Unless a test says otherwise, nothing flushes while the queue is filled:
`batch_size` is above `capacity` (no full batch is ever waiting) and the
manual clock is never advanced (no tick), so the queue holds exactly what the
policy let in until the test calls `wb.flush()` or `wb.stop()`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from support import conservation_holds, first

import wbactor
from wbactor import DropReason, Policy, Push, PushMany
from wbactor.testing import DropRecorder, GatedFlusher, ManualClock, RecordingFlusher

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

T = TypeVar("T")

CAPACITY = 3
BATCH_SIZE = 10  # > CAPACITY: a full batch never waits


def start(
    clock: ManualClock,
    flusher: RecordingFlusher[T],
    drops: DropRecorder[T],
    policy: Policy,
    *,
    key_func: Callable[[T], Hashable] | None = None,
    **extra: Any,
) -> wbactor.WriteBehind[T]:
    config: wbactor.Config[T] = wbactor.Config(
        capacity=CAPACITY,
        flusher=flusher,
        batch_size=BATCH_SIZE,
        policy=policy,
        key_func=key_func,
        on_drop=drops,
        clock=clock,
        **extra,
    )
    return wbactor.start(config)


# -- DROP_OLDEST --------------------------------------------------------------


def test_drop_oldest_evicts_the_oldest_and_reports_it(clock: ManualClock) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    drops: DropRecorder[int] = DropRecorder()
    with start(clock, flusher, drops, Policy.DROP_OLDEST) as wb:
        for item in range(1, 6):
            wb.ref.tell(Push(item))
            assert wb.stats().depth <= CAPACITY
        assert drops.calls == [(1, "drop_oldest"), (2, "drop_oldest")]
        assert all(type(reason) is DropReason for _, reason in drops.calls)
        assert flusher.batches == []
        wb.flush(timeout=5)
        assert flusher.batches == [[3, 4, 5]]
        stats = wb.stats()
    assert stats.pushed == 5
    assert stats.flushed == 3
    assert dict(stats.dropped) == {DropReason.DROP_OLDEST: 2}
    assert conservation_holds(stats)


def test_drop_oldest_applies_to_push_too(clock: ManualClock) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    drops: DropRecorder[int] = DropRecorder()
    with start(clock, flusher, drops, Policy.DROP_OLDEST) as wb:
        for item in range(1, 6):
            wb.push(item)
        assert wb.depth() == CAPACITY
        wb.flush(timeout=5)
    assert drops.calls == [(1, "drop_oldest"), (2, "drop_oldest")]
    assert flusher.items == [3, 4, 5]


# -- DROP_NEWEST --------------------------------------------------------------


def test_drop_newest_refuses_the_incoming_item_and_reports_it(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    drops: DropRecorder[int] = DropRecorder()
    with start(clock, flusher, drops, Policy.DROP_NEWEST) as wb:
        for item in range(1, 6):
            wb.ref.tell(Push(item))
            assert wb.stats().depth <= CAPACITY
        assert drops.calls == [(4, "drop_newest"), (5, "drop_newest")]
        wb.flush(timeout=5)
        assert flusher.batches == [[1, 2, 3]]
        stats = wb.stats()
    assert stats.pushed == 5
    assert dict(stats.dropped) == {DropReason.DROP_NEWEST: 2}
    assert conservation_holds(stats)


# -- BLOCK ----------------------------------------------------------------------


def test_block_push_times_out_without_counting_or_dropping_the_item(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    drops: DropRecorder[int] = DropRecorder()
    with start(clock, flusher, drops, Policy.BLOCK) as wb:
        for item in range(1, 4):
            wb.push(item, timeout=0.05)
        with pytest.raises(wbactor.PushTimeoutError):
            wb.push(4, timeout=0.05)
        stats = wb.stats()
        assert stats.pushed == 3
        assert stats.depth == CAPACITY
        assert dict(stats.dropped) == {}
        assert drops.calls == []
        wb.flush(timeout=5)
    assert flusher.items == [1, 2, 3]
    assert drops.calls == []


def test_push_timeout_error_is_a_timeout_error() -> None:
    assert issubclass(wbactor.PushTimeoutError, TimeoutError)
    assert issubclass(wbactor.PushTimeoutError, wbactor.WriteBehindError)


def test_block_tell_drops_with_push_timeout_after_block_timeout(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    drops: DropRecorder[int] = DropRecorder()
    with start(clock, flusher, drops, Policy.BLOCK, block_timeout=0.05) as wb:
        for item in range(1, 5):
            wb.ref.tell(Push(item))  # the 4th waits 0.05 s, then is dropped
        assert drops.calls == [(4, "push_timeout")]
        stats = wb.stats()
        assert stats.pushed == 4
        assert stats.depth == CAPACITY
        assert dict(stats.dropped) == {DropReason.PUSH_TIMEOUT: 1}
        assert conservation_holds(stats)
        wb.flush(timeout=5)
    assert flusher.items == [1, 2, 3]


def test_block_push_proceeds_once_a_flush_makes_room(clock: ManualClock) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    drops: DropRecorder[int] = DropRecorder()
    with start(clock, flusher, drops, Policy.BLOCK) as wb:
        for item in range(1, 4):
            wb.push(item)
        started = threading.Event()
        returned = threading.Event()
        errors: list[BaseException] = []

        def producer() -> None:
            started.set()
            try:
                wb.push(4, timeout=5)
            except BaseException as error:  # noqa: BLE001 - reported by the test
                errors.append(error)
            returned.set()

        thread = threading.Thread(target=producer)
        thread.start()
        assert started.wait(5)
        # The queue is full and nothing flushes: the push must be waiting.
        assert not returned.wait(0.05)
        assert wb.stats().pushed == 3
        wb.flush(timeout=5)  # takes 1, 2, 3 into a batch: room for 4
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert errors == []
        assert wb.stats().pushed == 4
    assert flusher.items == [1, 2, 3, 4]
    assert flusher.batches[0] == [1, 2, 3]
    assert drops.calls == []


# -- COALESCE_BY_KEY -------------------------------------------------------------


def test_coalesce_replaces_in_place_keeping_the_first_position(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[tuple[str, int]] = RecordingFlusher()
    drops: DropRecorder[tuple[str, int]] = DropRecorder()
    with start(clock, flusher, drops, Policy.COALESCE_BY_KEY, key_func=first) as wb:
        wb.ref.tell(Push(("a", 1)))
        wb.ref.tell(Push(("b", 1)))
        wb.ref.tell(Push(("a", 2)))
        wb.push(("a", 3))
        stats = wb.stats()
        assert stats.depth == 2
        assert stats.coalesced == 2
        assert dict(stats.dropped) == {}
        assert conservation_holds(stats)
        wb.flush(timeout=5)
    assert flusher.batches == [[("a", 3), ("b", 1)]]
    assert drops.calls == []


def test_coalesce_when_full_is_not_a_drop_but_a_new_key_evicts_the_oldest(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[tuple[str, int]] = RecordingFlusher()
    drops: DropRecorder[tuple[str, int]] = DropRecorder()
    with start(clock, flusher, drops, Policy.COALESCE_BY_KEY, key_func=first) as wb:
        for item in [("a", 1), ("b", 1), ("c", 1)]:
            wb.ref.tell(Push(item))
        wb.ref.tell(Push(("b", 2)))  # full, but the key is queued: replaced
        assert drops.calls == []
        assert wb.stats().coalesced == 1
        wb.ref.tell(Push(("d", 1)))  # full, a new key: the oldest goes
        assert drops.calls == [(("a", 1), "drop_oldest")]
        stats = wb.stats()
        assert stats.depth == CAPACITY
        assert stats.coalesced == 1
        assert dict(stats.dropped) == {DropReason.DROP_OLDEST: 1}
        assert conservation_holds(stats)
        wb.flush(timeout=5)
    assert flusher.items == [("b", 2), ("c", 1), ("d", 1)]


# -- PushMany -------------------------------------------------------------------

_PUSH_MANY_CASES: list[tuple[Policy, list[Any], list[Any], list[tuple[Any, str]]]] = [
    (
        Policy.DROP_OLDEST,
        [1, 2, 3, 4, 5],
        [3, 4, 5],
        [(1, "drop_oldest"), (2, "drop_oldest")],
    ),
    (
        Policy.DROP_NEWEST,
        [1, 2, 3, 4, 5],
        [1, 2, 3],
        [(4, "drop_newest"), (5, "drop_newest")],
    ),
    (
        Policy.BLOCK,
        [1, 2, 3, 4, 5],
        [1, 2, 3],
        [(4, "push_timeout"), (5, "push_timeout")],
    ),
    (
        Policy.COALESCE_BY_KEY,
        [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 2), ("d", 1), ("c", 2)],
        [("b", 2), ("c", 2), ("d", 1)],  # in place: c keeps its position
        [(("a", 2), "drop_oldest")],
    ),
]


@pytest.mark.parametrize(
    ("policy", "items", "flushed", "dropped"),
    _PUSH_MANY_CASES,
    ids=[case[0].name for case in _PUSH_MANY_CASES],
)
def test_push_many_applies_the_policy_item_by_item_in_order(
    clock: ManualClock,
    policy: Policy,
    items: list[Any],
    flushed: list[Any],
    dropped: list[tuple[Any, str]],
) -> None:
    flusher: RecordingFlusher[Any] = RecordingFlusher()
    drops: DropRecorder[Any] = DropRecorder()
    key_func = first if policy is Policy.COALESCE_BY_KEY else None
    extra: dict[str, Any] = {"block_timeout": 0.05} if policy is Policy.BLOCK else {}
    with start(clock, flusher, drops, policy, key_func=key_func, **extra) as wb:
        wb.ref.tell(PushMany(iter(items)))  # any iterable, taken once
        stats = wb.stats()
        assert stats.depth == CAPACITY
        assert stats.pushed == len(items)
        assert conservation_holds(stats)
        assert drops.calls == dropped
        wb.flush(timeout=5)
    assert flusher.batches == [flushed]
    assert drops.calls == dropped


@pytest.mark.parametrize(
    "policy", [Policy.DROP_OLDEST, Policy.DROP_NEWEST, Policy.COALESCE_BY_KEY]
)
def test_depth_never_exceeds_capacity(clock: ManualClock, policy: Policy) -> None:
    flusher: RecordingFlusher[tuple[str, int]] = RecordingFlusher()
    drops: DropRecorder[tuple[str, int]] = DropRecorder()
    key_func = first if policy is Policy.COALESCE_BY_KEY else None
    with start(clock, flusher, drops, policy, key_func=key_func) as wb:
        for i in range(50):
            item = (f"k{i % 7}", i)
            if i % 3 == 0:
                wb.ref.tell(Push(item))
            elif i % 3 == 1:
                wb.push(item)
            else:
                wb.ref.tell(PushMany([item, (f"k{i % 5}", -i)]))
            stats = wb.stats()
            assert stats.depth <= CAPACITY
            assert wb.depth() == stats.depth
            assert conservation_holds(stats)
        wb.flush(timeout=5)
    assert all(len(batch) <= CAPACITY for batch in flusher.batches)


def test_the_batch_in_flight_does_not_count_toward_capacity(
    clock: ManualClock,
) -> None:
    flusher: GatedFlusher[int] = GatedFlusher()
    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=CAPACITY,
        flusher=flusher,
        batch_size=2,
        on_drop=drops,
        clock=clock,
    )
    wb = wbactor.start(config)
    try:
        wb.push(1)
        wb.push(2)  # a full batch: it goes in flight and the flusher holds it
        assert flusher.entered.wait(5)
        assert wb.stats().in_flight == 2
        for item in range(3, 3 + CAPACITY):
            wb.push(item)
        stats = wb.stats()
        assert (stats.in_flight, stats.depth) == (2, CAPACITY)
        assert drops.calls == []
        wb.push(99)  # now the queue itself is full
        assert drops.calls == [(3, "drop_oldest")]
        assert wb.stats().depth == CAPACITY
    finally:
        flusher.release()
        stats = wb.stop(timeout=5)
    assert flusher.items == [1, 2, 4, 5, 99]
    assert stats.flushed == 5
    assert conservation_holds(stats)
