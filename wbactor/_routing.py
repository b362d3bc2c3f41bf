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

from wbactor._admission import Admission
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


class Routed(Admission[T]):
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

    def offer(self, item: T) -> None:
        """Take one item (`tell(Push)`), as a chunk of one."""
        self._take_chunk([item])

    def _take_chunk(self, chunk: list[T]) -> None:
        """Route the items of one chunk, in order: keys first, then one lock."""
        self._enter(*self._route(chunk))

    def _route(self, chunk: list[T]) -> tuple[list[tuple[int, Hashable, T]], list[T]]:
        """Return each item with its lane and key, and the items without a key.

        Outside the lock: `key_func` (and the key's hash) is user code.
        """
        key_of, lanes = self._key_of, self._lanes
        routed: list[tuple[int, Hashable, T]] = []
        failed: list[T] = []
        for item in chunk:
            try:
                key = key_of(item)
                routed.append((hash(key) % lanes, key, item))
            except Exception as error:  # noqa: BLE001 - user code; logged, item dropped
                self._log.logger.warning(KEY_FUNC_FAILED, error=describe(error))
                failed.append(item)
        return routed, failed

    def _enter(self, routed: list[tuple[int, Hashable, T]], failed: list[T]) -> None:
        """Queue the routed items under the policy (the lock taken here); report."""
        drops: list[tuple[T, DropReason]] = [(item, _KEY_ERROR) for item in failed]
        ledger = self._ledger
        buffer = ledger.buffer
        try:
            with ledger.lock:
                if ledger.closed:
                    ledger.refuse_if_stopped()
                for _ in failed:
                    buffer.reject(_KEY_ERROR)
                push, capacity = buffer.push_routed, self._capacity
                if not ledger.closed and self._fast_path(len(routed)):
                    routed, evicted = [], buffer.push_routed_many(routed)
                    drops += [(item, _OLDEST) for item in evicted]
                for lane, key, item in routed:
                    if ledger.closed or len(buffer) >= capacity:
                        refused = self._refusal()
                        if refused is not None:
                            buffer.reject(refused)
                            drops.append((item, refused))
                            continue
                    try:
                        evicted = push(lane, key, item)
                    except Exception as error:  # noqa: BLE001 - the key's __eq__ raised
                        self._log.logger.warning(KEY_FUNC_FAILED, error=describe(error))
                        buffer.reject(_KEY_ERROR)
                        drops.append((item, _KEY_ERROR))
                        continue
                    if evicted:
                        drops.append((evicted[0], _OLDEST))
                ledger.note_batch_ready()
        finally:  # also when the queue stopped midway: what was counted is told
            for item, reason in drops:
                self._drops.report([item], reason)

    def _fast_path(self, count: int) -> bool:
        """Return (lock held) whether `count` unkeyed items may go in without a look."""
        if self._policy is Policy.COALESCE_BY_KEY:
            return False  # each key is looked up (and its __eq__ may raise)
        if self._policy is Policy.DROP_OLDEST:
            return True
        return len(self._ledger.buffer) + count <= self._capacity

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
        routed, failed = self._route([item])
        ledger = self._ledger
        with ledger.lock:
            if ledger.closed:
                msg = "the queue is stopping or stopped; the item was not accepted"
                raise QueueClosedError(msg)
            if len(ledger.buffer) >= self._capacity:
                refused = ledger.wait_room(timeout)
                if refused is _CLOSED:
                    msg = "the queue stopped while push() waited for room"
                    raise QueueClosedError(msg)
                if refused is not None:
                    msg = f"no room in the queue within {timeout} s"
                    raise PushTimeoutError(msg)
            # Room now, and the lock is re-entrant: the item goes in as told.
            self._enter(routed, failed)
