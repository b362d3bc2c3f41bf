"""Routed admission: with several lanes and a `key_func`, an item goes by its key.

Item `x` goes to lane `hash(key_func(x)) % lanes`, so every item of one key
passes through one lane, in push order: per-key order holds however many
batches are in flight. Each lane has its own queue, but `capacity` and the
policy count the whole queue: DROP_OLDEST (and COALESCE_BY_KEY, for a new
key) evicts the oldest item of all lanes, DROP_NEWEST refuses the new item
when the whole queue is full, BLOCK waits for room anywhere.

Every push takes the lock (the route and the policy decide together), and
the key is computed before it (user code). A `key_func` that raises, or
returns an unhashable key, drops the item as `key_error`, as under
COALESCE_BY_KEY.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from wbactor._admission import _Locked
from wbactor._config import Policy
from wbactor._errors import PushTimeoutError, QueueClosedError
from wbactor._log import KEY_FUNC_FAILED, describe
from wbactor._stats import DropReason

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

    from wbactor._config import Config
    from wbactor._drops import DropReporter
    from wbactor._ledger import Ledger
    from wbactor._log import QueueLog

__all__ = ["Routed"]

T = TypeVar("T")

_CLOSED = DropReason.CLOSED
_NEWEST = DropReason.DROP_NEWEST
_OLDEST = DropReason.DROP_OLDEST
_KEY_ERROR = DropReason.KEY_ERROR


class Routed(_Locked[T]):
    """Any policy over several lanes, each item routed by its key."""

    def __init__(
        self,
        config: Config[T],
        ledger: Ledger[T],
        drops: DropReporter[T],
        log: QueueLog,
    ) -> None:
        """Admit items into `config.lanes` lanes by `config.key_func`'s key."""
        super().__init__(config, ledger, drops, log)
        assert config.key_func is not None  # noqa: S101 - only routed with one
        self._key_of: Callable[[T], Hashable] = config.key_func
        self._lanes = config.lanes
        self._policy = config.policy
        self._block_timeout = config.block_timeout

    def _keyed(self, items: list[T]) -> list[tuple[Hashable, T, bool]]:
        """Pair each item with (its lane, its key), outside the lock."""
        key_of, lanes = self._key_of, self._lanes
        keyed: list[tuple[Hashable, T, bool]] = []
        for item in items:
            try:
                key = key_of(item)
                lane = hash(key) % lanes
            except Exception as error:  # noqa: BLE001 - user code; logged, item dropped
                self._log.logger.warning(KEY_FUNC_FAILED, error=describe(error))
                keyed.append((None, item, False))
            else:
                keyed.append(((lane, key), item, True))
        return keyed

    def _place(
        self, key: Hashable, item: T, *, key_ok: bool
    ) -> tuple[T, DropReason] | None:
        ledger = self._ledger
        buffer = ledger.buffer
        if not key_ok:
            buffer.reject(_KEY_ERROR)
            return (item, _KEY_ERROR)
        refused = self._refusal()
        if refused is not None:
            buffer.reject(refused)
            return (item, refused)
        lane: int
        lane, key = key  # type: ignore[misc] # made by _keyed
        try:
            evicted = buffer.push_routed(lane, key, item)
        except Exception as error:  # noqa: BLE001 - the key's __eq__ raised
            self._log.logger.warning(KEY_FUNC_FAILED, error=describe(error))
            buffer.reject(_KEY_ERROR)
            return (item, _KEY_ERROR)
        return (evicted[0], _OLDEST) if evicted else None

    def _refusal(self) -> DropReason | None:
        """Return (lock held) why the policy refuses a new item now, or None."""
        ledger = self._ledger
        if ledger.closed:
            return _CLOSED
        if len(ledger.buffer) < self._capacity:
            return None
        if self._policy is Policy.DROP_NEWEST:
            return _NEWEST
        if self._policy is Policy.BLOCK:
            refused = ledger.wait_room(self._block_timeout)
            if refused is _CLOSED:
                # Stopped while it waited: its final Stats are taken, so the
                # item is refused (pykka's ActorDeadError), not counted late.
                ledger.refuse_if_stopped()
            return refused
        return None  # DROP_OLDEST, COALESCE_BY_KEY: the oldest makes room

    def push(self, item: T, timeout: float | None) -> None:
        """Queue one item from `WriteBehind.push()`; raise rather than refuse.

        Under `Policy.BLOCK` waits up to `timeout` for room in the whole
        queue; the other policies never wait.

        Raises:
            QueueClosedError: the queue is stopping or stopped.
            PushTimeoutError: `Policy.BLOCK` found no room within `timeout`.
        """
        if self._policy is not Policy.BLOCK:
            super().push(item, timeout)
            return
        [(key, _, key_ok)] = self._keyed([item])
        ledger = self._ledger
        with ledger.lock:
            if ledger.closed:
                msg = "the queue is stopping or stopped; the item was not accepted"
                raise QueueClosedError(msg)
            if key_ok and len(ledger.buffer) >= self._capacity:
                refused = ledger.wait_room(timeout)
                if refused is _CLOSED:
                    msg = "the queue stopped while push() waited for room"
                    raise QueueClosedError(msg)
                if refused is not None:
                    msg = f"no room in the queue within {timeout} s"
                    raise PushTimeoutError(msg)
            # Room now (the lock held since), or a key error to count.
            dropped = self._place(key, item, key_ok=key_ok)
            ledger.note_batch_ready()
        if dropped is not None:
            self._drops.report([dropped[0]], dropped[1])
