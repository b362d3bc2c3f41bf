"""Failures by kind: poison items isolated by bisection, partial failures."""

from __future__ import annotations

import math
import pickle
import threading
from typing import TYPE_CHECKING, Any

import pykka
import pytest
from structlog.testing import capture_logs
from support import WAIT, conservation_holds, retries, running, sync

import wbactor
from wbactor import DropReason, Failure
from wbactor._flusher import FlusherActor
from wbactor.testing import DropRecorder, ManualClock

if TYPE_CHECKING:
    from collections.abc import Callable

REJECTED = DropReason.REJECTED


class Bad(wbactor.PermanentError):
    """The store refused a row."""


class PoisonFlusher:
    """Refuses (PERMANENT) any batch holding a poison item; records every call.

    It checks conservation on every call, so each step of a bisection is
    seen to account for every item.
    """

    def __init__(self, poison: set[int], wb: list[wbactor.WriteBehind[int]]) -> None:
        self.poison = poison
        self.calls: list[list[int]] = []
        self.written: list[int] = []
        self.snapshots: list[wbactor.Stats] = []
        self._wb = wb

    def flush(self, batch: list[int]) -> None:
        self.calls.append(list(batch))
        if self._wb:
            self.snapshots.append(self._wb[0].stats())
        if self.poison.intersection(batch):
            msg = "row refused"
            raise Bad(msg)
        self.written.extend(batch)


def start_poisoned(
    clock: ManualClock, poison: set[int], **kwargs: Any
) -> tuple[wbactor.WriteBehind[int], PoisonFlusher, DropRecorder[int]]:
    holder: list[wbactor.WriteBehind[int]] = []
    flusher = PoisonFlusher(poison, holder)
    drops: DropRecorder[int] = DropRecorder()
    options: dict[str, Any] = {"capacity": 10_000, "batch_size": 1000}
    options.update(kwargs)
    wb = wbactor.start(
        wbactor.Config(flusher=flusher, on_drop=drops, clock=clock, **options)
    )
    holder.append(wb)
    return wb, flusher, drops


def extra_calls_bound(k: int, n: int) -> int:
    return 2 * k * math.ceil(math.log2(n))


@pytest.mark.parametrize(
    "poison",
    [{0}, {999}, {500}, {3, 997}, {10, 11, 12}, {1, 100, 200, 300, 400}],
    ids=str,
)
def test_poison_items_among_1000_are_rejected_alone_within_the_call_bound(
    clock: ManualClock, poison: set[int]
) -> None:
    wb, flusher, drops = start_poisoned(clock, poison)
    wb.ref.tell(wbactor.PushMany(range(1000)))
    wb.flush(WAIT)
    stats = wb.stop(timeout=WAIT)
    good = [n for n in range(1000) if n not in poison]
    assert flusher.written == good  # in push order
    assert sorted(drops.items) == sorted(poison)
    assert set(drops.reasons) == {REJECTED}
    assert stats.flushed == len(good)
    assert stats.dropped == {REJECTED: len(poison)}
    assert stats.restarts == 0
    failed_calls = [c for c in flusher.calls if poison.intersection(c)]
    assert stats.retries == len(failed_calls)
    assert len(flusher.calls) - 1 <= extra_calls_bound(len(poison), 1000)
    assert all(conservation_holds(s) for s in flusher.snapshots)
    assert conservation_holds(stats)


def test_bisection_flushes_the_first_half_first_and_keeps_push_order(
    clock: ManualClock,
) -> None:
    wb, flusher, _ = start_poisoned(clock, {5}, batch_size=8)
    wb.ref.tell(wbactor.PushMany(range(8)))
    wb.flush(WAIT)
    wb.stop(timeout=WAIT)
    assert flusher.calls == [
        [0, 1, 2, 3, 4, 5, 6, 7],
        [0, 1, 2, 3],  # ceil(8/2) first: no poison, written
        [4, 5, 6, 7],
        [4, 5],
        [4],
        [5],  # alone: rejected
        [6, 7],
    ]


def test_a_later_batch_waits_until_every_part_settled(clock: ManualClock) -> None:
    wb, flusher, drops = start_poisoned(clock, {1}, batch_size=4)
    wb.ref.tell(wbactor.PushMany(range(12)))  # three full batches
    wb.flush(WAIT)
    wb.stop(timeout=WAIT)
    assert flusher.written == [0, 2, 3, *range(4, 12)]
    assert drops.items == [1]


def test_a_single_item_that_fails_permanently_is_rejected_at_once(
    clock: ManualClock,
) -> None:
    wb, flusher, drops = start_poisoned(clock, {7}, batch_size=1)
    with capture_logs() as logs:
        wb.push(7)
        wb.push(8)
        wb.flush(WAIT)  # no backoff to advance: nothing waits for one
        stats = wb.stop(timeout=WAIT)
    assert flusher.calls == [[7], [8]]
    assert drops.calls == [(7, REJECTED)]
    assert (stats.retries, stats.restarts, stats.flushed) == (1, 0, 1)
    [line] = [e for e in logs if e["event"] == "items_rejected"]
    assert line["count"] == 1
    assert line["error"] == "Bad: row refused"
    assert line["log_level"] == "warning"
    assert not [e for e in logs if e["event"] in ("flush_failed", "retries_exhausted")]


def test_a_split_is_logged_at_debug(clock: ManualClock) -> None:
    wb, _, _ = start_poisoned(clock, {0}, batch_size=4)
    with capture_logs() as logs:
        wb.ref.tell(wbactor.PushMany(range(4)))
        wb.flush(WAIT)
        wb.stop(timeout=WAIT)
    splits = [e for e in logs if e["event"] == "batch_split"]
    assert [(e["batch_size"], e["parts"]) for e in splits] == [(4, 2), (2, 2)]
    assert all(e["log_level"] == "debug" for e in splits)


class FlakyDuringBisection:
    """Permanent for a batch holding 3; the first call on [0, 1] is transient."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.written: list[int] = []
        self.flaked = False
        self.retried = threading.Event()

    def flush(self, batch: list[int]) -> None:
        self.calls.append(list(batch))
        if 3 in batch:
            raise Bad
        if batch == [0, 1] and not self.flaked:
            self.flaked = True
            msg = "connection reset"
            raise ConnectionError(msg)
        self.written.extend(batch)


def test_a_transient_failure_of_a_part_is_retried_with_backoff_for_that_part(
    clock: ManualClock,
) -> None:
    flusher = FlakyDuringBisection()
    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=100, flusher=flusher, batch_size=4, on_drop=drops, clock=clock
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany(range(4)))
        wb.ref.tell(wbactor.Flush())
        wb.wait_for(retries(2), WAIT)  # [0..3] is permanent, then [0, 1] transient
        assert flusher.calls == [[0, 1, 2, 3], [0, 1]]
        sync(wb._supervisor)
        clock.advance(wbactor.default_backoff(1))  # the part [0, 1] again
        wb.flush(WAIT)
        stats = wb.stats()
    assert flusher.calls == [[0, 1, 2, 3], [0, 1], [0, 1], [2, 3], [2], [3]]
    assert flusher.written == [0, 1, 2]
    assert drops.calls == [(3, REJECTED)]
    assert (stats.restarts, stats.flushed) == (1, 3)
    assert stats.retries == 4  # [0..3], [0, 1] (transient), [2, 3], [3]


def test_the_halves_of_a_split_start_their_own_retries(clock: ManualClock) -> None:
    calls: list[list[int]] = []
    backoffs: list[int] = []

    def flush(batch: list[int]) -> None:
        calls.append(list(batch))
        first_two = batch == [0, 1, 2, 3] and len(calls) <= 2
        if first_two or (batch == [0, 1] and len(calls) == 4):
            msg = "connection reset"
            raise ConnectionError(msg)
        if 3 in batch:
            raise Bad

    def backoff(attempt: int) -> float:
        backoffs.append(attempt)
        return 0.0

    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=100,
        flusher=flush,
        batch_size=4,
        max_retries=2,
        retry_backoff=backoff,
        on_drop=drops,
        clock=clock,
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany(range(4)))
        wb.flush(WAIT)
        stats = wb.stats()
    # Two transient failures of the batch, then it is split: the half [0, 1]
    # fails once, its first retry, not the batch's third (past max_retries).
    assert calls == [[0, 1, 2, 3]] * 3 + [[0, 1], [0, 1], [2, 3], [2], [3]]
    assert backoffs == [1, 2, 1]
    assert drops.calls == [(3, REJECTED)]
    assert stats.flushed == 3


def test_a_part_that_exhausts_its_retries_is_dropped_and_the_next_part_goes_on(
    clock: ManualClock,
) -> None:
    calls: list[list[int]] = []

    def flush(batch: list[int]) -> None:
        calls.append(list(batch))
        if 0 in batch and len(batch) > 1:
            raise Bad
        if batch == [0]:
            msg = "timed out"
            raise TimeoutError(msg)

    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=100,
        flusher=flush,
        batch_size=2,
        max_retries=0,
        on_drop=drops,
        clock=clock,
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany([0, 1]))
        wb.flush(WAIT)
        stats = wb.stats()
    assert calls == [[0, 1], [0], [1]]
    assert drops.calls == [(0, DropReason.RETRIES_EXHAUSTED)]
    assert stats.flushed == 1
    assert conservation_holds(stats)


def test_retry_after_sets_the_backoff_of_that_attempt(clock: ManualClock) -> None:
    calls: list[list[int]] = []

    def flush(batch: list[int]) -> None:
        calls.append(list(batch))
        if len(calls) == 1:
            raise wbactor.RetryAfter(7.5, "rate limited")

    config = wbactor.Config(capacity=10, flusher=flush, clock=clock)
    with capture_logs() as logs, running(config) as wb:
        wb.push(1)
        clock.advance(1.0)  # the first tick
        wb.wait_for(retries(1), WAIT)
        sync(wb._supervisor)
        clock.advance(7.4)  # not yet: the default backoff would have fired
        sync(wb._timer)
        assert calls == [[1]]
        clock.advance(0.1)
        wb.wait_for(lambda s: s.flushed == 1, WAIT)
    [failed] = [e for e in logs if e["event"] == "flush_failed"]
    assert failed["retry_in"] == 7.5
    assert failed["error"] == "RetryAfter: rate limited"


@pytest.mark.parametrize(
    ("seconds", "delay"),
    [(-1, 0.0), (math.nan, 0.0), (math.inf, 3600.0), (1e10, 3600.0), (2, 2.0)],
)
def test_retry_after_is_clamped_like_any_backoff(seconds: float, delay: float) -> None:
    assert wbactor.RetryAfter(seconds).delay == delay


class PartlyFlusher:
    """Raises PartialFailure(failed, error) on the first call; records the rest."""

    def __init__(self, failed: Any, error: BaseException) -> None:
        self.failed = failed
        self.error = error
        self.calls: list[list[int]] = []

    def flush(self, batch: list[int]) -> None:
        self.calls.append(list(batch))
        if len(self.calls) == 1:
            raise wbactor.PartialFailure(self.failed, self.error)


def test_a_partial_failure_rejects_the_permanent_ones_and_counts_the_rest(
    clock: ManualClock,
) -> None:
    flusher = PartlyFlusher([3, 1, 1], Bad("bad rows"))  # a duplicate counts once
    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=100, flusher=flusher, batch_size=5, on_drop=drops, clock=clock
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(wbactor.PushMany([10, 11, 12, 13, 14, 15]))
        wb.flush(WAIT)
        stats = wb.stats()
    assert flusher.calls == [[10, 11, 12, 13, 14], [15]]
    assert drops.calls == [(11, REJECTED), (13, REJECTED)]
    assert (stats.flushed, stats.retries, stats.restarts) == (4, 1, 0)
    assert stats.dropped == {REJECTED: 2}
    [line] = [e for e in logs if e["event"] == "items_rejected"]
    assert line["count"] == 2
    assert line["error"] == "Bad: bad rows"  # the cause, not the PartialFailure


def test_a_partial_failure_retries_the_transient_ones_first_as_their_own_batch(
    clock: ManualClock,
) -> None:
    flusher = PartlyFlusher([0, 4], ConnectionError("reset"))
    config = wbactor.Config(capacity=100, flusher=flusher, batch_size=5, clock=clock)
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany(range(10)))
        wb.ref.tell(wbactor.Flush())
        wb.wait_for(retries(1), WAIT)
        stats = wb.stats()
        assert (stats.flushed, stats.in_flight) == (3, 2)
        assert conservation_holds(stats)
        sync(wb._supervisor)
        clock.advance(wbactor.default_backoff(1))
        wb.flush(WAIT)
        stats = wb.stats()
    assert flusher.calls == [[0, 1, 2, 3, 4], [0, 4], [5, 6, 7, 8, 9]]
    assert (stats.flushed, stats.retries, stats.restarts) == (10, 1, 1)


@pytest.mark.parametrize("failed", [[5], [-1], [0, 9], ["0"], [1.0], [True]])
def test_a_partial_failure_with_a_bad_index_fails_the_whole_batch_and_is_logged(
    clock: ManualClock, failed: Any
) -> None:
    flusher = PartlyFlusher([0], Bad())
    flusher.failed = failed
    config = wbactor.Config(capacity=100, flusher=flusher, batch_size=5, clock=clock)
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(wbactor.PushMany(range(5)))
        wb.ref.tell(wbactor.Flush())
        wb.wait_for(retries(1), WAIT)
        sync(wb._supervisor)
        clock.advance(wbactor.default_backoff(1))
        wb.flush(WAIT)
        stats = wb.stats()
    assert flusher.calls == [list(range(5))] * 2  # the whole batch, retried
    assert (stats.flushed, stats.retries, stats.restarts) == (5, 1, 1)
    [bug] = [e for e in logs if e["event"] == "flusher_bug"]
    assert bug["batch_size"] == 5


def test_partial_failure_lists_its_indices_as_a_tuple() -> None:
    error = ValueError("x")
    failure = wbactor.PartialFailure([2, 0], error)
    assert failure.failed == (2, 0)
    assert failure.error is error
    assert isinstance(failure, wbactor.WriteBehindError)


def always_permanent(error: BaseException) -> Failure:
    return Failure.PERMANENT


def raising_classify(error: BaseException) -> Failure:
    msg = "classify is broken"
    raise RuntimeError(msg)


def not_a_failure(error: BaseException) -> Failure:
    return "permanent"  # type: ignore[return-value]


def test_classify_decides_what_a_failure_means(clock: ManualClock) -> None:
    calls: list[list[int]] = []

    def flush(batch: list[int]) -> None:
        calls.append(list(batch))
        if 2 in batch:
            msg = "a kind of error default_classify calls transient"
            raise KeyError(msg)

    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=100,
        flusher=flush,
        batch_size=4,
        classify=always_permanent,
        on_drop=drops,
        clock=clock,
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany(range(4)))
        wb.flush(WAIT)
    assert drops.calls == [(2, REJECTED)]


@pytest.mark.parametrize("classify", [raising_classify, not_a_failure])
def test_a_classify_that_fails_is_logged_and_the_failure_is_transient(
    clock: ManualClock, classify: Callable[[BaseException], Failure]
) -> None:
    calls: list[list[int]] = []

    def flush(batch: list[int]) -> None:
        calls.append(list(batch))
        if len(calls) == 1:
            raise Bad

    config = wbactor.Config(
        capacity=100, flusher=flush, batch_size=2, classify=classify, clock=clock
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(wbactor.PushMany([1, 2]))
        wb.ref.tell(wbactor.Flush())
        wb.wait_for(retries(1), WAIT)
        sync(wb._supervisor)
        clock.advance(wbactor.default_backoff(1))
        wb.flush(WAIT)
        stats = wb.stats()
    assert calls == [[1, 2], [1, 2]]  # retried whole, after the backoff
    assert (stats.flushed, stats.restarts) == (2, 1)
    [failed] = [e for e in logs if e["event"] == "classify_failed"]
    assert failed["log_level"] == "warning"
    assert isinstance(failed["error"], str)


def test_default_classify_reads_the_kinds() -> None:
    assert wbactor.default_classify(Bad()) is Failure.PERMANENT
    assert wbactor.default_classify(pickle.PicklingError()) is Failure.PERMANENT
    for error in (ConnectionError(), ValueError(), KeyboardInterrupt()):
        assert wbactor.default_classify(error) is Failure.TRANSIENT
    from wbactor.flushers import (  # noqa: PLC0415 - the store errors' kinds
        PermanentStoreError,
        TransientStoreError,
    )

    store = {"store": "test"}
    assert isinstance(PermanentStoreError("x", **store), wbactor.PermanentError)
    assert wbactor.default_classify(PermanentStoreError("x", **store)) is (
        Failure.PERMANENT
    )
    assert wbactor.default_classify(TransientStoreError("x", **store)) is (
        Failure.TRANSIENT
    )


def test_stop_with_a_timeout_during_a_bisection_accounts_for_every_item(
    clock: ManualClock,
) -> None:
    release = threading.Event()
    entered = threading.Event()
    calls: list[list[int]] = []

    def flush(batch: list[int]) -> None:
        calls.append(list(batch))
        if 3 in batch and len(batch) > 1:
            raise Bad
        if batch == [3]:
            entered.set()
            release.wait(WAIT)  # hangs on the culprit
            raise Bad

    drops: DropRecorder[int] = DropRecorder()
    wb = wbactor.start(
        wbactor.Config(
            capacity=100, flusher=flush, batch_size=8, on_drop=drops, clock=clock
        )
    )
    try:
        wb.ref.tell(wbactor.PushMany(range(12)))
        assert entered.wait(WAIT)
        stats = wb.stop(timeout=0.2)
    finally:
        release.set()
    for ref in pykka.ActorRegistry.get_by_class(FlusherActor):
        assert ref.actor_stopped.wait(WAIT)  # the abandoned one, once released
    assert conservation_holds(stats)
    assert stats.flushed == 3  # [0, 1, 2]: the parts before the culprit
    assert stats.dropped == {DropReason.CLOSED: 9}
    assert sorted(drops.items) == list(range(3, 12))
    assert (stats.depth, stats.in_flight) == (0, 0)
