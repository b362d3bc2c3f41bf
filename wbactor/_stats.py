"""Drop reasons and the `Stats` snapshot."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["DropReason", "Stats"]


class DropReason(enum.StrEnum):
    """Why an item was dropped; passed to `on_drop` and counted in `Stats.dropped`.

    Members are `str`s equal to their values, so `reason == "drop_oldest"` holds.
    """

    DROP_OLDEST = "drop_oldest"
    """The queue was full and this, its oldest item, made room for a new one."""

    DROP_NEWEST = "drop_newest"
    """The queue was full under `Policy.DROP_NEWEST`, so this new item was refused."""

    RETRIES_EXHAUSTED = "retries_exhausted"
    """The item's batch failed `max_retries + 1` times."""

    PUSH_TIMEOUT = "push_timeout"
    """A `tell(Push)` under `Policy.BLOCK` found no room within `block_timeout`."""

    CLOSED = "closed"
    """Told while stopping, or still queued when `stop(timeout)` ran out."""

    KEY_ERROR = "key_error"
    """`key_func` raised for this item or returned an unhashable key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """A consistent snapshot of a queue's counters.

    Every item pushed is in exactly one place, so at every snapshot:
    `pushed == flushed + coalesced + sum(dropped.values()) + depth + in_flight`.
    """

    pushed: int
    """Items handed to the queue (`Push`, `PushMany`, `push()` that returned)."""

    flushed: int
    """Items in batches the flusher accepted."""

    coalesced: int
    """Items replaced in place by a newer item with the same key."""

    dropped: Mapping[DropReason, int]
    """Dropped items by reason; holds only reasons with a non-zero count."""

    retries: int
    """Failed flush attempts (errors, timeouts, deaths)."""

    restarts: int
    """Times the flusher actor was replaced by a fresh one."""

    batches: int
    """Successful flush calls."""

    depth: int
    """Items queued, not counting the batch in flight."""

    in_flight: int
    """Items in the batch being flushed or waiting out a retry backoff."""

    oldest_age: float
    """Seconds the oldest queued item has waited (0 when empty), to within a tick."""

    @property
    def dropped_total(self) -> int:
        """All dropped items, whatever the reason."""
        return sum(self.dropped.values())

    @staticmethod
    def freeze_dropped(counts: Mapping[DropReason, int]) -> Mapping[DropReason, int]:
        """Return a read-only copy of `counts` without the zero entries."""
        return MappingProxyType({r: n for r, n in counts.items() if n})
