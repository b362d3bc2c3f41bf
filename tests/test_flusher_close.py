"""A flusher's close(): called once its actor is done with it, never before."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from structlog.testing import capture_logs
from support import WAIT

import wbactor

if TYPE_CHECKING:
    from wbactor.testing import ManualClock


class ClosingFlusher:
    """Fails its first `failures` flushes; records flushes and closes."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.flushed: list[int] = []
        self.closes = 0
        self.flushed_after_close = False
        self.lock = threading.Lock()

    def flush(self, batch: list[int]) -> None:
        with self.lock:
            if self.closes:
                self.flushed_after_close = True
            if self.failures:
                self.failures -= 1
                msg = "store down"
                raise ConnectionError(msg)
            self.flushed += batch

    def close(self) -> None:
        with self.lock:
            self.closes += 1


def test_a_shared_flusher_is_closed_once_at_stop_not_at_each_restart(
    clock: ManualClock,
) -> None:
    flusher = ClosingFlusher(failures=2)
    wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher, clock=clock))
    wb.push(1)
    clock.advance(1.0)
    wb.wait_for(lambda s: s.retries == 1, WAIT)
    clock.advance(wbactor.default_backoff(1))
    wb.wait_for(lambda s: s.retries == 2, WAIT)
    clock.advance(wbactor.default_backoff(2))
    wb.wait_for(lambda s: s.flushed == 1, WAIT)
    assert flusher.closes == 0  # two restarts, and the same object reused
    stats = wb.stop(timeout=WAIT)
    assert flusher.closes == 1
    assert not flusher.flushed_after_close
    assert (stats.restarts, stats.flushed) == (2, 1)


def test_flushers_from_the_factory_are_each_closed_when_retired(
    clock: ManualClock,
) -> None:
    made: list[ClosingFlusher] = []

    def factory() -> ClosingFlusher:
        made.append(ClosingFlusher(failures=1 if not made else 0))
        return made[-1]

    wb = wbactor.start(
        wbactor.Config(capacity=10, flusher_factory=factory, clock=clock)
    )
    wb.push(1)
    clock.advance(1.0)
    wb.wait_for(lambda s: s.retries == 1, WAIT)
    clock.advance(wbactor.default_backoff(1))
    wb.wait_for(lambda s: s.flushed == 1, WAIT)
    wb.stop(timeout=WAIT)
    assert [f.closes for f in made] == [1, 1]
    assert [f.flushed for f in made] == [[], [1]]


def test_a_close_that_raises_any_exception_is_logged_and_stops_nothing(
    clock: ManualClock,
) -> None:
    class BadClose(ClosingFlusher):
        def close(self) -> None:
            raise KeyboardInterrupt

    flusher = BadClose()
    with capture_logs() as logs:
        wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher, clock=clock))
        wb.push(1)
        stats = wb.stop(timeout=WAIT)
    assert stats.flushed == 1
    [failed] = [e for e in logs if e["event"] == "flusher_close_failed"]
    assert failed["error"] == "KeyboardInterrupt"
