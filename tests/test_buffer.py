from __future__ import annotations

from typing import Any, TypeVar

import pytest
from support import Admitted

from wbactor import DropReason, Policy, PushTimeoutError
from wbactor._buffer import PolicyBuffer

T = TypeVar("T")

OLDEST = DropReason.DROP_OLDEST
NEWEST = DropReason.DROP_NEWEST
CLOSED = DropReason.CLOSED


def conserved(buf: PolicyBuffer[T]) -> PolicyBuffer[T]:
    """Assert the SPEC's conservation law on a snapshot; return `buf`."""
    s = buf.stats(0.0)
    assert s.pushed == (
        s.flushed + s.coalesced + sum(s.dropped.values()) + s.depth + s.in_flight
    )
    assert s.depth == len(buf) <= buf.capacity
    return buf


def dropped(buf: PolicyBuffer[T]) -> dict[DropReason, int]:
    return {reason: n for reason, n in buf.dropped.items() if n}


def filled(policy: Policy, items: list[int], capacity: int = 3) -> Any:
    """A queue under `policy` that admitted `items`, as pushes run (`Admitted`)."""
    buf: Any = Admitted(capacity, policy)
    for item in items:
        assert buf.push(item) is None
        conserved(buf)
    return buf


def keyed(pairs: list[tuple[str, int]], capacity: int = 3) -> PolicyBuffer[str]:
    """A COALESCE_BY_KEY buffer fed `(key, n)` pairs as items "key<n>"."""
    buf: PolicyBuffer[str] = PolicyBuffer(capacity, Policy.COALESCE_BY_KEY)
    for key, n in pairs:
        buf.push_keyed(key, f"{key}{n}")
        conserved(buf)
    return buf


# -- DROP_OLDEST --------------------------------------------------------------


def test_drop_oldest_evicts_the_oldest_and_returns_it() -> None:
    buf = filled(Policy.DROP_OLDEST, [1, 2, 3])
    assert buf.push(4) == (1,)
    conserved(buf)
    assert buf.push(5) == (2,)
    conserved(buf)
    assert buf.queued() == [3, 4, 5]
    assert buf.overflow_reason is OLDEST
    assert dropped(buf) == {OLDEST: 2}
    assert buf.pushed == 5
    assert (buf.head, buf.tail) == (2, 5)


def test_drop_oldest_below_capacity_drops_nothing() -> None:
    buf = filled(Policy.DROP_OLDEST, [1, 2])
    assert buf.queued() == [1, 2]
    assert dropped(buf) == {}
    assert not buf.full()
    assert buf.push(3) is None
    assert buf.full()


def test_capacity_one_drop_oldest_keeps_only_the_newest() -> None:
    buf = filled(Policy.DROP_OLDEST, [1], capacity=1)
    assert buf.push(2) == (1,)
    assert buf.push(3) == (2,)
    assert conserved(buf).queued() == [3]


# -- DROP_NEWEST --------------------------------------------------------------


def test_drop_newest_returns_the_new_item_and_keeps_the_old() -> None:
    buf = filled(Policy.DROP_NEWEST, [1, 2, 3])
    assert buf.push(4) == (4,)
    conserved(buf)
    assert buf.push(5) == (5,)
    conserved(buf)
    assert buf.queued() == [1, 2, 3]
    assert buf.overflow_reason is NEWEST
    assert dropped(buf) == {NEWEST: 2}
    assert buf.rejected == 2
    assert buf.pushed == 5
    assert (buf.head, buf.tail) == (0, 3)


def test_drop_newest_accepts_again_once_room_is_made() -> None:
    buf = filled(Policy.DROP_NEWEST, [1, 2, 3])
    assert buf.push(4) == (4,)
    assert buf.take(1) == [1]
    assert buf.push(5) is None
    assert conserved(buf).queued() == [2, 3, 5]


# -- BLOCK ----------------------------------------------------------------------


def test_block_raises_push_timeout_when_full_and_changes_nothing() -> None:
    buf = filled(Policy.BLOCK, [1, 2, 3])
    with pytest.raises(PushTimeoutError):
        buf.push(4)
    conserved(buf)
    assert buf.queued() == [1, 2, 3]
    assert buf.pushed == 3
    assert dropped(buf) == {}


def test_block_accepts_once_room_is_made() -> None:
    buf = filled(Policy.BLOCK, [1, 2, 3])
    buf.take(2)
    assert buf.push(4) is None
    assert buf.push(5) is None
    with pytest.raises(PushTimeoutError):
        buf.push(6)
    assert conserved(buf).queued() == [3, 4, 5]


# -- COALESCE_BY_KEY ------------------------------------------------------------


def test_coalesce_replaces_in_place_keeping_position() -> None:
    buf = keyed([("a", 1), ("b", 1), ("c", 1)])
    assert buf.push_keyed("b", "b2") is None
    conserved(buf)
    assert buf.queued() == ["a1", "b2", "c1"]
    assert buf.coalesced == 1
    assert dropped(buf) == {}
    assert buf.pushed == 4
    assert (buf.head, buf.tail) == (0, 3)


def test_coalesce_when_full_drops_nothing() -> None:
    buf = keyed([("a", 1), ("b", 1), ("c", 1), ("a", 2), ("c", 2), ("a", 3)])
    assert buf.queued() == ["a3", "b1", "c2"]
    assert buf.coalesced == 3
    assert dropped(buf) == {}


def test_coalesce_new_key_when_full_evicts_the_oldest() -> None:
    buf = keyed([("a", 1), ("b", 1), ("c", 1)])
    assert buf.push_keyed("d", "d1") == ("a1",)
    conserved(buf)
    assert buf.queued() == ["b1", "c1", "d1"]
    assert buf.overflow_reason is OLDEST
    assert dropped(buf) == {OLDEST: 1}


def test_coalesce_overshoot_entered_past_the_ledger_is_evicted_oldest_first() -> None:
    # The inbox enters new keys into by_key itself, then evicts any overshoot.
    buf = keyed([("a", 1), ("b", 1), ("c", 1)])
    buf.by_key["d"] = "d1"
    buf.by_key["e"] = "e1"
    assert buf.evict_overflow() == ["a1", "b1"]
    conserved(buf)
    assert buf.queued() == ["c1", "d1", "e1"]
    assert dropped(buf) == {OLDEST: 2}
    assert buf.evict_overflow() == []
    assert buf.push_keyed("d", "d2") is None  # the index is still exact
    assert buf.queued() == ["c1", "d2", "e1"]


def test_coalesce_key_index_stays_exact_after_eviction() -> None:
    # Go defect 1: after an eviction the key index went stale, so re-pushing
    # "c" overwrote another key's item.
    buf = keyed([("a", 1), ("b", 1), ("c", 1)])
    assert buf.push_keyed("d", "d1") == ("a1",)
    assert buf.push_keyed("c", "c2") is None
    conserved(buf)
    assert buf.queued() == ["b1", "c2", "d1"]
    assert buf.coalesced == 1
    assert buf.push_keyed("d", "d2") is None
    assert buf.push_keyed("b", "b2") is None
    assert buf.queued() == ["b2", "c2", "d2"]
    # the evicted key is new again: it evicts the oldest, "b"
    assert buf.push_keyed("a", "a2") == ("b2",)
    assert conserved(buf).queued() == ["c2", "d2", "a2"]
    assert buf.coalesced == 3
    assert dropped(buf) == {OLDEST: 2}


def test_coalesce_key_index_stays_exact_after_many_evictions() -> None:
    buf: PolicyBuffer[str] = PolicyBuffer(3, Policy.COALESCE_BY_KEY)
    for n in range(20):
        buf.push_keyed(n, f"v{n}")
    for n in (17, 18, 19):
        assert buf.push_keyed(n, f"w{n}") is None
        conserved(buf)
    assert buf.queued() == ["w17", "w18", "w19"]
    assert dropped(buf) == {OLDEST: 17}


def test_coalesce_key_index_stays_exact_after_take_and_drop_queued() -> None:
    buf = keyed([("a", 1), ("b", 1), ("c", 1)])
    assert buf.take(1) == ["a1"]
    # "a" is in flight, no longer queued: a new entry at the tail
    assert buf.push_keyed("a", "a2") is None
    assert buf.push_keyed("c", "c2") is None
    assert conserved(buf).queued() == ["b1", "c2", "a2"]
    assert buf.coalesced == 1
    assert buf.drop_queued(CLOSED) == ["b1", "c2", "a2"]
    assert buf.push_keyed("b", "b3") is None
    assert conserved(buf).queued() == ["b3"]
    assert buf.coalesced == 1


def test_coalesce_take_returns_items_oldest_first() -> None:
    buf = keyed([("a", 1), ("b", 1), ("c", 1), ("a", 2)])
    assert buf.take(2) == ["a2", "b1"]
    assert conserved(buf).queued() == ["c1"]


# -- take / complete / drop ----------------------------------------------------


@pytest.mark.parametrize(
    "policy", [Policy.DROP_OLDEST, Policy.DROP_NEWEST, Policy.BLOCK]
)
def test_take_moves_the_oldest_n_into_flight(policy: Policy) -> None:
    buf = filled(policy, [1, 2, 3])
    assert buf.take(2) == [1, 2]
    assert buf.in_flight == [1, 2]
    assert conserved(buf).queued() == [3]
    s = buf.stats(0.0)
    assert (s.depth, s.in_flight) == (1, 2)


def test_take_more_than_queued_takes_all() -> None:
    buf = filled(Policy.DROP_OLDEST, [1, 2])
    assert buf.take(10) == [1, 2]
    assert conserved(buf).queued() == []
    assert len(buf) == 0


def test_only_one_batch_may_be_in_flight() -> None:
    buf = filled(Policy.DROP_OLDEST, [1, 2, 3])
    buf.take(1)
    with pytest.raises(RuntimeError):
        buf.take(1)
    assert buf.in_flight == [1]
    assert conserved(buf).queued() == [2, 3]
    assert buf.complete() == 1
    assert buf.take(5) == [2, 3]


def test_in_flight_items_do_not_count_against_capacity() -> None:
    buf = filled(Policy.DROP_NEWEST, [1, 2, 3])
    buf.take(3)
    assert buf.push(4) is None
    assert buf.push(5) is None
    assert buf.push(6) is None
    assert buf.push(7) == (7,)
    assert conserved(buf).queued() == [4, 5, 6]
    assert buf.in_flight == [1, 2, 3]


def test_complete_counts_the_batch_as_flushed() -> None:
    buf = filled(Policy.DROP_OLDEST, [1, 2, 3])
    buf.take(2)
    assert buf.complete() == 2
    conserved(buf)
    assert buf.in_flight is None
    assert (buf.flushed, buf.batches) == (2, 1)
    buf.take(5)
    assert buf.complete() == 1
    assert (buf.flushed, buf.batches) == (3, 2)
    assert buf.stats(0.0).pushed == buf.stats(0.0).flushed == 3


def test_complete_without_a_batch_is_a_no_op() -> None:
    buf = filled(Policy.DROP_OLDEST, [1])
    assert buf.complete() == 0
    assert (buf.flushed, buf.batches) == (0, 0)
    conserved(buf)


def test_drop_in_flight_drops_the_batch_with_the_reason() -> None:
    buf = filled(Policy.DROP_OLDEST, [1, 2, 3])
    buf.take(2)
    assert buf.drop_in_flight(DropReason.RETRIES_EXHAUSTED) == [1, 2]
    conserved(buf)
    assert buf.in_flight is None
    assert dropped(buf) == {DropReason.RETRIES_EXHAUSTED: 2}
    assert (buf.flushed, buf.batches) == (0, 0)
    assert buf.queued() == [3]
    assert buf.drop_in_flight(CLOSED) == []
    assert dropped(buf) == {DropReason.RETRIES_EXHAUSTED: 2}


def test_drop_queued_drops_everything_queued_oldest_first() -> None:
    buf = filled(Policy.DROP_OLDEST, [1, 2, 3])
    buf.take(1)
    assert buf.drop_queued(CLOSED) == [2, 3]
    conserved(buf)
    assert buf.queued() == []
    assert buf.in_flight == [1]
    assert dropped(buf) == {CLOSED: 2}
    assert buf.drop_queued(CLOSED) == []
    assert dropped(buf) == {CLOSED: 2}


def test_reject_counts_an_item_refused_at_the_door() -> None:
    buf = filled(Policy.BLOCK, [1])
    buf.reject(DropReason.PUSH_TIMEOUT)
    buf.reject(CLOSED)
    buf.reject(DropReason.KEY_ERROR)
    conserved(buf)
    assert buf.pushed == 4
    assert buf.rejected == 3
    assert buf.queued() == [1]
    assert dropped(buf) == {
        DropReason.PUSH_TIMEOUT: 1,
        CLOSED: 1,
        DropReason.KEY_ERROR: 1,
    }


def test_stats_snapshot_reports_every_counter() -> None:
    admitted = filled(Policy.DROP_OLDEST, [1, 2, 3])
    admitted.push(4)
    buf: PolicyBuffer[int] = admitted.buf
    buf.take(2)
    buf.complete()
    buf.take(1)
    buf.retries = 2
    buf.restarts = 1
    s = buf.stats(0.0)
    assert (s.pushed, s.flushed, s.coalesced) == (4, 2, 0)
    assert dict(s.dropped) == {OLDEST: 1}
    assert (s.retries, s.restarts, s.batches) == (2, 1, 1)
    assert (s.depth, s.in_flight) == (0, 1)
    assert s.dropped_total == 1
    with pytest.raises(TypeError):
        s.dropped[CLOSED] = 1  # type: ignore[index]


# -- positions ----------------------------------------------------------------


def test_settled_is_head_when_idle_and_the_batch_start_while_in_flight() -> None:
    buf = filled(Policy.DROP_OLDEST, [1, 2, 3])
    assert buf.settled() == 0
    buf.take(2)
    assert (buf.head, buf.settled()) == (2, 0)
    buf.complete()
    assert buf.settled() == 2
    buf.push(4)
    buf.push(5)
    assert buf.push(6) == (3,)
    assert (buf.head, buf.tail, buf.settled()) == (3, 6, 3)
    assert buf.take(1) == [4]
    assert (buf.head, buf.settled()) == (4, 3)
    buf.drop_in_flight(DropReason.RETRIES_EXHAUSTED)
    assert buf.settled() == 4
    buf.drop_queued(CLOSED)
    assert buf.settled() == buf.tail == 6


def test_settled_reaches_tail_only_when_everything_pushed_is_settled() -> None:
    buf = keyed([("a", 1), ("b", 1), ("a", 2)])
    target = buf.tail
    assert target == 2
    buf.take(10)
    assert buf.settled() < target
    buf.complete()
    assert buf.settled() == target


# -- oldest_age ---------------------------------------------------------------


def test_oldest_age_is_zero_when_empty() -> None:
    buf: Any = Admitted(3, Policy.DROP_OLDEST, now=5.0)
    assert buf.oldest_age(100.0) == 0.0
    buf.push(1)
    buf.take(1)
    assert buf.oldest_age(100.0) == 0.0
    assert buf.stats(100.0).oldest_age == 0.0


def test_oldest_age_counts_from_the_last_mark_before_the_oldest_item() -> None:
    buf: Any = Admitted(10, Policy.DROP_OLDEST, now=0.0)
    buf.push(1)  # entered in (0, 1]
    buf.mark(1.0)
    buf.push(2)  # entered in (1, 2]
    buf.mark(2.0)
    buf.push(3)  # entered in (2, 3]
    assert buf.oldest_age(2.5) == 2.5
    buf.take(1)
    assert buf.oldest_age(2.5) == 1.5
    buf.complete()
    buf.take(1)
    assert buf.oldest_age(2.5) == 0.5
    assert buf.stats(2.5).oldest_age == 0.5


def test_a_mark_with_nothing_new_tightens_the_bound() -> None:
    buf: Any = Admitted(10, Policy.DROP_OLDEST, now=0.0)
    buf.mark(1.0)
    buf.mark(2.0)
    buf.push(1)
    assert buf.oldest_age(2.25) == 0.25


def test_oldest_age_follows_evictions() -> None:
    buf: Any = Admitted(2, Policy.DROP_OLDEST, now=0.0)
    buf.push(1)
    buf.mark(1.0)
    buf.push(2)
    buf.mark(2.0)
    buf.push(3)  # evicts 1: the oldest is now 2, entered after 1.0
    assert buf.oldest_age(3.0) == 2.0


def test_oldest_age_is_never_negative() -> None:
    buf: Any = Admitted(2, Policy.DROP_OLDEST, now=10.0)
    buf.push(1)
    assert buf.oldest_age(9.0) == 0.0


@pytest.mark.parametrize("policy", list(Policy))
def test_oldest_age_is_an_upper_bound_tight_to_one_tick(policy: Policy) -> None:
    # Items enter at known times between ticks (one mark per tick of 1.0 s);
    # the reported age is >= the true age and < true age + one tick.
    buf: Any = Admitted(4, policy, now=0.0)
    entered: dict[int, float] = {}
    times = [0.1, 0.4, 1.2, 2.7, 2.9, 3.5, 5.05, 5.5, 7.3]
    tick = 0.0
    for n, at in enumerate(times):
        while tick + 1.0 <= at:
            tick += 1.0
            buf.mark(tick)
        if buf.full():
            buf.take(2)
            buf.complete()
            for item in list(entered)[:2]:
                del entered[item]
        if policy is Policy.COALESCE_BY_KEY:
            buf.push_keyed(n, n)
        else:
            buf.push(n)
        entered[n] = at
        conserved(buf)
        for now in (at, at + 0.3):
            oldest = min(entered.values())
            age = buf.oldest_age(now)
            assert now - oldest <= age < now - oldest + 1.0
