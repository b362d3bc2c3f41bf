"""The messages wbactor's actors exchange.

Commands are imperatives (`Push`, `PushMany`, `Flush`), notifications nouns
(`FlushTick`), outcomes past tense (`BatchFlushed`, `BatchFailed`). Only the
first four are for users; the rest move between wbactor's own actors.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import pykka

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "STALE",
    "BatchFailed",
    "BatchFlushed",
    "Envelope",
    "Flush",
    "FlushTick",
    "Push",
    "PushMany",
    "Stale",
    "tell_quietly",
]

T = TypeVar("T")


def tell_quietly(ref: pykka.ActorRef[Any], message: Any) -> None:
    """Tell `message` to `ref`, doing nothing if that actor has stopped.

    Between wbactor's own actors a dead receiver only means the queue is
    stopping; raising would make pykka stop the sender too.
    """
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


class Push(Generic[T]):
    """Queue one item: `wb.ref.tell(Push(item))`.

    The producer's path: it never blocks (`Policy.BLOCK` aside) and never
    raises for a full queue; the policy decides. Treat it as immutable.
    """

    # A plain class with __slots__ and no frozen-dataclass __setattr__ dance:
    # Push is built once per item on the hottest path. Measured here (timeit,
    # 3.11): frozen slots dataclass 374 ns, mutable slots dataclass 240 ns,
    # this class ~150 ns.
    __slots__ = ("item",)
    __match_args__ = ("item",)

    item: T
    """The item to persist."""

    def __init__(self, item: T) -> None:
        self.item = item

    def __repr__(self) -> str:
        return f"Push({self.item!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Push) and self.item == other.item

    __hash__ = None  # type: ignore[assignment]  # equal by item, so unhashable


class PushMany(Generic[T]):
    """Queue many items in one message: `wb.ref.tell(PushMany(items))`.

    The items are taken in order, under the policy, as if pushed one by one,
    and lazily: the iterable is consumed a chunk at a time, so memory stays
    bounded by `capacity` whatever its length (under `Policy.BLOCK`,
    `block_timeout` bounds each item's wait). If the iterable raises, the
    items before stay accepted, `push_many_failed` is logged, and nothing
    after is taken.
    """

    __slots__ = ("items",)
    __match_args__ = ("items",)

    items: Iterable[T]
    """The items to persist, in order; iterated once, on the sender's thread."""

    def __init__(self, items: Iterable[T]) -> None:
        self.items = items

    def __repr__(self) -> str:
        return f"PushMany({self.items!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PushMany) and self.items == other.items

    __hash__ = None  # type: ignore[assignment]  # equal by item, so unhashable


class Flush(NamedTuple):
    """Flush everything queued before this message.

    `wb.ref.ask(Flush())` returns when every item pushed before it is flushed,
    coalesced or dropped; `wb.ref.tell(Flush())` only starts that.
    """


class FlushTick(NamedTuple):
    """The timer's periodic nudge: flush whatever is queued."""


class BatchFlushed(NamedTuple):
    """The flusher went idle after its batches succeeded (internal)."""

    epoch: int
    """The flusher epoch that reports it; stale ones are ignored."""


class BatchDropped(NamedTuple):
    """The batch in flight ran out of retries and was dropped (internal)."""

    epoch: int
    """The epoch now current."""


class BatchFailed(NamedTuple):
    """A flush attempt raised (internal)."""

    epoch: int
    """The flusher epoch that reports it; stale ones are ignored."""

    error: BaseException
    """What the flusher raised."""


class FlusherDied(NamedTuple):
    """The flusher actor stopped without being asked to (internal)."""

    epoch: int
    """The epoch of the actor that died."""

    error: BaseException | None = None  # worker-process wiring
    """How it died (its worker's `WorkerDiedError`), when known."""


class Dispatched(NamedTuple):
    """The queue put a batch in flight; the supervisor should run it (internal)."""


class RunBatches(NamedTuple):
    """Flush the batch in flight, then any full batches queued (internal)."""

    epoch: int
    """The epoch the supervisor gave this flusher."""


class RestartDue(NamedTuple):
    """A retry backoff ran out: start a fresh flusher (internal)."""

    epoch: int
    """The epoch to start; stale ones are ignored."""

    cause: str
    """Why the last flusher was retired: `error`, `timeout` or `died`."""


class RetireFlushers(NamedTuple):
    """Retire the flusher actor for the stop; reply with the actors to wait for.

    Asked by `WriteBehind.stop()`, which waits for them itself, with its
    deadline (internal).
    """


class WatchdogDue(NamedTuple):
    """Check whether the attempt in flight has passed `flush_timeout` (internal)."""


class Schedule(NamedTuple):
    """Ask the timer to tell `message` to `target` at `deadline` (internal)."""

    deadline: float
    """Clock time to send at; a past deadline sends at once."""

    target: pykka.ActorRef[Any]
    """Who gets the message."""

    message: Any
    """What is sent."""

    since: float | None = None
    """The clock reading `deadline` was computed from, if known. Should the
    clock step back before the timer sees this, the step counts as no time:
    the deadline moves back with it."""


class FlushPending(NamedTuple):
    """A `Flush` was recorded in the ledger (internal).

    The mailbox takes the reply future out of pykka's envelope and hands it
    to the ledger, which answers it once every item before it settled; the
    queue actor hands over partial batches until then.
    """


class BatchReady(NamedTuple):
    """A full batch is queued and the flusher is idle (internal wake-up)."""


class Envelope(NamedTuple):
    """What an actor loop reads: pykka's envelope shape (message, reply_to)."""

    message: Any
    reply_to: pykka.Future[Any] | None


class Stale:
    """Marker: the caller's epoch was replaced, so its result is not counted."""

    def __repr__(self) -> str:
        return "STALE"


STALE = Stale()
