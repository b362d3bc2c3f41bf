"""Lanes: rows per second against a store's per-batch latency, 1 to 8 lanes.

Two parts, each in interleaved rounds, medians [min-max] and ratios to one
lane within the same run:

1. A simulated store: each batch costs the flusher its write time (it reads
   every row, on the flusher's thread, sharing the GIL) and then a latency
   `L` in {0.5, 2, 10} ms spent waiting (the network and the store's commit:
   a `time.sleep`, which releases the GIL), at batch sizes 100 and 1,000.
   Target: lanes=4 >= 3x lanes=1 wherever `L` is at least a batch's GIL
   time: the write plus the producer's routing of the batch's rows into the
   lanes (measured here too), the work that runs one thread at a time.
2. A real PostgreSQL behind `latency_proxy.py`, a loopback TCP proxy adding
   2 ms per round trip: `PostgresFlusher.upsert` (binary COPY, a few round
   trips per batch), one connection per lane. Target: lanes=4 >= 2x lanes=1.

Every run pushes its rows with `PushMany` into a queue with room for all of
them and is timed from the first push to the end of `flush()`; items are
routed by key (`key_func`), so per-key order holds. It is a benchmark, not a
test: it prints figures and PASS/MISS, and asserts nothing about time.

    python benchmarks/lanes.py                      # both parts, 3 rounds
    python benchmarks/lanes.py --part simulated --rounds 5
    python benchmarks/lanes.py --part postgres      # PostgreSQL only

PostgreSQL comes from `WBACTOR_TEST_PG_DSN`; without it a throwaway server is
started with `.ci/postgres.sh` (and stopped at the end).
"""

from __future__ import annotations

import argparse
import functools
import logging
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

import wbactor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency_proxy
import store
from _machine import cpu_model

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

Row = tuple[int, int, float, float, str]

LANES = (1, 2, 4, 8)
BATCH_SIZES = (100, 1000)
LATENCIES = (0.0005, 0.002, 0.01)
PLAYERS = 10_000


def rows_for(count: int) -> list[Row]:
    """`count` rows over `PLAYERS` keys, each key's ticks increasing."""
    return [(n % PLAYERS, n, n * 0.5, -n * 0.25, "p") for n in range(count)]


def key(row: Row) -> int:
    """Route by player: one player's rows through one lane, in order."""
    return row[0]


class SimulatedStore:
    """Reads every row (its write time), then waits out the latency."""

    def __init__(self, latency: float) -> None:
        self.latency = latency

    def flush(self, batch: list[Row]) -> None:
        total = 0.0
        for row in batch:  # building the rows to send: Python, under the GIL
            total += row[2] + row[3] + len(row[4])
        time.sleep(self.latency)  # the network and the commit: no GIL held


def timed(
    factory: Callable[[], wbactor.FlusherLike[Row]],
    rows: list[Row],
    *,
    lanes: int,
    batch_size: int,
) -> float:
    """Push `rows` through a queue of `lanes`; return rows per second."""
    config: wbactor.Config[Row] = wbactor.Config(
        capacity=len(rows),
        flusher_factory=factory,
        batch_size=batch_size,
        lanes=lanes,
        key_func=key,
        flush_interval=0.05,
        max_retries=-1,
    )
    wb = wbactor.start(config)
    try:
        wb.push(rows[0])  # the flushers are connected before the clock starts
        wb.flush(60)
        started = time.perf_counter()
        wb.ref.tell(wbactor.PushMany(rows))
        wb.flush(600)
        elapsed = time.perf_counter() - started
    finally:
        final = wb.stop(timeout=30)
    lost = final.pushed - final.flushed
    if lost:
        msg = f"{lost} rows not flushed: {final}"
        raise RuntimeError(msg)
    return len(rows) / elapsed


def write_time(batch_size: int) -> float:
    """Seconds `SimulatedStore` spends on a batch besides its latency."""
    store_ = SimulatedStore(0.0)
    batch = rows_for(batch_size)
    started = time.perf_counter()
    for _ in range(50):
        store_.flush(batch)
    return (time.perf_counter() - started) / 50


def push_time(batch_size: int) -> float:
    """Seconds the producer spends routing one batch's rows into 4 lanes."""
    gate = threading.Event()
    rows = rows_for(50 * batch_size)
    config: wbactor.Config[Row] = wbactor.Config(
        capacity=len(rows),
        flusher=lambda _batch: gate.wait(),
        batch_size=batch_size,
        lanes=4,
        key_func=key,
        flush_interval=1000.0,
    )
    wb = wbactor.start(config)
    try:
        started = time.perf_counter()
        wb.ref.tell(wbactor.PushMany(rows))
        return (time.perf_counter() - started) / 50
    finally:
        gate.set()
        wb.stop(timeout=30)


def rows_to_push(batch_size: int, latency: float, seconds: float) -> int:
    """Rows lanes=1 writes in about `seconds` (its rate is batch / latency)."""
    return max(batch_size * 20, min(200_000, int(batch_size / latency * seconds)))


def run_simulated(args: argparse.Namespace) -> list[str]:
    """Part 1; return its report lines."""
    results: dict[tuple[int, float, int], list[float]] = {}
    for _ in range(args.rounds):
        for batch_size in BATCH_SIZES:
            for latency in LATENCIES:
                rows = rows_for(rows_to_push(batch_size, latency, args.seconds))
                for lanes in LANES:
                    rate = timed(
                        functools.partial(SimulatedStore, latency),
                        rows,
                        lanes=lanes,
                        batch_size=batch_size,
                    )
                    results.setdefault((batch_size, latency, lanes), []).append(rate)
    lines = [
        "## Simulated store (write time on the flusher's thread, then latency L)",
        "",
        "| batch | L (ms) | GIL (ms) | "
        + " | ".join(f"lanes={n}" for n in LANES)
        + " | 4 vs 1 | target |",
        "|---|---|---|" + "---|" * len(LANES) + "---|---|",
    ]
    for batch_size in BATCH_SIZES:
        # What a batch costs under the GIL, which lanes cannot overlap: the
        # flusher's write and the producer's routing of its rows.
        write = write_time(batch_size) + push_time(batch_size)
        for latency in LATENCIES:
            cells, medians = [], {}
            for lanes in LANES:
                got = results[(batch_size, latency, lanes)]
                medians[lanes] = statistics.median(got)
                cells.append(cell(got))
            ratio = medians[4] / medians[1]
            if latency >= write:
                verdict = "PASS" if ratio >= 3.0 else "MISS"  # noqa: PLR2004
                target = f">= 3x: {verdict}"
            else:
                target = "L < GIL time: none"
            lines.append(
                f"| {batch_size} | {latency * 1000:g} | {write * 1000:.2f} | "
                + " | ".join(cells)
                + f" | {ratio:.2f}x | {target} |"
            )
    return lines


def run_postgres(args: argparse.Namespace) -> list[str]:
    """Part 2; return its report lines."""
    import psycopg  # noqa: PLC0415 - only this part needs it
    from psycopg import sql  # noqa: PLC0415

    from wbactor.flushers import PostgresFlusher  # noqa: PLC0415

    results: dict[tuple[int, int], list[float]] = {}
    with store.postgres_server() as dsn:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        target = f"{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}"
        with latency_proxy.started(target, args.rtt) as port:
            proxied = psycopg.conninfo.make_conninfo(dsn, host="127.0.0.1", port=port)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(
                        sql.Identifier(store.TABLE)
                    )
                )
                conn.execute(sql.SQL(store.CREATE).format(sql.Identifier(store.TABLE)))
            factory = functools.partial(
                PostgresFlusher.upsert, proxied, store.TABLE, store.COLUMNS, "player_id"
            )
            for _ in range(args.rounds):
                for batch_size in BATCH_SIZES:
                    rows = rows_for(min(args.pg_rows, 200 * batch_size))
                    for lanes in LANES:
                        with psycopg.connect(dsn, autocommit=True) as conn:
                            conn.execute(
                                sql.SQL("TRUNCATE {}").format(
                                    sql.Identifier(store.TABLE)
                                )
                            )
                        rate = timed(factory, rows, lanes=lanes, batch_size=batch_size)
                        results.setdefault((batch_size, lanes), []).append(rate)
    lines = [
        (
            f"## PostgreSQL behind a proxy adding {args.rtt * 1000:g} ms per round "
            f"trip (200 batches of upserts, at most {args.pg_rows:,} rows)"
        ),
        "",
        "| batch | " + " | ".join(f"lanes={n}" for n in LANES) + " | 4 vs 1 | target |",
        "|---|" + "---|" * len(LANES) + "---|---|",
    ]
    for batch_size in BATCH_SIZES:
        got = {lanes: results[(batch_size, lanes)] for lanes in LANES}
        ratio = statistics.median(got[4]) / statistics.median(got[1])
        verdict = "PASS" if ratio >= 2.0 else "MISS"  # noqa: PLR2004
        lines.append(
            f"| {batch_size} | "
            + " | ".join(cell(got[lanes]) for lanes in LANES)
            + f" | {ratio:.2f}x | >= 2x: {verdict} |"
        )
    return lines


def cell(got: Sequence[float]) -> str:
    """A median in thousands of rows/s, with the range."""
    return (
        f"{statistics.median(got) / 1000:.1f}k "
        f"[{min(got) / 1000:.1f}-{max(got) / 1000:.1f}]"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--part", choices=("both", "simulated", "postgres"), default="both"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--seconds", type=float, default=0.5, help="about how long lanes=1 runs"
    )
    parser.add_argument(
        "--rtt", type=float, default=0.002, help="seconds the proxy adds a round trip"
    )
    parser.add_argument(
        "--pg-rows",
        type=int,
        default=100_000,
        help="most rows per run (200 batches, at most)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the parts asked for; print one report."""
    args = parse_args(argv)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING)
    )
    lines = [
        "# Lanes benchmark",
        "",
        (
            f"CPU: {cpu_model()}; Python {sys.version.split()[0]}; "
            f"{args.rounds} rounds; median [min-max], rows/s"
        ),
        f"Command: python benchmarks/lanes.py {shlex.join(sys.argv[1:])}".rstrip(),
        "",
    ]
    if args.part in {"both", "simulated"}:
        lines += [*run_simulated(args), ""]
    if args.part in {"both", "postgres"}:
        lines += [*run_postgres(args), ""]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
