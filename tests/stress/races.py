"""Shutdown races: producers push while `stop()` runs; no accepted item is lost.

Each run starts a queue under one policy (the four in turn) with drawn
settings, starts producer threads that push uniquely numbered items with
`tell(Push)`, `tell(PushMany)` and `push()`, and calls `stop()` after a
drawn number of pushes, while they keep pushing. A push is *accepted*
unless it raised: `tell` raising `pykka.ActorDeadError`, `push()` raising
`QueueClosedError` or `PushTimeoutError`. Then:

- every accepted item is acknowledged (written by an attempt the queue
  counted, see `ledger.py`), coalesced, or passed to `on_drop` with a
  reason, exactly once;
- no refused item is flushed or passed to `on_drop`;
- `Stats` matches the ledger, and the `Stats` that `stop()` returned equal
  a snapshot taken after every producer has finished;
- no actor is left running.

Run: `python tests/stress/races.py --seed 1 --runs 300` (or `tox -e
stress`); `tests/test_shutdown_races.py` runs a few of them in the default
suite.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pykka
from ledger import Ledger

import wbactor
from wbactor import DropReason, Policy, Push, PushMany

PRODUCERS = 3
MAX_PER_PRODUCER = 20_000
POLICIES = list(Policy)


@dataclass
class RaceResult:
    """What one race did, and what went wrong."""

    policy: Policy
    accepted: int = 0
    refused: int = 0
    flushed: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    coalesced: int = 0
    violations: list[str] = field(default_factory=list)


def race(seed: int, index: int, *, stop_timeout: float = 30.0) -> RaceResult:  # noqa: C901, PLR0912, PLR0915 - one scenario
    """Run race number `index` of `seed`; return what it found."""
    rng = random.Random(f"{seed}-race-{index}")
    policy = POLICIES[index % len(POLICIES)]
    result = RaceResult(policy)
    size = PRODUCERS * MAX_PER_PRODUCER
    ledger = Ledger(size)
    fault_rate = rng.choice([0.0, 0.1, 0.3])
    faults = random.Random(f"{seed}-race-{index}-faults")
    faults_lock = threading.Lock()

    def flush(batch: list[int]) -> None:
        attempt = ledger.begin(batch, "ok")
        with faults_lock:
            fails = faults.random() < fault_rate
        if fails:
            msg = "simulated store failure"
            raise RuntimeError(msg)
        ledger.write(attempt)

    batch_size = rng.choice([1, 7, 100, 500])
    # Small batches drain slowly (a message round trip each): keep them few.
    capacity = rng.choice([10, 100, 1000] + ([10_000] if batch_size >= 100 else []))
    config: wbactor.Config[int] = wbactor.Config(
        capacity=capacity,
        flusher=flush,
        batch_size=batch_size,
        flush_interval=rng.choice([0.001, 0.01, 1.0]),
        policy=policy,
        key_func=(lambda item: item % 97) if policy is Policy.COALESCE_BY_KEY else None,
        retry_backoff=lambda _: 0.0005,
        max_retries=rng.choice([0, 3, -1]),
        on_drop=ledger.on_drop,
        block_timeout=rng.choice([0.0005, 0.01]),
    )
    accepted = bytearray(size)
    stop_after = rng.randint(0, 3000)
    go = threading.Event()
    pushes = [0] * PRODUCERS

    def produce(wb: wbactor.WriteBehind[int], p: int) -> None:
        prng = random.Random(f"{seed}-race-{index}-producer-{p}")
        tell = wb.ref.tell
        item = p * MAX_PER_PRODUCER
        end = item + MAX_PER_PRODUCER
        while item < end:
            way = prng.random()
            k = prng.randint(2, 20) if way < 0.2 else 1
            k = min(k, end - item)
            items = list(range(item, item + k))
            item += k
            try:
                if way < 0.2:
                    tell(PushMany(items))
                elif way < 0.6:
                    tell(Push(items[0]))
                else:
                    wb.push(items[0], timeout=0.001)
            except pykka.ActorDeadError:  # QueueClosedError too
                if way >= 0.6:
                    continue
                return  # tell on a stopped queue: nothing more will be taken
            except wbactor.PushTimeoutError:
                continue
            for accepted_item in items:
                accepted[accepted_item] = 1
            pushes[p] += k
            if p == 0 and pushes[p] >= stop_after:
                go.set()
        go.set()

    with ledger.capture_logs():
        wb = wbactor.start(config)
        threads = [
            threading.Thread(target=produce, args=(wb, p)) for p in range(PRODUCERS)
        ]
        for thread in threads:
            thread.start()
        go.wait(stop_timeout)
        final = wb.stop(timeout=stop_timeout)
        for thread in threads:
            thread.join(stop_timeout)
        after = wb.stats()
    leaked = pykka.ActorRegistry.get_all()

    check = result.violations.append
    acked, dropped = ledger.acked, ledger.dropped
    unaccounted = twice = ghosts = 0
    for item in range(size):
        outcomes = acked[item] + dropped[item]
        if accepted[item]:
            result.accepted += 1
            unaccounted += outcomes == 0
            twice += outcomes > 1
        elif outcomes or ledger.written[item]:
            ghosts += 1
    result.flushed = after.flushed
    result.coalesced = after.coalesced
    result.dropped = ledger.drop_reasons
    coalescing = policy is Policy.COALESCE_BY_KEY
    if twice:
        check(f"{twice} accepted items counted twice")
    if unaccounted != (after.coalesced if coalescing else 0):
        check(f"{unaccounted} accepted items unaccounted, {after.coalesced} coalesced")
    if ghosts:
        check(f"{ghosts} refused items were flushed or dropped")
    if after.pushed != result.accepted:
        check(f"Stats.pushed {after.pushed} != {result.accepted} accepted")
    if after.flushed != sum(acked):
        check(f"Stats.flushed {after.flushed} != {sum(acked)} acknowledged")
    if dict(after.dropped) != {
        DropReason(r): n for r, n in ledger.drop_reasons.items()
    }:
        check(f"Stats.dropped {dict(after.dropped)} != on_drop {ledger.drop_reasons}")
    if after.depth or after.in_flight:
        check(f"left queued or in flight: {after}")
    if final != after:
        check(f"stop() returned {final}, later {after}")
    if any(thread.is_alive() for thread in threads):
        check("a producer is still pushing after stop()")
    if leaked:
        check(f"actors left running: {leaked}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the races; print the figures; 1 on any violation."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    per_policy: dict[Policy, Counter[str]] = {p: Counter() for p in Policy}
    failed = 0
    for index in range(args.runs):
        result = race(args.seed, index)
        totals = per_policy[result.policy]
        totals["runs"] += 1
        totals["accepted"] += result.accepted
        totals["flushed"] += result.flushed
        totals["coalesced"] += result.coalesced
        totals.update(result.dropped)
        for violation in result.violations:
            print(f"race {index} ({result.policy.value}): VIOLATION: {violation}")
        failed += bool(result.violations)
    wall = time.perf_counter() - started
    for policy, totals in per_policy.items():
        figures = " ".join(f"{k}={v}" for k, v in sorted(totals.items()))
        print(f"{policy.value:<15} {figures}")
    print(f"races: seed={args.seed} runs={args.runs} failed={failed} wall_s={wall:.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
