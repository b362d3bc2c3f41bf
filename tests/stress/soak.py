"""Soak run: faults and varying load for a while; memory and threads stay flat.

One queue runs for `--seconds` while four producers push in bursts of
varying size and pace, and the flusher raises, hangs past `flush_timeout`
or kills its own actor at random, its fault rate swinging between calm and
stormy phases. Every second the run samples the process's resident memory
(VmRSS) and `threading.active_count()` (the floor of each window counts:
a hung attempt holds a thread for a moment).

After a warm-up (the first 10 s, while allocator arenas and caches fill),
the mean of the first ten samples is compared with the mean of the last
ten: the run fails if RSS grew by more than 8 MB and 5%, or if the thread
count grew. The books are kept in counters, not per item (the per-item
ledger is the stress run's; here it would itself grow): at the end the items
acknowledged (`batch_flushed` lines) plus those passed to `on_drop` must
equal the items pushed, and `Stats` must agree.

Run: `python tests/stress/soak.py --seconds 60 --seed 1` (or `tox -e soak`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import structlog
from ledger import StoreError, own_actor

import wbactor
from wbactor import Policy, Push, PushMany

RSS_TOLERANCE_MB = 8.0
RSS_TOLERANCE = 0.05
WARM_UP_S = 10
WINDOW = 10  # samples, one a second


def rss_mb() -> float:
    """Return this process's resident set size, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    msg = "no VmRSS in /proc/self/status"
    raise RuntimeError(msg)


def main(argv: list[str] | None = None) -> int:  # noqa: C901, PLR0915 - one scenario
    """Soak one queue; print the figures; 1 on growth or a lost item."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.seconds < WARM_UP_S + 2 * WINDOW:
        parser.error(f"--seconds must be at least {WARM_UP_S + 2 * WINDOW}")

    rng = random.Random(args.seed)
    lock = threading.Lock()
    tally: Counter[str] = Counter()
    storm = [0.05]  # the fault rate of the moment
    release = threading.Event()

    def flush(batch: list[int]) -> None:
        with lock:
            r, detail = rng.random(), rng.random()
        rate = storm[0]
        if r < rate:
            msg = "simulated store failure"
            raise StoreError(msg)
        if r < rate * 1.1:
            release.wait(0.05 + 0.05 * detail)  # hangs past flush_timeout
        elif r < rate * 1.2:
            own_actor().stop(block=False)  # dies after writing
        with lock:
            tally["written"] += len(batch)

    def on_drop(_item: int, _reason: wbactor.DropReason) -> None:
        with lock:
            tally["dropped"] += 1

    def count_logs(_logger: Any, _method: str, event: Any) -> Any:
        with lock:
            if event["event"] == "batch_flushed":
                tally["acknowledged"] += event["batch_size"]
            elif event["event"] == "flusher_restarted":
                tally[f"restart_{event['cause']}"] += 1
        raise structlog.DropEvent

    config: wbactor.Config[int] = wbactor.Config(
        capacity=5_000,
        flusher_factory=lambda: flush,
        batch_size=200,
        flush_interval=0.05,
        policy=Policy.DROP_OLDEST,
        retry_backoff=lambda attempt: min(0.002 * attempt, 0.05),
        max_retries=-1,
        on_drop=on_drop,
        flush_timeout=0.03,
    )
    deadline = time.monotonic() + args.seconds
    next_item = [0]
    done = threading.Event()

    def produce(p: int) -> None:
        prng = random.Random(f"{args.seed}-soak-{p}")
        tell = wb.ref.tell
        while not done.is_set():
            burst = prng.randint(10, 3000)
            with lock:
                first = next_item[0]
                next_item[0] += burst
            if prng.random() < 0.5:
                for item in range(first, first + burst):
                    tell(Push(item))
            else:
                tell(PushMany(list(range(first, first + burst))))
            # A lull of varying length: the load swings from flat out to idle.
            done.wait(prng.choice([0.0, 0.001, 0.01, 0.05]))

    rss: list[float] = []
    threads_seen: list[int] = []
    structlog.configure(
        processors=[count_logs],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
    )
    wb = wbactor.start(config)
    producers = [threading.Thread(target=produce, args=(p,)) for p in range(4)]
    for thread in producers:
        thread.start()
    second = 0
    while time.monotonic() < deadline:
        done.wait(1.0)
        second += 1
        storm[0] = 0.3 if (second // 5) % 3 == 2 else 0.05
        rss.append(rss_mb())
        threads_seen.append(threading.active_count())
    done.set()
    for thread in producers:
        thread.join()
    final = wb.stop(timeout=60)
    release.set()
    for thread in threading.enumerate():
        if thread.name.startswith("FlusherActor"):
            thread.join(timeout=10)

    first_rss = statistics.mean(rss[WARM_UP_S : WARM_UP_S + WINDOW])
    last_rss = statistics.mean(rss[-WINDOW:])
    first_threads = min(threads_seen[WARM_UP_S : WARM_UP_S + WINDOW])
    last_threads = min(threads_seen[-WINDOW:])
    growth = last_rss - first_rss
    items = next_item[0]
    lost = items - tally["acknowledged"] - tally["dropped"]
    failures = []
    if growth > RSS_TOLERANCE_MB and growth > first_rss * RSS_TOLERANCE:
        failures.append(f"RSS grew {growth:+.1f} MB")
    if last_threads > first_threads:
        failures.append(f"threads grew {first_threads} -> {last_threads}")
    if lost or final.pushed != items or final.flushed != tally["acknowledged"]:
        failures.append(f"{lost} items not accounted for; {final}")
    late_items = tally["written"] - tally["acknowledged"]
    print(
        f"soak: seed={args.seed} seconds={args.seconds:.0f} items={items} "
        f"flushed={final.flushed} dropped={dict(final.dropped)} "
        f"retries={final.retries} restarts={final.restarts} "
        f"late_items={late_items} "
        f"causes={ {k: v for k, v in tally.items() if k.startswith('restart')} }"
    )
    print(
        f"soak: RSS first 10 s (after {WARM_UP_S} s warm-up) {first_rss:.1f} MB, "
        f"last 10 s {last_rss:.1f} MB ({growth:+.1f} MB; tolerance "
        f"+{RSS_TOLERANCE_MB:.0f} MB or +{RSS_TOLERANCE:.0%}); threads "
        f"{first_threads} -> {last_threads}"
    )
    for failure in failures:
        print(f"soak: FAIL: {failure}")
    if not failures:
        print("soak: flat and accounted for")
    return 1 if failures else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
