"""The journal's file: an SQLite database in WAL mode, its lock and its rows.

Layout (format 1). Every row holds the pickled list (protocol 5) of the items
at positions `[lo, hi)` of a lane's queue (lane 0 for a queue with one
queue: one lane, or lanes without a `key_func`), or NULL for positions whose
items did not pickle. Rows are numbered by `seq` in the order
they were written; a later row covering a position overrides an earlier one
(a coalesced replacement, or a position a DROP_NEWEST eviction freed and a
new item took). Each lane's row in `wbactor_lanes` says which positions are
live: those of the batches in flight (`flight`, ranges) and `[head, tail)`.
Everything else in a row is dead (flushed, coalesced away, dropped) and is
skipped at recovery; rows wholly dead are deleted at the next commit.

The file is locked for the queue's life with `flock` on `<path>.lock`, so two
live queues cannot share it (a killed process releases its lock). A file that
cannot be read is renamed aside, with its `-wal` and `-shm`, to
`<path>.corrupt-<unix seconds>`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from wbactor._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "CHUNK",
    "FORMAT",
    "JournalFile",
    "JournalUnreadableError",
    "LaneCommit",
    "Row",
    "peek",
    "quarantine",
]

FORMAT = 1
"""The layout this version writes and reads; a newer one is unreadable here."""

_SIDE_FILES = ("-wal", "-shm")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS wbactor_meta (key TEXT PRIMARY KEY, value INTEGER);
CREATE TABLE IF NOT EXISTS wbactor_rows (
    lane INTEGER NOT NULL, seq INTEGER NOT NULL,
    lo INTEGER NOT NULL, hi INTEGER NOT NULL, blob BLOB,
    PRIMARY KEY (lane, seq));
CREATE TABLE IF NOT EXISTS wbactor_lanes (
    lane INTEGER PRIMARY KEY, head INTEGER NOT NULL, tail INTEGER NOT NULL,
    flight TEXT NOT NULL);
"""


class JournalUnreadableError(Exception):
    """The journal file is corrupt, not a journal, or from a newer version."""


class Row(NamedTuple):
    """Items to write at positions `[lo, hi)` of a lane (`blob` None: unpicklable)."""

    lo: int
    hi: int
    blob: bytes | None


class LaneCommit(NamedTuple):
    """What one commit writes for one lane: new rows and the live positions."""

    lane: int
    rows: Sequence[Row]
    head: int
    tail: int
    flight: list[tuple[int, int]]


CHUNK = 2000
"""Most items per row: one `dumps` call holds the GIL for a fraction of a
millisecond, and pickles at about half the cost per item of one huge call."""


def dumps(items: list[Any]) -> bytes:
    """Pickle a list of items as the journal stores them (protocol 5).

    Without the memo ("fast" mode: twice as fast for small items), unless an
    item refers to itself, which only the memo can pickle.
    """
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=5)
    pickler.fast = True  # CPython: no memo (documented as deprecated, still there)
    try:
        pickler.dump(items)
    except ValueError:  # "fast mode: can't pickle cyclic objects"
        return pickle.dumps(items, protocol=5)
    return buffer.getvalue()


class JournalFile:
    """The open, locked journal database (used by one thread at a time)."""

    def __init__(self, path: str) -> None:
        """Lock `path` for this queue; `open()` it next.

        Raises:
            ConfigError: the journal is locked by another live queue.
        """
        self.path = path
        self._lock_fd = _lock(path)
        self._db: sqlite3.Connection | None = None
        self._seq = 0

    def open(self) -> None:
        """Open (or create) the database at the path; the lock is kept.

        Raises:
            JournalUnreadableError: it cannot be read; the caller
                quarantines it and opens again.
        """
        self.close_db()
        try:
            self._open()
        except JournalUnreadableError:
            self.close_db()
            raise

    def _open(self) -> None:
        try:
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise JournalUnreadableError(str(error)) from error
        self._db = db
        try:
            db.execute("PRAGMA journal_mode = WAL")
            # FULL: each group commit is fsynced, so a power loss too loses at
            # most the last interval (NORMAL survives a killed process only).
            db.execute("PRAGMA synchronous = FULL")
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            ours = {"wbactor_meta", "wbactor_rows", "wbactor_lanes"}
            if tables and not tables >= ours:
                msg = f"not a wbactor journal (tables: {sorted(tables)})"
                raise JournalUnreadableError(msg)
            db.executescript(_SCHEMA)
            found = db.execute(
                "SELECT value FROM wbactor_meta WHERE key = 'format'"
            ).fetchone()
            if found is None:
                db.execute("INSERT INTO wbactor_meta VALUES ('format', ?)", (FORMAT,))
            elif found[0] != FORMAT:
                msg = f"journal format {found[0]!r}, this version reads {FORMAT}"
                raise JournalUnreadableError(msg)
            top = db.execute("SELECT max(seq) FROM wbactor_rows").fetchone()[0]
            self._seq = 0 if top is None else int(top) + 1
        except sqlite3.Error as error:
            raise JournalUnreadableError(str(error)) from error

    def read(self) -> list[Any]:
        """Return the live items, lane by lane, in position order within each.

        Raises:
            JournalUnreadableError: a row or the lane record cannot be read.
        """
        return _read(self._connection())

    def commit(self, lanes: Iterable[LaneCommit], *, replace: bool = False) -> None:
        """Write each lane's rows and live positions in one transaction.

        Deletes a lane's rows wholly below every live position (and, after a
        rewind, those from `tail` on). With `replace`, every row and lane
        record goes first: the journal then holds exactly `lanes`.
        """
        db = self._connection()
        seq = self._seq
        db.execute("BEGIN IMMEDIATE")
        try:
            if replace:
                db.execute("DELETE FROM wbactor_rows")
                db.execute("DELETE FROM wbactor_lanes")
            for lane, rows, head, tail, flight in lanes:
                low = min(head, flight[0][0]) if flight else head
                if not replace:
                    db.execute(
                        "DELETE FROM wbactor_rows"
                        " WHERE lane = ? AND (hi <= ? OR lo >= ?)",
                        (lane, low, tail),
                    )
                db.executemany(
                    "INSERT INTO wbactor_rows VALUES (?, ?, ?, ?, ?)",
                    [(lane, seq + i, r.lo, r.hi, r.blob) for i, r in enumerate(rows)],
                )
                db.execute(
                    "INSERT OR REPLACE INTO wbactor_lanes VALUES (?, ?, ?, ?)",
                    (lane, head, tail, json.dumps(flight)),
                )
                seq += len(rows)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._seq = seq

    def count(self) -> int:
        """Return how many rows the journal holds (for tests)."""
        return int(
            self._connection()
            .execute("SELECT count(*) FROM wbactor_rows")
            .fetchone()[0]
        )

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            msg = "the journal is closed"
            raise RuntimeError(msg)
        return self._db

    def close_db(self) -> None:
        """Close the database, keeping the lock."""
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def forget_in_child(self) -> None:
        """In a child forked from the queue's process: let go of the lock.

        The child's copy of the lock's descriptor is closed, so a child that
        outlives the parent does not keep the journal locked (the next start
        would find it in use); the parent's lock stays, its descriptor is
        its own. The database is left alone: the child's queue refuses
        everything, so nothing uses it there.
        """
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Close the database and release the lock (idempotent)."""
        self.close_db()
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)  # releases the flock


def peek(path: str) -> list[Any]:
    """Return the items a queue starting on `path` would recover now, in order.

    Reads the last commit without taking the lock, so a live queue's journal
    can be looked at (tests, tools); it changes nothing.

    Raises:
        JournalUnreadableError: the file cannot be read.
    """
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise JournalUnreadableError(str(error)) from error
    try:
        return _read(db)
    finally:
        db.close()


def _read(db: sqlite3.Connection) -> list[Any]:
    try:
        lanes = {
            int(lane): (int(head), int(tail), _ranges(flight))
            for lane, head, tail, flight in db.execute(
                "SELECT lane, head, tail, flight FROM wbactor_lanes"
            )
        }
        rows = db.execute(
            "SELECT lane, lo, hi, blob FROM wbactor_rows ORDER BY lane, seq"
        ).fetchall()
    except (sqlite3.Error, ValueError, TypeError) as error:
        raise JournalUnreadableError(str(error)) from error
    missing = object()
    found: dict[tuple[int, int], Any] = {}
    for lane, lo, hi, blob in rows:
        items = _loads(blob, hi - lo) if blob is not None else None
        live = lanes.get(lane)
        for offset, position in enumerate(range(lo, hi)):
            if live is not None and not _is_live(position, *live):
                continue
            found[lane, position] = missing if items is None else items[offset]
    return [found[k] for k in sorted(found) if found[k] is not missing]


def quarantine(path: str) -> str:
    """Rename the journal and its `-wal`/`-shm` aside; return the new name."""
    base = f"{path}.corrupt-{int(time.time())}"
    aside, n = base, 0
    while Path(aside).exists() or Path(aside).is_symlink():
        n += 1
        aside = f"{base}.{n}"
    Path(path).replace(aside)
    for suffix in _SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            Path(path + suffix).replace(aside + suffix)
    return aside


def _lock(path: str) -> int:
    """Lock `<path>.lock` for this queue's life; return its descriptor."""
    lock_path = f"{path}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        msg = f"cannot open the journal's lock file {lock_path!r}: {error}"
        raise ConfigError(msg) from error
    try:
        _try_lock(fd)
    except OSError:
        os.close(fd)
        msg = (
            f"journal {path!r} is in use by another live queue (its lock file "
            f"{lock_path!r} is locked): two queues may not share one journal"
        )
        raise ConfigError(msg) from None
    return fd


def _try_lock(fd: int) -> None:
    """Take an exclusive lock on `fd` without waiting; OSError if held."""
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows
        import msvcrt  # noqa: PLC0415

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined,unused-ignore]
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _loads(blob: bytes, size: int) -> list[Any]:
    try:
        items = pickle.loads(blob)  # noqa: S301 - the queue's own file
    except Exception as error:
        msg = f"a journal row does not unpickle: {type(error).__name__}: {error}"
        raise JournalUnreadableError(msg) from error
    if type(items) is not list or len(items) != size:
        msg = "a journal row does not hold the items its positions say"
        raise JournalUnreadableError(msg)
    return items


def _ranges(text: str) -> list[tuple[int, int]]:
    return [(int(lo), int(hi)) for lo, hi in json.loads(text)]


def _is_live(
    position: int, head: int, tail: int, flight: list[tuple[int, int]]
) -> bool:
    if head <= position < tail:
        return True
    return any(lo <= position < hi for lo, hi in flight)


def ranges_of(positions: Sequence[int]) -> list[tuple[int, int]]:
    """Return ascending `positions` as half-open ranges of consecutive ones."""
    ranges: list[tuple[int, int]] = []
    for position in positions:
        if ranges and ranges[-1][1] == position:
            ranges[-1] = (ranges[-1][0], position + 1)
        else:
            ranges.append((position, position + 1))
    return ranges
