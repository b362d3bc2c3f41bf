"""A flood into a full queue: four producers, with and without a stats reader.

Under overload a queue's policy decides what to refuse or evict, once per
push, and that path must stay as cheap as an ordinary push: a lock taken
per refused item let producers queue up behind whichever thread held it
when it lost the GIL, and the flusher with them (20,000 refusals beside a
thread reading `stats()` in a loop took seconds). This measures that path.

Every scenario runs 4 producer threads of `--pushes` pushes each into a
queue of capacity 100 (batches of 10, a flusher that only counts, an
`on_drop` that keeps the item), so almost every push meets a full queue; the
main thread either waits or reads `stats()` in a loop, as a dashboard gone
wild would. Rounds are interleaved; figures are medians of the rounds:
nanoseconds per push (the producers' wall time over all their pushes) and
the ratio to the floor, a bounded `deque` whose producers refuse with a
lock-free count and whose consumer takes batches of 10.

    python benchmarks/flood.py                 # 4 x 20,000 pushes, 5 rounds
    python benchmarks/flood.py --pushes 5000 --rounds 3
"""

from __future__ import annotations

import argparse
import itertools
import logging
import platform
import statistics
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

import structlog
from _machine import cpu_model

import wbactor
from wbactor import Policy, Push
from wbactor.testing import DropRecorder

if TYPE_CHECKING:
    from collections.abc import Callable

PRODUCERS = 4
CAPACITY = 100
BATCH = 10


class Run(Protocol):
    """A scenario: pushes per producer, whether to read stats -> seconds."""

    def __call__(self, pushes: int, *, sampling: bool) -> float: ...


def run_threads(
    produce: Callable[[int], None], sample: Callable[[], object] | None
) -> float:
    """Run the producers (calling `sample` meanwhile, if given); return their time."""
    go = threading.Barrier(PRODUCERS + 1)
    remaining = [PRODUCERS]
    count_lock = threading.Lock()
    all_done = threading.Event()

    def producer(index: int) -> None:
        go.wait(10)
        try:
            produce(index)
        finally:
            with count_lock:
                remaining[0] -= 1
                if not remaining[0]:
                    all_done.set()

    threads = [
        threading.Thread(target=producer, args=(index,)) for index in range(PRODUCERS)
    ]
    for thread in threads:
        thread.start()
    go.wait(10)
    started = time.perf_counter()
    if sample is not None:
        done = all_done.is_set
        while not done():  # as tight as a reader can make it
            sample()
    for thread in threads:
        thread.join(60)
    return time.perf_counter() - started


def floor(pushes: int, *, sampling: bool) -> float:
    """A bounded deque: refuse with a lock-free count; a consumer takes batches."""
    items: deque[int] = deque()
    refused = itertools.count()
    done = threading.Event()
    lock = threading.Lock()

    def consume() -> None:
        while not done.is_set():
            with lock:
                taken = min(BATCH, len(items))
                for _ in range(taken):
                    items.popleft()
            if not taken:
                time.sleep(0.0001)  # a benchmark's idle consumer, not a test's wait

    def produce(_: int) -> None:
        append, tick = items.append, refused.__next__
        for n in range(pushes):
            if len(items) >= CAPACITY:
                tick()
            else:
                append(n)

    def sample() -> object:
        with lock:
            return len(items)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        return run_threads(produce, sample if sampling else None)
    finally:
        done.set()
        consumer.join(10)


def queued(policy: Policy) -> Run:
    """A wbactor queue under `policy`."""

    def run(pushes: int, *, sampling: bool) -> float:
        drops: DropRecorder[int] = DropRecorder()
        config: wbactor.Config[int] = wbactor.Config(
            capacity=CAPACITY,
            flusher=lambda _batch: None,
            batch_size=BATCH,
            policy=policy,
            on_drop=drops,
        )
        wb = wbactor.start(config)
        tell = wb.ref.tell

        def produce(_: int) -> None:
            for n in range(pushes):
                tell(Push(n))

        try:
            return run_threads(produce, wb.stats if sampling else None)
        finally:
            stats = wb.stop(timeout=30)
            if stats.pushed != PRODUCERS * pushes:
                msg = f"not every push was counted: {stats}"
                raise RuntimeError(msg)

    return run


SCENARIOS: dict[str, tuple[str, Run]] = {
    "A": ("bounded deque, lock-free refusal (floor)", floor),
    "N": ("wbactor DROP_NEWEST", queued(Policy.DROP_NEWEST)),
    "O": ("wbactor DROP_OLDEST", queued(Policy.DROP_OLDEST)),
}


def main() -> None:
    """Run every scenario, with and without the stats reader, in rounds; print."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=20_000, help="per producer")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR)
    )
    times: dict[tuple[str, bool], list[float]] = {}
    keys = list(SCENARIOS)
    for round_ in range(args.rounds):
        order = keys[round_ % len(keys) :] + keys[: round_ % len(keys)]
        for key in order:
            for sampling in (False, True):
                elapsed = SCENARIOS[key][1](args.pushes, sampling=sampling)
                times.setdefault((key, sampling), []).append(elapsed)
    total = PRODUCERS * args.pushes
    print(f"CPU: {cpu_model()}; Python {platform.python_version()}")
    print(
        f"Command: python benchmarks/flood.py --pushes {args.pushes} "
        f"--rounds {args.rounds}"
    )
    print(
        f"{PRODUCERS} producers x {args.pushes:,} pushes into capacity {CAPACITY}; "
        f"ns per push, median of {args.rounds} rounds [min-max], x floor\n"
    )
    print("| key | scenario | main thread | ns/push [min-max] | x floor |")
    print("|---|---|---|---|---|")
    for sampling in (False, True):
        base = statistics.median(times[("A", sampling)])
        for key in keys:
            runs = times[(key, sampling)]
            ns = [t / total * 1e9 for t in runs]
            label = "reads stats() in a loop" if sampling else "waits"
            print(
                f"| {key} | {SCENARIOS[key][0]} | {label} | "
                f"{statistics.median(ns):,.0f} [{min(ns):,.0f}-{max(ns):,.0f}] | "
                f"{statistics.median(runs) / base:.2f} |"
            )


if __name__ == "__main__":
    main()
