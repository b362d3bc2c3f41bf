"""Hostile input and misuse not covered elsewhere: the queue keeps running.

Covered in other modules: bad `Config` values and types (test_config.py),
`key_func` raising or unhashable (test_accounting.py), `on_drop` raising or
pushing back (test_accounting.py, test_reentry.py), a flusher returning a
value, mutating its batch or raising `KeyboardInterrupt`/`SystemExit`
(test_supervision.py), `stop()`/`flush()` from inside the queue
(test_reentry.py), unknown messages (test_logs.py).
"""

from __future__ import annotations

import threading

import pytest
from structlog.testing import capture_logs
from support import WAIT, Outcome, conservation_holds, running

import wbactor
from wbactor import DropReason, Policy, Push, PushMany
from wbactor.testing import DropRecorder, FlakyFlusher, ManualClock, RecordingFlusher


def test_a_slow_on_drop_does_not_hold_up_other_producers(clock: ManualClock) -> None:
    # on_drop runs on the thread whose push dropped the item, outside any
    # lock: while it waits, another producer's pushes (and drops) go on.
    inside = threading.Event()
    let_go = threading.Event()
    drops: DropRecorder[int] = DropRecorder()

    def on_drop(item: int, reason: DropReason) -> None:
        drops(item, reason)
        if item == 1:
            inside.set()
            assert let_go.wait(WAIT)

    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(
        capacity=1,
        flusher=flusher,
        batch_size=10,
        policy=Policy.DROP_OLDEST,
        on_drop=on_drop,
        clock=clock,
    )
    with running(config) as wb:
        wb.push(1)
        slow = Outcome(lambda: wb.ref.tell(Push(2)))  # evicts 1: on_drop waits
        assert inside.wait(WAIT)
        other = Outcome(lambda: wb.ref.tell(PushMany([3, 4])))  # evicts 2, then 3
        other.join()  # finished while the first on_drop still waits
        assert not slow.returned.is_set()
        let_go.set()
        slow.join()
        wb.flush(WAIT)
        stats = wb.stats()
    assert other.error is None
    assert slow.error is None
    assert flusher.items == [4]
    assert sorted(drops.items) == [1, 2, 3]
    assert (stats.pushed, stats.flushed, stats.dropped) == (4, 1, {"drop_oldest": 3})


@pytest.mark.parametrize(
    "error", [GeneratorExit, StopIteration, MemoryError], ids=lambda e: e.__name__
)
def test_a_flusher_raising_odd_exceptions_is_retried(
    clock: ManualClock, error: type[BaseException]
) -> None:
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=1, error=error)
    config = wbactor.Config(
        capacity=10, flusher=flusher, batch_size=2, flush_interval=100.0, clock=clock
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(PushMany([1, 2]))
        wb.wait_for(lambda s: s.retries == 1, WAIT)
        clock.advance(wbactor.default_backoff(1))
        assert flusher.wait_for_items(2) == [1, 2]
        stats = wb.wait_for(lambda s: s.flushed == 2, WAIT)
    assert (stats.retries, stats.restarts, stats.dropped) == (1, 1, {})
    [failed] = [e for e in logs if e["event"] == "flush_failed"]
    assert failed["error"].startswith(error.__name__)


def test_a_huge_item_passes_through_untouched_and_is_never_logged(
    clock: ManualClock,
) -> None:
    huge = b"\xab" * (50 * 1024 * 1024)  # 50 MB
    flusher: RecordingFlusher[bytes] = RecordingFlusher()
    drops: DropRecorder[bytes] = DropRecorder()
    config = wbactor.Config(
        capacity=1, flusher=flusher, batch_size=1, on_drop=drops, clock=clock
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(Push(huge))
        [flushed] = flusher.wait_for_items(1)
        wb.flush(WAIT)
    assert flushed is huge  # not copied, not changed
    assert not drops.calls
    assert all(len(repr(entry)) < 10_000 for entry in logs)


@pytest.mark.parametrize(
    "policy", [Policy.DROP_OLDEST, Policy.DROP_NEWEST, Policy.COALESCE_BY_KEY]
)
def test_a_flusher_may_push_into_its_own_queue(
    clock: ManualClock, policy: Policy
) -> None:
    # A flusher that enqueues follow-up writes: accepted under the policy,
    # flushed in a later batch, and nothing deadlocks.
    flushed: list[list[int]] = []
    wb: wbactor.WriteBehind[int]

    def flush(batch: list[int]) -> None:
        flushed.append(list(batch))
        for item in batch:
            if item < 100:
                wb.ref.tell(Push(item + 100))
        if batch[0] < 100:
            wb.push(batch[0] + 1000)

    config = wbactor.Config(
        capacity=10,
        flusher=flush,
        batch_size=3,
        policy=policy,
        key_func=lambda item: item,
        clock=clock,
    )
    with running(config) as wb:
        wb.ref.tell(PushMany([1, 2, 3]))
        wb.wait_for(lambda s: s.flushed >= 3, WAIT)
        wb.flush(WAIT)
        stats = wb.stop(timeout=WAIT)
    assert flushed[0] == [1, 2, 3]
    assert sorted(item for batch in flushed[1:] for item in batch) == [
        101,
        102,
        103,
        1001,
    ]
    assert (stats.pushed, stats.flushed, stats.dropped) == (7, 7, {})
    assert conservation_holds(stats)
