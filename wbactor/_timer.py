"""The timer actor: ticks, retry backoffs and flush deadlines.

Other actors tell it `Schedule(deadline, target, message)`; at `deadline` on
the `Clock` it tells `message` to `target`. One-shot only: the queue actor
schedules its next `FlushTick` when it handles one, so ticks never pile up.
Nothing in wbactor sleeps in an actor to wait out a delay: the timer's inbox
waits on the clock for the earliest deadline or the next message, whichever
comes first.
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
                if deadline is not None and clock.now() >= deadline:
                    return _DUE
                clock.wait(self._cond, deadline)

    def empty(self) -> bool:
        return not self._messages


class TimerActor(pykka.ThreadingActor):
    """Sends scheduled messages when their deadline comes on the clock."""

    def __init__(self, clock: Clock) -> None:
        """Make a timer on `clock`."""
        self._timer_inbox = _TimerInbox(clock)
        super().__init__()
        self._clock = clock
        self._heap: list[tuple[float, int, pykka.ActorRef[Any], Any]] = []
        self._seq = itertools.count()  # ties keep scheduling order

    def _create_actor_inbox(self) -> Any:  # type: ignore[override]
        # pykka's inbox hook is a staticmethod; ours needs the clock.
        return self._timer_inbox

    def on_receive(self, message: Any) -> None:
        """Add a schedule, or send what is due."""
        if isinstance(message, Schedule):
            heapq.heappush(
                self._heap,
                (message.deadline, next(self._seq), message.target, message.message),
            )
        elif not isinstance(message, _Due):
            return
        self._send_due()

    def _send_due(self) -> None:
        heap, now = self._heap, self._clock.now()
        while heap and heap[0][0] <= now:
            _, _, target, message = heapq.heappop(heap)
            tell_quietly(target, message)
        self._timer_inbox.next_deadline = heap[0][0] if heap else None
