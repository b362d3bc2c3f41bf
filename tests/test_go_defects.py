"""Regression tests: the defects of the Go package that wbactor must not have.

One test per defect of SPEC's list, in its order; other files test the same
rules in more depth.
"""

from __future__ import annotations

import enum
import random
import threading
from collections import Counter, OrderedDict
from typing import Any

import pykka
import pytest
from support import Outcome, conservation_holds, first

import wbactor
from wbactor import DropReason, Policy, Push, PushMany
from wbactor.testing import (
    DropRecorder,
    FlakyFlusher,
    GatedFlusher,
    ManualClock,
    RecordingFlusher,
)


def test_defect_1_coalesce_key_index_never_goes_stale_after_eviction(
    clock: ManualClock,
) -> None:
    """Defect 1: the key index went stale after an eviction, so a later push
    overwrote a different key's item."""
    flusher: RecordingFlusher[tuple[str, int]] = RecordingFlusher()
    drops: DropRecorder[tuple[str, int]] = DropRecorder()
    capacity = 4
    config = wbactor.Config(
        capacity=capacity,
        flusher=flusher,
        batch_size=100,  # nothing flushes until the test says so
        policy=Policy.COALESCE_BY_KEY,
        key_func=first,
        on_drop=drops,
        clock=clock,
    )
    rng = random.Random(1)  # noqa: S311 - a reproducible sequence
    pushes = [("abcdefg"[rng.randrange(7)], n) for n in range(400)]
    model: OrderedDict[str, tuple[str, int]] = OrderedDict()
    evicted: list[tuple[str, int]] = []
    coalesced = 0
    with wbactor.start(config) as wb:
        # The classic sequence first: c evicts a, then b and c replace themselves.
        for item in [("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]:
            wb.push(item)
        wb.ref.tell(Push(("c", 2)))
        wb.ref.tell(Push(("b", 2)))
        wb.flush(timeout=5)
        assert flusher.batches == [[("b", 2), ("c", 2), ("d", 1), ("e", 1)]]
        assert drops.items == [("a", 1)]
        # Then against a model, through every push path.
        earlier = len(drops.calls)
        flusher.batches.clear()
        for i, item in enumerate(pushes):
            if item[0] in model:
                model[item[0]] = item
                coalesced += 1
            else:
                model[item[0]] = item
                if len(model) > capacity:
                    evicted.append(model.popitem(last=False)[1])
            if i % 2:
                wb.ref.tell(Push(item))
            else:
                wb.ref.tell(PushMany([item]))
            assert wb.depth() == len(model)
        stats = wb.stats()
        wb.flush(timeout=5)
    assert flusher.items == list(model.values())
    assert drops.calls[earlier:] == [(item, "drop_oldest") for item in evicted]
    assert stats.coalesced == coalesced + 2
    assert conservation_holds(stats)


def test_defect_2_on_drop_runs_outside_the_lock_so_it_may_push(
    clock: ManualClock,
) -> None:
    """Defect 2: OnDrop ran under the queue lock, so an OnDrop that pushed
    deadlocked."""
    flusher: RecordingFlusher[int] = RecordingFlusher()
    holder: list[wbactor.WriteBehind[int]] = []
    seen: list[tuple[int, DropReason, int]] = []

    def on_drop(item: int, reason: DropReason) -> None:
        wb = holder[0]
        seen.append((item, reason, wb.stats().depth))  # takes the lock
        if item < 100:
            wb.ref.tell(Push(item + 100))
            wb.push(item + 200)

    config = wbactor.Config(
        capacity=2,
        flusher=flusher,
        batch_size=10,
        policy=Policy.DROP_NEWEST,
        on_drop=on_drop,
        clock=clock,
    )
    holder.append(wbactor.start(config))

    def produce() -> None:
        for item in range(4):
            holder[0].ref.tell(Push(item))

    producer = Outcome(produce)
    try:
        producer.join()
        assert producer.error is None
    finally:
        stats = holder[0].stop(timeout=5)
    assert flusher.items == [0, 1]
    assert sorted(item for item, _, _ in seen) == [2, 3, 102, 103, 202, 203]
    assert {reason for _, reason, _ in seen} == {DropReason.DROP_NEWEST}
    assert stats.pushed == 8
    assert dict(stats.dropped) == {DropReason.DROP_NEWEST: 6}
    assert conservation_holds(stats)


def test_defect_3_a_batch_waiting_out_a_backoff_at_stop_reaches_on_drop(
    clock: ManualClock,
) -> None:
    """Defect 3: a batch waiting out a retry backoff at shutdown was lost
    without OnDrop."""
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=10**9)
    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=10,
        flusher=flusher,
        batch_size=2,
        max_retries=-1,
        on_drop=drops,
        clock=clock,
    )
    wb = wbactor.start(config)
    wb.ref.tell(PushMany([1, 2]))
    wb.wait_for(lambda s: s.retries == 1, 5)  # the clock never moves: it waits
    stats = wb.stop(timeout=0.1)
    assert drops.calls == [(1, "closed"), (2, "closed")]
    assert dict(stats.dropped) == {DropReason.CLOSED: 2}
    assert stats.depth == stats.in_flight == 0
    assert conservation_holds(stats)


def test_defect_4_a_push_during_shutdown_is_never_accepted_and_lost(
    clock: ManualClock,
) -> None:
    """Defect 4: a push racing with shutdown could be accepted and never
    flushed."""
    flusher: GatedFlusher[int] = GatedFlusher()
    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=1,
        flusher=flusher,
        batch_size=1,
        policy=Policy.BLOCK,
        on_drop=drops,
        clock=clock,
    )
    wb = wbactor.start(config)
    try:
        wb.push(1)
        assert flusher.entered.wait(5)  # 1 in flight, held
        wb.push(2)  # the queue is full
        blocked = Outcome(lambda: wb.push(3))
        stopper = Outcome(lambda: wb.stop(timeout=5))
        blocked.join()  # released the moment stop closes the queue
        assert isinstance(blocked.error, wbactor.QueueClosedError)
        # Stop is draining now: a tell is refused, and reported, not lost.
        wb.ref.tell(Push(4))
        assert drops.calls == [(4, "closed")]
    finally:
        flusher.release()
    stopper.join()
    stats = stopper.result
    assert isinstance(stats, wbactor.Stats)
    assert flusher.items == [1, 2]
    assert stats.pushed == 3
    assert dict(stats.dropped) == {DropReason.CLOSED: 1}
    assert conservation_holds(stats)
    with pytest.raises(pykka.ActorDeadError):
        wb.ref.tell(Push(5))


def test_defect_4_racing_pushes_are_each_flushed_or_dropped_once() -> None:
    """Defect 4 (racing): every item a tell accepted around stop() is flushed
    or dropped with `closed`, exactly once."""
    for _ in range(5):
        flusher: RecordingFlusher[int] = RecordingFlusher()
        drops: DropRecorder[int] = DropRecorder()
        config = wbactor.Config(
            capacity=1_000_000,
            flusher=flusher,
            batch_size=1_000,
            on_drop=drops,
            clock=ManualClock(),
        )
        wb = wbactor.start(config)
        told: list[int] = []
        going = threading.Event()

        def produce(
            wb: wbactor.WriteBehind[int] = wb,
            told: list[int] = told,
            going: threading.Event = going,
        ) -> None:
            for item in range(10**9):
                try:
                    wb.ref.tell(Push(item))
                except pykka.ActorDeadError:
                    return
                told.append(item)
                if item == 20:
                    going.set()

        producer = Outcome(produce)
        assert going.wait(5)
        wb.stop(timeout=5)
        producer.join()
        assert producer.error is None
        assert Counter(flusher.items) + Counter(drops.items) == Counter(told)
        assert {reason for _, reason in drops.calls} <= {DropReason.CLOSED}
        assert conservation_holds(wb.stats())


def test_defect_5_max_retries_zero_means_no_retry(clock: ManualClock) -> None:
    """Defect 5: `MaxRetries = 0` silently meant 3."""
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=1)
    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=10,
        flusher=flusher,
        batch_size=2,
        max_retries=0,
        on_drop=drops,
        clock=clock,
    )
    with wbactor.start(config) as wb:
        wb.push(1)
        wb.push(2)
        assert drops.wait_for(2) == [(1, "retries_exhausted"), (2, "retries_exhausted")]
        stats = wb.wait_for(lambda s: s.depth == s.in_flight == 0, 5)
        assert flusher.attempts == 1
        assert stats.retries == 1
        assert dict(stats.dropped) == {DropReason.RETRIES_EXHAUSTED: 2}
        clock.advance(60.0)  # any backoff is long past: still no retry
        wb.push(3)
        wb.flush(timeout=5)
        assert flusher.attempts == 2
        assert flusher.items == [3]  # the dropped batch never came back
    assert len(drops.calls) == 2


def test_defect_6_the_final_drain_respects_batch_size(clock: ManualClock) -> None:
    """Defect 6: the final flush ignored BatchSize."""
    flusher: GatedFlusher[int] = GatedFlusher()
    config = wbactor.Config(capacity=1_000, flusher=flusher, batch_size=10, clock=clock)
    wb = wbactor.start(config)
    wb.ref.tell(PushMany(range(10)))
    assert flusher.entered.wait(5)
    wb.ref.tell(PushMany(range(10, 45)))  # queued behind the held batch
    stopper = Outcome(lambda: wb.stop(timeout=5))
    flusher.release()
    stopper.join()
    assert [len(batch) for batch in flusher.batches] == [10, 10, 10, 10, 5]
    assert flusher.items == list(range(45))


def test_defect_7_batching_is_not_eager_so_coalescing_works_under_load(
    clock: ManualClock,
) -> None:
    """Defect 7: batching was eager, so coalescing and batch size did little
    under load."""
    flusher: GatedFlusher[tuple[str, int]] = GatedFlusher()
    config = wbactor.Config(
        capacity=1_000,
        flusher=flusher,
        batch_size=10,
        policy=Policy.COALESCE_BY_KEY,
        key_func=first,
        clock=clock,
    )
    wb = wbactor.start(config)
    try:
        for k in range(10):
            wb.push((f"k{k}", -1))  # a full batch: the flusher holds it
        assert flusher.entered.wait(5)
        latest: dict[str, int] = {}
        for n in range(500):
            key = f"k{n % 10}"
            wb.ref.tell(Push((key, n)))
            latest[key] = n
        stats = wb.stats()
        assert stats.depth <= 10
        assert stats.coalesced >= 490
        assert conservation_holds(stats)
    finally:
        flusher.release()
        final = wb.stop(timeout=5)
    assert len(flusher.items) <= 10 + 10
    assert all(len(batch) <= 10 for batch in flusher.batches)
    store = dict(flusher.items)  # upserts, in flush order
    assert store == latest
    assert final.flushed == len(flusher.items)
    assert final.pushed == 510


class NotAPolicy(enum.Enum):
    DROP_OLDEST = "drop_oldest"


@pytest.mark.parametrize(
    "policy", ["drop_oldest", "spin", 0, None, NotAPolicy.DROP_OLDEST], ids=repr
)
def test_defect_8_an_unknown_policy_fails_in_config(policy: Any) -> None:
    """Defect 8: an unknown policy value spun forever holding the lock."""
    with pytest.raises(wbactor.ConfigError, match="policy"):
        wbactor.Config(capacity=10, flusher=lambda batch: None, policy=policy)
    assert pykka.ActorRegistry.get_all() == []
