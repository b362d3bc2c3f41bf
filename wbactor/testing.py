"""Helpers for testing code that uses wbactor, without sleeping.

- `ManualClock`: a `wbactor.Clock` that moves only when told; pass it as
  `Config(clock=...)` and `advance()` it to fire ticks, retry backoffs and
  flush deadlines.
- `RecordingFlusher`: keeps every batch it is given; tests wait on it.
- `FlakyFlusher`: fails its first attempts, then records like the above.
- `GatedFlusher`: blocks each flush until released, to simulate a hung store.
- `DropRecorder`: an `on_drop` that keeps every `(item, reason)`; tests wait
  on it.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

    from wbactor._stats import DropReason

__all__ = [
    "DropRecorder",
    "FlakyFlusher",
    "GatedFlusher",
    "ManualClock",
    "RecordingFlusher",
]

T = TypeVar("T")

_SETTLE_TIMEOUT = 5.0


class ManualClock:
    """A clock that stands still until `advance()` moves it.

    `advance(seconds)` wakes every wbactor timer whose deadline falls due and
    returns once every timer on this clock is waiting again for a deadline
    still ahead (or after 5 s, if one is stuck): everything that fell due has
    been sent by then. The actors that receive it handle it asynchronously,
    so wait for the effect (`RecordingFlusher.wait_for_items`,
    `WriteBehind.wait_for`). A test reads like a timeline:

    ```python
    clock = ManualClock()
    wb = wbactor.start(wbactor.Config(capacity=10, flusher=f, clock=clock))
    wb.ref.tell(wbactor.Push(1))
    clock.advance(1.0)  # the first tick is sent: the item gets flushed
    ```
    """

    def __init__(self, start: float = 0.0) -> None:
        """Start the clock at `start` seconds."""
        self._now = float(start)
        self._lock = threading.Condition()
        self._timers: dict[threading.Condition, threading.Thread] = {}
        self._waiting: dict[threading.Condition, float | None] = {}

    def now(self) -> float:
        """Return the current manual time."""
        return self._now

    def wait(self, condition: threading.Condition, deadline: float | None) -> None:
        """Wait on `condition` until notified or until `advance()` passes `deadline`."""
        with self._lock:
            if deadline is not None and deadline <= self._now:
                return
            self._timers[condition] = threading.current_thread()
            self._waiting[condition] = deadline
            self._lock.notify_all()
        try:
            condition.wait()
        finally:
            with self._lock:
                self._waiting.pop(condition, None)

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` and fire what falls due.

        Raises:
            ValueError: `seconds` is negative.
        """
        if seconds < 0:
            msg = f"time cannot go back: advance({seconds!r})"
            raise ValueError(msg)
        with self._lock:
            self._now += seconds
            now = self._now
            due = [c for c, d in self._waiting.items() if d is not None and d <= now]
        for cond in due:
            with cond:
                cond.notify_all()
        give_up = time.monotonic() + _SETTLE_TIMEOUT
        with self._lock:
            while self._unsettled(now):
                if time.monotonic() >= give_up:
                    return
                # Woken when a timer waits again; the timeout only covers a
                # timer thread that ends instead.
                self._lock.wait(0.05)

    def _unsettled(self, now: float) -> bool:
        """Whether a live timer is not yet waiting for a deadline after `now`."""
        for cond, thread in list(self._timers.items()):
            if not thread.is_alive():
                del self._timers[cond]
                continue
            if cond not in self._waiting:
                return True  # busy: it checks what is due before it waits
            deadline = self._waiting[cond]
            if deadline is not None and deadline <= now:
                return True  # notified, not yet woken
        return False


class RecordingFlusher(Generic[T]):
    """A flusher that keeps every batch it is given, for assertions."""

    def __init__(self) -> None:
        """Start with no batches."""
        self._cond = threading.Condition()
        self.batches: list[list[T]] = []
        """Every batch flushed, in order (copies)."""

    def flush(self, batch: list[T]) -> None:
        """Record `batch`."""
        with self._cond:
            self.batches.append(list(batch))
            self._cond.notify_all()

    @property
    def items(self) -> list[T]:
        """Every item flushed, in order."""
        with self._cond:
            return [item for batch in self.batches for item in batch]

    def wait_for_items(self, count: int, timeout: float = 5.0) -> list[T]:
        """Wait until at least `count` items were flushed; return them all.

        Raises:
            TimeoutError: fewer than `count` after `timeout` seconds.
        """
        return self._wait(lambda: sum(map(len, self.batches)) >= count, timeout, count)

    def wait_for_batches(self, count: int, timeout: float = 5.0) -> list[T]:
        """Wait until at least `count` batches were flushed; return the items.

        Raises:
            TimeoutError: fewer than `count` after `timeout` seconds.
        """
        return self._wait(lambda: len(self.batches) >= count, timeout, count)

    def _wait(self, done: Callable[[], bool], timeout: float, count: int) -> list[T]:
        with self._cond:
            if not self._cond.wait_for(done, timeout):
                msg = f"wanted {count}, have {len(self.batches)} batches in {timeout} s"
                raise TimeoutError(msg)
        return self.items


class FlakyFlusher(RecordingFlusher[T]):
    """Fails its first `failures` attempts, then records batches.

    `attempts` counts every call, failed or not.
    """

    def __init__(
        self,
        failures: int = 1,
        error: Callable[[], BaseException] = lambda: RuntimeError("flaky store"),
    ) -> None:
        """Fail `failures` attempts with `error()`, then succeed."""
        super().__init__()
        self.failures = failures
        self.error = error
        self.attempts = 0

    def flush(self, batch: list[T]) -> None:
        """Raise for the first `failures` calls, then record `batch`."""
        with self._cond:
            self.attempts += 1
            failing = self.attempts <= self.failures
            self._cond.notify_all()
        if failing:
            raise self.error()
        super().flush(batch)

    def wait_for_attempts(self, count: int, timeout: float = 5.0) -> None:
        """Wait until `flush` was called at least `count` times.

        Raises:
            TimeoutError: fewer calls after `timeout` seconds.
        """
        self._wait(lambda: self.attempts >= count, timeout, count)


class GatedFlusher(RecordingFlusher[T]):
    """Blocks in every flush until `release()`; `entered` is set on each call."""

    def __init__(self) -> None:
        """Start closed: flushes block."""
        super().__init__()
        self.entered = threading.Event()
        """Set when a flush call starts (cleared by the test to see the next)."""
        self._gate = threading.Event()

    def flush(self, batch: list[T]) -> None:
        """Wait for the gate to open, then record `batch`."""
        self.entered.set()
        self._gate.wait()
        super().flush(batch)

    def release(self) -> None:
        """Open the gate: blocked and future flushes go through."""
        self._gate.set()


class DropRecorder(Generic[T]):
    """An `on_drop` that keeps every `(item, reason)` it is given, for assertions.

    Pass it as `Config(on_drop=...)`. The queue calls it from producers' and
    its own threads; every read returns a copy. A call takes no lock unless a
    `wait_for` is waiting: producers flooding a full queue each call it once
    per refused item, and a lock there would make them queue up for it.
    """

    def __init__(self) -> None:
        """Start with no drops."""
        self._cond = threading.Condition()
        self._calls: list[tuple[T, DropReason]] = []
        self._waiting = 0  # wait_for calls waiting, changed with the lock held

    def __call__(self, item: T, reason: DropReason) -> None:
        """Record that `item` was dropped for `reason`."""
        self._calls.append((item, reason))  # atomic under the GIL
        # A waiter counts itself (lock held) before it reads the calls, so it
        # either sees this one or is counted here and is woken.
        if self._waiting:
            with self._cond:
                self._cond.notify_all()

    @property
    def calls(self) -> list[tuple[T, DropReason]]:
        """Every `(item, reason)` pair recorded, in order (a copy)."""
        with self._cond:
            return list(self._calls)

    @property
    def items(self) -> list[T]:
        """Every item dropped, in order."""
        with self._cond:
            return [item for item, _ in self._calls]

    @property
    def reasons(self) -> list[DropReason]:
        """The reason of every drop, in order."""
        with self._cond:
            return [reason for _, reason in self._calls]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[tuple[T, DropReason]]:
        """Wait until at least `count` drops were recorded; return every pair.

        Raises:
            TimeoutError: fewer than `count` after `timeout` seconds.
        """
        with self._cond:
            self._waiting += 1
            try:
                done = self._cond.wait_for(lambda: len(self._calls) >= count, timeout)
            finally:
                self._waiting -= 1
            if not done:
                msg = f"wanted {count}, have {len(self._calls)} drops in {timeout} s"
                raise TimeoutError(msg)
            return list(self._calls)
