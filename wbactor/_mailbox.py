"""The queue actor's mailbox: pykka's `put`/`get`/`empty`, and nothing more.

pykka calls `put()` for every message told or asked to the queue actor, on
the sender's thread (the queue ref's own `tell` skips it for pushes). A
`Push`/`PushMany` never becomes an envelope: its items go to the policy
(`_admission.py`). Control messages (pykka's stop, asks, `Flush`, ticks,
outcomes) are queued apart and always get through.

`get()` returns a control message, or wakes the actor once when a full batch
waits and none is in flight (the ledger's `batch_ready`): never per push.
Control messages and the wake-up share the ledger's lock, so a push that
makes a batch full and a control message cannot miss each other.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pykka

from wbactor._errors import QueueClosedError
from wbactor._messages import (
    BatchReady,
    Envelope,
    Flush,
    FlushPending,
    Push,
    PushMany,
)

if TYPE_CHECKING:
    from wbactor._admission import Admission
    from wbactor._ledger import Ledger

__all__ = ["Mailbox"]

T = TypeVar("T")

_BATCH_READY = Envelope(BatchReady(), None)
_FLUSH_PENDING = Envelope(FlushPending(), None)


class Mailbox(Generic[T]):
    """The queue actor's inbox: control messages, and the full-batch wake-up."""

    def __init__(self, ledger: Ledger[T], admission: Admission[T]) -> None:
        """Queue control messages beside `ledger`; hand pushes to `admission`."""
        self._ledger = ledger
        self._admission = admission
        self._control: deque[Envelope] = deque()

    def put(self, envelope: Any, /) -> None:
        """Take a message told or asked to the queue actor."""
        message = envelope.message
        cls = message.__class__
        if cls is Push or cls is PushMany:
            if cls is Push:
                self._admission.offer(message.item)
            else:
                self._admission.offer_many(message.items)
            if envelope.reply_to is not None:
                envelope.reply_to.set(None)
            return
        ledger = self._ledger
        if ledger.forked_from is not None:
            raise QueueClosedError(ledger.fork_message())
        with ledger.lock:
            if cls is Flush:
                reply_to = envelope.reply_to
                if ledger.stopped:
                    _fail_dead(reply_to)
                    return
                # The flush covers every position taken so far: recorded
                # under the lock, on the caller's thread, when it is told.
                ledger.add_flush(reply_to)
                envelope = _FLUSH_PENDING
            self._control.append(envelope)
            ledger.wake.notify()

    def get(self) -> Any:
        """Block until a control message arrives or a full batch waits."""
        ledger = self._ledger
        with ledger.lock:
            while True:
                if self._control:
                    return self._control.popleft()
                if ledger.take_batch_ready():
                    return _BATCH_READY
                ledger.wake.wait()

    def empty(self) -> bool:
        """Return whether no control message is waiting."""
        return not self._control


def _fail_dead(reply_to: pykka.Future[Any] | None) -> None:
    if reply_to is not None:
        error = pykka.ActorDeadError("the queue actor stopped before handling Flush")
        reply_to.set_exception((pykka.ActorDeadError, error, None))
