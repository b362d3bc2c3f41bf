"""The queue actor: decides when a batch goes, and answers `Flush`.

Its mailbox (`_mailbox.py`) hands pushes to the policy (`_admission.py`), so
they never reach this actor as messages. It is woken for control messages
and when a full batch is waiting, and it hands a batch over when a full one
waits, on each `FlushTick`, for a pending `Flush`, and while stopping; one
batch in flight at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pykka

from wbactor._log import UNKNOWN_MESSAGE, logger
from wbactor._messages import (
    AwaitFlush,
    BatchDropped,
    BatchFlushed,
    BatchReady,
    Dispatched,
    FlushTick,
    Schedule,
    tell_quietly,
)

if TYPE_CHECKING:
    from types import TracebackType

    from wbactor._admission import Admission
    from wbactor._clock import Clock
    from wbactor._drops import ActorThreads, DropReporter
    from wbactor._ledger import Ledger
    from wbactor._log import DropLog
    from wbactor._mailbox import Mailbox

__all__ = ["QueueActor", "QueueRef"]

T = TypeVar("T")


class QueueRef(pykka.ActorRef["QueueActor[Any]"]):
    """The queue's `pykka.ActorRef`, with a short path for pushes.

    `tell(Push(item))` and `tell(PushMany(items))` hand the items straight to
    the policy, without building pykka's envelope; every other message and
    method behaves exactly as pykka's.
    """

    def __init__(self, actor: QueueActor[Any]) -> None:
        """Reference `actor`."""
        super().__init__(actor)
        self._admission = actor.admission
        # `tell` is the policy's: a push is then one call instead of two
        # (~700 instructions of ~4,000 under callgrind).
        self.tell = self._admission.bind_tell(super().tell)  # type: ignore[method-assign,assignment]

    def tell(self, message: Any) -> None:
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
    ) -> None:
        """Make the queue actor over `ledger`, reading `mailbox`."""
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
        self.supervisor: pykka.ActorRef[Any] | None = None  # set before start
        self._waiters: list[AwaitFlush] = []  # in target order
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
        futures = self.mailbox.take_flushes()
        futures += [w.reply_to for w in self._waiters if w.reply_to is not None]
        self._waiters.clear()
        for future in futures:
            error = pykka.ActorDeadError(f"{self} stopped before the flush completed")
            future.set_exception((pykka.ActorDeadError, error, None))
        self._drops.report(*self.ledger.abandon())
        self._drop_log.flush_all()
        for ref in (self.supervisor, self._timer):
            if ref is not None:
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
        """Hand over batches when one is due; answer flushes when done."""
        cls = message.__class__
        if cls is BatchReady:
            self._dispatch(force=False)
        elif cls is BatchFlushed or cls is BatchDropped:
            self._settle()
        elif cls is AwaitFlush:
            self._waiters.append(message)
            self._settle()
        elif cls is FlushTick:
            self.ledger.mark_tick()
            self._drop_log.flush_due()
            self._tick_owed = True
            self._dispatch(force=True)
            if message is self._tick:
                self._schedule_tick()
        else:
            logger.warning(UNKNOWN_MESSAGE, message_type=cls.__name__)

    def _settle(self) -> None:
        """Answer the flushes that are done; keep batches going for the rest."""
        waiters = self._waiters
        if waiters:
            settled = self.ledger.settled()
            done = 0
            while done < len(waiters) and waiters[done].target <= settled:
                reply_to = waiters[done].reply_to
                if reply_to is not None:
                    reply_to.set(None)
                done += 1
            del waiters[:done]
        self._dispatch(force=bool(waiters))

    def _dispatch(self, *, force: bool) -> None:
        ledger = self.ledger
        if ledger.take(force=force or self._tick_owed):
            self._tick_owed = False
            assert self.supervisor is not None  # noqa: S101 - set before start
            tell_quietly(self.supervisor, Dispatched())
        elif not ledger.depth():
            self._tick_owed = False

    def _schedule_tick(self) -> None:
        deadline = self._clock.now() + self._flush_interval
        self._tick = FlushTick()
        tell_quietly(self._timer, Schedule(deadline, self.actor_ref, self._tick))
