"""The `WriteBehind` handle and `start()`, which wires the actors together."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pykka
from pykka.messages import ProxySetAttr

from wbactor import _lifecycle
from wbactor._admission import admission_for
from wbactor._clock import MonotonicClock
from wbactor._config import Policy, check_wait_timeout
from wbactor._drops import ActorThreads, DropReporter
from wbactor._errors import PushTimeoutError, QueueClosedError
from wbactor._flusher import close_flusher
from wbactor._journal import open_journal
from wbactor._ledger import Ledger
from wbactor._log import (
    QUEUE_STARTED,
    DropLog,
    QueueLog,
)
from wbactor._mailbox import Mailbox
from wbactor._messages import Flush
from wbactor._queue import QueueActor, QueueRef
from wbactor._stopping import stop_queue
from wbactor._supervisor import SharedFlusher, SupervisorActor
from wbactor._timer import TimerActor
from wbactor._waiting import off_loop, wait_settled
from wbactor._worker import new_flusher  # worker-process wiring

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from wbactor._admission import Admission
    from wbactor._clock import Clock
    from wbactor._config import Config, FlusherLike
    from wbactor._journal import Journal
    from wbactor._stats import Stats

__all__ = ["WriteBehind", "start"]

T = TypeVar("T")
R = TypeVar("R")


_APUSH_FIRST_PAUSE = 0.001
_APUSH_MAX_PAUSE = 0.01
"""Seconds between two looks for room by `apush()` under BLOCK: from the first
to the longest, doubling. The look is a `push()` that does not wait."""


def start(config: Config[T]) -> WriteBehind[T]:
    """Start a queue for `config`: its queue, timer, supervisor and flusher actors.

    With `flusher_factory`, the first flusher is made here, so a factory that
    fails raises from `start()`.
    """
    clock: Clock = config.clock if config.clock is not None else MonotonicClock()
    log = QueueLog(config.name)
    # Locked and read first: a journal another queue holds leaves nothing behind.
    journal = open_journal(config, log) if config.journal is not None else None
    try:
        firsts = _first_flushers(config, log)
    except BaseException:
        if journal is not None:
            journal.abort()
        raise
    drop_log = DropLog(clock, log)
    threads = ActorThreads()
    drops: DropReporter[T] = DropReporter(drop_log, config.on_drop, threads, log)
    ledger: Ledger[T] = Ledger(config, clock, threads)
    admission = admission_for(config, ledger, drops, log)
    if journal is not None:  # recovered items are queued before any actor runs
        journal.attach(ledger, drops)
    timer = TimerActor.start(clock)
    queue_ref: QueueRef[T] = QueueActor.start(  # type: ignore[assignment]
        ledger=ledger,
        mailbox=Mailbox(ledger, admission),
        admission=admission,
        drops=drops,
        threads=threads,
        flush_interval=config.flush_interval,
        clock=clock,
        timer=timer,
        drop_log=drop_log,
        log=log,
    )
    shared = None
    if config.flusher_factory is None:
        shared = SharedFlusher(config.flusher, config.lanes, log)
    supervisors: list[pykka.ActorRef[Any]] = [
        SupervisorActor.start(
            config=config,
            first_flusher=first,
            ledger=ledger,
            drops=drops,
            threads=threads,
            log=log.for_lane(lane, config.lanes),
            clock=clock,
            timer=timer,
            queue=queue_ref,
            lane=lane,
            shared=shared,
        )
        for lane, first in enumerate(firsts)
    ]
    # They refer to each other, so the queue learns its supervisors by a
    # message, which precedes any batch the queue could cut.
    queue_ref.ask(ProxySetAttr(attr_path=("supervisors",), value=supervisors))
    if journal is not None:
        with ledger.lock:  # recovered items: a full batch goes at once
            ledger.note_batch_ready()
    log.logger.info(
        QUEUE_STARTED,
        capacity=config.capacity,
        batch_size=config.batch_size,
        flush_interval=config.flush_interval,
        policy=config.policy.value,
        max_retries=config.max_retries,
        flush_timeout=config.flush_timeout,
        block_timeout=config.block_timeout,
        lanes=config.lanes,
        journal=None if journal is None else journal.path,
        recovered=ledger.buffer.recovered,
    )
    wb = WriteBehind(
        _Running(
            config=config,
            ledger=ledger,
            admission=admission,
            drops=drops,
            threads=threads,
            log=log,
            drop_log=drop_log,
            ref=queue_ref,
            supervisors=tuple(supervisors),
            timer=timer,
            journal=journal,
        )
    )
    _lifecycle.track(wb)
    return wb


def _first_flushers(config: Config[T], log: QueueLog) -> list[FlusherLike[T]]:
    """Return each lane's first flusher: from the factory, or the shared one.

    A factory that fails raises from here, and the flushers it made for
    the lanes before are closed (a worker process is stopped).
    """
    if config.flusher_factory is None:
        assert config.flusher is not None  # noqa: S101 - Config guarantees one of them
        return [config.flusher] * config.lanes
    made: list[FlusherLike[T]] = []
    try:
        # worker-process wiring: new_flusher() calls the factory, or spawns a worker.
        made.extend(new_flusher(config) for _ in range(config.lanes))
    except BaseException:
        for flusher in made:
            close_flusher(flusher, log)
        raise
    return made


@dataclass(frozen=True, slots=True, kw_only=True)
class _Running(Generic[T]):
    """The parts of a running queue that its handle drives."""

    config: Config[T]
    ledger: Ledger[T]
    admission: Admission[T]
    drops: DropReporter[T]
    threads: ActorThreads
    log: QueueLog
    drop_log: DropLog
    ref: QueueRef[T]
    supervisors: tuple[pykka.ActorRef[Any], ...]
    timer: pykka.ActorRef[Any]
    journal: Journal[T] | None = None


class WriteBehind(Generic[T]):
    """A running queue: push items, flush, read stats, stop.

    Made by `wbactor.start()`. Usable as a context manager that stops the queue
    on exit. A queue still running when the process exits is drained for at
    most `Config.exit_timeout` seconds, then stopped.
    """

    def __init__(self, running: _Running[T]) -> None:
        """Wrap running actors; use `wbactor.start()` instead."""
        self._run = running
        self._ledger = running.ledger
        self._admission = running.admission
        self._ref = running.ref
        self._supervisor = running.supervisors[0]  # lane 0's
        self._timer = running.timer
        # Re-entrant, so that a stop() from a signal handler that interrupted
        # stop() on the same thread can tell, instead of deadlocking.
        self._stop_lock = threading.RLock()
        self._final: Stats | None = None

    @property
    def ref(self) -> QueueRef[T]:
        """The queue actor's ref: `wb.ref.tell(wbactor.Push(item))` pushes."""
        return self._ref

    @property
    def name(self) -> str:
        """The queue's `Config.name`, carried by its log lines."""
        return self._run.config.name

    def push(self, item: T, timeout: float | None = None) -> None:
        """Queue `item` from plain code, under the policy.

        Under `Policy.BLOCK` waits up to `timeout` seconds (None: until room
        or stop) for room; other policies never wait.

        Raises:
            QueueClosedError: the queue is stopping or stopped.
            PushTimeoutError: `Policy.BLOCK` found no room within `timeout`.
        """
        self._check_not_forked()
        self._admission.push(item, check_wait_timeout(timeout, "push() timeout"))

    def depth(self) -> int:
        """Return the items queued, not counting the batch in flight."""
        self._check_not_forked()
        return self._ledger.depth()

    def flush(self, timeout: float | None = None) -> None:
        """Return when every item pushed before the call is flushed or dropped.

        `timeout` is in seconds; None or `math.inf` waits for as long as it
        takes.

        Raises:
            TimeoutError: not done within `timeout` seconds (the flush goes on).
            QueueClosedError: the queue is stopping or stopped.
            ValueError: `timeout` is negative or NaN.
            RuntimeError: called from a flusher or `on_drop` running on one
                of the queue's own actors, where it would wait for itself.
        """
        self._check_not_forked()
        limit = check_wait_timeout(timeout, "flush() timeout")
        self._run.threads.check_not_current("flush()")
        if self._ledger.closed:
            msg = "the queue is stopping or stopped; use stop() to drain it"
            raise QueueClosedError(msg)
        try:
            self._ref.ask(Flush(), timeout=limit)
        except pykka.Timeout:
            msg = f"flush not done within {timeout} s"
            raise TimeoutError(msg) from None
        except pykka.ActorDeadError:
            msg = "the queue stopped before the flush completed"
            raise QueueClosedError(msg) from None

    def stats(self) -> Stats:
        """Return a consistent snapshot of the counters."""
        self._check_not_forked()
        stats, evicted = self._ledger.stats()
        if evicted is not None:
            self._run.drops.report(*evicted)
        return stats

    def stop(self, timeout: float | None = None) -> Stats:
        """Drain the queue, then stop every actor; return the final `Stats`.

        Items keep being flushed in `batch_size` batches, with retries, until
        none is left or `timeout` seconds pass (None or `math.inf`: no
        limit); what is left then is dropped with `closed`. New items are
        refused from the start of the call. Returns once every actor has
        stopped, save one whose user code (a flush, `close()`, the factory)
        hangs past the deadline: it is abandoned on its daemon thread, and
        logged as `actor_abandoned`. Idempotent: later calls return the same
        `Stats`.

        Safe from a signal handler: if the handler interrupted wbactor's own
        code on the same thread, the stop cannot wait there (that code may
        hold a lock the stop needs), so it goes on on a thread of its own and
        this call returns a snapshot of the moment at once (a later `stop()`
        returns the final `Stats`). The same holds for a `stop()` called
        from code wbactor calls on a producer's thread, such as `on_drop`.

        Raises:
            ValueError: `timeout` is negative or NaN (nothing changed).
            QueueClosedError: in a child process forked from the queue's own.
            RuntimeError: called from a flusher or `on_drop` running on one
                of the queue's own actors, where it would wait for itself.
        """
        self._check_not_forked()
        limit = check_wait_timeout(timeout, "stop() timeout")
        self._run.threads.check_not_current("stop()")
        caller = sys._getframe(1)  # noqa: SLF001 - who called: a handler, on_drop?
        if self.interrupted_here() or _lifecycle.called_within_wbactor(caller):
            threading.Thread(
                target=self._stop_now,
                args=(limit,),
                name="wbactor-stop",
                daemon=False,
            ).start()
            return self._ledger.peek()
        return self._stop_now(limit)

    def _stop_now(self, limit: float | None) -> Stats:
        """Stop as `stop(limit)` does, here, without looking at who called (internal).

        For wbactor's own callers, which know they interrupted nothing: the
        exit hook, the signal handlers, the thread `stop()` hands over to.
        """
        with self._stop_lock:
            if self._final is None:
                try:
                    self._final = stop_queue(self._run, limit)
                finally:
                    _lifecycle.untrack(self)
            return self._final

    def interrupted_here(self) -> bool:
        """Return whether the calling thread is inside this queue's own code.

        Only a signal handler can find it so (the handler runs on the thread
        it interrupted, which may hold the ledger's lock or be in `stop()`).
        """
        in_stop: bool = self._stop_lock._is_owned()  # type: ignore[attr-defined]  # noqa: SLF001
        return in_stop or self._ledger.owned()

    def _check_not_forked(self) -> None:
        forked_from = self._ledger.forked_from
        if forked_from is not None:
            raise QueueClosedError(self._ledger.fork_message())

    def _after_fork_in_child(self, parent: int) -> None:
        """Refuse everything from now on: this is a child forked from `parent`."""
        self._ledger.after_fork_in_child(parent)
        self._run.threads.forget()
        if self._run.journal is not None:
            self._run.journal.forget_in_child()
        self._stop_lock = threading.RLock()

    def _wait_reported(self, timeout: float) -> bool:
        """Wait until every drop the ledger counted was told to `on_drop`."""
        ledger = self._ledger
        return self._run.drops.wait_reported(
            lambda: sum(ledger.buffer.dropped.values()), timeout
        )

    def _stop_at_exit(self) -> None:
        """Drain for at most `exit_timeout` and stop (the process is exiting)."""
        # A second Ctrl-C ends the drain: what was left is dropped, counted.
        with contextlib.suppress(KeyboardInterrupt):
            self._stop_now(self._run.config.exit_timeout)

    def wait_for(self, predicate: Callable[[Stats], bool], timeout: float) -> Stats:
        """Wait until `predicate(stats)` holds after a flush outcome.

        For tests: outcomes are batch results, failures, restarts and
        dropped batches. Raises TimeoutError if it does not hold in time.
        """
        self._check_not_forked()
        stats, evicted = self._ledger.wait_progress(predicate, timeout)
        if evicted is not None:
            self._run.drops.report(*evicted)
        if stats is None:
            msg = f"condition not met within {timeout} s; last {self.stats()}"
            raise TimeoutError(msg)
        return stats

    # -- asyncio ------------------------------------------------------------

    async def apush(
        self,
        item: T,
        timeout: float | None = None,  # noqa: ASYNC109 - as push(timeout)
    ) -> None:
        """Queue `item` from a coroutine, under the policy, without blocking the loop.

        Under `Policy.BLOCK`, when the queue is full, waits up to `timeout`
        seconds (None: until room or stop) by looking for room every few
        milliseconds (1 ms at first, 10 ms at most) with a `push()` that does
        not wait, sleeping on the loop in between; a producer blocked in
        `push()` on a thread may take the room first. Other policies never
        wait: the item is pushed at once, as `push()` would.

        Cancelling the awaiting task while it waits leaves the item out: it
        is pushed only by a look that finds room, after which nothing is
        awaited, so a cancelled `apush()` never pushes later. An `apush()`
        that raises did not push its item (not counted in `pushed`).

        Raises:
            QueueClosedError: the queue is stopping or stopped.
            PushTimeoutError: `Policy.BLOCK` found no room within `timeout`.
            ValueError: `timeout` is negative or NaN (checked first).
        """
        self._check_not_forked()
        limit = check_wait_timeout(timeout, "apush() timeout")
        admission = self._admission
        if self._run.config.policy is not Policy.BLOCK or self._run.threads.current():
            # Never waits: the other policies do not, and a push from one of
            # the queue's own actors (an async flusher) times out at once.
            admission.push(item, limit)
            return
        deadline = None if limit is None else time.monotonic() + limit
        pause = _APUSH_FIRST_PAUSE
        while True:
            try:
                admission.push(item, 0.0)
            except PushTimeoutError:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    msg = f"no room in the queue within {timeout} s"
                    raise PushTimeoutError(msg) from None
                await asyncio.sleep(
                    pause if remaining is None else min(pause, remaining)
                )
                pause = min(2 * pause, _APUSH_MAX_PAUSE)
            else:
                return

    async def aflush(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - as flush(timeout)
    ) -> None:
        """Wait, without blocking the loop, until every item pushed before is settled.

        As `flush()`: returns when every item pushed before the call is
        flushed, coalesced or dropped. The wait runs on a helper thread of
        its own, which hands the outcome to the loop. Cancelling the
        awaiting task cancels the wait, not the flush: the queue flushes as
        it would have, and the helper thread ends within 50 ms.

        Raises:
            TimeoutError: not done within `timeout` seconds (the flush goes on).
            QueueClosedError: the queue is stopping or stopped.
            ValueError: `timeout` is negative or NaN (checked first).
            RuntimeError: awaited by a flusher or `on_drop` running on one of
                the queue's own actors, where it would wait for itself.
        """
        self._check_not_forked()
        limit = check_wait_timeout(timeout, "aflush() timeout")
        self._run.threads.check_not_current("aflush()")
        if self._ledger.closed:
            msg = "the queue is stopping or stopped; use astop() to drain it"
            raise QueueClosedError(msg)
        future = self._ref.ask(Flush(), block=False)
        try:
            await wait_settled(future, limit)
        except pykka.Timeout:
            msg = f"flush not done within {timeout} s"
            raise TimeoutError(msg) from None
        except pykka.ActorDeadError:
            msg = "the queue stopped before the flush completed"
            raise QueueClosedError(msg) from None

    async def astop(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - as stop(timeout)
    ) -> Stats:
        """Drain and stop the queue as `stop()` does, without blocking the loop.

        `stop(timeout)` runs on a thread of its own; the loop goes on
        meanwhile. Cancelling the awaiting task does not cancel the stop,
        which goes on to the end: a later `stop()` or `astop()` returns the
        same final `Stats`.

        Raises:
            ValueError: `timeout` is negative or NaN (nothing changed).
            QueueClosedError: in a child process forked from the queue's own.
            RuntimeError: awaited by a flusher or `on_drop` running on one of
                the queue's own actors, where it would wait for itself.
        """
        self._check_not_forked()
        check_wait_timeout(timeout, "astop() timeout")
        self._run.threads.check_not_current("astop()")
        if self._final is not None:
            return self._final
        return await off_loop(lambda: self.stop(timeout), "wbactor-astop")

    def __enter__(self) -> WriteBehind[T]:
        """Return the queue; `stop()` runs on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the queue, draining it (not in a forked child: not its queue)."""
        if self._ledger.forked_from is None:
            self.stop()
