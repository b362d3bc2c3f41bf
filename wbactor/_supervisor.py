"""The supervisor: owns the flusher actor and decides what a failure means.

When an attempt raises, hangs past `flush_timeout`, or the flusher actor dies,
the supervisor retires that flusher (its epoch ends, so anything it reports
later is ignored), and after `retry_backoff(attempt)` on the timer
starts a fresh one (from `flusher_factory`, when given) on the same batch.
After `max_retries` retries the batch is dropped with `retries_exhausted`.
That is for a TRANSIENT failure; a PERMANENT one restarts nothing and splits
the batch instead (`_attempts`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pykka

from wbactor._config import clamp_backoff, default_backoff
from wbactor._errors import (
    FlusherDiedError,
    FlushTimeoutError,
    PartialFailure,
    RetryAfter,
)
from wbactor._failures import default_classify
from wbactor._flusher import FlusherActor, close_flusher
from wbactor._log import (
    ACTOR_ABANDONED,
    FLUSH_FAILED,
    FLUSHER_RESTARTED,
    RETRIES_EXHAUSTED,
    RETRY_BACKOFF_FAILED,
    describe,
)
from wbactor._messages import (
    BatchDropped,
    BatchFailed,
    BatchFlushed,
    Dispatched,
    FlusherDied,
    RestartDue,
    RetireFlushers,
    RunBatches,
    Schedule,
    WatchdogDue,
    tell_quietly,
)
from wbactor._worker import Workers, new_flusher  # worker-process wiring

if TYPE_CHECKING:
    from wbactor._clock import Clock
    from wbactor._config import Config, FlusherLike
    from wbactor._drops import ActorThreads, DropReporter
    from wbactor._ledger import Ledger
    from wbactor._log import QueueLog

__all__ = ["SharedFlusher", "SupervisorActor"]

T = TypeVar("T")


_ORPHAN_WAIT = 1.0
"""Seconds `on_stop` waits for each retired flusher actor when the queue was
stopped without `WriteBehind.stop()` (which waits for them itself)."""


class SharedFlusher:
    """The one `Config.flusher` all lanes call (no factory): closed once, at the end.

    Each lane's supervisor lets go of it as it stops; the last one closes
    it, unless one of them left an attempt hung in it (it may still be in
    use, on an abandoned thread).
    """

    def __init__(self, flusher: object, lanes: int, log: QueueLog) -> None:
        """Hold `flusher` for `lanes` supervisors."""
        self._flusher = flusher
        self._holders = lanes
        self._clean = True
        self._log = log
        self._lock = threading.Lock()

    def release(self, *, clean: bool) -> None:
        """Let go of the flusher; `clean` if no attempt of this lane hangs in it."""
        with self._lock:
            self._holders -= 1
            self._clean = self._clean and clean
            last = self._holders == 0
        if last and self._clean:
            close_flusher(self._flusher, self._log)


class SupervisorActor(pykka.ThreadingActor, Generic[T]):
    """Starts, watches and restarts the flusher actor."""

    # User code (a factory, a shared flusher's close()) may hang here, and
    # must not keep the process alive at exit.
    use_daemon_thread = True

    def __init__(  # noqa: PLR0913 - keyword-only wiring
        self,
        *,
        config: Config[T],
        first_flusher: FlusherLike[T],
        ledger: Ledger[T],
        drops: DropReporter[T],
        threads: ActorThreads,
        log: QueueLog,
        clock: Clock,
        timer: pykka.ActorRef[Any],
        queue: pykka.ActorRef[Any],
        lane: int = 0,
        shared: SharedFlusher | None = None,
    ) -> None:
        """Supervise `lane`'s flushers for `config`, starting with `first_flusher`.

        `shared` is the one `Config.flusher` every lane uses (no factory):
        this lane lets go of it at stop, and the last to do so closes it.
        """
        super().__init__()
        self._config = config
        self._ledger = ledger
        self._drops = drops
        self._threads = threads
        self._log = log
        self._clock = clock
        self._timer = timer
        self._queue = queue
        self._backoff = config.retry_backoff or default_backoff
        self._classify = config.classify or default_classify
        self._first_flusher: FlusherLike[T] | None = first_flusher
        self._flusher: pykka.ActorRef[Any] | None = None
        self._lane = lane
        self._shared = shared
        # The epoch of the current flusher, as the ledger's calls returned it.
        self._attempts = ledger.lanes[lane]
        self._epoch = self._attempts.attempt().epoch
        self._retired = threading.Event()
        # Retired flusher actors that are not hung, and their stop futures.
        self._stopping: list[tuple[pykka.ActorRef[Any], pykka.Future[bool]]] = []
        # WriteBehind.stop() retired the flushers and waits for them itself:
        # from then on no flusher actor is started.
        self._handed_over = False
        self._watching = False
        self._workers = Workers()  # worker-process wiring: the workers to kill

    # -- lifecycle ----------------------------------------------------------

    def on_start(self) -> None:
        """Start the first flusher actor."""
        self._threads.enter()
        flusher, self._first_flusher = self._first_flusher, None
        assert flusher is not None  # noqa: S101 - set in __init__
        self._spawn(flusher)

    def on_stop(self) -> None:
        """Retire the flusher actor; close a shared flusher none uses any more.

        `WriteBehind.stop()` has retired the flusher actors before
        (`RetireFlushers`) and waited for them, with its deadline. Stopped
        some other way, this waits a little for them. A flusher actor whose
        attempt was abandoned may hang for good: it is left to stop when
        (if) its flush returns, and a shared flusher is then not closed.
        """
        abandoned = self._attempts.abandoned
        self._retire(hung=abandoned)
        if not self._handed_over:
            for _, stopped in self._stopping:
                with contextlib.suppress(pykka.Timeout):
                    stopped.get(timeout=_ORPHAN_WAIT)
        # worker-process wiring: a worker whose close() ran past the stop's
        # deadline is killed now, so that no process outlives stop().
        self._workers.kill_all()
        idle = not any(ref.is_alive() for ref, _ in self._stopping)
        if self._shared is not None:
            # The one flusher every actor used: closed once, when none uses it.
            self._shared.release(clean=idle and not abandoned)
        self._threads.leave()

    def _retire_for_stop(self) -> list[tuple[pykka.ActorRef[Any], pykka.Future[bool]]]:
        """Retire the flusher actor; return the actors to wait for, and how."""
        self._retire(hung=self._attempts.abandoned)
        self._handed_over = True
        return list(self._stopping)

    def on_receive(self, message: Any) -> Any:
        """Route outcomes from the flusher, the queue and the timer."""
        if isinstance(message, RetireFlushers):
            return self._retire_for_stop()
        if isinstance(message, Dispatched):
            self._run()
        elif isinstance(message, BatchFailed):
            self._failed(message.epoch, message.error, "error")
        elif isinstance(message, BatchFlushed):
            if message.epoch == self._epoch:
                tell_quietly(self._queue, BatchFlushed(message.epoch))
        elif isinstance(message, RestartDue):
            if message.epoch == self._epoch and self._flusher is None:
                self._restart(message.cause)
        elif isinstance(message, WatchdogDue):
            self._watchdog()
        elif isinstance(message, FlusherDied):
            error: BaseException = FlusherDiedError("the flusher actor stopped unasked")
            error = message.error or error  # worker-process wiring: how it died
            self._failed(message.epoch, error, "died")
        return None

    # -- flusher actors -----------------------------------------------------

    def _spawn(self, flusher: FlusherLike[T]) -> None:
        if self._handed_over:
            return  # stopping: a restart due now would outlive stop()
        self._retired = threading.Event()
        self._workers.track(flusher)  # worker-process wiring
        self._flusher = FlusherActor.start(
            flusher=flusher,
            epoch=self._epoch,
            ledger=self._ledger,
            drops=self._drops,
            threads=self._threads,
            log=self._log,
            classify=self._classify,
            batch_size=self._config.batch_size,
            supervisor=self.actor_ref,
            retired=self._retired,
            owns_flusher=self._config.flusher_factory is not None,
            lane=self._lane,
        )

    def _retire(self, *, hung: bool = False) -> None:
        """Stop the current flusher actor as asked, so it reports no death.

        Without waiting: it may be busy. Unless its attempt `hung`, it stops
        promptly, and `on_stop` waits for it.
        """
        self._retired.set()
        # worker-process wiring: a hung worker is killed (so its attempt cannot
        # write late), and then its flusher actor stops promptly: not hung.
        hung = self._workers.retire(hung=hung)
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            stopped = flusher.stop(block=False)
            self._stopping = [s for s in self._stopping if s[0].is_alive()]
            if hung:
                # Left to stop when (if) its attempt returns, on a daemon
                # thread; out of the registry, so ActorRegistry.stop_all()
                # does not wait for it.
                pykka.ActorRegistry.unregister(flusher)
                self._log.logger.warning(ACTOR_ABANDONED, actor=str(flusher))
            else:
                self._stopping.append((flusher, stopped))

    def _restart(self, cause: str) -> None:
        """Start a fresh flusher actor and run the batch in flight, if any."""
        if self._handed_over:
            return  # stopping: see _spawn
        factory = self._config.flusher_factory
        if factory is None:
            flusher = self._config.flusher
            assert flusher is not None  # noqa: S101 - Config guarantees one of them
        else:
            try:
                flusher = new_flusher(self._config)  # worker-process wiring
            except BaseException as error:  # noqa: BLE001 - a failed attempt, as in flush
                # No actor runs this epoch: fail it as if it had raised.
                self._failed(self._epoch, error, cause)
                return
        self._spawn(flusher)
        restarts = self._attempts.count_restart()
        self._log.logger.warning(FLUSHER_RESTARTED, restarts=restarts, cause=cause)
        self._run()

    def _run(self) -> None:
        """Tell the flusher to run the batch in flight; watch it if timed."""
        attempt = self._attempts.attempt()
        if self._flusher is None or not attempt.in_flight:
            return  # a restart is pending and will run it, or nothing to run
        # Watch before running: the deadline must be fixed on the clock
        # before the attempt can start (and a test can see it start).
        if self._config.flush_timeout is not None and not self._watching:
            self._watching = True
            self._schedule(self._config.flush_timeout, WatchdogDue())
        tell_quietly(self._flusher, RunBatches(self._epoch))

    def _schedule(self, delay: float, message: Any, now: float | None = None) -> None:
        start = self._clock.now() if now is None else now
        schedule = Schedule(start + delay, self.actor_ref, message, start)
        tell_quietly(self._timer, schedule)

    # -- failures -----------------------------------------------------------

    def _failed(
        self,
        epoch: int,
        error: BaseException,
        cause: str,
        started: float | None = None,
    ) -> None:
        now = self._clock.now()  # read before the failure shows in Stats
        failed = self._attempts.fail(epoch, started)
        if failed is None:
            return  # a stale report from a retired flusher
        failures, batch_size, self._epoch = failed
        self._retire(hung=cause == "timeout")
        max_retries = self._config.max_retries
        if batch_size and 0 <= max_retries < failures:
            dropped, more = self._attempts.exhaust()
            self._log.logger.error(
                RETRIES_EXHAUSTED,
                batch_size=batch_size,
                attempts=failures,
                error=describe(error),
            )
            self._drops.report(*dropped)
            # A fresh flusher at once, for the batch's next part or the next batch.
            self._restart(cause)
            if not more:
                tell_quietly(self._queue, BatchDropped(self._epoch))
            return
        # With nothing in flight (an idle flusher died, or a factory failed)
        # the restart still waits a first backoff, so a factory that keeps
        # failing cannot spin.
        delay = self._backoff_for(max(failures, 1), error)
        if batch_size:
            self._log.logger.warning(
                FLUSH_FAILED,
                attempt=failures,
                max_retries=max_retries,
                retry_in=delay,
                batch_size=batch_size,
                error=describe(error),
            )
        self._schedule(delay, RestartDue(self._epoch, cause), now)

    def _backoff_for(self, attempt: int, error: BaseException) -> float:
        """Return the backoff before retry `attempt`, after `error`.

        A `RetryAfter` (also as a `PartialFailure`'s error) gives it;
        otherwise `retry_backoff(attempt)`. That is user code running in this
        actor: what it raises must not escape into pykka. A delay is clamped
        to [0, 3600] seconds (NaN means none); a non-number is logged and the
        default used.
        """
        if isinstance(error, PartialFailure):
            error = error.error
        if isinstance(error, RetryAfter):
            return error.delay
        try:
            return clamp_backoff(self._backoff(attempt))
        except Exception as error:  # noqa: BLE001 - user code; logged, default used
            self._log.logger.warning(
                RETRY_BACKOFF_FAILED, attempt=attempt, error=describe(error)
            )
            return default_backoff(attempt)

    def _watchdog(self) -> None:
        """Fail the attempt in flight if it has run `flush_timeout` or more."""
        self._watching = False
        timeout = self._config.flush_timeout
        epoch, started, in_flight, batches = self._attempts.attempt()
        if timeout is not None:
            timeout *= batches  # a window: `flush_timeout` for each batch in it
        if timeout is None or not in_flight or self._flusher is None:
            return  # idle, or a restart is pending and will watch again
        now = self._clock.now()
        if started is not None and now < started:
            # The clock stepped back: count the step as no time, from now.
            self._attempts.rebase(epoch, started, now)
            started = now
        if started is not None and now - started >= timeout:
            error = FlushTimeoutError(f"flush attempt exceeded {timeout} s")
            self._failed(epoch, error, "timeout", started)
            return
        self._watching = True
        self._schedule(timeout, WatchdogDue(), now if started is None else started)
