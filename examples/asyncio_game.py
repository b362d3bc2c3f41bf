"""asyncio: a game loop that writes behind without ever stalling its ticks.

A hundred entities wander at 50 ticks a second in one asyncio event loop. Each
tick pushes every entity's state with `await wb.apush(state)` into a BLOCK
queue (nothing is ever dropped: a full queue makes `apush` wait, on the loop,
not in it). An async flusher upserts each batch into SQLite; it runs on the
flusher actor's own event loop, and hands the blocking `sqlite3` calls to a
thread with `asyncio.to_thread`; once, the store stalls for 0.3 s, so the
queue fills up and `apush` waits. Every second the game checkpoints with
`await wb.aflush()`, and at the end it stops the queue with
`await wb.astop()`. Meanwhile a watchdog task measures how late the loop
runs; at the end the store must hold every entity's last state.

    python examples/asyncio_game.py [--seconds 3] [--entities 100] [--db PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import structlog

import wbactor

TICK_HZ = 50
CHECKPOINT_TICKS = TICK_HZ  # aflush once a second
STALL_AT_BATCH = 30
STALL_SECONDS = 0.3


class EntityState(NamedTuple):
    entity_id: int
    tick: int
    x: float
    y: float


UPSERT = (
    "INSERT INTO entities (entity_id, tick, x, y) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (entity_id) DO UPDATE SET tick = excluded.tick, "
    "x = excluded.x, y = excluded.y WHERE excluded.tick > entities.tick"
)


class AsyncSQLiteStore:
    """An async flusher: each batch is one SQLite transaction, off the loop.

    wbactor awaits `flush` on the flusher actor's own event loop (one loop
    for the actor's life). `sqlite3` blocks, so the write runs in a worker
    thread of that loop; one batch is in flight at a time, so the connection
    is never used by two threads at once.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._batches = 0

    async def flush(self, batch: list[EntityState]) -> None:
        self._batches += 1
        if self._batches == STALL_AT_BATCH:  # the store is slow, once
            await asyncio.sleep(STALL_SECONDS)
        await asyncio.to_thread(self._write, batch)

    def _write(self, batch: list[EntityState]) -> None:
        if self._db is None:
            self._db = sqlite3.connect(self._path, check_same_thread=False)
        with self._db:  # one transaction: commit, or roll back and raise
            self._db.executemany(UPSERT, batch)

    def close(self) -> None:
        """Called by wbactor when it retires this flusher."""
        if self._db is not None:
            self._db.close()


def create_schema(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS entities ("
            "entity_id INTEGER PRIMARY KEY, tick INTEGER, x REAL, y REAL)"
        )
    db.close()


class Watchdog:
    """A task that wakes every 10 ms and notes how late it woke."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            self.worst = max(self.worst, loop.time() - before - 0.01)

    async def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.worst


# --8<-- [start:loop]
async def play(
    wb: wbactor.WriteBehind[EntityState], entities: int, seconds: float
) -> tuple[dict[int, EntityState], float]:
    """Run the game; return the last states, and how long apush waited."""
    rng = random.Random(11)
    loop = asyncio.get_running_loop()
    latest = {
        i: EntityState(i, 0, rng.uniform(0, 100), rng.uniform(0, 100))
        for i in range(entities)
    }
    ticks = int(seconds * TICK_HZ)
    waited = 0.0
    start = loop.time()
    for tick in range(1, ticks + 1):
        for entity_id, state in latest.items():
            moved = EntityState(
                entity_id,
                tick,
                state.x + rng.uniform(-1, 1),
                state.y + rng.uniform(-1, 1),
            )
            latest[entity_id] = moved
            before = loop.time()
            await wb.apush(moved, timeout=5.0)  # waits, on the loop, when full
            waited += loop.time() - before
        if tick % CHECKPOINT_TICKS == 0:
            await wb.aflush(timeout=5.0)  # every state so far is in the store
            print(f"tick {tick}: checkpoint, {wb.stats().flushed} states stored")
        # Sleep until the next tick is due, not a fixed period.
        await asyncio.sleep(max(0.0, start + tick / TICK_HZ - loop.time()))
    return latest, waited


# --8<-- [end:loop]


async def game(path: Path, entities: int, seconds: float) -> bool:
    config: wbactor.Config[EntityState] = wbactor.Config(
        capacity=2 * entities,  # two ticks' worth: apush waits when it is full
        flusher_factory=lambda: AsyncSQLiteStore(path),
        batch_size=entities,
        flush_interval=0.05,
        policy=wbactor.Policy.BLOCK,
        flush_timeout=5.0,
        name="entities",
    )
    wb = wbactor.start(config)
    watchdog = Watchdog()
    watchdog.start()
    try:
        latest, waited = await play(wb, entities, seconds)
    finally:
        stats = await wb.astop(timeout=10.0)  # drains, off the loop
    worst = await watchdog.stop()
    print(
        f"pushed {stats.pushed}, flushed {stats.flushed} in {stats.batches} "
        f"batches, dropped {stats.dropped_total}; apush waited for room "
        f"{waited * 1000:.0f} ms in all, while the loop ran at most "
        f"{worst * 1000:.0f} ms late"
    )
    with sqlite3.connect(path) as db:
        stored = {
            row[0]: EntityState(*row)
            for row in db.execute("SELECT entity_id, tick, x, y FROM entities")
        }
    db.close()
    missing = [i for i, state in latest.items() if stored.get(i) != state]
    if missing or stats.flushed != stats.pushed:
        print(f"FAILED: {len(missing)} entities' last states are not stored")
        return False
    print(f"OK: all {entities} entities' last states are stored")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--entities", type=int, default=100)
    parser.add_argument("--db", type=Path, help="SQLite file (default: a temp file)")
    args = parser.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO)
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db if args.db is not None else Path(tmp) / "game.db"
        create_schema(path)
        ok = asyncio.run(game(path, args.entities, args.seconds))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
