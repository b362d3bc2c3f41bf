#!/usr/bin/env python3
"""GIL starvation: a flusher's rows/s into SQLite, in a thread or a process.

A flusher thread shares the GIL with the rest of the process, so a
CPU-bound pure-Python thread beside it starves it; a worker process
(`Config(flusher_process=True)`) has a GIL of its own. This measures the
flusher's rate while it has a backlog, for {thread, process} x {no load,
one CPU-bound thread}:

1. start a queue whose flusher upserts into a fresh SQLite file (WAL,
   `synchronous=NORMAL`, batches of 1,000, `INSERT ... ON CONFLICT DO
   UPDATE` over 10,000 keys); its first flush waits on a gate file, so
2. the backlog (`--rows`, 1,000,000 by default) is pushed while the flusher
   is stalled (one `PushMany`);
3. with load, a thread starts spinning a pure-Python loop;
4. the gate opens; after the first batch, the flusher's rows/s is measured
   over a `--window` of seconds (or until the backlog is drained): flushed
   rows / time, from `wb.stats()`;
5. meanwhile, every 20 ms, the producer's cost is sampled: 100
   `tell(Push(row))` timed together, ns per push (the median over samples
   leaves out the samples in which the producer lost the GIL);
6. the queue is stopped at once (what is left is dropped: `stop(timeout=0)`).

The four cases are interleaved (each round runs all four, the order
rotated), `--repeats` rounds (3 by default); figures are medians over the
rounds, [min-max]. structlog is filtered at ERROR: the drop at the end of
each case would log a warning.

    python benchmarks/gil.py                      # ~1 min
    python benchmarks/gil.py --quick              # 300k rows, 1.5 s windows
    python benchmarks/gil.py --markdown benchmarks/gil-results.md
    python benchmarks/gil.py --windows 1,4,16     # and ProcessFlusher alone

`--windows W,...` adds a measure of the hand-off itself, without a queue:
the main thread calls `ProcessFlusher.flush_many` with W batches at a time
(`flush` for W = 1) for a window of seconds, with and without the load. A
hand-off under load costs the parent up to a GIL switch interval (5 ms)
each time it waits for the worker, so the rate under load grows with W.
That is one window out at a time; the queue itself keeps two out (it sends
the next while the worker writes one), each of up to 32,768 items: 32
batches of 1,000 here, so `--windows 1,8,32` compares with it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib.metadata
import logging
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from _machine import cpu_model

import wbactor

if TYPE_CHECKING:
    from collections.abc import Sequence

Row = tuple[int, float, float]

BATCH = 1000
KEYS = 10_000
PROBE_EVERY = 0.02  # seconds between two samples of the producer's cost
PROBE_PUSHES = 100  # pushes per sample
GATE_POLL = 0.001  # seconds between two looks at the gate file

SCHEMA = (
    "CREATE TABLE players (id INTEGER PRIMARY KEY, x REAL NOT NULL, y REAL NOT NULL)"
)
UPSERT = (
    "INSERT INTO players (id, x, y) VALUES (?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET x = excluded.x, y = excluded.y"
)

structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
    logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    cache_logger_on_first_use=True,
)


class UpsertFlusher:
    """Upserts each batch in one transaction; the first flush waits for `gate`.

    Module-level, so that a worker process can unpickle a factory naming it.
    """

    def __init__(self, path: str, gate: str) -> None:
        self._path = path
        self._gate = Path(gate)
        self._db: sqlite3.Connection | None = None

    def flush(self, batch: list[Row]) -> None:
        db = self._db
        if db is None:  # on the flushing thread, as sqlite3 wants
            while not self._gate.exists():
                time.sleep(GATE_POLL)
            db = self._db = sqlite3.connect(self._path, isolation_level=None)
            db.execute("PRAGMA synchronous = NORMAL")
        db.execute("BEGIN")
        db.executemany(UPSERT, batch)
        db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def spin(stop: threading.Event) -> None:
    """The load: a CPU-bound pure-Python loop, until `stop` is set."""
    n = 0
    while not stop.is_set():
        for i in range(1000):
            n += i * i


@dataclass(frozen=True, kw_only=True)
class Case:
    """One of the four cases."""

    process: bool
    load: bool

    @property
    def name(self) -> str:
        flusher = "process" if self.process else "thread"
        return f"{flusher}, {'one CPU thread' if self.load else 'no load'}"


THREAD = Case(process=False, load=False)
THREAD_LOADED = Case(process=False, load=True)
PROCESS = Case(process=True, load=False)
PROCESS_LOADED = Case(process=True, load=True)
CASES = [THREAD, THREAD_LOADED, PROCESS, PROCESS_LOADED]


@dataclass
class Result:
    """What one case measured over the rounds."""

    rates: list[float] = field(default_factory=list)  # rows/s, one per round
    tells: list[float] = field(default_factory=list)  # ns/push, one per round


def run_case(case: Case, rows: Sequence[Row], window: float) -> tuple[float, float]:
    """Run `case` once; return the flusher's rows/s and the producer's ns/push."""
    work = Path(tempfile.mkdtemp(prefix="wbactor-gil-"))
    try:
        path, gate = work / "players.db", work / "gate"
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(SCHEMA)
        config: wbactor.Config[Row] = wbactor.Config(
            capacity=len(rows) + 100_000,
            flusher_factory=functools.partial(UpsertFlusher, str(path), str(gate)),
            batch_size=BATCH,
            flusher_process=case.process,
            exit_timeout=0,
        )
        wb = wbactor.start(config)
        stop_load = threading.Event()
        load = threading.Thread(target=spin, args=(stop_load,), daemon=True)
        try:
            wb.ref.tell(wbactor.PushMany(rows))  # the flusher waits at the gate
            if case.load:
                load.start()
                time.sleep(0.2)
            gate.touch()
            return measure(wb, rows, window)
        finally:
            stop_load.set()
            if case.load:
                load.join()
            wb.stop(timeout=0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(
    wb: wbactor.WriteBehind[Row], rows: Sequence[Row], window: float
) -> tuple[float, float]:
    """Measure the flusher's rate over `window` s, sampling the producer's cost."""
    backlog = len(rows)
    wb.wait_for(lambda s: s.flushed >= BATCH, 60.0)  # past the gate
    start, flushed_at_start = time.perf_counter(), wb.stats().flushed
    samples: list[float] = []
    probe = rows[0]
    tell = wb.ref.tell
    while True:
        time.sleep(PROBE_EVERY)
        began = time.perf_counter_ns()
        for _ in range(PROBE_PUSHES):
            tell(wbactor.Push(probe))
        samples.append((time.perf_counter_ns() - began) / PROBE_PUSHES)
        now, flushed = time.perf_counter(), wb.stats().flushed
        if now - start >= window or flushed >= backlog:
            break
    rate = (flushed - flushed_at_start) / (now - start)
    return rate, statistics.median(samples)


def run_direct(size: int, *, load: bool, rows: Sequence[Row], window: float) -> float:
    """Flush `size` batches per hand-off straight to a `ProcessFlusher`; rows/s."""
    from wbactor._worker import ProcessFlusher  # noqa: PLC0415 - only for --windows

    work = Path(tempfile.mkdtemp(prefix="wbactor-gil-"))
    stop_load = threading.Event()
    load_thread = threading.Thread(target=spin, args=(stop_load,), daemon=True)
    try:
        path, gate = work / "players.db", work / "gate"
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(SCHEMA)
        gate.touch()
        flusher: ProcessFlusher[Row] = ProcessFlusher(
            functools.partial(UpsertFlusher, str(path), str(gate)), name="direct"
        )
        batches = [list(rows[i : i + BATCH]) for i in range(0, len(rows), BATCH)]
        flusher.flush(batches[0])  # connected
        if load:
            load_thread.start()
            time.sleep(0.2)
        written, turn = 0, 0
        start = time.perf_counter()
        while time.perf_counter() - start < window:
            chosen = [batches[(turn + k) % len(batches)] for k in range(size)]
            turn += size
            if size == 1:
                flusher.flush(chosen[0])
                written += len(chosen[0])
            else:
                done, _ = flusher.flush_many(chosen)
                written += sum(len(b) for b in chosen[:done])
        rate = written / (time.perf_counter() - start)
        flusher.close()
        return rate
    finally:
        stop_load.set()
        if load:
            load_thread.join()
        shutil.rmtree(work, ignore_errors=True)


def direct_report(
    sizes: Sequence[int], rows: Sequence[Row], window: float, repeats: int
) -> list[str]:
    """Measure `run_direct` for each window size, loaded and not; Markdown."""
    rates: dict[tuple[int, bool], list[float]] = {}
    for round_ in range(repeats):
        for size in sizes:
            for load in (False, True):
                rate = run_direct(size, load=load, rows=rows, window=window)
                rates.setdefault((size, load), []).append(rate)
                print(
                    f"round {round_ + 1}/{repeats}  direct, {size:>3} per hand-off, "
                    f"{'one CPU thread' if load else 'no load':<14} "
                    f"{rate:>10,.0f} rows/s",
                    flush=True,
                )
    lines = [
        "",
        "ProcessFlusher alone (no queue), W batches per hand-off (`flush_many`):",
        "",
        "| W | no load, rows/s | one CPU-bound thread, rows/s | loaded x unloaded |",
        "|---|---|---|---|",
    ]
    for size in sizes:
        idle, loaded = rates[size, False], rates[size, True]
        ratio = statistics.median(loaded) / statistics.median(idle)
        lines.append(
            f"| {size} | {spread(idle, ',.0f')} | {spread(loaded, ',.0f')} "
            f"| {ratio:.2f} |"
        )
    return lines


def make_rows(n: int) -> list[Row]:
    """Return `n` rows `(id, x, y)` over `KEYS` ids, always the same ones."""
    rng = random.Random(1)  # noqa: S311 - positions, not secrets
    return [(i % KEYS, rng.uniform(0, 1000), rng.uniform(0, 1000)) for i in range(n)]


def version(dist: str) -> str:
    """Return the installed version of `dist`, or `?`."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine() -> str:
    """Describe the CPU, the interpreter and the versions that matter."""
    cpu = cpu_model()
    return (
        f"{cpu}, {os.cpu_count()} cores; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, pykka {version('pykka')}, "
        f"wbactor {version('wbactor')}; {platform.system()}; "
        f"switch interval {sys.getswitchinterval() * 1000:g} ms"
    )


def spread(values: list[float], fmt: str) -> str:
    """Format the median of `values`, and their range."""
    return (
        f"{format(statistics.median(values), fmt)} "
        f"[{format(min(values), fmt)}-{format(max(values), fmt)}]"
    )


def report(results: dict[Case, Result], command: str, header: str) -> list[str]:
    """Return the results and the targets as Markdown lines."""
    lines = [header, "", f"Command: `{command}`.", ""]
    lines += [
        (
            "| flusher | load | flusher rows/s [min-max] | x thread, no load"
            " | producer ns/push [min-max] |"
        ),
        "|---|---|---|---|---|",
    ]
    rate = {case: statistics.median(r.rates) for case, r in results.items()}
    tell = {case: statistics.median(r.tells) for case, r in results.items()}
    for case in CASES:
        r = results[case]
        lines.append(
            f"| {'process' if case.process else 'thread'} "
            f"| {'one CPU-bound thread' if case.load else 'none'} "
            f"| {spread(r.rates, ',.0f')} "
            f"| {rate[case] / rate[THREAD]:.2f} "
            f"| {spread(r.tells, '.0f')} |"
        )
    targets = [
        ("process under load vs process unloaded", ">=", 0.9,
         rate[PROCESS_LOADED] / rate[PROCESS]),
        ("process unloaded vs thread unloaded", ">=", 0.9,
         rate[PROCESS] / rate[THREAD]),
        ("producer ns/push, process vs thread, no load", "<=", 1.1,
         tell[PROCESS] / tell[THREAD]),
        ("producer ns/push, process vs thread, under load", "<=", 1.1,
         tell[PROCESS_LOADED] / tell[THREAD_LOADED]),
    ]  # fmt: skip
    lines += ["", "| target | goal | measured | |", "|---|---|---|---|"]
    for label, op, goal, measured in targets:
        ok = measured >= goal if op == ">=" else measured <= goal
        lines.append(
            f"| {label} | {op} {goal}x | {measured:.2f}x | {'PASS' if ok else 'MISS'} |"
        )
    lines += [
        "",
        (
            "For reference: the thread flusher under load ran at "
            f"{rate[THREAD_LOADED] / rate[THREAD]:.3f}x its unloaded rate; "
            "under load, the process flusher ran at "
            f"{rate[PROCESS_LOADED] / rate[THREAD_LOADED]:.1f}x the thread flusher."
        ),
    ]
    return lines


def main() -> None:
    """Run the rounds; print the tables (and write them with `--markdown`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="the backlog")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--window", type=float, default=3.0, help="seconds measured")
    parser.add_argument("--quick", action="store_true", help="300k rows, 1.5 s")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    parser.add_argument(
        "--windows", help="also ProcessFlusher alone, W batches a hand-off: 1,4,16"
    )
    args = parser.parse_args()
    if args.quick:
        args.rows, args.window = 300_000, 1.5
    print(f"Machine: {machine()}.", flush=True)
    rows = make_rows(args.rows)
    gc.collect()
    gc.freeze()  # the backlog's tuples: no use scanning them in every collection
    results = {case: Result() for case in CASES}
    for round_ in range(args.repeats):
        order = CASES[round_ % len(CASES) :] + CASES[: round_ % len(CASES)]
        for case in order:
            gc.collect()
            rate, tell = run_case(case, rows, args.window)
            results[case].rates.append(rate)
            results[case].tells.append(tell)
            print(
                f"round {round_ + 1}/{args.repeats}  {case.name:<24} "
                f"{rate:>10,.0f} rows/s  {tell:6.0f} ns/push",
                flush=True,
            )
    header = (
        f"Machine: {machine()}.\n\nBacklog {args.rows:,} rows (upserts over "
        f"{KEYS:,} keys), batches of {BATCH:,}, {args.window:g} s windows, "
        f"{args.repeats} interleaved rounds, medians [min-max]."
    )
    command = " ".join(["python", "benchmarks/gil.py", *sys.argv[1:]])
    lines = report(results, command, header)
    if args.windows:
        sizes = [int(w) for w in args.windows.split(",")]
        lines += direct_report(sizes, rows[:200_000], args.window, args.repeats)
    print("\n" + "\n".join(lines[1:]))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
