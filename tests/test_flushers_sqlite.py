"""SQLiteFlusher through a real queue, as a user would run it."""

from __future__ import annotations

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


def kv_flusher(path: Path, **options: float) -> SQLiteFlusher[Row]:
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
