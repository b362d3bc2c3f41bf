"""Drop reporting and the actor-thread guard: what every other room stands on.

`DropReporter.report` hands dropped items to `on_drop` and the aggregated
`items_dropped` log, always outside the ledger's lock (an `on_drop` that
pushes back must not deadlock). `ActorThreads` knows which threads run this
queue's actors, so user code on them is treated as the queue's own: it may
not wait for the queue (which waits for it), and what it raises must not
escape into pykka.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Generic, TypeVar

from wbactor._log import ON_DROP_FAILED, describe
from wbactor._ticks import Ticks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from wbactor._log import DropLog, QueueLog
    from wbactor._stats import DropReason

__all__ = ["ActorThreads", "DropReporter"]

T = TypeVar("T")


class ActorThreads:
    """The threads of one queue's actors: they run user code for the queue."""

    def __init__(self) -> None:
        """Start with no thread."""
        self._idents: set[int] = set()

    def enter(self) -> None:
        """Note that the calling thread is one of the queue's actors."""
        self._idents.add(threading.get_ident())

    def leave(self) -> None:
        """Note that the calling actor thread is done."""
        self._idents.discard(threading.get_ident())

    def forget(self) -> None:
        """Forget every thread (in a forked child: their ids may be reused)."""
        self._idents = set()

    def current(self) -> bool:
        """Return whether the calling thread is one of the queue's actors."""
        return threading.get_ident() in self._idents

    def check_not_current(self, what: str) -> None:
        """Raise RuntimeError if called from one of the queue's actor threads.

        `flush()` and `stop()` wait for the actors; called from a flusher or
        an `on_drop` running on one of them, they would wait for themselves.
        """
        if self.current():
            msg = (
                f"{what} called from inside the queue (a flusher, flusher_factory "
                "or on_drop running on one of its actors) would wait for itself; "
                "call it from another thread"
            )
            raise RuntimeError(msg)


class DropReporter(Generic[T]):
    """Counts drops into the log's aggregate and hands each item to `on_drop`."""

    def __init__(
        self,
        drop_log: DropLog,
        on_drop: Callable[[T, DropReason], object] | None,
        threads: ActorThreads,
        log: QueueLog,
    ) -> None:
        """Report to `drop_log` and `on_drop`; `threads` decides what may escape."""
        self._log = log
        self._drop_log = drop_log
        # Items handed over so far (to `on_drop`, if any): compared with the
        # drops the ledger counted, they tell whether a report is still due.
        # One item (a refusal, an eviction) ticks without a lock; more are
        # added under `_told`, which a waiter holds to read both.
        self._told = threading.Condition()
        self._reported_one = Ticks()
        self._reported_many = 0
        self._waiting = 0  # wait_reported calls waiting, changed under _told
        self._on_drop = on_drop
        self._threads = threads

    def report(self, items: Iterable[T], reason: DropReason) -> None:
        """Log and hand dropped items to `on_drop`; call it without the lock."""
        if items.__class__ is not list:
            items = list(items)
        if not items:
            return
        try:
            self._hand_over(items, reason)
        finally:
            if len(items) == 1:
                self._reported_one.tick()
                # A waiter counts itself (under _told) before it reads the
                # count: it saw this tick, or it is counted here and woken.
                if self._waiting:
                    with self._told:
                        self._told.notify_all()
            else:
                with self._told:
                    self._reported_many += len(items)
                    self._told.notify_all()

    def _reported(self) -> int:
        """Return the items handed over so far (`_told` held)."""
        return self._reported_many + self._reported_one.read()

    def wait_reported(self, counted: Callable[[], int], timeout: float) -> bool:
        """Wait until every drop `counted()` returns has been reported."""

        def done() -> bool:
            return self._reported() >= counted()

        with self._told:
            self._waiting += 1
            try:
                return self._told.wait_for(done, timeout)
            finally:
                self._waiting -= 1

    def _hand_over(self, items: list[T], reason: DropReason) -> None:
        self._drop_log.note(reason, len(items))
        on_drop = self._on_drop
        if on_drop is None:
            return
        for item in items:
            try:
                on_drop(item, reason)
            except BaseException as error:
                # A KeyboardInterrupt or SystemExit belongs to a producer's
                # thread; in an actor it would make pykka stop every actor.
                if not isinstance(error, Exception) and not self._threads.current():
                    raise
                self._log.logger.warning(
                    ON_DROP_FAILED, reason=reason.value, error=describe(error)
                )
