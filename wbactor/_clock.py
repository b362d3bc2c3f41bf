"""The time source: the `Clock` protocol and the monotonic clock.

Every timer in wbactor (ticks, retry backoffs, flush deadlines) is measured on
a `Clock`, so tests can swap in `wbactor.testing.ManualClock` and move time by
hand instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "MonotonicClock"]


class Clock(Protocol):
    """Where wbactor reads the time and waits for it to pass."""

    def now(self) -> float:
        """Return the current time in seconds (any fixed origin).

        Must not go backwards. If it does, wbactor's timer counts the step
        as no time (pending deadlines move back with it) rather than waiting
        it out.
        """

    def wait(self, condition: threading.Condition, deadline: float | None) -> None:
        """Wait on `condition` until notified or until `now()` reaches `deadline`.

        The caller holds `condition`. `deadline=None` waits for a notification
        only. Returning early is allowed: callers check again.
        """


class MonotonicClock:
    """Real time, from `time.monotonic()`."""

    __slots__ = ()

    def now(self) -> float:
        """Return `time.monotonic()`."""
        return time.monotonic()

    def wait(self, condition: threading.Condition, deadline: float | None) -> None:
        """Wait on `condition` for at most the time left until `deadline`."""
        if deadline is None:
            condition.wait()
        else:
            remaining = max(0.0, deadline - time.monotonic())
            condition.wait(min(remaining, threading.TIMEOUT_MAX))
