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
import contextlib
import inspect
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import pykka

from wbactor._errors import PartialFailure, WorkerDiedError
from wbactor._failures import Failure, read_failure
from wbactor._log import (
    BATCH_FLUSHED,
    BATCH_SPLIT,
    FLUSHER_CLOSE_FAILED,
    FLUSHING_FOR,
    ITEMS_REJECTED,
    OBSERVER_FAILED,
    describe,
)
from wbactor._messages import (
    STALE,
    BatchFailed,
    BatchFlushed,
    FlusherDied,
    RunBatches,
    Stale,
    tell_quietly,
)
from wbactor._stats import DropReason

if TYPE_CHECKING:
    import threading
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from wbactor._config import FlusherLike
    from wbactor._drops import ActorThreads, DropReporter
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


def close_flusher(
    flusher: object, log: QueueLog, loop: asyncio.AbstractEventLoop | None = None
) -> None:
    """Call the flusher's `close()`, if it has one; log what it raises.

    An async `close()` is run to completion on `loop` (the one its flushes
    ran on), or else on an event loop of its own, in the calling thread.
    """
    try:
        close = getattr(flusher, "close", None)
        result = close() if callable(close) else None
        if inspect.isawaitable(result):
            if loop is None:
                asyncio.run(_completed(result))
            else:
                loop.run_until_complete(_completed(result))
    except BaseException as error:  # noqa: BLE001 - in an actor: must not escape
        log.logger.warning(FLUSHER_CLOSE_FAILED, error=describe(error))


WINDOW_ITEMS = 32_768
"""Items handed to a worker process at once, in whole batches: a window."""

WINDOW_BATCHES = (8, 64)
"""The fewest and most batches a window holds, whatever the batch size.

At most 64: a hung worker is found `flush_timeout` per batch of the oldest
window after it started, so a longer window would find it later still."""


def window_batches(batch_size: int) -> int:
    """Return the batches in a window of `batch_size`-item batches."""
    fewest, most = WINDOW_BATCHES
    return max(fewest, min(most, WINDOW_ITEMS // max(1, batch_size)))


class _Windows(Protocol[T]):
    """Windows of batches handed to a flusher, written in order (`ProcessFlusher`)."""

    depth: int
    """How many windows may be out at once."""

    def submit(self, batches: list[list[T]]) -> int: ...
    def collect(self) -> tuple[int, BaseException | None]: ...


class _Pipelined(Generic[T]):
    """A flusher with `submit` and `collect`: two windows out, one queued at it."""

    depth = 2

    def __init__(self, flusher: Any) -> None:
        self.submit: Callable[[list[list[T]]], int] = flusher.submit
        self.collect: Callable[[], tuple[int, BaseException | None]] = flusher.collect


class _OneAtATime(Generic[T]):
    """A flusher with only `flush_many(batches) -> (written, error)`: one window."""

    depth = 1

    def __init__(
        self, flush_many: Callable[[list[list[T]]], tuple[int, BaseException | None]]
    ) -> None:
        self._flush_many = flush_many
        self._window: list[list[T]] = []

    def submit(self, batches: list[list[T]]) -> int:
        self._window = batches
        return len(batches)

    def collect(self) -> tuple[int, BaseException | None]:
        window, self._window = self._window, []
        return self._flush_many(window)


def _windows(flusher: object) -> _Windows[Any] | None:
    """How to hand `flusher` windows of batches, if it takes them."""
    if callable(getattr(flusher, "submit", None)) and callable(
        getattr(flusher, "collect", None)
    ):
        return _Pipelined(flusher)
    flush_many = getattr(flusher, "flush_many", None)
    return _OneAtATime(flush_many) if callable(flush_many) else None


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
        drops: DropReporter[T],
        threads: ActorThreads,
        log: QueueLog,
        classify: Callable[[BaseException], Failure],
        batch_size: int,
        supervisor: pykka.ActorRef[Any],
        retired: threading.Event,
        owns_flusher: bool,
        lane: int = 0,
    ) -> None:
        """Make the flusher actor of `lane`'s `epoch`."""
        super().__init__()
        self._flusher = flusher
        self._flush = as_flush_function(flusher)
        # A flusher that takes several batches in one call (a worker process:
        # one hand-off costs the parent up to a GIL switch interval) gets
        # windows of them, the next sent while it writes one.
        self._windows = _windows(flusher)
        self._batch_size = batch_size
        self._epoch = epoch
        self._attempts = ledger.lanes[lane]
        self._drops = drops
        self._classify = classify
        self._threads = threads
        self._log = log
        self._supervisor = supervisor
        self._retired = retired
        self._owns_flusher = owns_flusher  # made for it by flusher_factory
        self._failed = False  # an attempt failed: this actor is done
        self._loop: asyncio.AbstractEventLoop | None = None  # for async flushers

    def on_start(self) -> None:
        """Note this thread runs user code for the queue, and for which one."""
        self._threads.enter()
        FLUSHING_FOR.set(self._log.name)  # this thread's: it is the actor's own

    def on_receive(self, message: Any) -> None:
        """Run batches when the supervisor says so, until an attempt fails."""
        if (
            isinstance(message, RunBatches)
            and message.epoch == self._epoch
            and not self._failed
        ):
            self._run()

    def _run(self) -> None:
        if self._windows is not None:
            self._run_windows(self._windows)
            return
        epoch, attempts, flush = self._epoch, self._attempts, self._flush
        batch: list[T] | Stale | None = attempts.start(epoch)
        while isinstance(batch, list):
            started = time.perf_counter()
            try:
                result = flush(batch)
                if inspect.isawaitable(result):
                    self._await(result)
            except BaseException as error:  # noqa: BLE001 - every failure is handled
                self._observe(time.perf_counter() - started)
                batch = self._failed_with(error, batch)
                continue
            duration = time.perf_counter() - started
            self._observe(duration)
            after = attempts.complete(epoch)
            if isinstance(after, Stale):
                return  # retired while flushing: the result is not ours to count
            # Logged once counted: a late result of an abandoned attempt is not.
            self._log.hot().debug(
                BATCH_FLUSHED, batch_size=len(batch), duration=duration
            )
            batch = after
        if batch is None:  # idle: every batch settled
            tell_quietly(self._supervisor, BatchFlushed(self._epoch))

    def _run_windows(self, windows: _Windows[T]) -> None:
        """Hand the batches over a window at a time, until none is left or one fails.

        Up to `windows.depth` windows are out at once, so that a worker
        process has the next queued while it writes one. Batches are written
        in order; a failure stops its window at the failed batch, whose
        failure is handled as any other once every window out is back (the
        batches behind it come back unwritten and go again, in order).
        """
        epoch, attempts = self._epoch, self._attempts
        most = window_batches(self._batch_size)
        out: deque[tuple[list[list[T]], float]] = deque()  # oldest first
        held = False  # a batch would not go: collect what is out first
        while True:
            if len(out) < windows.depth and not held:
                after = sum(len(parts) for parts, _ in out)
                parts = attempts.window(epoch, most, self._batch_size, after)
                if isinstance(parts, Stale):
                    return
                if parts:
                    try:
                        sent = windows.submit(parts)
                    except BaseException as error:  # noqa: BLE001 - handled
                        if out:
                            held = True  # it is tried again, at the head
                        elif isinstance(self._failed_with(error, parts[0]), Stale):
                            return
                        continue
                    out.append((parts[:sent], time.perf_counter()))
                    continue
            if not out:
                tell_quietly(self._supervisor, BatchFlushed(epoch))  # idle
                return
            if not self._collect(windows, out):
                return
            held = False

    def _collect(
        self, windows: _Windows[T], out: deque[tuple[list[list[T]], float]]
    ) -> bool:
        """Settle the oldest window out; False if this actor is done."""
        parts, sent_at = out.popleft()
        try:
            done, error = windows.collect()
            done = max(0, min(int(done), len(parts) - (error is not None)))
        except BaseException as raised:  # noqa: BLE001 - every failure is handled
            done, error = 0, raised
        self._observe(time.perf_counter() - sent_at)
        following = len(out[0][0]) if out and error is None else 0
        if not self._attempts.complete_parts(self._epoch, done, following):
            return False  # retired meanwhile: not ours to count
        if error is None:
            return True
        # The worker skips the windows sent after the failure: they come back
        # unwritten and stay in flight behind the failed batch, in order.
        while out:
            out.popleft()
            with contextlib.suppress(BaseException):
                windows.collect()
        return not isinstance(self._failed_with(error, parts[done]), Stale)

    def _failed_with(self, error: BaseException, batch: list[T]) -> list[T] | Stale:
        """Act on a failed attempt; return what to flush next, or STALE to stop.

        PERMANENT: the culprits are isolated here, at once (bisection), and
        the next part or batch returned. TRANSIENT: the supervisor retries
        after a backoff, with a fresh flusher; this actor runs nothing more
        (a RunBatches already queued here would retry the batch at once,
        beside the supervisor's retry).
        """
        verdict = read_failure(error, len(batch), self._classify, self._log)
        permanent = verdict.kind is Failure.PERMANENT
        if verdict.failed is not None and (permanent or not verdict.failed):
            isolated = self._attempts.partly(
                self._epoch, verdict.failed, permanent=True
            )
        elif verdict.failed is not None:
            self._attempts.partly(self._epoch, verdict.failed, permanent=False)
            return self._retry_later(error)
        elif permanent:
            isolated = self._attempts.isolate(self._epoch)
        else:
            return self._retry_later(error)
        if isolated.split is not None:
            self._log.hot().debug(BATCH_SPLIT, batch_size=len(batch), parts=2)
        if isolated.rejected:
            # Of a PartialFailure, the error that rejected them, not the wrapper.
            cause = error.error if isinstance(error, PartialFailure) else error
            self._log.logger.warning(
                ITEMS_REJECTED, count=len(isolated.rejected), error=describe(cause)
            )
            self._drops.report(isolated.rejected, DropReason.REJECTED)
        if isolated.batch is None:
            tell_quietly(self._supervisor, BatchFlushed(self._epoch))
            return STALE  # idle: nothing more to run
        return isolated.batch

    def _observe(self, duration: float) -> None:
        """Tell the attempt's duration to the observers (metrics); never raise."""
        for observer in self._attempts.observers:
            try:
                observer(duration)
            except Exception as error:  # noqa: BLE001 - an exporter's bug
                self._log.logger.warning(OBSERVER_FAILED, error=describe(error))

    def _retry_later(self, error: BaseException) -> Stale:
        self._failed = True
        if isinstance(error, WorkerDiedError) and not self._retired.is_set():
            # A worker process's death is the flusher's death (cause `died`),
            # unless the supervisor killed it on purpose (a timeout).
            tell_quietly(self._supervisor, FlusherDied(self._epoch, error))
        else:
            tell_quietly(self._supervisor, BatchFailed(self._epoch, error))
        return STALE

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
            close_flusher(self._flusher, self._log, self._loop)
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
