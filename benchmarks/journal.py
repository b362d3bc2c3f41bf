"""The journal's cost and its crash exposure (not part of the test suite).

Three figures, each with and without `Config(journal=...)`:

- producer cost: ns per `tell(Push)` from one producer, the flusher and the
  journal's writer running meanwhile (target: journal <= 1.5x without);
- end to end: items/s from the first push until `flush()` returns
  (target: journal >= 0.7x without);
- crash exposure: a child process pushes at a steady rate into a journaled
  queue whose flusher never returns, and is SIGKILLed at a random moment;
  the items it had accepted (a counter it keeps in shared memory) but the
  journal does not give back are lost. Reported over `--kills` kills, in
  items and in milliseconds of pushes, beside `journal_interval`.

Each figure is the median of `--rounds` rounds. Run:
`python benchmarks/journal.py` (or `tox -e journal-bench`); `--quick` for a
short run.
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import random
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _machine import cpu_model

import wbactor
from wbactor._journalfile import peek

INTERVAL = 0.05


class Sink:
    """A flusher that only counts."""

    def __init__(self) -> None:
        self.count = 0

    def flush(self, batch: list[Any]) -> None:
        self.count += len(batch)


def _config(sink: Sink, journal: str | None) -> wbactor.Config[Any]:
    return wbactor.Config(
        capacity=1_000_000,
        flusher=sink,
        batch_size=1000,
        flush_interval=0.05,
        journal=journal,
        journal_interval=INTERVAL,
    )


def _one_round(n: int, journal: str | None) -> tuple[float, float]:
    """Return (ns per tell, items/s end to end) for one round."""
    items = [(i % 5000, float(i), float(-i), i) for i in range(n)]
    sink = Sink()
    wb = wbactor.start(_config(sink, journal))
    tell = wb.ref.tell
    push = wbactor.Push
    pushes = [push(item) for item in items]
    start = time.perf_counter_ns()
    for message in pushes:
        tell(message)
    pushed = time.perf_counter_ns()
    wb.flush(120)
    done = time.perf_counter_ns()
    wb.stop(30)
    if journal is not None:
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(journal + suffix).unlink(missing_ok=True)
    return (pushed - start) / n, n / ((done - start) / 1e9)


def producer_and_throughput(n: int, rounds: int, folder: str) -> dict[str, float]:
    """Alternate rounds without and with a journal; return the medians."""
    tells: dict[bool, list[float]] = {False: [], True: []}
    rates: dict[bool, list[float]] = {False: [], True: []}
    _one_round(n // 10, None)  # warm-up
    for r in range(rounds):
        for journaled in (False, True):
            path = str(Path(folder) / f"bench-{r}.wbj") if journaled else None
            ns, rate = _one_round(n, path)
            tells[journaled].append(ns)
            rates[journaled].append(rate)
    return {
        "tell_ns": statistics.median(tells[False]),
        "tell_ns_journal": statistics.median(tells[True]),
        "rate": statistics.median(rates[False]),
        "rate_journal": statistics.median(rates[True]),
    }


# -- crash exposure ------------------------------------------------------------


def child(path: str, counter: str, rate: int) -> None:
    """Push numbered items at `rate`/s into a journal, counting them in `counter`."""
    fd = os.open(counter, os.O_RDWR)
    shared = mmap.mmap(fd, 8)
    forever = threading.Event()
    wb = wbactor.start(
        wbactor.Config(
            capacity=10_000_000,
            flusher=lambda _batch: forever.wait(),
            batch_size=1000,
            journal=path,
            journal_interval=INTERVAL,
        )
    )
    tell, push, pack = wb.ref.tell, wbactor.Push, struct.pack_into
    chunk = max(1, rate // 1000)  # pushes per millisecond
    start = time.perf_counter()
    n = 0
    print("READY", flush=True)
    while True:
        for _ in range(chunk):
            tell(push(n))
            n += 1
            pack("q", shared, 0, n)  # accepted: n items so far
        pause = start + n / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)


def crash_exposure(kills: int, rate: int, folder: str) -> list[int]:
    """SIGKILL `kills` children at random moments; return the items each lost."""
    lost: list[int] = []
    rng = random.Random(1)  # noqa: S311 - kill moments, not secrets
    for k in range(kills):
        path = str(Path(folder) / f"crash-{k}.wbj")
        counter = str(Path(folder) / f"counter-{k}")
        Path(counter).write_bytes(b"\0" * 8)
        proc = subprocess.Popen(  # noqa: S603 - this very script
            [sys.executable, __file__, "--child", path, counter, str(rate)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None  # noqa: S101
        while not proc.stdout.readline().startswith("READY"):
            pass
        time.sleep(rng.uniform(0.3, 1.3))  # a random moment of the pushes
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        with Path(counter).open("r+b") as f, mmap.mmap(f.fileno(), 8) as view:
            accepted = struct.unpack_from("q", view, 0)[0]
        recovered = peek(path)
        assert recovered == list(range(len(recovered))), "not a prefix, in order"  # noqa: S101
        lost.append(accepted - len(recovered))
    return lost


def main() -> None:
    """Run the figures, or be the child of a crash."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--items", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--rate", type=int, default=20_000, help="pushes/s (crash)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    import logging  # noqa: PLC0415 - the parent only

    import structlog  # noqa: PLC0415

    structlog.configure(  # INFO, as in production: batch_flushed is filtered out
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    if args.quick:
        args.items, args.rounds, args.kills = 100_000, 3, 5
    cores, python = os.cpu_count(), platform.python_version()
    print(f"CPU: {cpu_model()}, {cores} cores; Python {python}")
    with tempfile.TemporaryDirectory() as folder:
        figures = producer_and_throughput(args.items, args.rounds, folder)
        t0, t1 = figures["tell_ns"], figures["tell_ns_journal"]
        r0, r1 = figures["rate"], figures["rate_journal"]
        print(f"{args.items:,} items, median of {args.rounds} rounds")
        print(f"tell(Push): {t0:.0f} ns without, {t1:.0f} ns with: {t1 / t0:.2f}x")
        print(f"end to end: {r0:,.0f}/s without, {r1:,.0f}/s with: {r1 / r0:.2f}x")
        lost = crash_exposure(args.kills, args.rate, folder)
    ms = [1000 * n / args.rate for n in lost]
    print(
        f"crash exposure, {args.kills} SIGKILLs at {args.rate:,} pushes/s, "
        f"journal_interval {INTERVAL * 1000:.0f} ms: lost items "
        f"min {min(lost)}, median {statistics.median(lost):.0f}, max {max(lost)} "
        f"(= {min(ms):.0f} / {statistics.median(ms):.0f} / {max(ms):.0f} ms of pushes)"
    )
    print("lost per kill:", " ".join(map(str, lost)))


if __name__ == "__main__":
    main()
