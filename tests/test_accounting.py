"""Exactly-once accounting: every item pushed is in exactly one place."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
import structlog
from support import accounted

import wbactor
from wbactor import DropReason, Policy, Push, PushMany
from wbactor.testing import DropRecorder, ManualClock, RecordingFlusher

# -- conservation under concurrent producers -----------------------------------

PRODUCERS = 4
PER_PRODUCER = 5_000


def produce(wb: wbactor.WriteBehind[tuple[int, int]], pid: int) -> None:
    tell = wb.ref.tell
    for seq in range(PER_PRODUCER):
        if seq % 100 == 99:
            wb.push((pid, seq))
        else:
            tell(Push((pid, seq)))


def snapshots_while_producers_push(
    wb: wbactor.WriteBehind[tuple[int, int]],
) -> list[wbactor.Stats]:
    """Run the producers; return the snapshots taken while they ran."""
    go = threading.Barrier(PRODUCERS + 1)
    remaining = [PRODUCERS]
    remaining_lock = threading.Lock()
    all_done = threading.Event()

    def producer(pid: int) -> None:
        try:
            go.wait(5)
            produce(wb, pid)
        finally:  # a failing producer must not leave the sampling loop spinning
            with remaining_lock:
                remaining[0] -= 1
                if not remaining[0]:
                    all_done.set()

    threads = [threading.Thread(target=producer, args=(p,)) for p in range(PRODUCERS)]
    for thread in threads:
        thread.start()
    go.wait(5)
    snapshots: list[wbactor.Stats] = []
    while True:  # sample the counters for as long as the producers run
        running = not all_done.is_set()
        snapshots.append(wb.stats())
        if not running:
            break
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()
    return snapshots


@pytest.mark.parametrize("policy", [Policy.DROP_OLDEST, Policy.DROP_NEWEST])
def test_conservation_holds_at_every_snapshot_while_producers_push(
    clock: ManualClock, policy: Policy
) -> None:
    flusher: RecordingFlusher[tuple[int, int]] = RecordingFlusher()
    drops: DropRecorder[tuple[int, int]] = DropRecorder()
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=10,
        policy=policy,
        on_drop=drops,
        clock=clock,
    )
    reason = DropReason(policy.value)
    wb = wbactor.start(config)
    snapshots = snapshots_while_producers_push(wb)
    final = wb.stop(timeout=10)

    for stats in [*snapshots, final]:
        assert stats.pushed == accounted(stats), stats
        assert stats.depth <= 100, stats
    pushed_counts = [s.pushed for s in snapshots]
    assert pushed_counts == sorted(pushed_counts)

    everything = [(p, s) for p in range(PRODUCERS) for s in range(PER_PRODUCER)]
    flushed, dropped = flusher.items, drops.items
    outcomes = Counter(flushed) + Counter(dropped)
    assert set(outcomes) == set(everything)
    assert max(outcomes.values()) == 1, "an item was accounted twice"
    assert {r for _, r in drops.calls} <= {reason}

    assert final.pushed == PRODUCERS * PER_PRODUCER
    assert final.flushed == len(flushed)
    assert final.dropped_total == len(dropped)
    assert final.dropped.get(reason, 0) == len(dropped)
    assert final.coalesced == 0
    assert final.depth == final.in_flight == 0
    assert all(len(batch) <= 10 for batch in flusher.batches)
    for pid in range(PRODUCERS):  # each producer's items keep their order
        seqs = [s for p, s in flushed if p == pid]
        assert seqs == sorted(seqs)


# -- the dropped mapping --------------------------------------------------------


def test_dropped_holds_only_non_zero_reasons_and_is_read_only(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(
        capacity=2,
        flusher=flusher,
        batch_size=10,
        policy=Policy.DROP_NEWEST,
        clock=clock,
    )
    with wbactor.start(config) as wb:
        empty = wb.stats()
        assert dict(empty.dropped) == {}
        assert empty.dropped_total == 0
        for item in range(5):
            wb.ref.tell(Push(item))
        stats = wb.stats()
        assert dict(stats.dropped) == {DropReason.DROP_NEWEST: 3}
        assert stats.dropped["drop_newest"] == 3  # type: ignore[index]
        assert list(stats.dropped) == ["drop_newest"]
        assert stats.dropped_total == 3
        assert DropReason.DROP_OLDEST not in stats.dropped
        with pytest.raises(TypeError):
            stats.dropped[DropReason.DROP_OLDEST] = 1  # type: ignore[index]
        with pytest.raises(TypeError):
            del stats.dropped[DropReason.DROP_NEWEST]  # type: ignore[attr-defined]
        assert dict(wb.stats().dropped) == {DropReason.DROP_NEWEST: 3}


# -- user callbacks that fail ---------------------------------------------------


def test_on_drop_that_raises_is_logged_and_the_queue_keeps_running(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    seen: list[int] = []

    def on_drop(item: int, reason: DropReason) -> None:
        seen.append(item)
        msg = "on_drop is broken"
        raise RuntimeError(msg)

    config = wbactor.Config(
        capacity=2,
        flusher=flusher,
        batch_size=10,
        policy=Policy.DROP_NEWEST,
        on_drop=on_drop,
        clock=clock,
    )
    with structlog.testing.capture_logs() as logs, wbactor.start(config) as wb:
        for item in range(4):
            wb.ref.tell(Push(item))  # 2 and 3 are dropped; on_drop raises
        wb.push(4)  # dropped too; push() does not raise either
        assert seen == [2, 3, 4]
        assert dict(wb.stats().dropped) == {DropReason.DROP_NEWEST: 3}
        wb.flush(timeout=5)
        wb.ref.tell(Push(5))
        wb.push(6)
        wb.flush(timeout=5)
        stats = wb.stats()
    assert flusher.items == [0, 1, 5, 6]
    assert stats.pushed == 7
    assert stats.flushed == 4
    assert stats.pushed == accounted(stats)
    failures = [e for e in logs if e["event"] == "on_drop_failed"]
    assert len(failures) == 3
    for entry in failures:
        assert entry["log_level"] == "warning"
        assert entry["reason"] == "drop_newest"
        assert "RuntimeError" in entry["error"]


def key_of(item: str) -> Any:
    """A key function that fails for some items."""
    if item.startswith("raise"):
        msg = "no key for this item"
        raise ValueError(msg)
    if item.startswith("list"):
        return [item]  # unhashable
    return item[0]


def test_key_func_failure_drops_the_item_with_key_error(clock: ManualClock) -> None:
    flusher: RecordingFlusher[str] = RecordingFlusher()
    drops: DropRecorder[str] = DropRecorder()
    config = wbactor.Config(
        capacity=10,
        flusher=flusher,
        batch_size=20,
        policy=Policy.COALESCE_BY_KEY,
        key_func=key_of,
        on_drop=drops,
        clock=clock,
    )
    with structlog.testing.capture_logs() as logs, wbactor.start(config) as wb:
        wb.ref.tell(Push("a1"))
        wb.ref.tell(Push("raise1"))
        wb.ref.tell(Push("list1"))
        wb.push("raise2")  # push() does not raise: the item is dropped
        wb.push("list2")
        wb.ref.tell(PushMany(["b1", "raise3", "a2", "list3", "c1"]))
        stats = wb.stats()
        assert stats.pushed == 10
        assert stats.coalesced == 1
        assert dict(stats.dropped) == {DropReason.KEY_ERROR: 6}
        assert stats.depth == 3
        assert stats.pushed == accounted(stats)
        wb.flush(timeout=5)
        wb.push("d1")  # still running
        wb.flush(timeout=5)
    assert flusher.items == ["a2", "b1", "c1", "d1"]
    assert drops.calls == [
        ("raise1", "key_error"),
        ("list1", "key_error"),
        ("raise2", "key_error"),
        ("list2", "key_error"),
        ("raise3", "key_error"),
        ("list3", "key_error"),
    ]
    failures = [e for e in logs if e["event"] == "key_func_failed"]
    assert len(failures) == 6
    assert any("ValueError" in e["error"] for e in failures)
    assert any("TypeError" in e["error"] for e in failures)  # unhashable


# -- on_drop may push ------------------------------------------------------------


def test_on_drop_that_pushes_back_does_not_deadlock_and_is_accounted(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    holder: list[wbactor.WriteBehind[int]] = []
    drops: DropRecorder[int] = DropRecorder()
    pushed: list[int] = []

    def on_drop(item: int, reason: DropReason) -> None:
        drops(item, reason)
        if item < 100:  # re-push once, marked, from inside on_drop
            holder[0].ref.tell(Push(item + 100))
            pushed.append(item + 100)

    config = wbactor.Config(
        capacity=3,
        flusher=flusher,
        batch_size=10,
        policy=Policy.DROP_OLDEST,
        on_drop=on_drop,
        clock=clock,
    )
    wb = wbactor.start(config)
    holder.append(wb)

    def produce() -> None:
        for item in range(10):
            wb.ref.tell(Push(item))
            pushed.append(item)
        wb.ref.tell(PushMany([10, 11]))
        pushed.extend([10, 11])

    thread = threading.Thread(target=produce)
    thread.start()
    thread.join(timeout=5)
    try:
        assert not thread.is_alive(), "deadlocked: on_drop pushed under the lock"
    finally:
        stats = wb.stop(timeout=5)
    assert any(item >= 100 for item in pushed)
    outcomes = Counter(flusher.items) + Counter(drops.items)
    assert outcomes == Counter(pushed)
    assert stats.pushed == len(pushed)
    assert stats.flushed == len(flusher.items)
    assert stats.dropped_total == len(drops.calls)
    assert stats.pushed == accounted(stats)


# -- order and wake-ups ----------------------------------------------------------


def test_items_reach_the_flusher_in_push_order(clock: ManualClock) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(capacity=1_000, flusher=flusher, batch_size=7, clock=clock)
    with wbactor.start(config) as wb:
        for item in range(0, 300, 3):
            wb.ref.tell(Push(item))
            wb.push(item + 1)
            wb.ref.tell(PushMany([item + 2]))
        wb.flush(timeout=5)
        clock.advance(1.0)  # a tick too: order still holds
        wb.ref.tell(PushMany(range(300, 333)))
    assert flusher.items == list(range(333))
    assert all(len(batch) <= 7 for batch in flusher.batches)


def test_pushes_do_not_wake_the_actor_until_a_full_batch_waits(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(
        capacity=1_000, flusher=flusher, batch_size=100, clock=clock
    )
    with wbactor.start(config) as wb:
        mailbox: Any = wb.ref.actor_inbox
        for item in range(99):
            wb.ref.tell(Push(item))
        # White-box: no wake-up is pending for the queue actor.
        assert not mailbox._control
        assert not wb._ledger.batch_ready
        assert wb.stats().depth == 99
        assert flusher.batches == []
        wb.flush(timeout=5)
        assert flusher.batches == [list(range(99))]  # nothing went before
        for item in range(100, 200):
            wb.ref.tell(Push(item))
        # Exactly batch_size queued: a batch goes without any tick.
        assert flusher.wait_for_batches(2) == list(range(99)) + list(range(100, 200))
        assert flusher.batches[1] == list(range(100, 200))
        assert clock.now() == 0.0


def test_a_full_drop_newest_queue_refuses_without_waiting_for_the_lock(
    clock: ManualClock,
) -> None:
    # Four producers flooding a full queue took the lock once per refusal:
    # with a thread reading stats() in a loop, the flusher waited seconds
    # for it. White-box: another thread holds the lock while a producer
    # floods; every refusal is made (on_drop called) all the same, and the
    # next snapshot counts them.
    drops: DropRecorder[int] = DropRecorder()
    config: wbactor.Config[int] = wbactor.Config(
        capacity=3,
        flusher=RecordingFlusher(),
        batch_size=10,
        policy=Policy.DROP_NEWEST,
        on_drop=drops,
        clock=clock,
    )
    with wbactor.start(config) as wb:
        lock: Any = wb._ledger.lock
        taken, release, refused = (
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )

        def hold() -> None:
            with lock:
                taken.set()
                release.wait(5)

        def flood() -> None:
            for item in range(3, 1003):
                wb.ref.tell(Push(item))
            refused.set()

        wb.ref.tell(PushMany([0, 1, 2]))
        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert taken.wait(5)
            producer = threading.Thread(target=flood)
            producer.start()
            assert refused.wait(5), "a refusal waited for the queue's lock"
        finally:
            release.set()
            holder.join(5)
        producer.join(5)
        assert len(drops.items) == 1000
        stats = wb.stats()
        assert stats.dropped == {DropReason.DROP_NEWEST: 1000}
        assert stats.pushed == 1003 == accounted(stats)
        assert stats.depth == 3
