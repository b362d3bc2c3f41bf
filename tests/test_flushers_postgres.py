"""PostgresFlusher through a running queue, against a real server.

The server comes from `WBACTOR_TEST_PG_DSN` (`.ci/postgres.sh` starts one).
Without it these tests are skipped, except in CI (`CI=true`), where a missing
server fails them.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import pickle
import random
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


def test_a_bad_row_is_isolated_and_the_rest_of_its_batch_written(
    table: Table, clock: ManualClock
) -> None:
    drops: DropRecorder[Row] = DropRecorder()
    cfg = config(clock, flusher_factory=table.flusher, max_retries=1, on_drop=drops)
    with capture_logs() as logs, running(cfg) as wb:
        wb.push((0, 0))
        wb.flush(WAIT)
        bad = [(1, 987_654), (2, None), (3, 30)]  # NOT NULL violated by one row
        wb.ref.tell(wbactor.PushMany(bad))
        wb.flush(WAIT)  # no backoff: a permanent error is bisected at once
        wb.push((4, 40))
        wb.flush(WAIT)
        stats = wb.stats()
    assert table.rows() == {0: 0, 1: 987_654, 3: 30, 4: 40}
    assert drops.calls == [((2, None), wbactor.DropReason.REJECTED)]
    assert (stats.retries, stats.restarts) == (3, 0)  # [1, 2, 3], [1, 2], [2]
    errors = store_errors(logs)
    assert len(errors) == 3
    for error in errors:
        assert error["store"] == "postgresql"
        assert error["permanent"] is True
        assert error["sqlstate"] == "23502"
        assert "NotNullViolation (SQLSTATE 23502)" in error["error"]
    [rejected] = [e for e in logs if e["event"] == "items_rejected"]
    assert rejected["error"].startswith("PermanentStoreError: postgresql ")
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


# ------------------------------------------------- upsert and append forms


HOSTILE = 'pl"ay ers; DROP TABLE x; -- ünï'
"""A table name with a quote, spaces, a semicolon, a comment and unicode."""


class Store:
    """Tables of a test's own, made from SQL composed here, dropped after it."""

    def __init__(self, dsn: str, prefix: str) -> None:
        self.dsn = make_conninfo(dsn, application_name=prefix[:60])
        self.prefix = prefix
        self.admin = psycopg.connect(dsn, autocommit=True)
        self._drops: list[sql.Composed] = []

    def name(self, suffix: str = "") -> str:
        return f"{self.prefix}{suffix}"

    def create(self, table: str | tuple[str, str], columns: str) -> sql.Identifier:
        """Create `table` with `columns` (SQL of the test's own); return its name."""
        parts = (table,) if isinstance(table, str) else table
        ident = sql.Identifier(*parts)
        self.admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
        self.admin.execute(sql.SQL("CREATE TABLE {} (" + columns + ")").format(ident))
        self._drops.append(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
        return ident

    def schema(self, name: str) -> None:
        ident = sql.Identifier(name)
        self.admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
        self.admin.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        self._drops.append(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))

    def rows(self, table: sql.Identifier, order: str = "1") -> list[tuple[Any, ...]]:
        query = sql.SQL("SELECT * FROM {} ORDER BY " + order).format(table)  # noqa: S608 - the test's own ORDER BY
        return self.admin.execute(query).fetchall()

    def close(self) -> None:
        for drop in reversed(self._drops):
            self.admin.execute(drop)
        self.admin.close()


@pytest.fixture
def store(dsn: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    prefix = "wbs_" + re.sub(r"\W", "_", request.node.name.removeprefix("test_"))[:40]
    made = Store(dsn, prefix)
    yield made
    made.close()


@pytest.fixture
def closing() -> Iterator[Callable[[PostgresFlusher[Any]], PostgresFlusher[Any]]]:
    """Register a flusher to be closed at the end of the test."""
    made: list[PostgresFlusher[Any]] = []

    def register(flusher: PostgresFlusher[Any]) -> PostgresFlusher[Any]:
        made.append(flusher)
        return flusher

    yield register
    for flusher in made:
        flusher.close()


KV = "k integer PRIMARY KEY, tick bigint NOT NULL, v text NOT NULL CHECK (v <> 'bad')"


def bisect(flusher: PostgresFlusher[Any], batch: list[Any]) -> list[Any]:
    """Flush as the queue isolates a permanent failure; return what is rejected."""
    try:
        flusher.flush(batch)
    except PermanentStoreError:
        if len(batch) == 1:
            return batch
        half = (len(batch) + 1) // 2
        return bisect(flusher, batch[:half]) + bisect(flusher, batch[half:])
    return []


def sequential(
    batches: Sequence[Sequence[tuple[int, int, str]]], *, versioned: bool
) -> dict[int, tuple[int, int, str]]:
    """The table after writing every row one by one, as SQL would."""
    table: dict[int, tuple[int, int, str]] = {}
    for batch in batches:
        for row in batch:
            old = table.get(row[0])
            if old is None or not versioned or row[1] > old[1]:
                table[row[0]] = row
    return table


def test_upsert_keeps_the_last_row_of_a_key_in_push_order(
    store: Store, closing: Any
) -> None:
    table = store.create(store.name(), KV)
    flusher = closing(
        PostgresFlusher.upsert(store.dsn, store.name(), ["k", "tick", "v"], "k")
    )
    flusher.flush([(1, 5, "a"), (2, 1, "b"), (1, 3, "c"), (1, 4, "d"), (2, 0, "e")])
    assert store.rows(table) == [(1, 4, "d"), (2, 0, "e")]
    flusher.flush([(1, 0, "old")])  # no version: any later write wins
    assert store.rows(table) == [(1, 0, "old"), (2, 0, "e")]


def test_version_keeps_the_highest_and_replays_never_move_a_row_back(
    store: Store, closing: Any
) -> None:
    table = store.create(store.name(), KV)
    flusher = closing(
        PostgresFlusher.upsert(
            store.dsn, store.name(), ["k", "tick", "v"], "k", version="tick"
        )
    )
    first = [(1, 5, "a"), (2, 1, "b"), (1, 7, "c"), (1, 6, "d"), (1, 7, "e")]
    flusher.flush(first)
    assert store.rows(table) == [(1, 7, "c"), (2, 1, "b")]  # equal tick: first stays
    flusher.flush([(1, 7, "replayed"), (2, 0, "older"), (3, 1, "new")])
    flusher.flush(first)  # the whole batch again, late
    assert store.rows(table) == [(1, 7, "c"), (2, 1, "b"), (3, 1, "new")]
    flusher.flush([(2, 2, "newer")])
    assert store.rows(table)[1] == (2, 2, "newer")


def test_shuffled_batches_with_repeated_keys_end_as_written_one_by_one(
    store: Store, closing: Any
) -> None:
    rng = random.Random(7)  # noqa: S311 - a reproducible sequence
    for versioned in (False, True):
        table = store.create(store.name(str(versioned)), KV)
        flusher = closing(
            PostgresFlusher.upsert(
                store.dsn,
                store.name(str(versioned)),
                ["k", "tick", "v"],
                "k",
                version="tick" if versioned else None,
            )
        )
        batches = [
            [(rng.randrange(20), rng.randrange(10), f"r{b}.{i}") for i in range(50)]
            for b in range(12)
        ]
        batches += [rng.sample(b, len(b)) for b in batches[:4]]  # replayed, shuffled
        for batch in batches:
            flusher.flush(batch)
        want = sequential(batches, versioned=versioned)
        assert store.rows(table) == [want[k] for k in sorted(want)]


def test_a_composite_key_and_a_key_of_every_column(store: Store, closing: Any) -> None:
    pairs = store.create(
        store.name("pairs"), "a int, b text, n int, PRIMARY KEY (a, b)"
    )
    flusher = closing(
        PostgresFlusher.upsert(
            store.dsn, store.name("pairs"), ["a", "b", "n"], ["a", "b"]
        )
    )
    flusher.flush([(1, "x", 1), (1, "y", 2), (1, "x", 3)])
    assert store.rows(pairs, "1, 2") == [(1, "x", 3), (1, "y", 2)]
    tags = store.create(store.name("tags"), "a int, b text, PRIMARY KEY (a, b)")
    only_keys = closing(
        PostgresFlusher.upsert(store.dsn, store.name("tags"), ["a", "b"], ("a", "b"))
    )
    only_keys.flush([(1, "x"), (1, "x"), (2, "y")])
    only_keys.flush([(1, "x")])  # DO NOTHING: already there
    assert store.rows(tags, "1, 2") == [(1, "x"), (2, "y")]


def test_hostile_identifiers_are_quoted_never_formatted_raw(
    store: Store, closing: Any
) -> None:
    schema = store.name('s"ch ema;')
    store.schema(schema)
    columns = ['k"ey', "tick tock", "v;al", "ünï"]
    table = store.create(
        (schema, HOSTILE),
        '"k""ey" int PRIMARY KEY, "tick tock" int, "v;al" text, "ünï" text',
    )
    flusher = closing(
        PostgresFlusher.upsert(
            store.dsn, (schema, HOSTILE), columns, 'k"ey', version="tick tock"
        )
    )
    flusher.flush([(1, 1, "'; DROP TABLE x; --", "é"), (1, 2, "b", "ü")])
    assert store.rows(table) == [(1, 2, "b", "ü")]
    log = store.create(store.name("a.b"), '"x""y" text')  # a dot is part of the name
    appender = closing(PostgresFlusher.append(store.dsn, store.name("a.b"), ['x"y']))
    appender.flush([("one",), ("two",)])
    assert store.rows(log) == [("one",), ("two",)]


def test_a_value_psycopg_would_wrap_is_refused_as_the_server_would(
    store: Store, closing: Any
) -> None:
    # psycopg's binary int4 dumper wraps 2**31 to -2**31 without a word.
    table = store.create(store.name(), "k int PRIMARY KEY, small smallint, r real")
    upsert = closing(
        PostgresFlusher.upsert(store.dsn, store.name(), ["k", "small", "r"], "k")
    )
    append = closing(
        PostgresFlusher.append(store.dsn, store.name(), ["k", "small", "r"])
    )
    for flusher in (upsert, append):
        for row in [(2**31, 1, 1.0), (1, 2**15, 1.0), (1, 1, 1e39)]:
            with pytest.raises(PermanentStoreError) as caught:
                flusher.flush([row])
            assert caught.value.sqlstate == "22003"
            assert str(2**31) not in str(caught.value)
    upsert.flush([(2**31 - 1, -(2**15), float("inf")), (1, None, None)])
    append.flush([(-(2**31), 2**15 - 1, -3.0e38)])
    assert store.rows(table) == [
        (-(2**31), 2**15 - 1, pytest.approx(-3.0e38)),
        (1, None, None),
        (2**31 - 1, -(2**15), float("inf")),
    ]


def test_a_bad_row_is_permanent_and_bisection_isolates_it(
    store: Store, closing: Any
) -> None:
    table = store.create(store.name(), KV)
    flusher = closing(
        PostgresFlusher.upsert(store.dsn, store.name(), ["k", "tick", "v"], "k")
    )
    bad_rows = [
        (4, 1, "bad"),  # CHECK, at the INSERT from the stage
        (5, None, "x"),  # NOT NULL, at the INSERT
        (6, "one", "x"),  # a str for a bigint, while copying
        (7, 1),  # a short row
    ]
    for bad in bad_rows:
        batch = [(1, 1, "a"), (2, 1, "b"), bad, (3, 1, "c")]
        assert bisect(flusher, batch) == [bad]
    assert store.rows(table) == [(1, 1, "a"), (2, 1, "b"), (3, 1, "c")]
    with pytest.raises(PermanentStoreError, match=r"SQLSTATE 23514") as caught:
        flusher.flush([(8, 1, "bad")])
    assert isinstance(caught.value.__cause__, psycopg.errors.CheckViolation)
    with pytest.raises(PermanentStoreError, match='column "tick"') as caught:
        flusher.flush([(8, "987654", "x")])
    assert "987654" not in str(caught.value)
    assert isinstance(caught.value.__cause__, TypeError)
    log = store.create(store.name("log"), "k int NOT NULL, v text")
    appender = closing(PostgresFlusher.append(store.dsn, store.name("log"), ["k", "v"]))
    assert bisect(appender, [(1, "a"), (None, "b"), (2, "c")]) == [(None, "b")]
    assert store.rows(log) == [(1, "a"), (2, "c")]


def test_missing_tables_and_columns_are_permanent(store: Store, closing: Any) -> None:
    store.create(store.name(), KV)
    missing = closing(PostgresFlusher.upsert(store.dsn, store.name("nope"), ["k"], "k"))
    with pytest.raises(PermanentStoreError, match=r"SQLSTATE 42P01"):
        missing.flush([(1,)])
    typo = closing(PostgresFlusher.upsert(store.dsn, store.name(), ["k", "vv"], "k"))
    with capture_logs() as logs, pytest.raises(PermanentStoreError, match='"vv"') as e:
        typo.flush([(1, "x")])
    assert e.value.sqlstate == "42703"
    [logged] = store_errors(logs)
    assert logged["permanent"] is True


def test_json_takes_objects_and_json_text_and_types_without_binary_dumpers(
    store: Store, closing: Any
) -> None:
    mood = sql.Identifier(store.name("mood"))
    store.admin.execute(sql.SQL("DROP TYPE IF EXISTS {} CASCADE").format(mood))
    store.admin.execute(sql.SQL("CREATE TYPE {} AS ENUM ('sad', 'ok')").format(mood))
    try:
        table = store.create(
            store.name(),
            sql.SQL("k int PRIMARY KEY, j jsonb, t json, m {}, tags int[], p point")
            .format(mood)
            .as_string(store.admin),
        )
        columns = ["k", "j", "t", "m", "tags"]
        flusher = closing(PostgresFlusher.upsert(store.dsn, store.name(), columns, "k"))
        flusher.flush(
            [
                (1, '{"a": 1}', "[1, 2]", "ok", [1, 2]),
                (2, {"b": [2]}, {"c": 3}, "sad", []),
            ]
        )
        assert store.rows(table) == [
            (1, {"a": 1}, [1, 2], "ok", [1, 2], None),
            (2, {"b": [2]}, {"c": 3}, "sad", [], None),
        ]
        # point has no binary dumper: the whole COPY goes as text.
        text = closing(PostgresFlusher.upsert(store.dsn, store.name(), ["k", "p"], "k"))
        text.flush([(1, "(1,2)")])
        with pytest.raises(PermanentStoreError, match=r"SQLSTATE 22P02"):
            flusher.flush([(3, None, None, "angry", None)])
    finally:
        store.admin.execute(sql.SQL("DROP TYPE IF EXISTS {} CASCADE").format(mood))


def test_an_upsert_is_one_unnest_statement_unless_a_type_or_name_forbids_it(
    store: Store, closing: Any
) -> None:
    plain = store.create(
        store.name("plain"),
        "k int PRIMARY KEY, tick bigint, v text, j jsonb, at timestamptz, n numeric",
    )
    columns = ["k", "tick", "v", "j", "at", "n"]
    unnest = closing(
        PostgresFlusher.upsert(
            store.dsn, store.name("plain"), columns, "k", version="tick"
        )
    )
    stamp = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    unnest.flush([(1, 1, "a", {"x": 1}, stamp, 2), (2, 1, None, "[1]", None, None)])
    unnest.flush([(1, 0, "older", None, None, None), (1, 2, "b", None, stamp, 3)])
    assert unnest._plan_made is not None
    assert "unnest" in unnest._plan_made.unnest
    assert store.rows(plain) == [
        (1, 2, "b", None, stamp, 3),
        (2, 1, None, [1], None, None),
    ]
    # An array (unnest would flatten it) or a "%" in a name: the COPY stage.
    tags = store.create(store.name("tags"), 'k int PRIMARY KEY, "50%" int, a int[]')
    for names in (["k", "a"], ["k", "50%"]):
        staged = closing(
            PostgresFlusher.upsert(store.dsn, store.name("tags"), names, "k")
        )
        staged.flush([(1, [1, 2])] if "a" in names else [(1, 50)])
        assert staged._plan_made is not None
        assert not staged._plan_made.unnest
    assert store.rows(tags) == [(1, 50, [1, 2])]


def test_a_row_too_wide_for_the_plain_stage_is_written_all_the_same(
    store: Store, closing: Any
) -> None:
    table = store.create(store.name(), KV)
    flusher = closing(
        PostgresFlusher.upsert(store.dsn, store.name(), ["k", "tick", "v"], "k")
    )
    wide = "x" * 20_000  # over a page: needs TOAST
    flusher.flush([(1, 1, "a"), (2, 1, wide)])
    flusher.flush([(3, 1, wide)])
    assert [(k, len(v)) for k, _, v in store.rows(table)] == [
        (1, 1),
        (2, 20_000),
        (3, 20_000),
    ]


def test_the_copy_forms_pickle_without_their_connection(
    store: Store, closing: Any
) -> None:
    table = store.create(store.name(), KV)
    flusher = closing(
        PostgresFlusher.upsert(
            store.dsn, store.name(), ["k", "tick", "v"], "k", values=kv_values
        )
    )
    flusher.flush([{"k": 1, "tick": 1, "v": "a"}])
    assert flusher._conn is not None
    copy = closing(pickle.loads(pickle.dumps(flusher)))  # noqa: S301 - our own bytes
    assert copy._conn is None
    copy.flush([{"k": 2, "tick": 1, "v": "b"}])
    factory = functools.partial(
        PostgresFlusher.append, store.dsn, store.name(), ["k", "tick", "v"]
    )
    made = closing(pickle.loads(pickle.dumps(factory))())  # noqa: S301 - our own bytes
    made.flush([(3, 1, "c")])
    assert store.rows(table) == [(1, 1, "a"), (2, 1, "b"), (3, 1, "c")]


def test_a_lambda_that_does_not_pickle_is_named(store: Store) -> None:
    flusher = PostgresFlusher.upsert(store.dsn, "t", ["k"], "k", values=lambda r: r)
    with pytest.raises(pickle.PicklingError, match=r"its values \(.*<lambda>\)"):
        pickle.dumps(flusher)
    plain: PostgresFlusher[int] = PostgresFlusher(
        store.dsn, "SELECT %s", lambda r: (r,)
    )
    with pytest.raises(pickle.PicklingError, match=r"its params"):
        pickle.dumps(plain)


def test_the_plain_form_takes_composed_sql_and_pickles(
    store: Store, closing: Any
) -> None:
    table = store.create(HOSTILE, "k int PRIMARY KEY, v int")
    statement = sql.SQL(
        "INSERT INTO {} (k, v) VALUES (%s, %s) "
        "ON CONFLICT (k) DO UPDATE SET v = excluded.v"
    ).format(sql.Identifier(HOSTILE))
    flusher = closing(PostgresFlusher(store.dsn, statement, as_params))
    flusher.flush([(1, 10), (2, 20)])
    copy = closing(pickle.loads(pickle.dumps(flusher)))  # noqa: S301 - our own bytes
    copy.flush([(1, 11)])
    assert store.rows(table) == [(1, 11), (2, 20)]
    with pytest.raises(TypeError, match="Composable"):
        PostgresFlusher(store.dsn, b"SELECT 1", as_params)  # type: ignore[arg-type]


def test_connect_kwargs_reach_psycopg_connect(store: Store, closing: Any) -> None:
    store.create(store.name(), KV)
    name = store.name("_app")[:60]
    flusher = closing(
        PostgresFlusher.append(
            store.dsn,
            store.name(),
            ["k", "tick", "v"],
            connect_kwargs={"application_name": name},
        )
    )
    flusher.flush([(1, 1, "a")])
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    assert store.admin.execute(query, [name]).fetchone() == (1,)
    with pytest.raises(ValueError, match="autocommit"):
        PostgresFlusher.append(
            store.dsn, "t", ["k"], connect_kwargs={"autocommit": False}
        )


def test_an_upsert_through_the_queue_loses_nothing_and_keeps_the_newest(
    store: Store, clock: ManualClock
) -> None:
    table = store.create(store.name(), KV)
    rng = random.Random(3)  # noqa: S311 - a reproducible sequence
    rows = [(rng.randrange(50), rng.randrange(100), f"v{i}") for i in range(1000)]
    cfg: wbactor.Config[tuple[int, int, str]] = wbactor.Config(
        capacity=10_000,
        clock=clock,
        batch_size=64,
        flusher_factory=functools.partial(
            PostgresFlusher.upsert,
            store.dsn,
            store.name(),
            ["k", "tick", "v"],
            "k",
            version="tick",
        ),
    )
    with running(cfg) as wb:
        wb.ref.tell(wbactor.PushMany(rows))
        wb.flush(WAIT)
        stats = wb.stats()
    assert (stats.flushed, stats.retries) == (1000, 0)
    want = sequential([rows], versioned=True)
    assert store.rows(table) == [want[k] for k in sorted(want)]


def test_names_are_checked_when_the_flusher_is_made(dsn: str) -> None:
    with pytest.raises(ValueError, match="not among the columns"):
        PostgresFlusher.upsert(dsn, "t", ["a", "b"], "c")
    with pytest.raises(ValueError, match="part of the key"):
        PostgresFlusher.upsert(dsn, "t", ["a", "b"], "a", version="a")
    with pytest.raises(ValueError, match="version column 'c'"):
        PostgresFlusher.upsert(dsn, "t", ["a", "b"], "a", version="c")
    with pytest.raises(ValueError, match="NUL"):
        PostgresFlusher.append(dsn, "t\x00x", ["a"])
    with pytest.raises(ValueError, match="schema, table"):
        PostgresFlusher.append(dsn, ("a", "b", "c"), ["a"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not one str"):
        PostgresFlusher.append(dsn, "t", "abc")
    with pytest.raises(ValueError, match="at least one"):
        PostgresFlusher.append(dsn, "t", [])
    with pytest.raises(ValueError, match="needs a key"):
        PostgresFlusher.upsert(dsn, "t", ["a"], [])


def kv_values(item: Mapping[str, Any]) -> tuple[Any, ...]:
    return (item["k"], item["tick"], item["v"])
