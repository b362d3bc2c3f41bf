"""Helpers shared by the test modules: `from support import ...`."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pykka.messages import ProxyGetAttr

import wbactor

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import pykka

T = TypeVar("T")

WAIT = 5.0
"""Seconds a test waits for anything before it fails."""

MODEL_SCALE = int(os.environ.get("WBACTOR_MODEL_SCALE", "1"))
"""Multiplies the model tests' examples (`tox -e stress` sets 10)."""


def accounted(stats: wbactor.Stats) -> int:
    """Every item `stats` accounts for: the right side of the conservation law."""
    return (
        stats.flushed
        + stats.coalesced
        + sum(stats.dropped.values())
        + stats.depth
        + stats.in_flight
    )


def conservation_holds(stats: wbactor.Stats) -> bool:
    """Whether every item pushed is in exactly one place."""
    return stats.pushed == accounted(stats)


def first(item: tuple[str, int]) -> str:
    """A `key_func` for `(key, n)` items."""
    return item[0]


def sync(ref: pykka.ActorRef[Any]) -> None:
    """Return once `ref`'s actor has handled every message sent to it before."""
    ref.ask(ProxyGetAttr(attr_path=("actor_urn",)), timeout=WAIT)


def retries(count: int) -> Callable[[wbactor.Stats], bool]:
    """A `wait_for` predicate: `count` failed attempts were recorded."""
    return lambda stats: stats.retries == count


@contextlib.contextmanager
def running(config: wbactor.Config[T]) -> Iterator[wbactor.WriteBehind[T]]:
    """Start a queue; stop it on the way out, with a timeout."""
    wb = wbactor.start(config)
    try:
        yield wb
    finally:
        wb.stop(timeout=WAIT)


class Calls(Generic[T]):
    """A thread-safe list of calls that tests can wait on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.values: list[T] = []

    def append(self, value: T) -> None:
        with self._cond:
            self.values.append(value)
            self._cond.notify_all()

    def wait_len(self, count: int) -> list[T]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.values) >= count, WAIT):
                msg = f"wanted {count} calls, have {self.values}"
                raise TimeoutError(msg)
            return list(self.values)


class Outcome:
    """Runs `call` in a thread; keeps what it returned or raised."""

    def __init__(self, call: Callable[[], object]) -> None:
        self._call = call
        self.started = threading.Event()
        self.returned = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        self.started.set()
        try:
            self.result = self._call()
        except BaseException as error:  # noqa: BLE001 - the test inspects it
            self.error = error
        self.returned.set()

    def join(self, timeout: float = WAIT) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the thread did not finish"


class Admitted(Generic[T]):
    """A policy's admission over a real ledger, on one thread: what pushes run.

    `push(item)` offers `item` as `tell(Push(item))` does (BLOCK: as
    `push(item, timeout=0)` does, raising `PushTimeoutError` when full) and
    returns what it dropped, as `(item,)`, or None. Every other attribute is
    the ledger's `PolicyBuffer`'s, so a test can take, complete and read it.
    """

    def __init__(
        self,
        capacity: int,
        policy: wbactor.Policy,
        key_func: Callable[[T], Any] | None = None,
        now: float = 0.0,
    ) -> None:
        from wbactor._admission import admission_for  # noqa: PLC0415 - internals
        from wbactor._drops import ActorThreads, DropReporter  # noqa: PLC0415
        from wbactor._ledger import Ledger  # noqa: PLC0415
        from wbactor._log import DropLog, QueueLog  # noqa: PLC0415
        from wbactor.testing import ManualClock  # noqa: PLC0415

        config: wbactor.Config[T] = wbactor.Config(
            capacity=capacity,
            flusher=lambda batch: None,
            policy=policy,
            key_func=key_func or (lambda item: item),
            batch_size=capacity + 1,  # never a full batch: no wake-up to watch
        )
        clock = ManualClock(now)
        threads = ActorThreads()
        log = QueueLog("admitted")
        self.dropped_calls: list[tuple[T, wbactor.DropReason]] = []
        drops: DropReporter[T] = DropReporter(
            DropLog(clock, log),
            lambda item, reason: self.dropped_calls.append((item, reason)),
            threads,
            log,
        )
        self.ledger: Ledger[T] = Ledger(config, clock, threads)
        self.buf = self.ledger.buffer
        self._admission = admission_for(config, self.ledger, drops, log)
        self._blocking = policy is wbactor.Policy.BLOCK

    def push(self, item: T) -> tuple[T] | None:
        before = len(self.dropped_calls)
        if self._blocking:
            self._admission.push(item, 0)
        else:
            self._admission.offer(item)
        with self.ledger.lock:  # as a snapshot does: count lock-free refusals
            self.buf.fold_refusals()
        new = self.dropped_calls[before:]
        assert len(new) <= 1
        return (new[0][0],) if new else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.buf, name)

    def __len__(self) -> int:
        return len(self.buf)
