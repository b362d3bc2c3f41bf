"""Quickstart: persist player positions to SQLite through a write-behind queue.

Two hundred players move for fifty ticks. Every move is told to the queue with
`tell(Push(...))` and the producer moves on at once; the queue coalesces moves
by player, batches them and upserts each batch in one SQLite transaction.
At the end the store is read back: every player's latest position must be
there.

    python examples/quickstart.py [--db PATH]
"""

from __future__ import annotations

import argparse
import logging
import random
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

import wbactor

PLAYERS = 200
TICKS = 50
TICK_SECONDS = 0.01


# --8<-- [start:item]
@dataclass(frozen=True, slots=True)
class Position:
    """Where a player stands after a tick."""

    player_id: int
    tick: int
    x: float
    y: float


# --8<-- [end:item]


# --8<-- [start:flusher]
class PositionStore:
    """Upserts each batch of positions in one transaction.

    It connects lazily, on the flusher actor's thread, and wbactor calls
    `close()` when it retires the flusher.
    """

    UPSERT = (
        "INSERT INTO positions (player_id, tick, x, y) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (player_id) DO UPDATE SET tick = excluded.tick, "
        "x = excluded.x, y = excluded.y WHERE excluded.tick > positions.tick"
    )

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None

    def flush(self, batch: list[Position]) -> None:
        if self._db is None:
            self._db = sqlite3.connect(self._path)
        with self._db:  # one transaction: commit, or roll back and raise
            self._db.executemany(
                self.UPSERT, [(p.player_id, p.tick, p.x, p.y) for p in batch]
            )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


# --8<-- [end:flusher]


def create_schema(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS positions ("
            "player_id INTEGER PRIMARY KEY, tick INTEGER, x REAL, y REAL)"
        )
    db.close()


def run(path: Path) -> bool:
    create_schema(path)
    # --8<-- [start:queue]
    config: wbactor.Config[Position] = wbactor.Config(
        capacity=10_000,
        flusher_factory=lambda: PositionStore(path),
        batch_size=500,  # more than there are players: ticks cut the batches
        flush_interval=0.05,
        policy=wbactor.Policy.COALESCE_BY_KEY,
        key_func=lambda p: p.player_id,
    )
    rng = random.Random(7)
    latest: dict[int, Position] = {}
    with wbactor.start(config) as wb:
        for tick in range(1, TICKS + 1):
            for player_id in range(PLAYERS):
                x, y = rng.uniform(0, 100), rng.uniform(0, 100)
                latest[player_id] = pos = Position(player_id, tick, x, y)
                wb.ref.tell(wbactor.Push(pos))
            time.sleep(TICK_SECONDS)  # the game's tick rate, not a wait on the queue
    # --8<-- [end:queue]
    # --8<-- [start:check]
    stats = wb.stop()  # already stopped by the with block: returns the same Stats
    print(
        f"pushed {stats.pushed}, flushed {stats.flushed} in {stats.batches} "
        f"batches, coalesced {stats.coalesced}, dropped {stats.dropped_total}"
    )

    with sqlite3.connect(path) as db:
        rows = {
            r[0]: Position(*r)
            for r in db.execute("SELECT player_id, tick, x, y FROM positions")
        }
    db.close()
    missing = [pid for pid, pos in latest.items() if rows.get(pid) != pos]
    if missing:
        print(f"FAIL: {len(missing)} players' latest positions are not stored")
        return False
    print(f"OK: all {PLAYERS} players' latest positions are stored")
    return True
    # --8<-- [end:check]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="SQLite file (default: a temp file)")
    args = parser.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO)
    )
    if args.db is not None:
        return 0 if run(args.db) else 1
    with tempfile.TemporaryDirectory() as tmp:
        return 0 if run(Path(tmp) / "quickstart.db") else 1


if __name__ == "__main__":
    sys.exit(main())
