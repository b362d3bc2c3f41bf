"""A flusher with flush_many (a worker process) gets a window of batches at once."""

from __future__ import annotations

import threading

from support import WAIT, conservation_holds, retries, running, sync

import wbactor
from wbactor import DropReason
from wbactor._flusher import window_batches
from wbactor.testing import DropRecorder, ManualClock


class Bad(wbactor.PermanentError):
    """A row the store refuses."""


class WindowFlusher:
    """Writes batches in order, a window at a time; refuses poison, flakes once."""

    def __init__(self, poison: frozenset[int] = frozenset(), flake: int = -1) -> None:
        self.windows: list[list[list[int]]] = []
        self.written: list[int] = []
        self.poison = poison
        self.flake = flake  # the first window holding this item fails transient
        self.gate = threading.Event()
        self.gate.set()

    def flush(self, batch: list[int]) -> None:  # pragma: no cover - not called
        raise AssertionError(batch)

    def flush_many(self, batches: list[list[int]]) -> tuple[int, BaseException | None]:
        assert self.gate.wait(WAIT)
        self.windows.append([list(b) for b in batches])
        for done, batch in enumerate(batches):
            if self.flake in batch:
                self.flake = -1
                return done, ConnectionError("reset")
            if self.poison.intersection(batch):
                return done, Bad("refused")
            self.written.extend(batch)
        return len(batches), None


def test_full_batches_queued_behind_go_in_one_hand_off(clock: ManualClock) -> None:
    flusher = WindowFlusher()
    flusher.gate.clear()
    config = wbactor.Config(capacity=1000, flusher=flusher, batch_size=10, clock=clock)
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany(range(10)))  # the first batch goes
        wb.ref.tell(wbactor.PushMany(range(10, 100)))  # nine more queue behind it
        flusher.gate.set()
        wb.flush(WAIT)
        stats = wb.stats()
    assert flusher.written == list(range(100))
    assert max(len(w) for w in flusher.windows) > 1  # several in one hand-off
    # Sized by items: 32,768 items at most, in 8 to 64 whole batches.
    assert max(len(w) for w in flusher.windows) <= window_batches(10) == 64
    assert (stats.flushed, stats.batches) == (100, 10)


def test_a_transient_failure_stops_the_window_and_the_rest_goes_again_in_order(
    clock: ManualClock,
) -> None:
    flusher = WindowFlusher(flake=25)
    config = wbactor.Config(capacity=1000, flusher=flusher, batch_size=10, clock=clock)
    with running(config) as wb:
        flusher.gate.clear()
        wb.ref.tell(wbactor.PushMany(range(10)))
        wb.ref.tell(wbactor.PushMany(range(10, 50)))
        flusher.gate.set()
        wb.ref.tell(wbactor.Flush())
        wb.wait_for(retries(1), WAIT)
        stats = wb.stats()
        assert conservation_holds(stats)
        sync(wb._supervisor)
        clock.advance(wbactor.default_backoff(1))
        wb.flush(WAIT)
        stats = wb.stats()
    assert flusher.written == list(range(50))
    assert (stats.flushed, stats.retries, stats.restarts) == (50, 1, 1)


def test_a_poison_item_in_a_window_is_isolated_and_order_kept(
    clock: ManualClock,
) -> None:
    flusher = WindowFlusher(poison=frozenset({33}))
    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=1000, flusher=flusher, batch_size=10, on_drop=drops, clock=clock
    )
    with running(config) as wb:
        flusher.gate.clear()
        wb.ref.tell(wbactor.PushMany(range(10)))
        wb.ref.tell(wbactor.PushMany(range(10, 60)))
        flusher.gate.set()
        wb.flush(WAIT)
        stats = wb.stats()
    assert flusher.written == [n for n in range(60) if n != 33]
    assert drops.calls == [(33, DropReason.REJECTED)]
    assert stats.restarts == 0
    assert conservation_holds(stats)
