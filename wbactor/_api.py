"""The `WriteBehind` handle and `start()`, which wires the actors together."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pykka
from pykka.messages import ProxySetAttr

from wbactor._admission import admission_for
from wbactor._clock import MonotonicClock
from wbactor._drops import ActorThreads, DropReporter
from wbactor._errors import QueueClosedError
from wbactor._ledger import Ledger
from wbactor._log import QUEUE_STARTED, QUEUE_STOPPED, DropLog, logger
from wbactor._mailbox import Mailbox
from wbactor._messages import Flush
from wbactor._queue import QueueActor, QueueRef
from wbactor._supervisor import SupervisorActor
from wbactor._timer import TimerActor

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from wbactor._admission import Admission
    from wbactor._clock import Clock
    from wbactor._config import Config
    from wbactor._stats import Stats

__all__ = ["WriteBehind", "start"]

T = TypeVar("T")


def start(config: Config[T]) -> WriteBehind[T]:
    """Start a queue for `config`: its queue, timer, supervisor and flusher actors.

    With `flusher_factory`, the first flusher is made here, so a factory that
    fails raises from `start()`.
    """
    clock: Clock = config.clock if config.clock is not None else MonotonicClock()
    first = config.flusher_factory() if config.flusher_factory else config.flusher
    assert first is not None  # noqa: S101 - Config guarantees one of them
    drop_log = DropLog(clock)
    threads = ActorThreads()
    drops: DropReporter[T] = DropReporter(drop_log, config.on_drop, threads)
    ledger: Ledger[T] = Ledger(config, clock, threads)
    admission = admission_for(config, ledger, drops)
    timer = TimerActor.start(clock)
    queue_ref: QueueRef = QueueActor.start(  # type: ignore[assignment]
        ledger=ledger,
        mailbox=Mailbox(ledger, admission),
        admission=admission,
        drops=drops,
        threads=threads,
        flush_interval=config.flush_interval,
        clock=clock,
        timer=timer,
        drop_log=drop_log,
    )
    supervisor: pykka.ActorRef[Any] = SupervisorActor.start(
        config=config,
        first_flusher=first,
        ledger=ledger,
        drops=drops,
        threads=threads,
        clock=clock,
        timer=timer,
        queue=queue_ref,
    )
    # The two refer to each other, so the queue learns its supervisor by a
    # message, which precedes any batch the queue could cut.
    queue_ref.ask(ProxySetAttr(attr_path=("supervisor",), value=supervisor))
    logger.info(
        QUEUE_STARTED,
        capacity=config.capacity,
        batch_size=config.batch_size,
        flush_interval=config.flush_interval,
        policy=config.policy.value,
        max_retries=config.max_retries,
        flush_timeout=config.flush_timeout,
        block_timeout=config.block_timeout,
    )
    return WriteBehind(
        ledger=ledger,
        admission=admission,
        drops=drops,
        threads=threads,
        ref=queue_ref,
        supervisor=supervisor,
        timer=timer,
        drop_log=drop_log,
    )


class WriteBehind(Generic[T]):
    """A running queue: push items, flush, read stats, stop.

    Made by `wbactor.start()`. Usable as a context manager that stops the queue
    on exit.
    """

    def __init__(  # noqa: PLR0913 - keyword-only wiring
        self,
        *,
        ledger: Ledger[T],
        admission: Admission[T],
        drops: DropReporter[T],
        threads: ActorThreads,
        ref: QueueRef,
        supervisor: pykka.ActorRef[Any],
        timer: pykka.ActorRef[Any],
        drop_log: DropLog,
    ) -> None:
        """Wrap running actors; use `wbactor.start()` instead."""
        self._ledger = ledger
        self._admission = admission
        self._drops = drops
        self._threads = threads
        self._ref = ref
        self._supervisor = supervisor
        self._timer = timer
        self._drop_log = drop_log
        self._stop_lock = threading.Lock()
        self._final: Stats | None = None

    @property
    def ref(self) -> pykka.ActorRef[Any]:
        """The queue actor's ref: `wb.ref.tell(wbactor.Push(item))` pushes."""
        return self._ref

    def push(self, item: T, timeout: float | None = None) -> None:
        """Queue `item` from plain code, under the policy.

        Under `Policy.BLOCK` waits up to `timeout` seconds (None: until room
        or stop) for room; other policies never wait.

        Raises:
            QueueClosedError: the queue is stopping or stopped.
            PushTimeoutError: `Policy.BLOCK` found no room within `timeout`.
        """
        self._admission.push(item, timeout)

    def depth(self) -> int:
        """Return the items queued, not counting the batch in flight."""
        return self._ledger.depth()

    def flush(self, timeout: float | None = None) -> None:
        """Return when every item pushed before the call is flushed or dropped.

        Raises:
            TimeoutError: not done within `timeout` seconds (the flush goes on).
            QueueClosedError: the queue is stopping or stopped.
            RuntimeError: called from a flusher or `on_drop` running on one
                of the queue's own actors, where it would wait for itself.
        """
        self._threads.check_not_current("flush()")
        if self._ledger.closed:
            msg = "the queue is stopping or stopped; use stop() to drain it"
            raise QueueClosedError(msg)
        try:
            self._ref.ask(Flush(), timeout=timeout)
        except pykka.Timeout:
            msg = f"flush not done within {timeout} s"
            raise TimeoutError(msg) from None
        except pykka.ActorDeadError:
            msg = "the queue stopped before the flush completed"
            raise QueueClosedError(msg) from None

    def stats(self) -> Stats:
        """Return a consistent snapshot of the counters."""
        stats, evicted = self._ledger.stats()
        if evicted is not None:
            self._drops.report(*evicted)
        return stats

    def stop(self, timeout: float | None = None) -> Stats:
        """Drain the queue, then stop every actor; return the final `Stats`.

        Items keep being flushed in `batch_size` batches, with retries, until
        none is left or `timeout` seconds pass; what is left then is dropped
        with `closed`. New items are refused from the start of the call.
        Idempotent: later calls return the same `Stats`.

        Raises:
            RuntimeError: called from a flusher or `on_drop` running on one
                of the queue's own actors, where it would wait for itself.
        """
        self._threads.check_not_current("stop()")
        with self._stop_lock:
            if self._final is not None:
                return self._final
            deadline = None if timeout is None else time.monotonic() + timeout
            self._ledger.close()
            if not self._drain(deadline):
                self._drops.report(*self._ledger.abandon())
            # The queue's on_stop stops the supervisor and the timer too; stop
            # them here as well so stop() returns with all of them stopped.
            for ref in (self._supervisor, self._ref, self._timer):
                ref.stop()
            self._drop_log.flush_all()
            final = self.stats()
            logger.info(
                QUEUE_STOPPED,
                pushed=final.pushed,
                flushed=final.flushed,
                coalesced=final.coalesced,
                dropped={r.value: n for r, n in final.dropped.items()},
                retries=final.retries,
                restarts=final.restarts,
                batches=final.batches,
                depth=final.depth,
                in_flight=final.in_flight,
                oldest_age=final.oldest_age,
            )
            self._final = final
            return final

    def _drain(self, deadline: float | None) -> bool:
        """Wait for every accepted item to settle; return whether it did."""
        future = self._ref.ask(Flush(), block=False)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            future.get(timeout=remaining)
        except pykka.Timeout:
            return False
        except pykka.ActorDeadError:
            pass  # stopped some other way: its on_stop accounted for the rest
        return True

    def wait_for(self, predicate: Callable[[Stats], bool], timeout: float) -> Stats:
        """Wait until `predicate(stats)` holds after a flush outcome.

        For tests: outcomes are batch results, failures, restarts and
        dropped batches. Raises TimeoutError if it does not hold in time.
        """
        stats, evicted = self._ledger.wait_progress(predicate, timeout)
        if evicted is not None:
            self._drops.report(*evicted)
        if stats is None:
            msg = f"condition not met within {timeout} s; last {self.stats()}"
            raise TimeoutError(msg)
        return stats

    def __enter__(self) -> WriteBehind[T]:
        """Return the queue; `stop()` runs on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the queue, draining it."""
        self.stop()
