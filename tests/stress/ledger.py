"""The per-item ledger shared by the stress, race and soak runs.

It records where every item went, independently of `Stats`:

- **written**: the flusher wrote it to the (simulated) store, on any attempt;
- **acknowledged**: the attempt that wrote it was counted by the queue as a
  flushed batch;
- **dropped**: `on_drop` was called with it, and with which reason.

Telling an acknowledged write from the late write of an abandoned attempt
uses the queue's own word: `batch_flushed` is logged on the flusher's thread
once the queue has counted the batch, and never for an attempt it gave up on
(past `flush_timeout`, or at a `stop(timeout)` that ran out). A structlog
processor installed by `Ledger.capture_logs()` turns that line into an
acknowledgement of the attempt the same thread is running. Everything the
flusher wrote that was never acknowledged is a *late write*: at-least-once
delivery, counted apart.

Items are ints in `range(size)`; the counts live in `bytearray`s, so a
ledger of two million items takes a few megabytes.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pykka
import structlog

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, MutableMapping

    import wbactor

__all__ = ["Attempt", "Ledger", "StoreError", "own_actor"]


class StoreError(Exception):
    """The simulated store failed this attempt."""


@dataclass(slots=True)
class Attempt:
    """One call of the flusher."""

    batch: list[int]
    kind: str
    wrote: bool = False
    acked: bool = False


@dataclass
class Ledger:
    """Where each of `size` items went; thread-safe."""

    size: int
    owner_of: Callable[[int], int] = lambda _: 0
    """Maps an item to the producer that pushed it (for the order check)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        """Make the counts."""
        self.written = bytearray(self.size)
        self.acked = bytearray(self.size)
        self.dropped = bytearray(self.size)
        self.reason_of: dict[int, wbactor.DropReason] = {}
        self.drop_reasons: Counter[str] = Counter()
        self.attempts: list[Attempt] = []
        self.acked_batches = 0
        self.order_violations = 0
        self.last_acked: dict[int, int] = {}
        self.log_events: Counter[str] = Counter()
        self.restart_causes: Counter[str] = Counter()
        self._local = threading.local()

    # -- the flusher's side ------------------------------------------------

    def begin(self, batch: list[int], kind: str) -> Attempt:
        """Note an attempt starting on this thread."""
        attempt = Attempt(batch, kind)
        self._local.attempt = attempt
        with self.lock:
            self.attempts.append(attempt)
        return attempt

    def write(self, attempt: Attempt) -> None:
        """Write the attempt's batch to the store."""
        written = self.written
        with self.lock:
            for item in attempt.batch:
                written[item] = min(255, written[item] + 1)
            attempt.wrote = True

    def _ack(self) -> None:
        """Acknowledge the attempt this thread runs: the queue counted it."""
        attempt: Attempt | None = getattr(self._local, "attempt", None)
        self._local.attempt = None
        if attempt is None:
            return
        acked, last, owner_of = self.acked, self.last_acked, self.owner_of
        with self.lock:
            attempt.acked = True
            self.acked_batches += 1
            for item in attempt.batch:
                acked[item] = min(255, acked[item] + 1)
                producer = owner_of(item)
                if item <= last.get(producer, -1):
                    self.order_violations += 1
                last[producer] = item

    # -- on_drop -----------------------------------------------------------

    def on_drop(self, item: int, reason: wbactor.DropReason) -> None:
        """The queue's `on_drop`."""
        with self.lock:
            self.dropped[item] = min(255, self.dropped[item] + 1)
            self.reason_of[item] = reason
            self.drop_reasons[reason.value] += 1

    # -- logs --------------------------------------------------------------

    def _processor(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> Any:
        name = event["event"]
        if name == "batch_flushed":
            self._ack()
        with self.lock:
            self.log_events[name] += 1
            if name == "flusher_restarted":
                self.restart_causes[event["cause"]] += 1
        raise structlog.DropEvent

    @contextlib.contextmanager
    def capture_logs(self) -> Iterator[None]:
        """Route wbactor's logs through the ledger (debug included) while open."""
        old = structlog.get_config()
        structlog.configure(
            processors=[self._processor],
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
            cache_logger_on_first_use=False,
        )
        try:
            yield
        finally:
            structlog.configure(**old)

    # -- the verdict -------------------------------------------------------

    def late_writes(self) -> tuple[int, int]:
        """Return (attempts, items) written but never acknowledged."""
        late = [a for a in self.attempts if a.wrote and not a.acked]
        return len(late), sum(len(a.batch) for a in late)

    def unaccounted(self) -> list[int]:
        """Return the items neither acknowledged nor dropped."""
        acked, dropped = self.acked, self.dropped
        return [i for i in range(self.size) if not acked[i] and not dropped[i]]

    def twice(self) -> list[int]:
        """Return the items acknowledged or dropped more than once in all."""
        acked, dropped = self.acked, self.dropped
        return [i for i in range(self.size) if acked[i] + dropped[i] > 1]


def own_actor() -> pykka.ActorRef[Any]:
    """Return the ref of the actor whose thread calls this (a flusher's death).

    The flusher is user code called from its actor's `on_receive`; walking up
    the stack to that actor is how a store client could "kill its own actor"
    here, to exercise the supervisor's death path.
    """
    frame = inspect.currentframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, pykka.Actor):
            return candidate.actor_ref
        frame = frame.f_back
    msg = "not called from an actor"
    raise RuntimeError(msg)
