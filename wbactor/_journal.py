"""The journal: accepted items written to a file off the producers' threads.

A writer thread wakes every `journal_interval` seconds, takes the ledger's
lock just long enough to copy references to what changed since it last
looked (the items at positions `[journaled, tail)`, the keys replaced in
place, the positions in flight), lets go, pickles them and commits them in
one SQLite transaction with the live positions (`_journalfile.py`). The
producer's path does not change: a push costs what it costs without a journal.

Positions are a queue's (`_buffer.py`): one queue, or with lanes and a
`key_func` one per lane, each followed by a `_LaneView` of its own and
written as its lane in the file. A recovery queues the items again by the
current routing, so a journal written with 4 lanes starts a queue with 2.

Recovery and stop are not incremental: at `start()` the live items are read
back, queued first and written anew as one row (renumbered from position 0);
at stop, the last commit replaces the journal's rows with exactly what is
left (nothing after a drained stop). Positions that did not pickle are
written as empty rows (so that an older row never stands in for them) and
counted for `journal_skipped`.
"""

from __future__ import annotations

import os
import pickle
import threading
from bisect import bisect_left
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from wbactor._config import Policy
from wbactor._errors import ConfigError
from wbactor._journalfile import (
    CHUNK,
    JournalFile,
    JournalUnreadableError,
    LaneCommit,
    Row,
    dumps,
    quarantine,
    ranges_of,
)
from wbactor._log import (
    JOURNAL_FAILED,
    JOURNAL_QUARANTINED,
    JOURNAL_RECOVERED,
    JOURNAL_SKIPPED,
    KEY_FUNC_FAILED,
    describe,
)
from wbactor._stats import DropReason

if TYPE_CHECKING:
    from collections.abc import Hashable

    from wbactor._buffer import LaneQueue, PolicyBuffer
    from wbactor._config import Config
    from wbactor._drops import DropReporter
    from wbactor._ledger import Ledger
    from wbactor._log import QueueLog

__all__ = ["Journal", "open_journal"]

T = TypeVar("T")

_CLOSE_WAIT = 5.0
"""Seconds `close()` waits for the last commit at most when given no deadline."""


class _Capture(NamedTuple):
    """What changed in one lane since the last commit, copied under the lock."""

    head: int
    tail: int
    flight: list[tuple[int, int]]
    runs: list[tuple[int, list[Any]]]  # (first position, items at consecutive ones)


class _LaneView:
    """The writer's view of one queue's positions (under the ledger's lock)."""

    __slots__ = ("journaled", "key_pos", "last", "pos_key", "skipped")

    def __init__(self) -> None:
        self.journaled = 0  # positions below were handed to a commit
        self.key_pos: dict[Hashable, int] = {}  # COALESCE_BY_KEY: key -> position
        self.pos_key: dict[int, Hashable] = {}  # and back, in position order
        self.last: tuple[int, int, list[tuple[int, int]]] | None = None
        self.skipped: set[int] = set()  # positions whose items did not pickle

    def forget_below(self, low: int) -> None:
        """Forget the keys of positions below `low`: they settled."""
        pos_key, key_pos = self.pos_key, self.key_pos
        while pos_key:
            position = next(iter(pos_key))
            if position >= low:
                break
            key = pos_key.pop(position)
            if key_pos.get(key) == position:
                del key_pos[key]
        if self.skipped:
            self.skipped = {p for p in self.skipped if p >= low}


class Journal(Generic[T]):
    """One queue's journal: the file, the writer thread, what it has written."""

    def __init__(
        self, config: Config[T], file: JournalFile, items: list[T], log: QueueLog
    ) -> None:
        """Journal into `file`, already open and locked, which held `items`."""
        self._file = file
        self._interval = config.journal_interval
        self._key_of = config.key_func
        self._keyed = config.policy is Policy.COALESCE_BY_KEY
        self._log = log
        self.recovered_items = items
        self._ledger: Ledger[T] | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._io = threading.Lock()  # one capture-and-commit at a time
        self._drops: DropReporter[T] | None = None
        self._views: list[_LaneView] = []  # one per queue, under the ledger's lock
        self._final: tuple[list[Row], int] | None = None  # the last commit, at stop
        self._skipped_count = 0
        self._closed = False

    @property
    def path(self) -> str:
        """The journal file's path."""
        return self._file.path

    # -- start ----------------------------------------------------------------

    def attach(self, ledger: Ledger[T], drops: DropReporter[T]) -> None:
        """Queue the recovered items first, rewrite them, and start the writer.

        Called once the ledger exists and before any actor or producer runs.
        """
        self._ledger = ledger
        self._drops = drops
        buffer = ledger.buffer
        buffer.track_journal()
        self._views = [_LaneView() for _ in buffer.queues]
        items = self.recovered_items
        if not (self._keyed or buffer.routed):
            buffer.recover(items)
        else:  # the keys place them: in place (COALESCE_BY_KEY), in a lane
            keyed, failed = self._keys(items)
            buffer.recover([i for _, i in keyed], [k for k, _ in keyed])
            for _ in failed:
                buffer.recovered += 1
                buffer.reject(DropReason.KEY_ERROR)
            if failed:
                drops.report(failed, DropReason.KEY_ERROR)
        for view, queue in zip(self._views, buffer.queues, strict=True):
            view.journaled = len(queue)
            if self._keyed:
                view.pos_key = dict(enumerate(queue.by_key))
                view.key_pos = {k: p for p, k in view.pos_key.items()}
        self._commit_all(buffer.queues)
        if items:
            self._log.logger.info(JOURNAL_RECOVERED, path=self.path, count=len(items))
        with ledger.lock:
            ledger.settled()  # the trigger follows the capacity recovered items set
        ledger.journal = self
        self._thread = threading.Thread(
            target=self._run, name="wbactor-journal", daemon=True
        )
        self._thread.start()

    def _keys(self, items: list[T]) -> tuple[list[tuple[Hashable, T]], list[T]]:
        assert self._key_of is not None  # noqa: S101 - keyed only
        keyed: list[tuple[Hashable, T]] = []
        failed: list[T] = []
        for item in items:
            try:
                key = self._key_of(item)
                hash(key)
            except Exception as error:  # noqa: BLE001 - user code; logged, dropped
                self._log.logger.warning(KEY_FUNC_FAILED, error=describe(error))
                failed.append(item)
            else:
                keyed.append((key, item))
        return keyed, failed

    def abort(self) -> None:
        """Release the file: `start()` failed after the journal was opened."""
        self._closed = True
        self._file.close()

    # -- the writer thread ----------------------------------------------------

    def _run(self) -> None:
        while not self._wake.wait(self._interval):
            self._sync()
        self._sync_final()

    def _sync(self) -> None:
        ledger = self._ledger
        assert ledger is not None  # noqa: S101 - attached before the thread starts
        try:
            with self._io:
                with ledger.lock:
                    if self._final is not None:
                        return
                    captures = self._capture()
                if not captures:
                    return
                self._file.commit(
                    LaneCommit(
                        lane,
                        self._encode(c.runs, self._views[lane]),
                        c.head,
                        c.tail,
                        c.flight,
                    )
                    for lane, c in captures
                )
        except Exception as error:  # noqa: BLE001 - logged; the next commit retries
            self._log.logger.error(  # noqa: TRY400 - error=, no traceback
                JOURNAL_FAILED, path=self.path, error=describe(error)
            )

    def _sync_final(self) -> None:
        final = self._final
        try:
            with self._io:
                if final is not None:
                    rows, tail = final
                    self._file.commit([LaneCommit(0, rows, 0, tail, [])], replace=True)
        except Exception as error:  # noqa: BLE001 - logged; the file keeps the last commit
            self._log.logger.error(  # noqa: TRY400 - error=, no traceback
                JOURNAL_FAILED, path=self.path, error=describe(error)
            )
        finally:
            self._file.close()

    def _capture(self) -> list[tuple[int, _Capture]]:
        """Copy (ledger lock held) what changed since, for each lane that changed."""
        ledger = self._ledger
        assert ledger is not None  # noqa: S101
        buffer = ledger.buffer
        flying = [_in_flight(buffer, lane) for lane in range(len(buffer.queues))]
        if buffer.rewound is not None:  # DROP_NEWEST freed positions (one queue)
            view = self._views[0]
            view.journaled = min(view.journaled, buffer.rewound)
            buffer.rewound = None
        replaced: list[list[tuple[int, list[Any]]]] = [[] for _ in flying]
        if buffer.replaced:
            self._replaced(buffer, buffer.replaced, flying, replaced)
            buffer.replaced.clear()
        captures: list[tuple[int, _Capture]] = []
        for lane, queue in enumerate(buffer.queues):
            capture = self._capture_lane(
                buffer, lane, queue, flying[lane], replaced[lane]
            )
            if capture is not None:
                captures.append((lane, capture))
        return captures

    def _capture_lane(
        self,
        buffer: PolicyBuffer[T],
        lane: int,
        queue: LaneQueue[T],
        flying: tuple[list[int], list[Any]],
        runs: list[tuple[int, list[Any]]],
    ) -> _Capture | None:
        view = self._views[lane]
        head = queue.head
        positions, flight = flying
        start = max(view.journaled, head)
        if view.journaled < head and positions:  # taken before it was journaled
            first = bisect_left(positions, view.journaled)
            runs = _runs(positions[first:], flight[first:]) + runs
        queued, tail = self._new_queued(buffer, queue, view, start - head)
        tail += head
        if queued:
            runs.append((start, queued))
        view.journaled = tail
        flight_ranges = ranges_of(positions)
        view.forget_below(min(head, positions[0]) if positions else head)
        state = (head, tail, flight_ranges)
        if not runs and state == view.last:
            return None  # nothing changed: no commit (an idle queue does no I/O)
        view.last = state
        return _Capture(head, tail, flight_ranges, runs)

    def _new_queued(
        self,
        buffer: PolicyBuffer[T],
        queue: LaneQueue[T],
        view: _LaneView,
        offset: int,
    ) -> tuple[list[Any], int]:
        """Return the queue's items from `offset` on, and the queue's length.

        Under DROP_OLDEST and DROP_NEWEST with one queue, producers append
        without the lock, so the copy is made by C code that cannot be
        interrupted, from the right (O(new items)), and checked against the
        length read before it. Routed pushes hold the lock.
        """
        if self._keyed:  # under the lock: nothing moves
            by_key = queue.by_key
            length = len(by_key)
            new = list(islice(reversed(by_key.items()), max(0, length - offset)))
            new.reverse()
            base = queue.head + offset
            for i, (key, _) in enumerate(new):
                view.pos_key[base + i] = key
                view.key_pos[key] = base + i
            return [item for _, item in new], length
        deque_: Any = queue.items
        if buffer.routed:
            return list(islice(deque_, offset, None)), len(deque_)
        for _ in range(3):
            length = len(deque_)
            try:
                new = list(islice(reversed(deque_), max(0, length - offset)))
            except RuntimeError:  # appended to meanwhile
                continue
            if len(deque_) == length:
                new.reverse()
                return new, length
        new = list(islice(deque_, offset, None))  # one C call: consistent
        return new, offset + len(new)

    def _replaced(
        self,
        buffer: PolicyBuffer[T],
        keys: set[Hashable],
        flying: list[tuple[list[int], list[Any]]],
        into: list[list[tuple[int, list[Any]]]],
    ) -> None:
        """Add to `into` (by lane) rows rewriting the journaled items replaced since."""
        lanes = len(buffer.queues)
        for key in keys:
            lane = hash(key) % lanes if buffer.routed else 0
            view, queue = self._views[lane], buffer.queues[lane]
            position = view.key_pos.get(key)
            if position is None or position >= view.journaled:
                continue  # not journaled yet: it will be, as it is now
            if position >= queue.head:
                into[lane].append((position, [queue.by_key[key]]))
                continue
            positions, items = flying[lane]  # taken into flight since
            i = bisect_left(positions, position)
            if i < len(positions) and positions[i] == position:
                into[lane].append((position, [items[i]]))

    def _encode(self, runs: list[tuple[int, list[Any]]], view: _LaneView) -> list[Row]:
        """Pickle each run in one call; item by item if one does not pickle."""
        rows: list[Row] = []
        for lo, items in runs:
            for start in range(0, len(items), CHUNK):
                chunk = items[start : start + CHUNK]
                try:
                    rows.append(Row(lo + start, lo + start + len(chunk), dumps(chunk)))
                except Exception:  # noqa: BLE001 - one of them does not pickle
                    rows += self._encode_one_by_one(lo + start, chunk, view)
        return rows

    def _encode_one_by_one(
        self, lo: int, items: list[Any], view: _LaneView
    ) -> list[Row]:
        rows: list[Row] = []
        good: list[Any] = []
        for position, item in enumerate(items, lo):
            try:
                pickle.dumps(item, protocol=5)
            except Exception:  # noqa: BLE001 - not journaled; stays in memory
                if good:
                    rows.append(Row(position - len(good), position, dumps(good)))
                    good = []
                rows.append(Row(position, position + 1, None))
                if position not in view.skipped:
                    view.skipped.add(position)
                    self._skipped_count += 1
            else:
                good.append(item)
        if good:
            end = lo + len(items)
            rows.append(Row(end - len(good), end, dumps(good)))
        return rows

    # -- stop -------------------------------------------------------------------

    def keep_leftovers(self) -> list[T]:
        """Hand what is queued or in flight to the journal (ledger lock held, at stop).

        Prepares the last commit, which replaces the journal's rows with
        exactly those items, in order; they count in `Stats.journaled`.
        Returns those that do not pickle, dropped with `closed`. Later calls
        (the queue actor's own stop) drop whatever arrived since as usual.
        """
        ledger = self._ledger
        assert ledger is not None  # noqa: S101
        buffer = ledger.buffer
        if self._final is not None:
            return buffer.drop_in_flight(DropReason.CLOSED) + buffer.drop_queued(
                DropReason.CLOSED
            )
        kept: set[tuple[int, int]] = set()
        rows: list[Row] = []
        good = 0
        for lane, queue in enumerate(buffer.queues):
            positions, items = _in_flight(buffer, lane)
            head = queue.head
            queued = queue.values()
            positions += range(head, head + len(queued))
            items += queued
            for row in self._encode(_runs(positions, items), self._views[lane]):
                if row.blob is None:  # the item at `lo` did not pickle
                    continue
                kept.update((lane, p) for p in range(row.lo, row.hi))
                good += row.hi - row.lo
                rows.append(row)
        # The next start reads the items that pickled, at positions 0, 1, ...
        # of lane 0, lane by lane: it routes them anew.
        self._final = (_renumbered(rows), good)
        self._wake.set()
        return buffer.leave_to_journal(kept)

    def forget_in_child(self) -> None:
        """In a forked child: drop the inherited file, unused (`JournalFile`)."""
        self._file.forget_in_child()

    def close(self, timeout: float | None) -> None:
        """Wait (up to `timeout`) for the last commit; log `journal_skipped`.

        The lock on the file is released once the last commit is done.
        """
        if self._closed:
            return
        self._closed = True
        ledger = self._ledger
        if ledger is not None and self._final is None:  # stopped some other way
            dropped = ledger.abandon()
            if self._drops is not None:
                self._drops.report(*dropped)
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(_CLOSE_WAIT if timeout is None else max(timeout, 0.1))
        if self._skipped_count:
            self._log.logger.warning(
                JOURNAL_SKIPPED, path=self.path, count=self._skipped_count
            )

    def _commit_all(self, queues: list[LaneQueue[T]]) -> None:
        """Replace the journal's rows with each queue's items, at positions from 0."""
        self._file.commit(
            (
                LaneCommit(
                    lane,
                    self._encode([(0, q.values())], self._views[lane]) if q else [],
                    0,
                    len(q),
                    [],
                )
                for lane, q in enumerate(queues)
            ),
            replace=True,
        )

    def wait_synced(self, timeout: float) -> bool:
        """Commit now what was accepted so far (for tests and the examples).

        Returns False if a commit under way did not end within `timeout`.
        """
        if not self._io.acquire(timeout=timeout):  # a commit under way
            return False
        self._io.release()
        self._sync()
        return True


def _renumbered(rows: list[Row]) -> list[Row]:
    """Return `rows` moved down to consecutive positions from 0, in order."""
    moved: list[Row] = []
    at = 0
    for row in rows:
        size = row.hi - row.lo
        moved.append(Row(at, at + size, row.blob))
        at += size
    return moved


def _in_flight(buffer: PolicyBuffer[Any], lane: int) -> tuple[list[int], list[Any]]:
    """Return the positions and items in flight from queue `lane`, in order.

    With lanes but one queue, several flights take from it: their positions
    interleave by when each took its batch, so they are merged.
    """
    flights = [
        f
        for f in buffer.flights
        if f.items is not None and f.positions and buffer.queue_index(f) == lane
    ]
    if len(flights) == 1:
        (flight,) = flights
        return list(flight.positions or []), list(flight.items or [])
    pairs = sorted(
        (p, i)
        for f in flights
        for p, i in zip(f.positions or [], f.items or [], strict=False)
    )
    return [p for p, _ in pairs], [i for _, i in pairs]


def _runs(positions: list[int], items: list[Any]) -> list[tuple[int, list[Any]]]:
    """Group items at ascending positions into runs of consecutive positions."""
    runs: list[tuple[int, list[Any]]] = []
    last = None
    for position, item in zip(positions, items, strict=False):
        if last is not None and position == last + 1:
            runs[-1][1].append(item)
        else:
            runs.append((position, [item]))
        last = position
    return runs


def open_journal(config: Config[T], log: QueueLog) -> Journal[T]:
    """Lock and open `config.journal`, read its items; quarantine it if unreadable.

    Raises:
        ConfigError: another live queue holds the journal.
    """
    assert config.journal is not None  # noqa: S101 - the caller checks
    path = os.fspath(config.journal)
    if Path(path).is_dir():
        msg = f"journal {path!r} is a directory: give a file's path"
        raise ConfigError(msg)
    file = JournalFile(path)
    try:
        try:
            file.open()
            items = file.read()
        except JournalUnreadableError as error:
            file.close_db()
            aside = quarantine(path)
            log.logger.error(  # noqa: TRY400 - error=, no traceback
                JOURNAL_QUARANTINED, path=path, error=describe(error), moved_to=aside
            )
            file.open()
            items = []
    except BaseException:
        file.close()
        raise
    return Journal(config, file, items, log)
