"""The flusher actor: calls the user's flusher, one batch at a time.

It flushes the batch in flight, then keeps taking full batches straight from
the ledger while they are waiting, so a healthy queue under a backlog needs no
actor message per batch. An async flusher (`async def flush`, or a flush that
returns an awaitable) is run to completion on an event loop the actor owns
for its whole life. Whatever the flusher raises, `BaseException`
included, is caught and reported to the supervisor as `BatchFailed`: nothing
escapes into pykka, which would stop every actor in the process.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pykka

from wbactor._errors import WorkerDiedError  # worker-process wiring
from wbactor._log import BATCH_FLUSHED, FLUSHER_CLOSE_FAILED, describe
from wbactor._messages import (
    BatchFailed,
    BatchFlushed,
    FlusherDied,
    RunBatches,
    Stale,
    tell_quietly,
)

if TYPE_CHECKING:
    import threading
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from wbactor._config import FlusherLike
    from wbactor._drops import ActorThreads
    from wbactor._ledger import Ledger
    from wbactor._log import QueueLog

__all__ = ["FlusherActor", "as_flush_function"]

T = TypeVar("T")


def as_flush_function(flusher: FlusherLike[T]) -> Callable[[list[T]], object]:
    """Return the callable that flushes a batch: `flusher.flush` or `flusher`."""
    flush = getattr(flusher, "flush", None)
    if callable(flush):
        return flush  # type: ignore[no-any-return]
    return flusher  # type: ignore[return-value]


def close_flusher(flusher: object, log: QueueLog) -> None:
    """Call the flusher's `close()`, if it has one; log what it raises."""
    try:
        close = getattr(flusher, "close", None)
        if callable(close):
            close()
    except BaseException as error:  # noqa: BLE001 - in an actor: must not escape
        log.logger.warning(FLUSHER_CLOSE_FAILED, error=describe(error))


class FlusherActor(pykka.ThreadingActor, Generic[T]):
    """Runs the user's flusher for one supervisor epoch."""

    # A flush hung in user code must not keep the process alive at exit.
    use_daemon_thread = True

    def __init__(  # noqa: PLR0913 - keyword-only wiring
        self,
        *,
        flusher: FlusherLike[T],
        epoch: int,
        ledger: Ledger[T],
        threads: ActorThreads,
        log: QueueLog,
        supervisor: pykka.ActorRef[Any],
        retired: threading.Event,
        owns_flusher: bool,
    ) -> None:
        """Make the flusher actor of `epoch`."""
        super().__init__()
        self._flusher = flusher
        self._flush = as_flush_function(flusher)
        self._epoch = epoch
        self._ledger = ledger
        self._threads = threads
        self._log = log
        self._supervisor = supervisor
        self._retired = retired
        self._owns_flusher = owns_flusher  # made for it by flusher_factory
        self._failed = False  # an attempt failed: this actor is done
        self._loop: asyncio.AbstractEventLoop | None = None  # for async flushers

    def on_start(self) -> None:
        """Note this thread runs user code for the queue."""
        self._threads.enter()

    def on_receive(self, message: Any) -> None:
        """Run batches when the supervisor says so, until an attempt fails."""
        if (
            isinstance(message, RunBatches)
            and message.epoch == self._epoch
            and not self._failed
        ):
            self._run()

    def _run(self) -> None:
        epoch, ledger, flush = self._epoch, self._ledger, self._flush
        batch = ledger.start_attempt(epoch)
        while batch is not None:
            started = time.perf_counter()
            try:
                result = flush(batch)
                if inspect.isawaitable(result):
                    self._await(result)
            except BaseException as error:  # noqa: BLE001 - every failure is retried
                # Run nothing more: until the supervisor retires this
                # epoch, a RunBatches already queued here would retry
                # the batch at once, beside the retry the supervisor makes.
                self._failed = True
                # worker-process wiring: a worker's death is the flusher's death
                # (cause `died`), unless the supervisor killed it on purpose.
                if isinstance(error, WorkerDiedError) and not self._retired.is_set():
                    tell_quietly(self._supervisor, FlusherDied(epoch, error))
                    return
                tell_quietly(self._supervisor, BatchFailed(epoch, error))
                return
            duration = time.perf_counter() - started
            after = ledger.complete(epoch)
            if isinstance(after, Stale):
                return  # retired while flushing: the result is not ours to count
            # Logged once counted: a late result of an abandoned attempt is not.
            self._log.hot().debug(
                BATCH_FLUSHED, batch_size=len(batch), duration=duration
            )
            batch = after
        tell_quietly(self._supervisor, BatchFlushed(epoch))

    def _await(self, awaitable: Awaitable[object]) -> None:
        """Run an async flush to completion on this actor's own event loop."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(_completed(awaitable))

    def on_stop(self) -> None:
        """Report a death unless retired; close the flusher if it is its own.

        A flusher from `flusher_factory` belongs to this actor and is closed
        here; a shared `Config.flusher` is closed by the supervisor at stop.
        """
        self._report_death()
        if self._owns_flusher:
            close_flusher(self._flusher, self._log)
        if self._loop is not None:
            self._loop.close()
        self._threads.leave()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,  # noqa: ARG002 - pykka's hook
        exception_value: BaseException | None,  # noqa: ARG002
        traceback: TracebackType | None,  # noqa: ARG002
    ) -> None:
        """Report a death (cannot happen through `flush`, which is guarded)."""
        self._report_death()
        self._threads.leave()

    def _report_death(self) -> None:
        if not self._retired.is_set():
            tell_quietly(self._supervisor, FlusherDied(self._epoch))


async def _completed(awaitable: Awaitable[object]) -> object:
    return await awaitable
