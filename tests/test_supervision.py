"""Supervision: retries with backoff, restarts, timeouts, deaths, drops."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pykka
import pytest
from structlog.testing import capture_logs
from support import WAIT, Calls, retries, running, sync

import wbactor
from wbactor._flusher import FlusherActor
from wbactor.testing import (
    DropRecorder,
    FlakyFlusher,
    GatedFlusher,
    ManualClock,
    RecordingFlusher,
)

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


def settle_timer(wb: wbactor.WriteBehind[Any]) -> None:
    """Return once the timer holds what the supervisor scheduled so far."""
    sync(wb._supervisor)
    sync(wb._timer)


class ScriptedFlusher(Generic[T]):
    """Records the batch of every call (copied on entry); fails the first ones.

    A failing call first applies `mutate` to the batch it was given.
    """

    def __init__(
        self,
        failures: int = 0,
        mutate: Callable[[list[T]], object] | None = None,
    ) -> None:
        self.failures = failures
        self.mutate = mutate
        self.calls: Calls[list[T]] = Calls()

    def flush(self, batch: list[T]) -> None:
        self.calls.append(list(batch))
        if len(self.calls.values) <= self.failures:
            if self.mutate is not None:
                self.mutate(batch)
            msg = "store unavailable"
            raise RuntimeError(msg)


class HoldSecondBatch(RecordingFlusher[T]):
    """Records batches; blocks from the second call on until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered_second = threading.Event()
        self.gate = threading.Event()

    def flush(self, batch: list[T]) -> None:
        if self.batches:
            self.entered_second.set()
            self.gate.wait()
        super().flush(batch)


class CustomBaseError(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit."""


class Bystander(pykka.ThreadingActor):
    """An unrelated actor, to see that wbactor failures leave it alone."""

    def on_receive(self, message: Any) -> Any:
        return ("pong", message)


def constant(seconds: float) -> Callable[[int], float]:
    return lambda attempt: seconds


# -- backoff ------------------------------------------------------------------


def test_retry_waits_for_the_backoff_on_the_clock_and_not_less(
    clock: ManualClock,
) -> None:
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=1)
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=2,
        flush_interval=100.0,
        retry_backoff=constant(0.5),
        clock=clock,
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany([1, 2]))
        wb.wait_for(lambda s: s.retries == 1, WAIT)
        settle_timer(wb)
        clock.advance(0.5 - 0.01)
        sync(wb._supervisor)
        assert wb.stats().restarts == 0
        assert flusher.attempts == 1
        clock.advance(0.01)
        assert flusher.wait_for_items(2) == [1, 2]
        stats = wb.wait_for(lambda s: s.batches == 1, WAIT)
        assert flusher.attempts == 2
        assert (stats.retries, stats.restarts, stats.flushed) == (1, 1, 2)


def test_default_backoff_delays_the_first_retry_by_a_tenth_of_a_second(
    clock: ManualClock,
) -> None:
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=1)
    config = wbactor.Config(
        capacity=100, flusher=flusher, batch_size=1, flush_interval=100.0, clock=clock
    )
    with running(config) as wb:
        wb.push(7)
        wb.wait_for(lambda s: s.retries == 1, WAIT)
        settle_timer(wb)
        clock.advance(wbactor.default_backoff(1) - 0.01)
        sync(wb._supervisor)
        assert wb.stats().restarts == 0
        assert flusher.attempts == 1
        clock.advance(0.02)
        assert flusher.wait_for_items(1) == [7]


def test_retry_backoff_is_called_with_one_based_attempt_numbers(
    clock: ManualClock,
) -> None:
    attempts: Calls[int] = Calls()

    def backoff(attempt: int) -> float:
        attempts.append(attempt)
        return 1.0

    flusher: FlakyFlusher[int] = FlakyFlusher(failures=3)
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=1,
        flush_interval=100.0,
        max_retries=5,
        retry_backoff=backoff,
        clock=clock,
    )
    with running(config) as wb:
        wb.push(1)
        for attempt in (1, 2, 3):
            assert attempts.wait_len(attempt) == list(range(1, attempt + 1))
            clock.advance(1.0)
        assert flusher.wait_for_items(1) == [1]
        wb.wait_for(lambda s: s.batches == 1, WAIT)
        assert attempts.values == [1, 2, 3]


def test_the_same_batch_is_resent_with_the_same_items_in_the_same_order(
    clock: ManualClock,
) -> None:
    flusher: ScriptedFlusher[str] = ScriptedFlusher(failures=2)
    config = wbactor.Config(
        capacity=100, flusher=flusher, batch_size=3, flush_interval=100.0, clock=clock
    )
    with running(config) as wb:
        for item in ("c", "a", "b"):
            wb.ref.tell(wbactor.Push(item))
        wb.wait_for(lambda s: s.retries == 1, WAIT)
        clock.advance(wbactor.default_backoff(1))
        wb.wait_for(lambda s: s.retries == 2, WAIT)
        clock.advance(wbactor.default_backoff(2))
        stats = wb.wait_for(lambda s: s.batches == 1, WAIT)
        assert flusher.calls.values == [["c", "a", "b"]] * 3
        assert stats.flushed == 3


# -- giving up ----------------------------------------------------------------


@pytest.mark.parametrize("max_retries", [0, 2])
def test_batch_is_dropped_with_retries_exhausted_after_max_retries(
    clock: ManualClock, max_retries: int
) -> None:
    drops: DropRecorder[str] = DropRecorder()
    attempts = max_retries + 1
    flusher: ScriptedFlusher[str] = ScriptedFlusher(failures=attempts)
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=3,
        flush_interval=100.0,
        max_retries=max_retries,
        retry_backoff=constant(1.0),
        on_drop=drops,
        clock=clock,
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(wbactor.PushMany(["x", "y", "z"]))
        for failed in range(1, attempts):
            wb.wait_for(retries(failed), WAIT)
            clock.advance(1.0)
        stats = wb.wait_for(lambda s: s.dropped_total == 3, WAIT)
        assert drops.wait_for(3) == [
            ("x", wbactor.DropReason.RETRIES_EXHAUSTED),
            ("y", wbactor.DropReason.RETRIES_EXHAUSTED),
            ("z", wbactor.DropReason.RETRIES_EXHAUSTED),
        ]
        assert stats.dropped == {wbactor.DropReason.RETRIES_EXHAUSTED: 3}
        assert (stats.retries, stats.flushed, stats.in_flight) == (attempts, 0, 0)
        assert len(flusher.calls.values) == attempts
        # The queue goes on with the next batch.
        wb.ref.tell(wbactor.PushMany(["p", "q", "r"]))
        wb.flush(WAIT)
        assert flusher.calls.values[-1] == ["p", "q", "r"]
        assert wb.stats().flushed == 3
    assert len(drops.calls) == 3
    exhausted = [e for e in logs if e["event"] == "retries_exhausted"]
    assert exhausted == [
        {
            "event": "retries_exhausted",
            "log_level": "error",
            "queue": "wbactor",
            "batch_size": 3,
            "attempts": attempts,
            "error": "RuntimeError: store unavailable",
        }
    ]


def test_max_retries_minus_one_retries_forever(clock: ManualClock) -> None:
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=20)
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=2,
        flush_interval=100.0,
        max_retries=-1,
        clock=clock,
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany([1, 2]))
        for failed in range(1, 21):
            wb.wait_for(retries(failed), WAIT)
            clock.advance(wbactor.default_backoff(failed))
        assert flusher.wait_for_items(2) == [1, 2]
        stats = wb.wait_for(lambda s: s.batches == 1, WAIT)
    assert flusher.attempts == 21
    assert stats.dropped == {}
    assert (stats.retries, stats.restarts, stats.flushed) == (20, 20, 2)


# -- restarts -----------------------------------------------------------------


def test_flusher_factory_is_called_at_start_and_at_every_restart(
    clock: ManualClock,
) -> None:
    made: list[ScriptedFlusher[int]] = []

    def factory() -> ScriptedFlusher[int]:
        flusher: ScriptedFlusher[int] = ScriptedFlusher(
            failures=1 if len(made) < 2 else 0
        )
        made.append(flusher)
        return flusher

    config = wbactor.Config(
        capacity=100,
        flusher_factory=factory,
        batch_size=2,
        flush_interval=100.0,
        retry_backoff=constant(1.0),
        clock=clock,
    )
    with capture_logs() as logs, running(config) as wb:
        assert len(made) == 1
        wb.ref.tell(wbactor.PushMany([1, 2]))
        wb.wait_for(lambda s: s.retries == 1, WAIT)
        assert len(made) == 1
        clock.advance(1.0)
        wb.wait_for(lambda s: s.retries == 2, WAIT)
        assert len(made) == 2
        clock.advance(1.0)
        stats = wb.wait_for(lambda s: s.batches == 1, WAIT)
        sync(wb._supervisor)
    assert len(made) == 3
    assert len({id(flusher) for flusher in made}) == 3
    # Each fresh flusher got exactly the retried batch.
    assert [flusher.calls.values for flusher in made] == [[[1, 2]]] * 3
    assert (stats.retries, stats.restarts) == (2, 2)
    restarted = [e for e in logs if e["event"] == "flusher_restarted"]
    assert restarted == [
        {
            "event": "flusher_restarted",
            "log_level": "warning",
            "queue": "wbactor",
            "restarts": 1,
            "cause": "error",
        },
        {
            "event": "flusher_restarted",
            "log_level": "warning",
            "queue": "wbactor",
            "restarts": 2,
            "cause": "error",
        },
    ]


def test_a_flush_hung_past_flush_timeout_is_retried_on_a_fresh_flusher(
    clock: ManualClock,
) -> None:
    hung_flusher: GatedFlusher[int] = GatedFlusher()
    fresh: HoldSecondBatch[int] = HoldSecondBatch()
    made: list[RecordingFlusher[int]] = []

    def factory() -> RecordingFlusher[int]:
        made.append(hung_flusher if not made else fresh)
        return made[-1]

    config = wbactor.Config(
        capacity=100,
        flusher_factory=factory,
        batch_size=3,
        flush_interval=100.0,
        flush_timeout=2.0,
        retry_backoff=constant(0.5),
        clock=clock,
    )
    try:
        with capture_logs() as logs, running(config) as wb:
            wb.ref.tell(wbactor.PushMany([1, 2, 3]))
            assert hung_flusher.entered.wait(WAIT)
            [hung] = pykka.ActorRegistry.get_by_class(FlusherActor)
            settle_timer(wb)
            clock.advance(1.0)
            sync(wb._supervisor)
            assert wb.stats().retries == 0
            clock.advance(1.0)
            stats = wb.wait_for(lambda s: s.retries == 1, WAIT)
            assert (stats.in_flight, stats.flushed, stats.restarts) == (3, 0, 0)
            clock.advance(0.5)
            assert fresh.wait_for_items(3) == [1, 2, 3]
            stats = wb.wait_for(lambda s: s.batches == 1, WAIT)
            assert (stats.flushed, stats.restarts) == (3, 1)
            # The next batch is in flight when the abandoned attempt completes
            # late: that result is delivered, but counts for nothing.
            wb.ref.tell(wbactor.PushMany([4, 5, 6]))
            assert fresh.entered_second.wait(WAIT)
            hung_flusher.release()
            assert hung.actor_stopped.wait(WAIT)
            assert hung_flusher.items == [1, 2, 3]
            stats = wb.stats()
            assert (stats.flushed, stats.batches, stats.in_flight) == (3, 1, 3)
            fresh.gate.set()
            wb.flush(WAIT)
            stats = wb.stats()
            assert (stats.flushed, stats.batches, stats.pushed) == (6, 2, 6)
            assert (stats.in_flight, stats.depth, stats.dropped) == (0, 0, {})
    finally:
        hung_flusher.release()
        fresh.gate.set()
    assert made == [hung_flusher, fresh]
    assert fresh.items == [1, 2, 3, 4, 5, 6]
    restarted = [e for e in logs if e["event"] == "flusher_restarted"]
    assert [(e["restarts"], e["cause"]) for e in restarted] == [(1, "timeout")]


@pytest.mark.parametrize(
    "error", [KeyboardInterrupt, SystemExit, CustomBaseError], ids=lambda e: e.__name__
)
def test_a_flusher_raising_a_base_exception_is_retried_and_stops_no_actor(
    clock: ManualClock, error: type[BaseException]
) -> None:
    bystander = Bystander.start()
    try:
        flusher: FlakyFlusher[int] = FlakyFlusher(failures=1, error=error)
        config = wbactor.Config(
            capacity=100,
            flusher=flusher,
            batch_size=2,
            flush_interval=100.0,
            clock=clock,
        )
        with running(config) as wb:
            wb.ref.tell(wbactor.PushMany([1, 2]))
            wb.wait_for(lambda s: s.retries == 1, WAIT)
            clock.advance(wbactor.default_backoff(1))
            assert flusher.wait_for_items(2) == [1, 2]
            stats = wb.wait_for(lambda s: s.batches == 1, WAIT)
            assert (stats.retries, stats.restarts, stats.flushed) == (1, 1, 2)
            for ref in (wb.ref, wb._supervisor, wb._timer):
                assert ref.is_alive()
            assert bystander.ask("ping", timeout=WAIT) == ("pong", "ping")
            wb.push(3)
            wb.flush(WAIT)
            assert flusher.items == [1, 2, 3]
        assert bystander.is_alive()
    finally:
        bystander.stop()


def test_a_flusher_actor_that_dies_is_restarted_and_the_queue_keeps_flushing(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(
        capacity=100, flusher=flusher, batch_size=2, flush_interval=100.0, clock=clock
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(wbactor.PushMany([1, 2]))
        flusher.wait_for_items(2)
        wb.wait_for(lambda s: s.batches == 1, WAIT)
        [actor] = pykka.ActorRegistry.get_by_class(FlusherActor)
        actor.stop()
        sync(wb._supervisor)
        clock.advance(wbactor.default_backoff(1))
        wb.wait_for(lambda s: s.restarts == 1, WAIT)
        [replacement] = pykka.ActorRegistry.get_by_class(FlusherActor)
        assert replacement is not actor
        wb.ref.tell(wbactor.PushMany([3, 4]))
        assert flusher.wait_for_items(4) == [1, 2, 3, 4]
        wb.push(5)
        wb.flush(WAIT)
        stats = wb.stats()
    assert flusher.batches == [[1, 2], [3, 4], [5]]
    assert (stats.flushed, stats.restarts, stats.dropped) == (5, 1, {})
    restarted = [e for e in logs if e["event"] == "flusher_restarted"]
    assert [(e["restarts"], e["cause"]) for e in restarted] == [(1, "died")]


@pytest.mark.parametrize(
    "result", [False, 0, "error", RuntimeError("returned, not raised")], ids=repr
)
def test_the_flusher_return_value_is_ignored(
    clock: ManualClock, result: object
) -> None:
    batches: list[list[int]] = []

    def flush(batch: list[int]) -> object:
        batches.append(list(batch))
        return result

    config = wbactor.Config(
        capacity=100, flusher=flush, batch_size=2, flush_interval=100.0, clock=clock
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany([1, 2, 3]))
        wb.flush(WAIT)
        stats = wb.stats()
    assert batches == [[1, 2], [3]]
    assert (stats.flushed, stats.batches, stats.retries, stats.restarts) == (
        3,
        2,
        0,
        0,
    )


def test_a_flusher_mutating_its_batch_does_not_change_what_the_retry_gets(
    clock: ManualClock,
) -> None:
    def vandalize(batch: list[str]) -> None:
        if len(flusher.calls.values) == 1:
            batch.reverse()
            batch.append("junk")
        else:
            batch.clear()

    flusher: ScriptedFlusher[str] = ScriptedFlusher(failures=2, mutate=vandalize)
    config = wbactor.Config(
        capacity=100, flusher=flusher, batch_size=3, flush_interval=100.0, clock=clock
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany(["a", "b", "c"]))
        wb.wait_for(lambda s: s.retries == 1, WAIT)
        clock.advance(wbactor.default_backoff(1))
        wb.wait_for(lambda s: s.retries == 2, WAIT)
        clock.advance(wbactor.default_backoff(2))
        stats = wb.wait_for(lambda s: s.batches == 1, WAIT)
    assert flusher.calls.values == [["a", "b", "c"]] * 3
    assert (stats.flushed, stats.in_flight, stats.dropped) == (3, 0, {})


def test_a_successful_flusher_clearing_its_batch_still_counts_every_item(
    clock: ManualClock,
) -> None:
    seen: list[list[int]] = []

    def flush(batch: list[int]) -> None:
        seen.append(list(batch))
        batch.clear()

    config = wbactor.Config(
        capacity=100, flusher=flush, batch_size=3, flush_interval=100.0, clock=clock
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany([1, 2, 3, 4]))
        wb.flush(WAIT)
        stats = wb.stats()
    assert seen == [[1, 2, 3], [4]]
    assert (stats.flushed, stats.batches, stats.in_flight, stats.depth) == (4, 2, 0, 0)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(RuntimeError, id="RuntimeError"),
        pytest.param(
            CustomBaseError,
            id="CustomBaseError",
        ),
    ],
)
def test_a_flusher_factory_failing_at_restart_is_a_failed_attempt_retried_later(
    clock: ManualClock, error: type[BaseException]
) -> None:
    made: list[ScriptedFlusher[int]] = []
    factory_calls = 0
    backoffs: Calls[int] = Calls()

    def factory() -> ScriptedFlusher[int]:
        nonlocal factory_calls
        factory_calls += 1
        if factory_calls == 2:
            msg = "cannot connect"
            raise error(msg)
        flusher: ScriptedFlusher[int] = ScriptedFlusher(failures=1 if not made else 0)
        made.append(flusher)
        return flusher

    def backoff(attempt: int) -> float:
        backoffs.append(attempt)
        return 0.5

    config = wbactor.Config(
        capacity=100,
        flusher_factory=factory,
        batch_size=2,
        flush_interval=100.0,
        retry_backoff=backoff,
        clock=clock,
    )
    bystander = Bystander.start()
    try:
        with running(config) as wb:
            wb.ref.tell(wbactor.PushMany([1, 2]))
            wb.wait_for(lambda s: s.retries == 1, WAIT)
            clock.advance(0.5)
            stats = wb.wait_for(lambda s: s.retries == 2, 1.0)
            assert (stats.restarts, stats.in_flight, stats.dropped) == (0, 2, {})
            settle_timer(wb)
            # No spin: nothing is tried again before the next backoff is over.
            clock.advance(0.5 - 0.01)
            sync(wb._supervisor)
            assert factory_calls == 2
            assert wb.stats().retries == 2
            clock.advance(0.01)
            stats = wb.wait_for(lambda s: s.batches == 1, WAIT)
            assert wb._supervisor.is_alive()
        assert factory_calls == 3
        assert backoffs.values == [1, 2]
        assert [flusher.calls.values for flusher in made] == [[[1, 2]], [[1, 2]]]
        assert (stats.retries, stats.restarts, stats.flushed) == (2, 1, 2)
        assert bystander.is_alive()
    finally:
        bystander.stop()


# -- pushes while retrying; counters --------------------------------------------


def test_pushes_are_accepted_under_the_policy_while_a_batch_is_retrying(
    clock: ManualClock,
) -> None:
    drops: DropRecorder[int] = DropRecorder()
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=1)
    config = wbactor.Config(
        capacity=4,
        flusher=flusher,
        batch_size=3,
        flush_interval=100.0,
        retry_backoff=constant(0.5),
        on_drop=drops,
        clock=clock,
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany([0, 1, 2]))
        wb.wait_for(lambda s: s.retries == 1, WAIT)
        wb.ref.tell(wbactor.Push(3))
        wb.push(4)
        stats = wb.stats()
        assert (stats.depth, stats.in_flight, stats.pushed) == (2, 3, 5)
        wb.ref.tell(wbactor.PushMany([5, 6, 7, 8]))
        stats = wb.stats()
        assert (stats.depth, stats.in_flight, stats.pushed) == (4, 3, 9)
        assert stats.dropped == {wbactor.DropReason.DROP_OLDEST: 2}
        assert [item for item, _ in drops.wait_for(2)] == [3, 4]
        assert flusher.attempts == 1
        clock.advance(0.5)
        wb.flush(WAIT)
        stats = wb.stats()
    assert flusher.items == [0, 1, 2, 5, 6, 7, 8]
    assert all(len(batch) <= 3 for batch in flusher.batches)
    assert (stats.flushed, stats.depth, stats.in_flight) == (7, 0, 0)


def test_stats_count_failed_attempts_restarts_and_successful_flush_calls(
    clock: ManualClock,
) -> None:
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=2)
    config = wbactor.Config(
        capacity=100, flusher=flusher, batch_size=2, flush_interval=100.0, clock=clock
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany([1, 2]))
        wb.wait_for(lambda s: s.retries == 1, WAIT)
        clock.advance(wbactor.default_backoff(1))
        wb.wait_for(lambda s: s.retries == 2, WAIT)
        clock.advance(wbactor.default_backoff(2))
        stats = wb.wait_for(lambda s: s.batches == 1, WAIT)
        assert (stats.retries, stats.restarts, stats.batches) == (2, 2, 1)
        wb.ref.tell(wbactor.PushMany([3, 4, 5, 6]))
        stats = wb.wait_for(lambda s: s.batches == 3, WAIT)
    assert flusher.attempts == 5
    assert (stats.retries, stats.restarts, stats.batches, stats.flushed) == (
        2,
        2,
        3,
        6,
    )


# -- stop ---------------------------------------------------------------------


def test_stop_returns_only_after_the_flusher_actor_has_stopped(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopping = threading.Event()
    gate = threading.Event()
    handle = FlusherActor._handle_receive

    def slow_to_stop(self: FlusherActor[Any], message: Any) -> Any:
        if type(message).__name__ == "_ActorStop":  # pykka's stop message
            stopping.set()
            gate.wait(WAIT)
        return handle(self, message)

    monkeypatch.setattr(FlusherActor, "_handle_receive", slow_to_stop)
    flusher: RecordingFlusher[int] = RecordingFlusher()
    wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher, clock=clock))
    wb.push(1)
    flusher_alive_after_stop: list[bool] = []
    returned = threading.Event()

    def stop() -> None:
        wb.stop(timeout=WAIT)
        flusher_alive_after_stop.append(
            bool(pykka.ActorRegistry.get_by_class(FlusherActor))
        )
        returned.set()

    thread = threading.Thread(target=stop)
    thread.start()
    try:
        assert stopping.wait(WAIT)
        returned.wait(0.5)  # a stop() that does not wait returns at once
    finally:
        gate.set()
        thread.join(WAIT)
    assert flusher.items == [1]
    assert flusher_alive_after_stop == [False]


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [(lambda attempt: 1 / 0, 0.1), (lambda attempt: -3.0, 0.0)],
    ids=["raises", "negative"],
)
def test_a_bad_retry_backoff_is_logged_and_replaced_not_fatal(
    clock: ManualClock, backoff: Callable[[int], float], expected: float
) -> None:
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=1)
    config = wbactor.Config(
        capacity=10, flusher=flusher, retry_backoff=backoff, clock=clock
    )
    with capture_logs() as logs, running(config) as wb:
        wb.push(1)
        clock.advance(1.0)
        wb.wait_for(retries(1), WAIT)
        clock.advance(expected)
        assert flusher.wait_for_items(1) == [1]
    [failed] = [e for e in logs if e["event"] == "flush_failed"]
    assert failed["retry_in"] == expected
    bad = [e for e in logs if e["event"] == "retry_backoff_failed"]
    assert len(bad) == (1 if expected else 0)
