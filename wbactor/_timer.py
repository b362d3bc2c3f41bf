"""The timer actor: ticks, retry backoffs and flush deadlines.

Other actors tell it `Schedule(deadline, target, message)`; at `deadline` on
the `Clock` it tells `message` to `target`. One-shot only: the queue actor
schedules its next `FlushTick` when it handles one, so ticks never pile up.
Nothing in wbactor sleeps in an actor to wait out a delay: the timer's inbox
waits on the clock for the earliest deadline or the next message, whichever
comes first.

A `Clock` must be monotonic. If its `now()` goes back all the same, the timer
counts the step as no time: every pending deadline moves back by the step,
so a tick or a retry due in 50 ms is still due in 50 ms, not in an hour.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

import pykka

from wbactor._messages import Envelope, Schedule, tell_quietly

if TYPE_CHECKING:
    from wbactor._clock import Clock

__all__ = ["TimerActor"]


class _Due(NamedTuple):
    """The earliest deadline may have come (internal wake-up)."""


_DUE = Envelope(_Due(), None)


class _TimerInbox:
    """A mailbox whose `get()` also returns when the next deadline comes."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._messages: deque[Any] = deque()
        self.next_deadline: float | None = None  # set by the actor's thread
        self._last_now = clock.now()

    def put(self, envelope: Any, /) -> None:
        with self._cond:
            self._messages.append(envelope)
            self._cond.notify()

    def get(self) -> Any:
        clock = self._clock
        with self._cond:
            while True:
                if self._messages:
                    return self._messages.popleft()
                deadline = self.next_deadline
                now = clock.now()
                stepped_back = now < self._last_now
                self._last_now = now
                if deadline is not None and (now >= deadline or stepped_back):
                    return _DUE  # the actor sends what is due, or shifts the heap
                clock.wait(self._cond, deadline)

    def empty(self) -> bool:
        return not self._messages


class TimerActor(pykka.ThreadingActor):
    """Sends scheduled messages when their deadline comes on the clock."""

    # A process must exit even if a queue was never stopped.
    use_daemon_thread = True

    def __init__(self, clock: Clock) -> None:
        """Make a timer on `clock`."""
        self._timer_inbox = _TimerInbox(clock)
        super().__init__()
        self._clock = clock
        self._heap: list[tuple[float, int, pykka.ActorRef[Any], Any]] = []
        self._seq = itertools.count()  # ties keep scheduling order
        self._last_now = clock.now()

    def _create_actor_inbox(self) -> Any:  # type: ignore[override]
        # pykka's inbox hook is a staticmethod; ours needs the clock.
        return self._timer_inbox

    def on_receive(self, message: Any) -> None:
        """Add a schedule, or send what is due."""
        self._absorb_step_back()
        if isinstance(message, Schedule):
            deadline = message.deadline
            if message.since is not None and message.since > self._last_now:
                # Computed before a step back that this timer has seen since.
                deadline -= message.since - self._last_now
            heapq.heappush(
                self._heap, (deadline, next(self._seq), message.target, message.message)
            )
        elif not isinstance(message, _Due):
            return
        self._send_due()

    def _absorb_step_back(self) -> None:
        """Move every deadline back by the clock's step back, if it made one."""
        now = self._clock.now()
        step = now - self._last_now
        self._last_now = now
        if step < 0 and self._heap:
            # The same shift for all keeps the heap's order.
            self._heap = [(at + step, *rest) for at, *rest in self._heap]

    def _send_due(self) -> None:
        heap, now = self._heap, self._clock.now()
        while heap and heap[0][0] <= now:
            _, _, target, message = heapq.heappop(heap)
            tell_quietly(target, message)
        self._timer_inbox.next_deadline = heap[0][0] if heap else None
