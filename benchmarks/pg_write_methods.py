"""Compare ways to upsert a batch into PostgreSQL with psycopg 3.

PostgresFlusher uses `executemany` (pipelined by psycopg). This measures it
against a row-by-row `execute` loop, a multi-row `unnest` upsert, and COPY
into a temporary table followed by `INSERT ... SELECT ... ON CONFLICT`. Each
batch is one transaction; rows per second, median of the runs.

    WBACTOR_TEST_PG_DSN=postgresql://... python benchmarks/pg_write_methods.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from collections.abc import Callable

Batch = list[tuple[int, int]]

ROWS = 20_000
RUNS = 5
UPSERT = (
    "INSERT INTO bench_kv (k, v) VALUES (%s, %s) "
    "ON CONFLICT (k) DO UPDATE SET v = excluded.v"
)


def execute_loop(conn: psycopg.Connection[Any], batch: Batch) -> None:
    """One `execute` per row: one round trip each."""
    with conn.cursor() as cur:
        for row in batch:
            cur.execute(UPSERT, row)
    conn.commit()


def executemany(conn: psycopg.Connection[Any], batch: Batch) -> None:
    """What PostgresFlusher does: `executemany`, pipelined."""
    with conn.cursor() as cur:
        cur.executemany(UPSERT, batch)
    conn.commit()


def unnest(conn: psycopg.Connection[Any], batch: Batch) -> None:
    """One statement: the batch as one array per column."""
    keys, values = zip(*batch, strict=True)
    conn.execute(
        "INSERT INTO bench_kv (k, v) SELECT * FROM unnest(%s::int[], %s::int[]) "
        "ON CONFLICT (k) DO UPDATE SET v = excluded.v",
        [list(keys), list(values)],
    )
    conn.commit()


def copy_then_upsert(conn: psycopg.Connection[Any], batch: Batch) -> None:
    """COPY into a staging table, then one upsert from it."""
    with conn.cursor() as cur:
        with cur.copy("COPY bench_stage (k, v) FROM STDIN") as copy:
            for row in batch:
                copy.write_row(row)
        cur.execute(
            "INSERT INTO bench_kv (k, v) SELECT k, v FROM bench_stage "
            "ON CONFLICT (k) DO UPDATE SET v = excluded.v"
        )
    conn.commit()  # ON COMMIT DELETE ROWS empties the stage


METHODS: dict[str, Callable[[psycopg.Connection[Any], Batch], None]] = {
    "execute loop": execute_loop,
    "executemany": executemany,
    "unnest": unnest,
    "copy + upsert": copy_then_upsert,
}


def run(dsn: str, batch_size: int) -> None:
    """Print each method's median rows/s at `batch_size`."""
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_kv")
        conn.execute("CREATE TABLE bench_kv (k integer PRIMARY KEY, v integer)")
        conn.execute(
            "CREATE TEMP TABLE bench_stage (k integer, v integer) ON COMMIT DELETE ROWS"
        )
        conn.commit()
        for name, method in METHODS.items():
            rates = []
            for run_ in range(RUNS):
                # Half the keys exist already: inserts and updates both.
                base = run_ * ROWS // 2
                rows = [(base + i, i) for i in range(ROWS)]
                started = time.perf_counter()
                for i in range(0, ROWS, batch_size):
                    method(conn, rows[i : i + batch_size])
                rates.append(ROWS / (time.perf_counter() - started))
            print(
                f"batch {batch_size:>5}  {name:<14} "
                f"{statistics.median(rates):>9,.0f} rows/s (median of {RUNS})"
            )
        conn.execute("DROP TABLE bench_kv")
        conn.commit()


def main() -> int:
    """Run every method at batch sizes 100 and 1000."""
    dsn = os.environ.get("WBACTOR_TEST_PG_DSN")
    if not dsn:
        print("set WBACTOR_TEST_PG_DSN (.ci/postgres.sh start DIR prints one)")
        return 2
    for batch_size in (100, 1000):
        run(dsn, batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
