"""The queue actor: decides when a batch goes.

Its mailbox (`_mailbox.py`) hands pushes to the policy (`_admission.py`), so
they never reach this actor as messages. It is woken for control messages
and when a full batch is waiting, and it hands a batch over when a full one
waits, on each `FlushTick`, for a pending `Flush`, and while stopping; one
batch in flight at a time in each lane.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

import pykka
from pykka.messages import ProxyCall, ProxyGetAttr, ProxySetAttr

from wbactor._log import UNKNOWN_MESSAGE
from wbactor._messages import (
    BatchDropped,
    BatchFlushed,
    BatchReady,
    Dispatched,
    Flush,
    FlushPending,
    FlushTick,
    Push,
    PushMany,
    Schedule,
    tell_quietly,
)

if TYPE_CHECKING:
    from types import TracebackType

    from wbactor._admission import Admission
    from wbactor._clock import Clock
    from wbactor._drops import ActorThreads, DropReporter
    from wbactor._ledger import Ledger
    from wbactor._log import DropLog, QueueLog
    from wbactor._mailbox import Mailbox

__all__ = ["QueueActor", "QueueMessage", "QueueRef"]

T = TypeVar("T")

QueueMessage: TypeAlias = (
    Push[T] | PushMany[T] | Flush | FlushTick | ProxyCall | ProxyGetAttr | ProxySetAttr
)
"""What the queue's ref may be told: pushes of its item type, `Flush`,
`FlushTick` and pykka's own proxy messages."""


class QueueRef(pykka.ActorRef["QueueActor[Any]"], Generic[T]):
    """The queue's `pykka.ActorRef`, typed by its items, with a short path for pushes.

    `tell(Push(item))` and `tell(PushMany(items))` hand the items straight to
    the policy, without building pykka's envelope; every other message and
    method behaves exactly as pykka's. `wb.ref` of a `WriteBehind[int]` is a
    `QueueRef[int]`, so `tell(Push("x"))` is a type error there.
    """

    def __init__(self, actor: QueueActor[Any]) -> None:
        """Reference `actor`."""
        super().__init__(actor)
        self._admission = actor.admission
        # `tell` is the policy's: a push is then one call instead of two
        # (~700 instructions of ~4,000 under callgrind).
        self.tell = self._admission.bind_tell(super().tell)  # type: ignore[method-assign,assignment]

    def tell(self, message: QueueMessage[T]) -> None:
        """Send `message` without waiting; pushes go straight to the policy.

        Raises:
            pykka.ActorDeadError: the queue actor has stopped.
        """
        # Shadowed by the instance's `tell`, set in __init__; this is the
        # same path, for a call through the class. No is_alive() check: the
        # policy raises ActorDeadError itself once the actor stopped, on its
        # closed path, off the hot path.
        self._admission.tell(message)


class QueueActor(pykka.ThreadingActor, Generic[T]):
    """Cuts batches from the ledger and hands them to the supervisor."""

    # Its on_stop calls on_drop, user code; and a process must exit even
    # if a queue was never stopped (it is drained at exit, with a bound).
    use_daemon_thread = True

    def __init__(  # noqa: PLR0913 - keyword-only wiring
        self,
        *,
        ledger: Ledger[T],
        mailbox: Mailbox[T],
        admission: Admission[T],
        drops: DropReporter[T],
        threads: ActorThreads,
        flush_interval: float,
        clock: Clock,
        timer: pykka.ActorRef[Any],
        drop_log: DropLog,
        log: QueueLog,
    ) -> None:
        """Make the queue actor over `ledger`, reading `mailbox`."""
        self._log = log
        self.ledger = ledger
        self.mailbox = mailbox
        self.admission = admission
        self._drops = drops
        self._threads = threads
        super().__init__()
        self._actor_ref = QueueRef(self)
        self._flush_interval = flush_interval
        self._clock = clock
        self._timer = timer
        self._drop_log = drop_log
        # One per lane, lane 0 first; set before any batch can be cut.
        self.supervisors: list[pykka.ActorRef[Any]] = []
        self._tick = FlushTick()  # the timer's; a told FlushTick is not rescheduled
        # A tick that found items queued behind a batch in flight is owed:
        # they go as soon as that batch settles, not a tick later.
        self._tick_owed = False

    def _create_actor_inbox(self) -> Any:  # type: ignore[override]
        # pykka's inbox hook is a staticmethod; ours is built from the config.
        return self.mailbox

    def on_start(self) -> None:
        """Schedule the first tick, `flush_interval` after start."""
        self._threads.enter()
        self._schedule_tick()

    def on_stop(self) -> None:
        """Account for what is left, fail pending flushes, stop the other actors.

        After `WriteBehind.stop()` nothing is left. If the actor is stopped
        some other way (`wb.ref.stop()`, `ActorRegistry.stop_all()`), what
        is still queued or in flight is dropped with `closed`, not lost.
        """
        self._threads.leave()
        self.ledger.mark_stopped()
        futures = self.ledger.take_flushes()
        for future in futures:
            error = pykka.ActorDeadError(f"{self} stopped before the flush completed")
            future.set_exception((pykka.ActorDeadError, error, None))
        self._drops.report(*self.ledger.abandon())
        self._drop_log.flush_all()
        for ref in (*self.supervisors, self._timer):
            ref.stop(block=False)

    def on_failure(
        self,
        exception_type: type[BaseException] | None,  # noqa: ARG002 - pykka's hook
        exception_value: BaseException | None,  # noqa: ARG002
        traceback: TracebackType | None,  # noqa: ARG002
    ) -> None:
        """Clean up as on a stop: a failure here is a bug, but loses nothing."""
        self.on_stop()

    def on_receive(self, message: Any) -> None:
        """Hand over batches when one is due."""
        cls = message.__class__
        if cls is BatchReady:
            self._dispatch(force=False)
        elif cls is BatchFlushed or cls is BatchDropped or cls is FlushPending:
            # The ledger answers flushes as batches settle; while one waits,
            # partial batches go too.
            self._dispatch(force=self.ledger.flush_pending())
        elif cls is FlushTick:
            self.ledger.mark_tick()
            self._drop_log.flush_due()
            self._tick_owed = True
            self._dispatch(force=True)
            if message is self._tick:
                self._schedule_tick()
        else:
            self._log.logger.warning(UNKNOWN_MESSAGE, message_type=cls.__name__)

    def _dispatch(self, *, force: bool) -> None:
        ledger = self.ledger
        lanes = ledger.take(force=force or self._tick_owed)
        if lanes:
            self._tick_owed = False
            supervisors = self.supervisors
            for lane in lanes:
                tell_quietly(supervisors[lane], Dispatched())
        elif not ledger.depth():
            self._tick_owed = False

    def _schedule_tick(self) -> None:
        now = self._clock.now()
        self._tick = FlushTick()
        schedule = Schedule(now + self._flush_interval, self.actor_ref, self._tick, now)
        tell_quietly(self._timer, schedule)
