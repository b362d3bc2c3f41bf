"""PostgresFlusher through a running queue, against a real server.

The server comes from `WBACTOR_TEST_PG_DSN` (`.ci/postgres.sh` starts one).
Without it these tests are skipped, except in CI (`CI=true`), where a missing
server fails them.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from structlog.testing import capture_logs
from support import WAIT, running

import wbactor
from wbactor.flushers import (
    PermanentStoreError,
    PostgresFlusher,
    StoreError,
    TransientStoreError,
)
from wbactor.testing import DropRecorder

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from wbactor.testing import ManualClock

Row = tuple[int, Any]


@pytest.fixture(scope="module")
def dsn() -> str:
    """The test server's DSN; skip without one, but fail in CI."""
    dsn = os.environ.get("WBACTOR_TEST_PG_DSN")
    if not dsn:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "WBACTOR_TEST_PG_DSN is not set: the PostgreSQL server is missing "
                "(.ci/postgres.sh start DIR prints its DSN)"
            )
        pytest.skip("WBACTOR_TEST_PG_DSN is not set: no PostgreSQL server")
    return dsn


class Table:
    """A table of the test's own, dropped after it; its SQL, quoted safely."""

    def __init__(self, dsn: str, name: str) -> None:
        self.name = name
        # The flusher's connections carry the table's name, so a test can
        # find (and terminate) them.
        self.dsn = make_conninfo(dsn, application_name=name)
        self.admin = psycopg.connect(dsn, autocommit=True)
        ident = sql.Identifier(name)
        self.create = (
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} "
                "(k integer PRIMARY KEY, v integer NOT NULL CHECK (v >= 0))"
            )
            .format(ident)
            .as_string(self.admin)
        )
        self.upsert = (
            sql.SQL(
                "INSERT INTO {} (k, v) VALUES (%s, %s) "
                "ON CONFLICT (k) DO UPDATE SET v = excluded.v"
            )
            .format(ident)
            .as_string(self.admin)
        )
        self._select = sql.SQL("SELECT k, v FROM {} ORDER BY k").format(ident)
        self._drop = sql.SQL("DROP TABLE IF EXISTS {}").format(ident)
        self.admin.execute(self._drop)

    def flusher(self, **options: Any) -> PostgresFlusher[Row]:
        return PostgresFlusher(
            self.dsn, self.upsert, as_params, setup=[self.create], **options
        )

    def rows(self) -> dict[int, int]:
        return dict(self.admin.execute(self._select).fetchall())

    def connections(self) -> int:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        row = self.admin.execute(query, [self.name]).fetchone()
        assert row is not None
        return int(row[0])

    def terminate_flusher_backends(self) -> int:
        """Kill the flusher's server processes, as a crash or an admin would."""
        query = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s"
        )
        return len(self.admin.execute(query, [self.name]).fetchall())

    def drop(self) -> None:
        self.admin.execute(self._drop)
        self.admin.close()


@pytest.fixture
def table(dsn: str, request: pytest.FixtureRequest) -> Iterator[Table]:
    # A name from the test's own (fixed) name, never from data.
    name = "wb_" + re.sub(r"\W", "_", request.node.name.removeprefix("test_"))[:50]
    made = Table(dsn, name)
    yield made
    made.drop()


def as_params(row: Row) -> Row:
    return row


def one(value: int) -> tuple[int]:
    return (value,)


def flushed_more_than(count: int) -> Callable[[wbactor.Stats], bool]:
    return lambda stats: stats.flushed > count


def store_errors(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == "store_error"]


def config(clock: ManualClock | None, **options: Any) -> wbactor.Config[Row]:
    return wbactor.Config(capacity=10_000, clock=clock, **options)


def test_upserts_keep_the_latest_value_and_a_second_write_changes_nothing(
    table: Table, clock: ManualClock
) -> None:
    with running(config(clock, flusher_factory=table.flusher)) as wb:
        wb.ref.tell(wbactor.PushMany([(1, 10), (2, 20), (1, 11)]))
        wb.flush(WAIT)
        assert table.rows() == {1: 11, 2: 20}
        wb.ref.tell(wbactor.PushMany([(1, 11), (2, 20)]))
        wb.flush(WAIT)
        assert table.rows() == {1: 11, 2: 20}
        stats = wb.stats()
    assert (stats.flushed, stats.retries) == (5, 0)


def test_the_connection_is_opened_on_the_first_flush_not_before(
    table: Table, clock: ManualClock
) -> None:
    with running(config(clock, flusher_factory=table.flusher)) as wb:
        assert table.connections() == 0
        wb.push((1, 10))
        wb.flush(WAIT)
        assert table.connections() == 1
    assert table.rows() == {1: 10}


def test_a_batch_with_one_bad_row_writes_nothing_and_is_dropped(
    table: Table, clock: ManualClock
) -> None:
    drops: DropRecorder[Row] = DropRecorder()
    cfg = config(clock, flusher_factory=table.flusher, max_retries=1, on_drop=drops)
    with capture_logs() as logs, running(cfg) as wb:
        wb.push((0, 0))
        wb.flush(WAIT)
        bad = [(1, 987_654), (2, None), (3, 30)]  # NOT NULL violated by one row
        wb.ref.tell(wbactor.PushMany(bad))
        wb.ref.tell(wbactor.Flush())
        wb.wait_for(lambda s: s.retries == 1, WAIT)
        clock.advance(wbactor.default_backoff(1))
        wb.wait_for(lambda s: s.dropped_total == 3, WAIT)
        assert table.rows() == {0: 0}
        wb.push((4, 40))
        wb.flush(WAIT)
    assert table.rows() == {0: 0, 4: 40}
    assert drops.items == bad
    assert set(drops.reasons) == {wbactor.DropReason.RETRIES_EXHAUSTED}
    errors = store_errors(logs)
    assert len(errors) == 2
    for error in errors:
        assert error["store"] == "postgresql"
        assert error["permanent"] is True
        assert error["sqlstate"] == "23502"
        assert "NotNullViolation (SQLSTATE 23502)" in error["error"]
    [exhausted] = [e for e in logs if e["event"] == "retries_exhausted"]
    assert exhausted["error"].startswith("PermanentStoreError: postgresql ")
    assert "987654" not in repr(logs)  # DETAIL shows the failing row: never logged


def test_check_violations_undefined_tables_and_bad_values_are_permanent(
    table: Table,
) -> None:
    flusher = table.flusher()
    with pytest.raises(PermanentStoreError, match=r"SQLSTATE 23514") as caught:
        flusher.flush([(1, -5)])
    assert caught.value.sqlstate == "23514"
    assert isinstance(caught.value.__cause__, psycopg.errors.CheckViolation)
    with pytest.raises(PermanentStoreError, match=r"SQLSTATE 22P02") as caught:
        flusher.flush([(1, "not a number")])
    assert "not a number" not in str(caught.value)  # class 22 quotes the value
    flusher.flush([(1, 1)])  # the connection survived the permanent errors
    flusher.close()
    assert table.rows() == {1: 1}
    missing = PostgresFlusher(table.dsn, "INSERT INTO no_such_table VALUES (%s)", one)
    with pytest.raises(PermanentStoreError, match=r"SQLSTATE 42P01"):
        missing.flush([1])
    missing.close()


def test_a_refused_connection_is_transient(table: Table) -> None:
    # Port 1 on the local host: nothing listens there.
    flusher = PostgresFlusher("postgresql://wbactor@127.0.0.1:1/x", "SELECT %s", one)
    with pytest.raises(TransientStoreError, match="connection") as caught:
        flusher.flush([1])
    assert caught.value.sqlstate is None
    assert isinstance(caught.value, StoreError)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    flusher.close()
    flusher.close()


def test_the_queue_recovers_when_the_flushers_backend_is_killed_mid_run(
    table: Table,
) -> None:
    made: list[PostgresFlusher[Row]] = []

    def factory() -> PostgresFlusher[Row]:
        made.append(table.flusher())
        return made[-1]

    cfg = config(
        None,  # real time: the backoff below is short
        flusher_factory=factory,
        batch_size=50,
        flush_interval=0.01,
        retry_backoff=lambda attempt: 0.01 * attempt,
        max_retries=-1,
    )
    kills = 3
    with capture_logs() as logs, running(cfg) as wb:
        for round_ in range(kills + 1):
            first = round_ * 500
            wb.ref.tell(wbactor.PushMany([(k, k) for k in range(first, first + 500)]))
            # A batch or more is written: the flusher is connected and working.
            wb.wait_for(flushed_more_than(first), WAIT)
            if round_ < kills:
                assert table.terminate_flusher_backends() == 1
        wb.flush(WAIT)
        stats = wb.stats()
    assert table.rows() == {k: k for k in range(2000)}
    assert (stats.flushed, stats.dropped_total) == (2000, 0)
    assert stats.retries >= kills
    assert len(made) == stats.restarts + 1  # each restart built a new flusher
    assert all(f._conn is None for f in made)  # and each was closed
    errors = store_errors(logs)
    assert len(errors) == stats.retries
    assert all(e["permanent"] is False for e in errors)
