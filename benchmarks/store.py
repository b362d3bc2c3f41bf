"""The store flushers through a real queue, beside the raw ways to write a batch.

For each batch size (100 and 1,000 by default), in interleaved rounds, every
method writes the same rows `(player_id, tick, x, y, name)` into a fresh
table, half of them updates of rows already there:

- raw, on one connection, one transaction per batch, no queue: for upserts
  `executemany`, one `INSERT ... SELECT FROM unnest(...)` with binary arrays,
  and binary COPY into a temporary table then `INSERT ... SELECT ... ON
  CONFLICT`; for appends `executemany` and binary COPY; for SQLite
  `executemany` (WAL, `synchronous = NORMAL`). The one-statement methods
  (the `unnest` upsert, the COPY append) run in autocommit too, as the
  flushers do, which saves the `BEGIN` and `COMMIT` exchanges;
- through the queue: `wbactor.start` with a `flusher_factory`, the rows
  pushed with `PushMany`, then `flush()`; timed from the first push to the
  return of `flush()`, when every row is committed (the flusher has
  connected, on one warm-up row, before; `stop()`, which also ends a worker
  process, is off the clock, as closing the connection is for the raw ways).

It prints rows per second (median of the rounds, [min-max]), the flushers'
ratios to the fastest raw method with PASS/MISS per target, the CPU and the
command. It is a benchmark, not a test: the figures move with the machine's
load, so the rounds are interleaved and the medians compared.

    python benchmarks/store.py                  # 200,000 rows, 3 rounds
    python benchmarks/store.py --rows 50000 --rounds 5 --batch-sizes 100

PostgreSQL comes from `WBACTOR_TEST_PG_DSN`; without it a throwaway server is
started with `.ci/postgres.sh` (and stopped at the end). The SQLite flusher
runs both on a thread of this process, sharing the GIL with the producer,
and in a worker process (`flusher_process=True`), which does not.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import platform
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import structlog
from _machine import cpu_model
from psycopg import sql

import wbactor
from wbactor.flushers import PostgresFlusher, SQLiteFlusher

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

Row = tuple[int, int, float, float, str]

ROOT = Path(__file__).resolve().parent.parent
TABLE = "bench_players"
COLUMNS = ("player_id", "tick", "x", "y", "name")
CREATE = (
    "CREATE TABLE {} (player_id bigint PRIMARY KEY, tick bigint NOT NULL, "
    "x double precision NOT NULL, y double precision NOT NULL, name text NOT NULL)"
)
CREATE_LOG = (
    "CREATE TABLE {} (player_id bigint NOT NULL, tick bigint NOT NULL, "
    "x double precision NOT NULL, y double precision NOT NULL, name text NOT NULL)"
)
UPSERT = (
    "INSERT INTO bench_players (player_id, tick, x, y, name) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (player_id) DO UPDATE SET "
    "tick = excluded.tick, x = excluded.x, y = excluded.y, name = excluded.name"
)
UNNEST_UPSERT = (
    "INSERT INTO bench_players (player_id, tick, x, y, name) "
    "SELECT * FROM unnest(%b::int8[], %b::int8[], %b::float8[], %b::float8[], "
    "%b::text[]) ON CONFLICT (player_id) DO UPDATE SET tick = excluded.tick, "
    "x = excluded.x, y = excluded.y, name = excluded.name"
)
STAGE_UPSERT = (
    "INSERT INTO bench_players SELECT * FROM bench_stage "
    "ON CONFLICT (player_id) DO UPDATE SET tick = excluded.tick, "
    "x = excluded.x, y = excluded.y, name = excluded.name"
)
INSERT = (
    "INSERT INTO bench_players (player_id, tick, x, y, name) "
    "VALUES (%s, %s, %s, %s, %s)"
)
COPY_TYPES = ["int8", "int8", "float8", "float8", "text"]
SQLITE_CREATE = (
    "CREATE TABLE bench_players (player_id INTEGER PRIMARY KEY, "
    "tick INTEGER NOT NULL, x REAL NOT NULL, y REAL NOT NULL, name TEXT NOT NULL)"
)
SQLITE_INSERT = (
    "INSERT INTO bench_players (player_id, tick, x, y, name) VALUES (?, ?, ?, ?, ?)"
)
SQLITE_UPSERT = (
    SQLITE_INSERT + " ON CONFLICT (player_id) DO UPDATE SET tick = excluded.tick, "
    "x = excluded.x, y = excluded.y, name = excluded.name"
)
WARM_UP_KEY = -1  # the row a flusher connects on, before the clock starts


def rows_for(count: int, tick: int) -> list[Row]:
    """`count` rows; keys 0 .. count-1 (the first half is there already)."""
    return [(i, tick, i * 0.5, i * 0.25, f"player {i}") for i in range(count)]


# ------------------------------------------------------------------ stores


@dataclass
class Postgres:
    """The server: a fresh table for each run, filled half with the keys."""

    dsn: str

    def __post_init__(self) -> None:
        """Connect the admin connection, in autocommit."""
        self.admin = psycopg.connect(self.dsn, autocommit=True)

    def reset(self, *, log: bool, prefill: int) -> None:
        table = sql.Identifier(TABLE)
        self.admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        self.admin.execute(sql.SQL(CREATE_LOG if log else CREATE).format(table))
        if prefill:
            with self.admin.cursor().copy(
                sql.SQL("COPY {} FROM STDIN (FORMAT BINARY)").format(table)
            ) as copy:
                copy.set_types(COPY_TYPES)
                for row in rows_for(prefill, 0):
                    copy.write_row(row)
        self.admin.execute(sql.SQL("VACUUM ANALYZE {}").format(table))

    def count(self) -> int:
        row = self.admin.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(TABLE))
        ).fetchone()
        return int(row[0]) if row else 0


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """`WBACTOR_TEST_PG_DSN`, or a throwaway server from `.ci/postgres.sh`."""
    dsn = os.environ.get("WBACTOR_TEST_PG_DSN")
    if dsn:
        yield dsn
        return
    script = str(ROOT / ".ci" / "postgres.sh")
    data = tempfile.mkdtemp(prefix="wbactor-bench-pg-")
    print(f"starting PostgreSQL with .ci/postgres.sh in {data}", file=sys.stderr)
    started = subprocess.run(  # noqa: S603 - our own script
        [script, "start", data], capture_output=True, text=True, check=False
    )
    if started.returncode != 0:
        sys.stderr.write(started.stderr)
        msg = "could not start PostgreSQL (set WBACTOR_TEST_PG_DSN instead)"
        raise SystemExit(msg)
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([script, "stop", data], check=False)  # noqa: S603


# ----------------------------------------------------------------- methods

Write = Callable[[psycopg.Connection[Any], list[Row]], None]
"""Writes one batch on an open connection, in one transaction."""

Method = Callable[[list[Row], int], float]
"""Writes the rows in batches of the given size; returns the seconds it took."""


def raw(
    dsn: str, write: Write, setup: str = "SELECT 1", *, autocommit: bool = False
) -> Method:
    """`write` every batch on one connection, made (and `setup`) off the clock.

    In `autocommit`, each statement is its own transaction and `commit()`
    does nothing: a one-statement write is one exchange with the server.
    """

    def run(rows: list[Row], batch_size: int) -> float:
        with psycopg.connect(dsn, autocommit=autocommit) as conn:
            conn.execute(setup)
            conn.commit()
            started = time.perf_counter()
            for i in range(0, len(rows), batch_size):
                write(conn, rows[i : i + batch_size])
            return time.perf_counter() - started

    return run


def pg_executemany(statement: str) -> Write:
    """`executemany(statement, batch)`, which psycopg pipelines."""

    def write(conn: psycopg.Connection[Any], batch: list[Row]) -> None:
        with conn.cursor() as cursor:
            cursor.executemany(statement, batch)
        conn.commit()

    return write


def pg_unnest(conn: psycopg.Connection[Any], batch: list[Row]) -> None:
    """One statement: the batch as one binary array per column."""
    columns = [list(column) for column in zip(*batch, strict=True)]
    with conn.cursor(binary=True) as cursor:
        cursor.execute(UNNEST_UPSERT, columns)
    conn.commit()


STAGE = "CREATE TEMPORARY TABLE bench_stage (LIKE bench_players) ON COMMIT DELETE ROWS"
"""The raw COPY upsert's staging table, made once per connection."""


def pg_copy_upsert(conn: psycopg.Connection[Any], batch: list[Row]) -> None:
    """Binary COPY into a temporary table (made once), then one upsert from it."""
    with (
        conn.cursor() as cursor,
        cursor.copy("COPY bench_stage FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(COPY_TYPES)
        for row in batch:
            copy.write_row(row)
    conn.execute(STAGE_UPSERT)
    conn.commit()


def pg_copy_append(conn: psycopg.Connection[Any], batch: list[Row]) -> None:
    """Binary COPY straight into the table."""
    with (
        conn.cursor() as cursor,
        cursor.copy(
            "COPY bench_players (player_id, tick, x, y, name) FROM STDIN "
            "(FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(COPY_TYPES)
        for row in batch:
            copy.write_row(row)
    conn.commit()


def as_row(row: Row) -> Row:
    """The plain PostgresFlusher's params: the item is the row."""
    return row


def queued(
    factory: Callable[[], wbactor.FlusherLike[Row]], *, process: bool = False
) -> Method:
    """The flusher from `factory`, through a real queue (in a worker `process`)."""

    def run(rows: list[Row], batch_size: int) -> float:
        config: wbactor.Config[Row] = wbactor.Config(
            capacity=len(rows) + 1,
            flusher_factory=factory,
            batch_size=batch_size,
            flush_interval=1.0,
            flusher_process=process,
        )
        wb = wbactor.start(config)
        try:
            wb.push((WARM_UP_KEY, 0, 0.0, 0.0, "warm-up"))
            wb.flush(timeout=60)  # connected: the clock starts now
            started = time.perf_counter()
            wb.ref.tell(wbactor.PushMany(rows))
            wb.flush(timeout=600)
            elapsed = time.perf_counter() - started
        finally:
            stats = wb.stop(timeout=600)
        if stats.flushed != len(rows) + 1 or stats.dropped_total:
            msg = f"the queue did not write every row: {stats}"
            raise RuntimeError(msg)
        return elapsed

    return run


def sqlite_raw(path: Path) -> Method:
    """`executemany` of the upsert, a transaction per batch, WAL and NORMAL."""

    def run(rows: list[Row], batch_size: int) -> float:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            started = time.perf_counter()
            for i in range(0, len(rows), batch_size):
                db.execute("BEGIN")
                db.executemany(SQLITE_UPSERT, rows[i : i + batch_size])
                db.execute("COMMIT")
            return time.perf_counter() - started
        finally:
            db.close()

    return run


# --------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """One way to write the rows, into one store."""

    key: str
    label: str
    store: str  # "pg-upsert", "pg-append" or "sqlite"
    queued: bool
    method: Method


def scenarios(dsn: str, sqlite_path: Path) -> list[Scenario]:
    """Every scenario, the raw methods first within each store."""
    plain = functools.partial(PostgresFlusher, dsn, UPSERT, as_row)
    upsert = functools.partial(PostgresFlusher.upsert, dsn, TABLE, COLUMNS, "player_id")
    append = functools.partial(PostgresFlusher.append, dsn, TABLE, COLUMNS)
    lite = functools.partial(
        SQLiteFlusher.upsert, sqlite_path, TABLE, COLUMNS, "player_id"
    )
    made: list[tuple[str, str, str, Method]] = [
        ("Ue", "pg-upsert", "raw executemany", raw(dsn, pg_executemany(UPSERT))),
        ("Uu", "pg-upsert", "raw unnest(binary arrays)", raw(dsn, pg_unnest)),
        (
            "Ua",
            "pg-upsert",
            "raw unnest(binary arrays), autocommit",
            raw(dsn, pg_unnest, autocommit=True),
        ),
        (
            "Uc",
            "pg-upsert",
            "raw binary COPY + INSERT..SELECT",
            raw(dsn, pg_copy_upsert, STAGE),
        ),
        ("Qp", "pg-upsert", "PostgresFlusher(sql) via queue", queued(plain)),
        ("Qu", "pg-upsert", "PostgresFlusher.upsert via queue", queued(upsert)),
        ("Ae", "pg-append", "raw executemany", raw(dsn, pg_executemany(INSERT))),
        ("Ac", "pg-append", "raw binary COPY", raw(dsn, pg_copy_append)),
        (
            "Aa",
            "pg-append",
            "raw binary COPY, autocommit",
            raw(dsn, pg_copy_append, autocommit=True),
        ),
        ("Qa", "pg-append", "PostgresFlusher.append via queue", queued(append)),
        ("Se", "sqlite", "raw executemany", sqlite_raw(sqlite_path)),
        ("Qs", "sqlite", "SQLiteFlusher.upsert via queue, a thread", queued(lite)),
        (
            "Qw",
            "sqlite",
            "SQLiteFlusher.upsert via queue, a worker process",
            queued(lite, process=True),
        ),
    ]
    return [
        Scenario(key, label, store, queued=key.startswith("Q"), method=method)
        for key, store, label, method in made
    ]


def reset_sqlite(path: Path, prefill: int) -> None:
    """A fresh database file holding the first `prefill` keys."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(SQLITE_CREATE)
        db.execute("BEGIN")
        db.executemany(SQLITE_INSERT, rows_for(prefill, 0))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


# -------------------------------------------------------------------- main


@dataclass(frozen=True)
class Target:
    """A flusher's median over the fastest raw method's, at one batch size."""

    label: str
    flusher: str
    raws: tuple[str, ...]
    goal: float


TARGETS = (
    Target(
        "PostgresFlusher.upsert / fastest raw upsert",
        "Qu",
        ("Ue", "Uu", "Ua", "Uc"),
        0.9,
    ),
    Target("PostgresFlusher.append / fastest raw COPY", "Qa", ("Ac", "Aa"), 0.9),
    Target("SQLiteFlusher.upsert, a thread / raw executemany", "Qs", ("Se",), 0.9),
    Target("SQLiteFlusher.upsert, a process / raw executemany", "Qw", ("Se",), 0.9),
)

Rates = dict[tuple[str, int], list[float]]
"""Rows per second of each (scenario key, batch size), one per round."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[100, 1000], metavar="N"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="KEY", help="run only these scenario keys"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every scenario at every batch size, in rounds; print the report."""
    args = parse_args(argv)
    structlog.configure(  # INFO, as in production: batch_flushed is filtered out
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    command = "python " + shlex.join(
        [os.path.relpath(__file__), *(sys.argv[1:] if argv is None else argv)]
    )
    rates: Rates = {}
    with postgres_server() as dsn, tempfile.TemporaryDirectory() as tmp:
        pg = Postgres(dsn)
        row = pg.admin.execute("SHOW server_version").fetchone()
        server = str(row[0]) if row else "?"
        sqlite_path = Path(tmp) / "bench.db"
        chosen = [
            s
            for s in scenarios(dsn, sqlite_path)
            if not args.only or s.key in args.only
        ]
        rows = rows_for(args.rows, 1)
        for round_ in range(args.rounds):
            # Rotated each round, so that no scenario always follows another.
            shift = round_ % len(chosen) if chosen else 0
            order = chosen[shift:] + chosen[:shift]
            for batch_size in args.batch_sizes:
                for scenario in order:
                    rate = run_one(scenario, pg, sqlite_path, rows, batch_size)
                    rates.setdefault((scenario.key, batch_size), []).append(rate)
                    print(
                        f"round {round_ + 1}/{args.rounds} batch {batch_size:>5} "
                        f"{scenario.key:<3} {scenario.label:<42} {rate:>10,.0f} rows/s",
                        file=sys.stderr,
                    )
        pg.admin.close()
    report(args, chosen, rates, command, server)
    return 0


def run_one(
    scenario: Scenario,
    pg: Postgres,
    sqlite_path: Path,
    rows: list[Row],
    batch_size: int,
) -> float:
    """Reset the store, write `rows` with `scenario`; return rows per second."""
    half = len(rows) // 2
    if scenario.store == "sqlite":
        reset_sqlite(sqlite_path, half)
    else:
        log = scenario.store == "pg-append"
        pg.reset(log=log, prefill=0 if log else half)
    elapsed = scenario.method(rows, batch_size)
    if scenario.store != "sqlite":
        expected = len(rows) + (1 if scenario.queued else 0)  # the warm-up row
        if (count := pg.count()) != expected:
            msg = f"{scenario.key}: {count} rows in the table, not {expected}"
            raise RuntimeError(msg)
    return len(rows) / elapsed


def _cell(got: Sequence[float]) -> str:
    if not got:
        return "-"
    return f"{statistics.median(got):,.0f} [{min(got):,.0f}-{max(got):,.0f}]"


def report(
    args: argparse.Namespace,
    chosen: Sequence[Scenario],
    rates: Rates,
    command: str,
    server: str,
) -> None:
    """Print the machine, the command, the table of rates and the targets."""
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs; CPython "
        f"{platform.python_version()}, psycopg {psycopg.__version__} "
        f"({psycopg.pq.__impl__}), PostgreSQL {server}, SQLite "
        f"{sqlite3.sqlite_version}; {platform.system()}."
    )
    print(f"Command: `{command}`")
    print(
        f"{args.rows:,} rows `(player_id, tick, x, y, name)` per run (half of "
        f"them updates for the upserts), {args.rounds} interleaved rounds; "
        "rows/s, medians [min-max].\n"
    )
    sizes = args.batch_sizes
    print(
        "| key | store | method | " + " | ".join(f"batch {n:,}" for n in sizes) + " |"
    )
    print("|" + "---|" * 3 + "---:|" * len(sizes))
    for s in chosen:
        cells = " | ".join(_cell(rates.get((s.key, n), [])) for n in sizes)
        print(f"| {s.key} | {s.store} | {s.label} | {cells} |")
    print("\n| target | batch | goal | measured | |")
    print("|---|---:|---:|---:|---|")
    for target in TARGETS:
        for n in sizes:
            mine = rates.get((target.flusher, n))
            raws = [
                (key, statistics.median(rates[key, n]))
                for key in target.raws
                if (key, n) in rates
            ]
            if not mine or not raws:
                continue
            best_key, best = max(raws, key=lambda pair: pair[1])
            ratio = statistics.median(mine) / best
            verdict = "PASS" if ratio >= target.goal else "MISS"
            print(
                f"| {target.label} ({target.flusher}/{best_key}) | {n:,} | "
                f">= {target.goal}x | {ratio:.2f}x | {verdict} |"
            )


if __name__ == "__main__":
    sys.exit(main())
