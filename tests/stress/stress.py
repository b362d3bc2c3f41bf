"""Fault-injection stress run: every item pushed is accounted for exactly once.

For each policy, with `max_retries` 3 and -1, producer threads push uniquely
numbered items (`tell(Push)` and `tell(PushMany)`) while the flusher, drawn
at random for each attempt:

- raises `StoreError` (`--fault-rate`);
- hangs past `flush_timeout`, then writes anyway and returns (`--hang-rate`):
  the queue has abandoned the attempt by then, so what it writes is a late
  write, counted apart (at-least-once towards the store);
- dies (`--death-rate`): stops its own actor, then either raises
  `SystemExit` or writes and returns; the supervisor sees the actor die.

A fresh flusher comes from `flusher_factory` at every restart. At the end
every item must be, exactly once: acknowledged (written by an attempt the
queue counted, see `ledger.py`), coalesced, or passed to `on_drop` with a
reason; `Stats` must match the ledger; every snapshot taken while it ran
must conserve items; the items of each producer must be acknowledged in
push order; and with `max_retries=-1` only the policy's own drops may
occur. Any violation is printed and the exit status is 1.

Run: `python tests/stress/stress.py --seed 1` (or `tox -e stress`). The
fault draws are seeded; the threads' interleaving is not, so two runs with
one seed differ in detail, not in what must hold.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pykka
from ledger import Ledger, StoreError, own_actor

import wbactor
from wbactor import DropReason, Policy, Push, PushMany

POLICY_DROPS = {
    Policy.DROP_OLDEST: {DropReason.DROP_OLDEST},
    Policy.DROP_NEWEST: {DropReason.DROP_NEWEST},
    Policy.BLOCK: {DropReason.PUSH_TIMEOUT},
    Policy.COALESCE_BY_KEY: {DropReason.DROP_OLDEST, DropReason.KEY_ERROR},
}
"""The drops each policy makes of its own, whatever the flusher does."""

KEY_ERROR_EVERY = 10_007
"""COALESCE_BY_KEY: `key_func` raises for one unpaired item in this many."""


def key_of(item: int) -> tuple[str, int]:
    """The stress run's `key_func`.

    Items 8k and 8k+1 share a key (so the second may coalesce onto the
    first); every other item has a key of its own, and `key_func` raises for
    a few of those (`key_error`).
    """
    pair = item >> 1
    if pair % 4 == 0:
        return ("pair", pair)
    if item % KEY_ERROR_EVERY == 5:
        msg = "no key for this item"
        raise ValueError(msg)
    return ("one", item)


@dataclass
class Run:
    """One policy x max_retries run: its settings, figures and violations."""

    policy: Policy
    max_retries: int
    args: argparse.Namespace
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def check(self, ok: object, what: str) -> None:
        """Record a violation unless `ok`."""
        if not ok:
            self.violations.append(what)


class Faults:
    """Draws each attempt's fate from a seeded generator."""

    def __init__(self, args: argparse.Namespace, seed: str) -> None:
        """Seed the draws."""
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._edges = (
            ("raise", args.fault_rate),
            ("hang", args.fault_rate + args.hang_rate),
            ("die", args.fault_rate + args.hang_rate + args.death_rate),
        )
        self.drawn: Counter[str] = Counter()

    def draw(self) -> tuple[str, float]:
        """Return the next attempt's fate and a uniform number for its details."""
        with self._lock:
            r, detail = self._rng.random(), self._rng.random()
            kind = next((k for k, edge in self._edges if r < edge), "ok")
            if kind == "die":
                kind = "die_raising" if detail < 0.5 else "die_after_writing"
            self.drawn[kind] += 1
        return kind, detail


def run_one(run: Run) -> None:  # noqa: C901, PLR0912, PLR0915 - one scenario, read top to bottom
    """Push every item through one queue under faults; check the ledger."""
    args, policy = run.args, run.policy
    n, producers = args.items, args.producers
    per = 2 * -(-n // (2 * producers))  # even: a key pair never spans producers
    lanes = args.lanes
    if lanes == 1:
        ledger = Ledger(n, owner_of=lambda item: item // per)
    else:
        # Routed by key: one producer's items keep their order within a lane.
        ledger = Ledger(
            n, owner_of=lambda item: item // per * lanes + hash(key_of(item)) % lanes
        )
    seed = f"{args.seed}-{policy.value}-{run.max_retries}"
    faults = Faults(args, seed)
    release = threading.Event()  # set at the end: hung attempts return at once
    flush_timeout = args.flush_timeout

    class FaultyFlusher:
        """One flusher per flusher actor, made by `flusher_factory`."""

        def flush(self, batch: list[int]) -> None:
            kind, detail = faults.draw()
            attempt = ledger.begin(batch, kind)
            if kind == "raise":
                msg = "simulated store failure"
                raise StoreError(msg)
            if kind == "hang":
                release.wait(flush_timeout * (2 + 2 * detail))
            elif kind.startswith("die"):
                own_actor().stop(block=False)
                if kind == "die_raising":
                    msg = "the flusher dies"
                    raise SystemExit(msg)
            ledger.write(attempt)

    config: wbactor.Config[int] = wbactor.Config(
        capacity=args.capacity,
        flusher_factory=FaultyFlusher,
        batch_size=args.batch_size,
        flush_interval=0.01,
        policy=policy,
        key_func=key_of if policy is Policy.COALESCE_BY_KEY or args.lanes > 1 else None,
        lanes=args.lanes,
        retry_backoff=lambda attempt: min(0.001 * 2 ** (attempt - 1), 0.02),
        max_retries=run.max_retries,
        on_drop=ledger.on_drop,
        flush_timeout=flush_timeout,
        block_timeout=0.002,
    )
    bad_snapshots: list[wbactor.Stats] = []
    snapshots = 0
    pushing_done = threading.Event()
    tells: Counter[str] = Counter()

    def watch(wb: wbactor.WriteBehind[int]) -> None:
        nonlocal snapshots
        while not pushing_done.wait(0.002):
            stats = wb.stats()
            snapshots += 1
            accounted = (
                stats.flushed
                + stats.coalesced
                + sum(stats.dropped.values())
                + stats.depth
                + stats.in_flight
            )
            if stats.pushed != accounted or stats.depth > args.capacity:
                bad_snapshots.append(stats)

    def produce(wb: wbactor.WriteBehind[int], p: int) -> None:
        rng = random.Random(f"{seed}-producer-{p}")
        tell = wb.ref.tell
        item, end = p * per, min(n, (p + 1) * per)
        singles = many = 0
        burst = rng.randint(100, 4000)
        while item < end:
            if rng.random() < 0.75:
                tell(Push(item))
                item += 1
                singles += 1
                burst -= 1
            else:
                k = min(end - item, rng.randint(2, 32))
                tell(PushMany(list(range(item, item + k))))
                item += k
                many += 1
                burst -= k
            if burst <= 0:  # the load varies: bursts, then at times a lull
                burst = rng.randint(100, 4000)
                if rng.random() < args.lull_rate:
                    with contextlib.suppress(TimeoutError):
                        wb.wait_for(lambda s: s.depth <= args.capacity // 4, 1.0)
        with ledger.lock:
            tells["Push"] += singles
            tells["PushMany"] += many

    with ledger.capture_logs():
        started = time.perf_counter()
        wb = wbactor.start(config)
        watcher = threading.Thread(target=watch, args=(wb,))
        threads = [
            threading.Thread(target=produce, args=(wb, p)) for p in range(producers)
        ]
        watcher.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pushed_in = time.perf_counter() - started
        pushing_done.set()
        watcher.join()
        final = wb.stop(timeout=args.stop_timeout)
        wall = time.perf_counter() - started
        release.set()
        for thread in threading.enumerate():
            if thread.name.startswith("FlusherActor"):
                thread.join(timeout=10)
        after = wb.stats()
    leaked = pykka.ActorRegistry.get_all()

    # -- the verdict ----------------------------------------------------------
    acked, dropped, written = ledger.acked, ledger.dropped, ledger.written
    coalesced: list[int] = []
    missing: list[int] = []
    twice: list[int] = []
    unwritten = 0
    for item in range(n):
        outcomes = acked[item] + dropped[item]
        if outcomes > 1:
            twice.append(item)
        elif outcomes == 0:
            partner = item + 1
            if (
                policy is Policy.COALESCE_BY_KEY
                and item % 2 == 0
                and (item >> 1) % 4 == 0
                and partner < n
                and acked[partner] + dropped[partner] == 1
            ):
                coalesced.append(item)
            else:
                missing.append(item)
        if acked[item] and not written[item]:
            unwritten += 1
    late_attempts, late_items = ledger.late_writes()
    drops = {DropReason(reason): count for reason, count in ledger.drop_reasons.items()}
    check = run.check
    check(not missing, f"{len(missing)} items missing, e.g. {missing[:5]}")
    check(not twice, f"{len(twice)} items counted twice, e.g. {twice[:5]}")
    check(not unwritten, f"{unwritten} acknowledged items never written")
    check(not bad_snapshots, f"{len(bad_snapshots)} bad snapshots: {bad_snapshots[:2]}")
    check(ledger.order_violations == 0, f"{ledger.order_violations} out of order")
    check(final.pushed == n, f"Stats.pushed {final.pushed} != {n} items")
    check(final.flushed == sum(acked), f"flushed {final.flushed} != {sum(acked)}")
    check(final.batches == ledger.acked_batches, "Stats.batches != acknowledged")
    check(final.coalesced == len(coalesced), f"coalesced {final.coalesced}")
    check(dict(final.dropped) == drops, f"dropped {final.dropped} != {drops}")
    check(final.depth == final.in_flight == 0, "items left queued or in flight")
    check(final.restarts == sum(ledger.restart_causes.values()), "restarts != logs")
    check(after == final, f"late results changed Stats: {after}")
    check(not leaked, f"actors left running: {leaked}")
    allowed = POLICY_DROPS[policy] | (
        {DropReason.RETRIES_EXHAUSTED} if run.max_retries >= 0 else set()
    )
    if run.args.lanes > 1:
        allowed |= {DropReason.KEY_ERROR}  # routed by key_of, which raises for some
    check(set(drops) <= allowed, f"drops {set(drops) - allowed} not expected")
    run.figures = {
        "items": n,
        "Push": tells["Push"],
        "PushMany": tells["PushMany"],
        "flushed": final.flushed,
        "coalesced": final.coalesced,
        **{reason.value: drops.get(reason, 0) for reason in DropReason},
        "retries": final.retries,
        "restarts": final.restarts,
        "restart_causes": dict(ledger.restart_causes),
        "faults": dict(faults.drawn),
        "late_attempts": late_attempts,
        "late_items": late_items,
        "snapshots": snapshots,
        "push_s": round(pushed_in, 1),
        "wall_s": round(wall, 1),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--items", type=int, default=2_000_000, help="per run")
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--fault-rate", type=float, default=0.2, help="raises")
    parser.add_argument("--hang-rate", type=float, default=0.01)
    parser.add_argument("--death-rate", type=float, default=0.01)
    parser.add_argument("--flush-timeout", type=float, default=0.02)
    parser.add_argument(
        "--lull-rate",
        type=float,
        default=0.5,
        help="chance a producer waits for the queue to drain after a burst",
    )
    parser.add_argument("--capacity", type=int, default=2_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--stop-timeout", type=float, default=300.0)
    parser.add_argument(
        "--policies",
        nargs="+",
        default=[p.value for p in Policy],
        choices=[p.value for p in Policy],
    )
    parser.add_argument("--max-retries", type=int, nargs="+", default=[3, -1])
    parser.add_argument(
        "--lanes", type=int, default=1, help="lanes, routed by key_func when > 1"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run every policy x max_retries; print the figures; 1 on any violation."""
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING)
    print(
        f"stress: seed={args.seed} items={args.items} producers={args.producers} "
        f"fault={args.fault_rate} hang={args.hang_rate} death={args.death_rate} "
        f"flush_timeout={args.flush_timeout} capacity={args.capacity} "
        f"batch_size={args.batch_size} lull={args.lull_rate} lanes={args.lanes}",
        flush=True,
    )
    failed = 0
    for value in args.policies:
        for max_retries in args.max_retries:
            run = Run(Policy(value), max_retries, args)
            run_one(run)
            figures = " ".join(f"{k}={v}" for k, v in run.figures.items())
            verdict = "OK" if not run.violations else "FAIL"
            print(f"{value:<15} max_retries={max_retries:<2} {verdict} {figures}")
            for violation in run.violations:
                print(f"    VIOLATION: {violation}")
            sys.stdout.flush()
            failed += bool(run.violations)
    print("stress: all accounted for" if not failed else f"stress: {failed} FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
