"""Drop reasons and the `Stats` snapshot."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, Self

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["DropReason", "DroppedCounts", "LaneState", "LaneStats", "Stats"]


class DropReason(enum.StrEnum):
    """Why an item was dropped; passed to `on_drop` and counted in `Stats.dropped`.

    Members are `str`s equal to their values, so `reason == "drop_oldest"` holds.
    """

    DROP_OLDEST = "drop_oldest"
    """The queue was full and this, its oldest item, made room for a new one."""

    DROP_NEWEST = "drop_newest"
    """The queue was full under `Policy.DROP_NEWEST`, so this new item was refused."""

    RETRIES_EXHAUSTED = "retries_exhausted"
    """The item's batch failed transiently `max_retries + 1` times."""

    PUSH_TIMEOUT = "push_timeout"
    """A `tell(Push)` under `Policy.BLOCK` found no room within `block_timeout`."""

    CLOSED = "closed"
    """Told while stopping, or still queued when `stop(timeout)` ran out."""

    KEY_ERROR = "key_error"
    """`key_func` raised for this item or returned an unhashable key."""

    REJECTED = "rejected"
    """The store refused this item for good (a `Failure.PERMANENT` failure of
    a batch holding it alone, or of the item listed in a `PartialFailure`)."""


class DroppedCounts(Mapping[DropReason, int]):
    """A read-only mapping of drop reasons to counts: `Stats.dropped`.

    Unlike `types.MappingProxyType` it pickles and deep-copies, so a `Stats`
    does too and `dataclasses.asdict` works on it. Keys are `DropReason`
    members, equal to their `str` values, so `dropped["closed"]` finds
    `DropReason.CLOSED`. It compares equal to any mapping with the same items,
    a plain `dict` included; like a `dict`, it is not hashable. Assigning or
    deleting an item raises `TypeError`.
    """

    __slots__ = ("_counts",)

    _counts: dict[DropReason, int]

    def __init__(self, counts: Mapping[DropReason, int] | None = None) -> None:
        """Copy `counts`, turning each key into its `DropReason`.

        Raises:
            ValueError: a key is not a drop reason's value.
        """
        self._counts = {} if counts is None else _by_reason(counts, keep_zeros=True)

    def __getitem__(self, reason: DropReason) -> int:
        """Return the count for `reason` (a `DropReason` or its `str` value)."""
        return self._counts[reason]

    def __iter__(self) -> Iterator[DropReason]:
        """Iterate over the reasons, in the order they were given."""
        return iter(self._counts)

    def __len__(self) -> int:
        """Return how many reasons there are."""
        return len(self._counts)

    def __contains__(self, reason: object) -> bool:
        """Return whether `reason` has a count here."""
        return reason in self._counts

    def __eq__(self, other: object) -> bool:
        """Return whether `other` is a mapping with the same items."""
        if isinstance(other, DroppedCounts):
            return self._counts == other._counts
        if isinstance(other, Mapping):
            return self._counts == dict(other.items())
        return NotImplemented

    # Unhashable, like a dict (the default once __eq__ is defined, said here
    # for the linter); typeshed types object.__hash__ as a method, hence the
    # ignore.
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        """Show the counts keyed by the reasons' `str` values."""
        plain = {r.value: n for r, n in self._counts.items()}
        return f"DroppedCounts({plain!r})"

    def __reduce__(self) -> tuple[type[Self], tuple[dict[DropReason, int]]]:
        """Pickle (and copy) as the class called with a plain `dict`."""
        return (type(self), (dict(self._counts),))

    @classmethod
    def _adopt(cls, counts: dict[DropReason, int]) -> Self:
        """Wrap `counts`, already keyed by `DropReason`, without copying it."""
        self = cls.__new__(cls)
        self._counts = counts
        return self


def _by_reason(
    counts: Mapping[DropReason, int], *, keep_zeros: bool
) -> dict[DropReason, int]:
    """Copy `counts` keyed by `DropReason` members (a `str` value is looked up)."""
    return {
        r if type(r) is DropReason else DropReason(r): n
        for r, n in counts.items()
        if n or keep_zeros
    }


LaneState = Literal["idle", "flushing", "backing_off"]
"""What a lane is doing: nothing in flight, writing a batch, or waiting out a
retry backoff before it writes its batch again."""


@dataclass(frozen=True, slots=True)
class LaneStats:
    """One lane's part of a `Stats` snapshot: `Stats.lanes[i]` is lane i."""

    depth: int
    """Items queued for this lane (without a `key_func`: every item not yet
    cut into a batch, shown in lane 0)."""

    in_flight: int
    """Items in this lane's batch in flight, or waiting out its backoff."""

    failures: int
    """Failed attempts of this lane's current batch (0 when healthy)."""

    state: LaneState
    """`"idle"`, `"flushing"` or `"backing_off"`."""

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a plain, JSON-ready `dict`."""
        return {
            "depth": int(self.depth),
            "in_flight": int(self.in_flight),
            "failures": int(self.failures),
            "state": str(self.state),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Stats:
    """A consistent snapshot of a queue's counters.

    Every item pushed or recovered is in exactly one place, so at every
    snapshot: `recovered + pushed == flushed + coalesced + sum(dropped.values())
    + depth + in_flight + journaled` (`recovered` and `journaled` are 0
    without a journal).
    """

    pushed: int
    """Items handed to the queue (`Push`, `PushMany`, `push()` that returned)."""

    flushed: int
    """Items in batches the flusher accepted."""

    coalesced: int
    """Items replaced in place by a newer item with the same key."""

    dropped: Mapping[DropReason, int]
    """Dropped items by reason; holds only reasons with a non-zero count. A
    read-only `DroppedCounts` (another mapping given here is copied into
    one)."""

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

    recovered: int = 0
    """Items read back from the journal at start and queued first (0 without
    a journal)."""

    journaled: int = 0
    """Items `stop(timeout)` left in the journal for the next start instead
    of dropping them with `closed` (0 without a journal, and after a drained
    stop)."""
    lanes: tuple[LaneStats, ...] = ()
    """Each lane's figures (`Config.lanes`), lane 0 first; the fields above
    are their sums."""

    def __post_init__(self) -> None:
        """Make `dropped` a `DroppedCounts`, so that every `Stats` pickles."""
        if type(self.dropped) is not DroppedCounts:
            object.__setattr__(self, "dropped", Stats.freeze_dropped(self.dropped))
        if type(self.lanes) is not tuple:
            object.__setattr__(self, "lanes", tuple(self.lanes))

    @property
    def dropped_total(self) -> int:
        """All dropped items, whatever the reason."""
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a plain `dict` of JSON-ready values.

        Counters are `int`s and `oldest_age` a `float`; `dropped` is a plain
        `dict` from each reason's plain `str` value (not the `DropReason`
        member) to its count, so `json.dumps(stats.as_dict())` works and the
        result compares and serialises like any dict.
        """
        result: dict[str, Any] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "dropped":
                # r.value, not r: a StrEnum member is a str but not a plain one.
                result["dropped"] = {str(r.value): int(n) for r, n in value.items()}
            elif field.name == "lanes":
                result["lanes"] = [lane.as_dict() for lane in value]
            elif field.type in {"int", int}:
                result[field.name] = int(value)
            elif field.type in {"float", float}:
                result[field.name] = float(value)
            else:  # a new kind of field needs its own JSON-ready form here
                msg = f"Stats.as_dict has no JSON form for field {field.name!r}"
                raise TypeError(msg)
        return result

    @staticmethod
    def freeze_dropped(counts: Mapping[DropReason, int]) -> DroppedCounts:
        """Return a read-only copy of `counts` without the zero entries."""
        fresh = _by_reason(counts, keep_zeros=False)
        return DroppedCounts._adopt(fresh)  # noqa: SLF001 - no second copy of a new dict
