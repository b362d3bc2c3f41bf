"""AsyncPostgresFlusher against a real server: the sync flusher's forms, awaited.

Skipped without `WBACTOR_TEST_PG_DSN`, failed without it in CI, as the tests
of `PostgresFlusher` (whose fixtures these share).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import pickle
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg import sql
from structlog.testing import capture_logs
from support import WAIT, running
from test_flushers_postgres import HOSTILE, KV, Store, dsn, store

import wbactor
from wbactor.flushers import AsyncPostgresFlusher, PermanentStoreError
from wbactor.testing import DropRecorder

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

__all__ = ["dsn", "store"]  # the shared fixtures

COLUMNS = ["k", "tick", "v"]


class Loop:
    """One event loop for a test's direct calls: a connection lives on its loop."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self._runner.run(asyncio.wait_for(coroutine, WAIT))

    def close(self) -> None:
        self._runner.close()


@pytest.fixture
def loop() -> Iterator[Loop]:
    made = Loop()
    yield made
    made.close()


def kv_values(item: dict[str, Any]) -> tuple[Any, ...]:
    return (item["k"], item["tick"], item["v"])


def backends(store: Store) -> int:
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    row = store.admin.execute(query, [store.prefix[:60]]).fetchone()
    assert row is not None
    return int(row[0])


def test_flush_is_a_coroutine_and_close_is_not(store: Store) -> None:
    flusher = AsyncPostgresFlusher.upsert(store.dsn, store.name(), COLUMNS, "k")
    assert inspect.iscoroutinefunction(flusher.flush)
    assert not inspect.iscoroutinefunction(flusher.close)
    flusher.close()  # never connected: nothing to do
    flusher.close()


def test_upsert_keeps_the_newest_and_a_replay_never_moves_a_row_back(
    store: Store, loop: Loop
) -> None:
    table = store.create(store.name(), KV)
    flusher = AsyncPostgresFlusher.upsert(
        store.dsn, store.name(), COLUMNS, "k", version="tick"
    )
    try:
        loop.run(flusher.flush([(1, 5, "a"), (2, 1, "b"), (1, 9, "c"), (1, 7, "d")]))
        assert store.rows(table) == [(1, 9, "c"), (2, 1, "b")]
        loop.run(flusher.flush([(1, 3, "old"), (2, 2, "new")]))  # a late batch
        assert store.rows(table) == [(1, 9, "c"), (2, 2, "new")]
        assert backends(store) == 1  # one connection served both batches
        assert flusher._plan is not None
        assert "unnest" in flusher._plan.unnest  # one statement a batch
        conn = flusher._conn
        assert conn is not None
    finally:
        flusher.close()
    assert conn.closed  # at once, with no loop running
    assert flusher._conn is None


def test_hostile_identifiers_append_and_composed_sql(store: Store, loop: Loop) -> None:
    schema = store.name('s"ch ema;')
    store.schema(schema)
    table = store.create((schema, HOSTILE), '"k""ey" int PRIMARY KEY, "v;al" text')
    upsert = AsyncPostgresFlusher.upsert(
        store.dsn, (schema, HOSTILE), ['k"ey', "v;al"], 'k"ey'
    )
    log = store.create(store.name("log"), "k int NOT NULL, v text")
    append = AsyncPostgresFlusher.append(store.dsn, store.name("log"), ["k", "v"])
    plain = AsyncPostgresFlusher(
        store.dsn,
        sql.SQL("INSERT INTO {} (k, v) VALUES (%s, %s)").format(
            sql.Identifier(store.name("log"))
        ),
        lambda row: row,
    )
    try:
        loop.run(upsert.flush([(1, "'; DROP TABLE x; --"), (1, "b")]))
        loop.run(append.flush([(1, "a"), (1, "a")]))  # an append keeps both
        loop.run(plain.flush([(2, "c")]))
    finally:
        for flusher in (upsert, append, plain):
            flusher.close()
    assert store.rows(table) == [(1, "b")]
    assert store.rows(log, "1, 2") == [(1, "a"), (1, "a"), (2, "c")]


def test_bad_rows_are_permanent_and_the_connection_survives(
    store: Store, loop: Loop
) -> None:
    table = store.create(store.name(), KV)
    flusher = AsyncPostgresFlusher.upsert(store.dsn, store.name(), COLUMNS, "k")
    try:
        with pytest.raises(PermanentStoreError, match=r"SQLSTATE 23514") as caught:
            loop.run(flusher.flush([(1, 1, "a"), (2, 1, "bad")]))
        assert isinstance(caught.value.__cause__, psycopg.errors.CheckViolation)
        with pytest.raises(PermanentStoreError, match='column "tick"'):
            loop.run(flusher.flush([(3, "987654", "x")]))
        with pytest.raises(PermanentStoreError, match="2 values for 3 columns"):
            loop.run(flusher.flush([(3, 1)]))
        loop.run(flusher.flush([(1, 1, "a")]))  # the same connection, still good
        assert backends(store) == 1
    finally:
        flusher.close()
    assert store.rows(table) == [(1, 1, "a")]


def test_through_the_queue_a_bad_row_is_rejected_and_the_rest_land(
    store: Store,
) -> None:
    table = store.create(store.name(), KV)
    drops: DropRecorder[dict[str, Any]] = DropRecorder()
    cfg: wbactor.Config[dict[str, Any]] = wbactor.Config(
        capacity=1000,
        batch_size=100,
        on_drop=drops,
        flusher_factory=functools.partial(
            AsyncPostgresFlusher.upsert,
            store.dsn,
            store.name(),
            COLUMNS,
            "k",
            values=kv_values,
            version="tick",
        ),
    )
    items = [
        {"k": i % 40, "tick": i, "v": "bad" if i == 197 else f"v{i}"}
        for i in range(200)
    ]
    with capture_logs() as logs, running(cfg) as wb:
        wb.ref.tell(wbactor.PushMany(items))
        wb.flush(WAIT)
        stats = wb.stats()
    # The last state of key 37 is bad; its earlier ones were written.
    assert drops.calls == [(items[197], wbactor.DropReason.REJECTED)]
    assert (stats.flushed, stats.restarts) == (199, 0)
    latest = {k: (k, 160 + k, f"v{160 + k}") for k in range(40)}
    latest[37] = (37, 157, "v157")
    assert store.rows(table) == [latest[k] for k in range(40)]
    assert [e for e in logs if e["event"] == "items_rejected"]


def test_a_killed_backend_is_transient_and_the_next_flusher_reconnects(
    store: Store,
) -> None:
    table = store.create(store.name(), KV)
    made: list[AsyncPostgresFlusher[Any]] = []

    def factory() -> AsyncPostgresFlusher[Any]:
        made.append(AsyncPostgresFlusher.upsert(store.dsn, store.name(), COLUMNS, "k"))
        return made[-1]

    cfg: wbactor.Config[tuple[int, int, str]] = wbactor.Config(
        capacity=1000, flusher_factory=factory
    )
    with running(cfg) as wb:
        wb.push((1, 1, "a"))
        wb.flush(WAIT)
        query = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s"
        )
        assert store.admin.execute(query, [store.prefix[:60]]).fetchall()
        wb.push((2, 1, "b"))
        wb.flush(WAIT)
        stats = wb.stats()
    assert store.rows(table) == [(1, 1, "a"), (2, 1, "b")]
    assert stats.flushed == 2
    assert stats.retries >= 1
    assert len(made) == stats.restarts + 1
    assert all(f._conn is None for f in made)  # each closed by the queue


def test_in_a_worker_process_and_through_lanes(store: Store) -> None:
    table = store.create(store.name(), KV)
    factory = functools.partial(
        AsyncPostgresFlusher.upsert,
        store.dsn,
        store.name(),
        COLUMNS,
        "k",
        version="tick",
    )
    assert pickle.loads(pickle.dumps(factory()))._conn is None  # noqa: S301 - our own
    rows = [(i % 25, i, f"v{i}") for i in range(500)]
    for options in ({"flusher_process": True}, {"lanes": 3, "key_func": first}):
        store.admin.execute(sql.SQL("TRUNCATE {}").format(table))
        cfg: wbactor.Config[tuple[int, int, str]] = wbactor.Config(
            capacity=1000, batch_size=50, flusher_factory=factory, **options
        )
        with running(cfg) as wb:
            wb.ref.tell(wbactor.PushMany(rows))
            wb.flush(WAIT)
            stats = wb.stats()
        assert stats.flushed == 500, options
        assert store.rows(table) == [(k, 475 + k, f"v{475 + k}") for k in range(25)]


def first(row: tuple[int, int, str]) -> int:
    return row[0]


def test_apush_aflush_astop_from_a_coroutine(store: Store) -> None:
    table = store.create(store.name(), KV)
    cfg: wbactor.Config[tuple[int, int, str]] = wbactor.Config(
        capacity=10,
        policy=wbactor.Policy.BLOCK,
        batch_size=5,
        flusher_factory=functools.partial(
            AsyncPostgresFlusher.append, store.dsn, store.name(), COLUMNS
        ),
    )

    async def game() -> wbactor.Stats:
        wb = wbactor.start(cfg)
        for i in range(40):
            await wb.apush((i, i, f"v{i}"), timeout=WAIT)
        await wb.aflush(timeout=WAIT)
        return await wb.astop(timeout=WAIT)

    stats = asyncio.run(game())
    assert stats.flushed == 40
    assert store.rows(table) == [(i, i, f"v{i}") for i in range(40)]
