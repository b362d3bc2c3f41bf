"""SQLiteFlusher through a real queue, as a user would run it."""

from __future__ import annotations

import functools
import pickle
import random
import sqlite3
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
from structlog.testing import capture_logs
from support import WAIT, running

import wbactor
from wbactor.flushers import (
    PermanentStoreError,
    SQLiteFlusher,
    StoreError,
    TransientStoreError,
)
from wbactor.testing import DropRecorder

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from wbactor.testing import ManualClock

Row = tuple[int, int | None]

SETUP = ("CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)",)
UPSERT = (
    "INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"
)


def as_params(row: Row) -> Row:
    return row


def kv_flusher(path: Path, **options: Any) -> SQLiteFlusher[Row]:
    return SQLiteFlusher(path, UPSERT, as_params, setup=SETUP, **options)


def table(path: Path) -> dict[int, int]:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT k, v FROM kv ORDER BY k"))
    finally:
        db.close()


def store_errors(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == "store_error"]


def config(clock: ManualClock, **options: Any) -> wbactor.Config[Row]:
    return wbactor.Config(capacity=100, clock=clock, **options)


def test_upserts_keep_the_latest_value_and_a_second_write_changes_nothing(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "kv.db"
    cfg = config(clock, flusher_factory=lambda: kv_flusher(path))
    with running(cfg) as wb:
        wb.ref.tell(wbactor.PushMany([(1, 10), (2, 20), (1, 11)]))
        wb.flush(WAIT)
        assert table(path) == {1: 11, 2: 20}
        wb.ref.tell(wbactor.PushMany([(1, 11), (2, 20)]))  # the same rows again
        wb.flush(WAIT)
        assert table(path) == {1: 11, 2: 20}
        stats = wb.stats()
    assert (stats.flushed, stats.retries) == (5, 0)


def test_the_connection_is_opened_on_the_first_flush_not_before(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "kv.db"
    made: list[SQLiteFlusher[Row]] = []

    def factory() -> SQLiteFlusher[Row]:
        made.append(kv_flusher(path))
        return made[-1]

    with running(config(clock, flusher_factory=factory)) as wb:
        assert len(made) == 1
        assert not path.exists()
        wb.push((1, 10))
        assert not path.exists()  # queued, not flushed yet
        wb.flush(WAIT)
        assert table(path) == {1: 10}


def test_a_bad_row_is_isolated_and_rejected_and_the_rest_of_its_batch_written(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "kv.db"
    drops: DropRecorder[Row] = DropRecorder()
    cfg = config(
        clock,
        flusher_factory=lambda: kv_flusher(path),
        max_retries=1,
        on_drop=drops,
    )
    with capture_logs() as logs, running(cfg) as wb:
        wb.push((0, 0))
        wb.flush(WAIT)  # the table exists, with one row
        wb.ref.tell(wbactor.PushMany([(1, 10), (2, None), (3, 30)]))
        wb.flush(WAIT)  # no backoff: a permanent error is bisected at once
        assert table(path) == {0: 0, 1: 10, 3: 30}
        wb.push((4, 40))  # the queue goes on
        wb.flush(WAIT)
        stats = wb.stats()
    assert table(path) == {0: 0, 1: 10, 3: 30, 4: 40}
    assert drops.calls == [((2, None), wbactor.DropReason.REJECTED)]
    # The batch, its first half [1, 2], and [2] alone failed; none restarted.
    assert (stats.retries, stats.restarts) == (3, 0)
    assert stats.dropped == {wbactor.DropReason.REJECTED: 1}
    errors = store_errors(logs)
    assert len(errors) == 3
    for error in errors:
        assert error["store"] == "sqlite"
        assert error["permanent"] is True
        assert error["sqlstate"] is None
        assert error["log_level"] == "warning"
        assert "NOT NULL constraint failed: kv.v" in str(error["error"])
    [rejected] = [e for e in logs if e["event"] == "items_rejected"]
    assert rejected["count"] == 1
    assert str(rejected["error"]).startswith("PermanentStoreError: sqlite ")
    assert not [e for e in logs if e["event"] == "retries_exhausted"]


def test_store_error_names_the_queue_whose_flusher_logged_it(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "kv.db"
    cfg = config(clock, flusher_factory=lambda: kv_flusher(path), name="players")
    with capture_logs() as logs, running(cfg) as wb:
        wb.push((1, None))  # NOT NULL: rejected
        wb.flush(WAIT)
    [error] = store_errors(logs)
    assert error["queue"] == "players"
    # Called outside any queue, the flusher names none.
    alone = kv_flusher(path)
    with capture_logs() as logs, pytest.raises(PermanentStoreError):
        alone.flush([(2, None)])
    alone.close()
    [error] = store_errors(logs)
    assert "queue" not in error


def test_a_locked_database_is_transient_and_a_fresh_flusher_writes_the_batch(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "kv.db"
    made: list[SQLiteFlusher[Row]] = []

    def factory() -> SQLiteFlusher[Row]:
        made.append(kv_flusher(path, timeout=0.01))
        return made[-1]

    with running(config(clock, flusher_factory=factory)) as wb:
        wb.push((0, 0))
        wb.flush(WAIT)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the lock
        with capture_logs() as logs:
            wb.ref.tell(wbactor.PushMany([(1, 10), (2, 20)]))
            wb.ref.tell(wbactor.Flush())
            wb.wait_for(lambda s: s.retries == 1, WAIT)
            blocker.execute("COMMIT")
            blocker.close()
            clock.advance(wbactor.default_backoff(1))
            stats = wb.wait_for(lambda s: s.flushed == 3, WAIT)
    assert table(path) == {0: 0, 1: 10, 2: 20}
    assert (stats.retries, stats.restarts, stats.dropped_total) == (1, 1, 0)
    assert len(made) == 2  # the restart built a new flusher, and connection
    assert made[0]._db is None  # closed by the queue when it was retired
    [error] = store_errors(logs)
    assert error["permanent"] is False
    assert "database is locked" in str(error["error"])
    assert "SQLITE_BUSY" in str(error["error"])


def test_a_shared_flusher_reconnects_after_its_connection_broke(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "kv.db"
    flusher = kv_flusher(path)
    with running(config(clock, flusher=flusher)) as wb:
        wb.push((1, 10))
        wb.flush(WAIT)
        broken = flusher._db
        assert broken is not None
        broken.close()  # behind the flusher's back
        with capture_logs() as logs:
            wb.push((2, 20))
            wb.ref.tell(wbactor.Flush())
            wb.wait_for(lambda s: s.retries == 1, WAIT)
            clock.advance(wbactor.default_backoff(1))
            wb.wait_for(lambda s: s.flushed == 2, WAIT)
        assert flusher._db is not None
        assert flusher._db is not broken
    assert table(path) == {1: 10, 2: 20}
    [error] = store_errors(logs)
    assert error["permanent"] is False
    assert flusher._db is None  # closed at stop


def test_no_such_table_and_bad_syntax_are_permanent(tmp_path: Path) -> None:
    missing = SQLiteFlusher(tmp_path / "a.db", UPSERT, as_params)
    with pytest.raises(PermanentStoreError, match="no such table: kv") as caught:
        missing.flush([(1, 1)])
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert caught.value.store == "sqlite"
    assert caught.value.permanent
    missing.close()
    bad = "INSERT INTO kv VALUES (?, ?) WHERE"
    typo = SQLiteFlusher(tmp_path / "b.db", bad, as_params, setup=SETUP)
    with pytest.raises(PermanentStoreError, match="syntax error"):
        typo.flush([(1, 1)])
    typo.close()


def test_a_failing_setup_leaves_no_connection_and_runs_again(tmp_path: Path) -> None:
    create = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)"
    flusher = SQLiteFlusher(tmp_path / "kv.db", UPSERT, as_params, setup=[create])
    flusher.flush([(1, 1)])
    flusher.close()
    with pytest.raises(PermanentStoreError, match="already exists"):
        flusher.flush([(1, 1)])  # a new connection runs the setup again
    assert flusher._db is None
    flusher.close()


def test_a_database_that_cannot_be_opened_is_transient(tmp_path: Path) -> None:
    flusher = kv_flusher(tmp_path / "no such dir" / "kv.db")  # lazy: no error yet
    with pytest.raises(TransientStoreError, match="unable to open") as caught:
        flusher.flush([(1, 1)])
    assert isinstance(caught.value, StoreError)
    assert isinstance(caught.value, wbactor.WriteBehindError)
    flusher.close()


def test_close_is_idempotent_before_and_after_a_flush(tmp_path: Path) -> None:
    flusher = kv_flusher(tmp_path / "kv.db")
    flusher.close()
    flusher.close()
    flusher.flush([(1, 10)])
    flusher.close()
    flusher.close()
    assert table(tmp_path / "kv.db") == {1: 10}


def test_the_sqlite_path_needs_no_psycopg(tmp_path: Path) -> None:
    code = f"""
import sys
sys.modules["psycopg"] = None  # as if not installed
import wbactor, wbactor.flushers
from wbactor.flushers import PostgresFlusher, SQLiteFlusher
flusher = SQLiteFlusher({str(tmp_path / "kv.db")!r}, {UPSERT!r}, lambda r: r,
                        setup={list(SETUP)!r})
flusher.flush([(1, 10)])
flusher.close()
try:
    PostgresFlusher("postgresql://nowhere", "SELECT 1", lambda r: r)
except ImportError as error:
    print(error)
"""
    result = subprocess.run(  # noqa: S603 - our interpreter, our code
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'wbactor[postgres]'" in result.stdout
    assert table(tmp_path / "kv.db") == {1: 10}


def test_a_flusher_of_ones_own_raises_store_errors_without_an_sqlstate() -> None:
    error = TransientStoreError("timed out", store="redis")
    assert isinstance(error, wbactor.WriteBehindError)
    assert (error.store, error.sqlstate, error.permanent) == ("redis", None, False)
    assert str(error) == "timed out"


# ------------------------------------------------- upsert and append forms

HOSTILE = 'pl"ay ers; DROP TABLE x; -- ünï'
"""A table name with a quote, spaces, a semicolon, a comment and unicode."""

KV_COLUMNS = ("k", "tick", "v")


def make_table(path: Path, ddl: str) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute(ddl)
        db.commit()
    finally:
        db.close()


def rows_of(path: Path, table: str = "kv") -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        quoted = '"' + table.replace('"', '""') + '"'
        return db.execute(f"SELECT * FROM {quoted} ORDER BY 1").fetchall()  # noqa: S608 - quoted, the test's own name
    finally:
        db.close()


def kv_path(tmp_path: Path) -> Path:
    path = tmp_path / "kv.db"
    make_table(
        path,
        "CREATE TABLE kv (k INTEGER PRIMARY KEY, tick INTEGER NOT NULL, "
        "v TEXT NOT NULL CHECK (v <> 'bad'))",
    )
    return path


def bisect(flusher: SQLiteFlusher[Any], batch: list[Any]) -> list[Any]:
    """Flush as the queue isolates a permanent failure; return what is rejected."""
    try:
        flusher.flush(batch)
    except PermanentStoreError:
        if len(batch) == 1:
            return batch
        half = (len(batch) + 1) // 2
        return bisect(flusher, batch[:half]) + bisect(flusher, batch[half:])
    return []


def test_upsert_keeps_the_last_row_or_the_highest_version(tmp_path: Path) -> None:
    path = kv_path(tmp_path)
    last = SQLiteFlusher.upsert(path, "kv", KV_COLUMNS, "k")
    last.flush([(1, 5, "a"), (2, 1, "b"), (1, 3, "c")])
    assert rows_of(path) == [(1, 3, "c"), (2, 1, "b")]
    last.close()
    newest = SQLiteFlusher.upsert(path, "kv", KV_COLUMNS, "k", version="tick")
    newest.flush([(1, 9, "d"), (1, 4, "e"), (1, 9, "f"), (2, 0, "older")])
    assert rows_of(path) == [(1, 9, "d"), (2, 1, "b")]  # equal tick: first stays
    newest.flush([(1, 9, "replayed"), (1, 2, "late")])
    assert rows_of(path) == [(1, 9, "d"), (2, 1, "b")]
    newest.close()


def test_shuffled_batches_with_repeated_keys_end_as_written_one_by_one(
    tmp_path: Path,
) -> None:
    path = kv_path(tmp_path)
    flusher = SQLiteFlusher.upsert(path, "kv", KV_COLUMNS, "k", version="tick")
    rng = random.Random(5)  # noqa: S311 - a reproducible sequence
    table: dict[int, tuple[int, int, str]] = {}
    batches = [
        [(rng.randrange(20), rng.randrange(10), f"r{b}.{i}") for i in range(40)]
        for b in range(10)
    ]
    for batch in [*batches, *(rng.sample(b, len(b)) for b in batches[:3])]:
        flusher.flush(batch)
        for row in batch:
            if row[0] not in table or row[1] > table[row[0]][1]:
                table[row[0]] = row
    flusher.close()
    assert rows_of(path) == [table[k] for k in sorted(table)]


def test_hostile_identifiers_and_a_composite_key_are_quoted(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    make_table(
        path,
        'CREATE TABLE "pl""ay ers; DROP TABLE x; -- ünï" ("k""ey" INTEGER, '
        '"ü; x" TEXT, "tick tock" INTEGER, PRIMARY KEY ("k""ey", "ü; x"))',
    )
    columns = ['k"ey', "ü; x", "tick tock"]
    flusher = SQLiteFlusher.upsert(
        path, ("main", HOSTILE), columns, ['k"ey', "ü; x"], version="tick tock"
    )
    flusher.flush([(1, "a", 1), (1, "b", 1), (1, "a", 2), (1, "a", 0)])
    assert rows_of(path, HOSTILE) == [(1, "a", 2), (1, "b", 1)]
    appender = SQLiteFlusher.append(path, HOSTILE, columns)
    with pytest.raises(PermanentStoreError, match="UNIQUE"):
        appender.flush([(1, "a", 3)])
    appender.flush([(2, "'; --", 1)])
    assert rows_of(path, HOSTILE)[-1] == (2, "'; --", 1)
    flusher.close()
    appender.close()


def test_wal_and_synchronous_normal_by_default_and_overridable(tmp_path: Path) -> None:
    path = kv_path(tmp_path)
    flusher = SQLiteFlusher.upsert(path, "kv", KV_COLUMNS, "k")
    flusher.flush([(1, 1, "a")])
    assert flusher._db is not None
    assert flusher._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert flusher._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    flusher.close()
    assert dict(SQLiteFlusher.DEFAULT_PRAGMAS) == {
        "journal_mode": "WAL",
        "synchronous": "NORMAL",
    }
    other = tmp_path / "other.db"
    make_table(other, "CREATE TABLE kv (k INTEGER PRIMARY KEY, tick, v)")
    full = SQLiteFlusher.append(
        other,
        "kv",
        KV_COLUMNS,
        pragmas={"journal_mode": None, "synchronous": "FULL", "cache_size": -4000},
    )
    full.flush([(1, 1, "a")])
    assert full._db is not None
    assert full._db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert full._db.execute("PRAGMA synchronous").fetchone() == (2,)
    assert full._db.execute("PRAGMA cache_size").fetchone() == (-4000,)
    full.close()
    for bad in ({"journal_mode; DROP": "x"}, {"synchronous": "OFF; DROP TABLE kv"}):
        with pytest.raises(ValueError, match="PRAGMA"):
            SQLiteFlusher.upsert(path, "kv", KV_COLUMNS, "k", pragmas=bad)


def test_a_bad_row_is_permanent_and_bisection_isolates_it(tmp_path: Path) -> None:
    path = kv_path(tmp_path)
    flusher = SQLiteFlusher.upsert(path, "kv", KV_COLUMNS, "k")
    bad_rows: list[tuple[Any, ...]] = [
        (4, 1, "bad"),  # CHECK
        (5, None, "x"),  # NOT NULL
        (2**63, 1, "x"),  # over 64 bits
        (7, 1),  # a short row
        ({}, 1, "x"),  # a type SQLite does not take
    ]
    for bad in bad_rows:
        assert bisect(flusher, [(1, 1, "a"), (2, 1, "b"), bad, (3, 1, "c")]) == [bad]
    assert rows_of(path) == [(1, 1, "a"), (2, 1, "b"), (3, 1, "c")]
    with pytest.raises(PermanentStoreError, match="too large") as caught:
        flusher.flush([(2**70, 1, "x")])
    assert isinstance(caught.value.__cause__, sqlite3.DataError)
    assert isinstance(caught.value.__cause__.__cause__, OverflowError)
    flusher.flush([(9, 1, "ok")])  # the connection survived
    flusher.close()


def test_the_flushers_pickle_without_their_connection(tmp_path: Path) -> None:
    path = kv_path(tmp_path)
    flusher = SQLiteFlusher.upsert(path, "kv", KV_COLUMNS, "k", values=kv_values)
    flusher.flush([{"k": 1, "tick": 1, "v": "a"}])
    copy = pickle.loads(pickle.dumps(flusher))  # noqa: S301 - our own bytes
    assert copy._db is None
    copy.flush([{"k": 2, "tick": 1, "v": "b"}])
    plain = pickle.loads(pickle.dumps(kv_flusher(tmp_path / "plain.db")))  # noqa: S301 - our own bytes
    plain.flush([(3, 30)])
    assert table(tmp_path / "plain.db") == {3: 30}
    factory = functools.partial(SQLiteFlusher.append, path, "kv", KV_COLUMNS)
    made = pickle.loads(pickle.dumps(factory))()  # noqa: S301 - our own bytes
    made.flush([(4, 1, "d")])
    assert rows_of(path) == [(1, 1, "a"), (2, 1, "b"), (4, 1, "d")]
    for opened in (flusher, copy, plain, made):
        opened.close()
    with pytest.raises(pickle.PicklingError, match=r"its values \(.*<lambda>\)"):
        pickle.dumps(
            SQLiteFlusher.upsert(path, "kv", KV_COLUMNS, "k", values=lambda r: r)
        )


def test_an_upsert_through_the_queue_keeps_the_newest(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = kv_path(tmp_path)
    rng = random.Random(11)  # noqa: S311 - a reproducible sequence
    rows = [(rng.randrange(30), rng.randrange(50), f"v{i}") for i in range(600)]
    cfg: wbactor.Config[tuple[int, int, str]] = wbactor.Config(
        capacity=1000,
        clock=clock,
        batch_size=50,
        flusher_factory=functools.partial(
            SQLiteFlusher.upsert, path, "kv", KV_COLUMNS, "k", version="tick"
        ),
    )
    with running(cfg) as wb:
        wb.ref.tell(wbactor.PushMany(rows))
        wb.flush(WAIT)
        stats = wb.stats()
    assert (stats.flushed, stats.retries) == (600, 0)
    table: dict[int, tuple[int, int, str]] = {}
    for row in rows:
        if row[0] not in table or row[1] > table[row[0]][1]:
            table[row[0]] = row
    assert rows_of(path) == [table[k] for k in sorted(table)]


def test_neither_import_wbactor_nor_the_flushers_import_psycopg(tmp_path: Path) -> None:
    code = """
import sys
import wbactor
assert "psycopg" not in sys.modules, "import wbactor imported psycopg"
import wbactor.flushers
from wbactor.flushers import PostgresFlusher, SQLiteFlusher
assert "psycopg" not in sys.modules, "import wbactor.flushers imported psycopg"
sys.modules["psycopg"] = None  # as if not installed
for make in (
    lambda: PostgresFlusher.upsert("postgresql://nowhere", "t", ["k"], "k"),
    lambda: PostgresFlusher.append("postgresql://nowhere", "t", ["k"]),
):
    try:
        make()
    except ImportError as error:
        print(error)
"""
    result = subprocess.run(  # noqa: S603 - our interpreter, our code
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("pip install 'wbactor[postgres]'") == 2


def kv_values(item: Mapping[str, Any]) -> tuple[Any, ...]:
    return (item["k"], item["tick"], item["v"])


# -- isolate_rows: a refused batch's bad rows found in one more call ----------


class CountingFlusher:
    """Count the flush calls a flusher is given, and pass them on."""

    def __init__(self, flusher: SQLiteFlusher[Any]) -> None:
        self.flusher = flusher
        self.calls = 0

    def flush(self, batch: Sequence[Any]) -> None:
        self.calls += 1
        self.flusher.flush(batch)

    def close(self) -> None:
        self.flusher.close()


def test_isolate_rows_commits_the_good_rows_and_names_the_bad_ones(
    tmp_path: Path,
) -> None:
    path = kv_path(tmp_path)
    flusher = SQLiteFlusher.upsert(path, "kv", KV_COLUMNS, "k", isolate_rows=True)
    batch: list[tuple[Any, ...]] = [
        (1, 1, "a"),
        (4, 1, "bad"),  # CHECK
        (5, None, "x"),  # NOT NULL
        (2, 1, "b"),
        (2**63, 1, "x"),  # over 64 bits
        (7, 1),  # a short row
        ({}, 1, "x"),  # a type SQLite does not take
        (3, 1, "c"),
    ]
    with pytest.raises(wbactor.PartialFailure) as caught:
        flusher.flush(batch)
    assert caught.value.failed == (1, 2, 4, 5, 6)
    assert isinstance(caught.value.error, PermanentStoreError)
    assert "CHECK constraint failed" in str(caught.value.error)
    assert rows_of(path) == [(1, 1, "a"), (2, 1, "b"), (3, 1, "c")]
    # A batch of one bad row is refused as before, and nothing is written.
    with pytest.raises(PermanentStoreError, match="CHECK"):
        flusher.flush([(9, 1, "bad")])
    flusher.flush([(9, 1, "ok")])  # the connection survived both
    assert rows_of(path)[-1] == (9, 1, "ok")
    flusher.close()


def test_isolate_rows_is_off_by_default_and_must_be_a_bool(tmp_path: Path) -> None:
    path = kv_path(tmp_path)
    flusher = SQLiteFlusher.append(path, "kv", KV_COLUMNS)
    with pytest.raises(PermanentStoreError):
        flusher.flush([(1, 1, "a"), (2, 1, "bad")])
    assert rows_of(path) == []  # refused whole
    flusher.close()
    for make in (
        lambda: SQLiteFlusher.upsert(path, "kv", KV_COLUMNS, "k", isolate_rows=1),  # type: ignore[call-overload]
        lambda: SQLiteFlusher.append(path, "kv", KV_COLUMNS, isolate_rows="yes"),  # type: ignore[call-overload]
        lambda: kv_flusher(path, isolate_rows=None),
    ):
        with pytest.raises(TypeError, match="isolate_rows must be True or False"):
            make()


def test_rows_whose_failure_ends_the_transaction_are_left_to_bisection(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rollback.db"
    make_table(
        path,
        "CREATE TABLE kv (k INTEGER PRIMARY KEY, tick INTEGER NOT NULL, "
        "v TEXT NOT NULL ON CONFLICT ROLLBACK)",
    )
    flusher = SQLiteFlusher.append(path, "kv", KV_COLUMNS, isolate_rows=True)
    batch: list[tuple[Any, ...]] = [(1, 1, "a"), (2, 1, None), (3, 1, "c")]
    with pytest.raises(PermanentStoreError, match="NOT NULL"):
        flusher.flush(batch)
    assert rows_of(path) == []  # the rows could not be told apart: none written
    assert bisect(flusher, batch) == [(2, 1, None)]
    assert rows_of(path) == [(1, 1, "a"), (3, 1, "c")]
    flusher.close()


def test_through_the_queue_bad_rows_cost_one_call_and_good_ones_land_once(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = kv_path(tmp_path)
    counting = CountingFlusher(
        SQLiteFlusher.append(path, "kv", KV_COLUMNS, isolate_rows=True)
    )
    drops: DropRecorder[tuple[Any, ...]] = DropRecorder()
    cfg: wbactor.Config[tuple[Any, ...]] = wbactor.Config(
        capacity=1000, clock=clock, batch_size=500, flusher=counting, on_drop=drops
    )
    rows = [(i, 1, "bad" if i % 50 == 7 else f"v{i}") for i in range(400)]
    with capture_logs() as logs, running(cfg) as wb:
        wb.ref.tell(wbactor.PushMany(rows))
        wb.flush(WAIT)
        stats = wb.stats()
    bad = [row for row in rows if row[2] == "bad"]
    assert counting.calls == 1  # bisection would take about 2 * 8 * 9 more
    assert drops.calls == [(row, wbactor.DropReason.REJECTED) for row in bad]
    assert (stats.flushed, stats.dropped, stats.retries) == (
        400 - len(bad),
        {wbactor.DropReason.REJECTED: len(bad)},
        1,
    )
    assert rows_of(path) == [row for row in rows if row[2] != "bad"]  # once each
    assert not [e for e in logs if e["event"] == "batch_split"]


def test_isolate_rows_survives_pickling(tmp_path: Path) -> None:
    path = kv_path(tmp_path)
    flusher = SQLiteFlusher.upsert(path, "kv", KV_COLUMNS, "k", isolate_rows=True)
    copy = pickle.loads(pickle.dumps(flusher))  # noqa: S301 - our own bytes
    with pytest.raises(wbactor.PartialFailure) as caught:
        copy.flush([(1, 1, "a"), (2, 1, "bad")])
    assert caught.value.failed == (1,)
    copy.close()
