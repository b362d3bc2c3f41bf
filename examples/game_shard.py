"""Game shard: player actors write their state behind, to SQLite or PostgreSQL.

A shard is a few hundred players, each a pykka actor. A driver tells every
player a `Tick` at the tick rate; the player moves, tells `Push(state)` to a
`COALESCE_BY_KEY` queue keyed by player id, and gets on with the game: it
never waits on the database. The queue keeps only each player's newest
queued state, batches, and upserts each batch in one transaction
(`SQLiteFlusher.upsert`, or `PostgresFlusher.upsert` with binary COPY),
keeping the highest `seq` per player. At the end the players stop, the queue drains,
and the store is read back: it must hold every player's latest state.

    python examples/game_shard.py                    # 300 players, 8 s, SQLite
    python examples/game_shard.py --faults 0.3       # a flaky store: retries
    python examples/game_shard.py --poison 0.01      # bad rows: rejected alone
    python examples/game_shard.py --dsn postgresql://localhost/game --shards 4
    python examples/game_shard.py --cpu-load                   # a starved flusher
    python examples/game_shard.py --cpu-load --flusher-process # one of its own
    python examples/game_shard.py --db g.db --journal g.wbj --crash-after 3
    python examples/game_shard.py --db g.db --journal g.wbj    # recovers, checks

`--shards N` runs N shard processes, each with its own queue and its own
range of player ids, against one database. `--cpu-load` spins a CPU-bound
thread beside the players, and `--flusher-process` moves the flusher to a
worker process, out of their GIL; the summary shows the rows written per
second and the spinning thread's loop turns per second. `--poison P` gives a
share P of the players a state the table's CHECK refuses: each of those rows
is isolated (by SQLite row by row, by the queue's bisection on PostgreSQL)
and dropped as `rejected`, and the verdict
checks that every other player's latest state is stored all the same, and
that no poisoned one is.

`--journal PATH` journals the queue. With `--crash-after S` the shard notes
every player's state after S seconds in `PATH.expected`, plays on for
`CRASH_MARGIN` seconds and SIGKILLs itself; the next run with the same
`--journal` (and `--db`) finds that note, recovers the journal into the
store, and checks that the store holds, for every player, a state at least
as new as the one noted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import queue
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, TextIO

import pykka
import structlog

import wbactor
from wbactor.flushers import PostgresFlusher, SQLiteFlusher, TransientStoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
    from multiprocessing.queues import Queue

# The game.
ARENA = 1000.0  # players walk in an ARENA x ARENA square
STEP = 5.0  # the most a player moves along each axis in a tick
HP = 100  # every player's hit points (nobody fights here)
POISONED_HP = -1  # --poison: a corrupt state, which the table's CHECK refuses

# The queue. Coalescing holds at most one state per player, so a capacity
# above the player count is never reached: nothing is dropped for room.
BATCH_SIZE = 1000  # above the player count: the interval cuts the batches
FLUSH_INTERVAL = 0.2  # seconds: a state reaches the store this soon
FLUSH_TIMEOUT = 2.0  # seconds before a hung write is abandoned and retried
STOP_TIMEOUT = 30.0  # seconds the final drain may take

# --faults: of the flush calls that fail, this share hangs instead of raising.
HANG_SHARE = 0.1
HANG_SECONDS = 2.5  # past FLUSH_TIMEOUT

REPORT_EVERY = 0.5  # seconds between progress reports from a shard

# --journal: what a crash may lose is what was pushed in the last interval.
JOURNAL_INTERVAL = 0.05
# --crash-after: the states noted are this many seconds old at the crash,
# well past JOURNAL_INTERVAL, so the journal must hold them (or newer ones).
CRASH_MARGIN = 0.5
# Logged for each bad row (--poison), and for each flush call that failed
# while the queue isolated it: the first of each is shown.
PER_BAD_ROW = frozenset({"items_rejected", "store_error"})
ERASE_LINE = "\r\x1b[K"

# --8<-- [start:sql]
# The store: a table, and the columns of a PlayerState, in order. The flushers
# compose the upsert from these names, quoting each one. The table refuses a
# negative hp: a poisoned player's state (--poison) never gets in.
TABLE = "game_shard_players"
COLUMNS = ("player_id", "seq", "x", "y", "hp")
SQLITE_SCHEMA = (
    "CREATE TABLE game_shard_players (player_id INTEGER PRIMARY KEY, "
    "seq INTEGER NOT NULL, x REAL NOT NULL, y REAL NOT NULL, "
    "hp INTEGER NOT NULL CHECK (hp >= 0))"
)
POSTGRES_SCHEMA = (
    "CREATE TABLE game_shard_players (player_id BIGINT PRIMARY KEY, "
    "seq BIGINT NOT NULL, x DOUBLE PRECISION NOT NULL, y DOUBLE PRECISION NOT NULL, "
    "hp INTEGER NOT NULL CHECK (hp >= 0))"
)
SELECT = "SELECT player_id, seq, x, y, hp FROM game_shard_players"
DROP = "DROP TABLE IF EXISTS game_shard_players"
# --8<-- [end:sql]


# ------------------------------------------------------------------ players


# --8<-- [start:state]
class PlayerState(NamedTuple):
    """A player's state after a tick: one row of the players table."""

    player_id: int
    seq: int  # ticks played: a newer state has a higher seq
    x: float
    y: float
    hp: int = HP


def player_key(state: PlayerState) -> int:
    """The coalescing key: a newer state of a player replaces the queued one."""
    return state.player_id


def refused(state: PlayerState) -> bool:
    """Whether the table's CHECK refuses `state`: a poisoned player's."""
    return state.hp < 0


# --8<-- [end:state]


class Tick:
    """Driver to player: play one tick."""


class GetState:
    """Driver to player, asked: reply with your latest state."""


TICK = Tick()
GET_STATE = GetState()


def _clamp(value: float) -> float:
    return min(max(value, 0.0), ARENA)


# --8<-- [start:player]
class Player(pykka.ThreadingActor):
    """One player: moves on every tick and pushes its new state, fire-and-forget."""

    def __init__(
        self, player_id: int, writes: pykka.ActorRef[Any], *, poisoned: bool = False
    ) -> None:
        super().__init__()
        self._rng = random.Random(player_id)
        self._writes = writes
        x, y = self._rng.uniform(0, ARENA), self._rng.uniform(0, ARENA)
        hp = POISONED_HP if poisoned else HP  # --poison: every state refused
        self.state = PlayerState(player_id, 0, x, y, hp)

    def on_start(self) -> None:
        self._writes.tell(wbactor.Push(self.state))  # spawning is a state too

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Tick):
            player_id, seq, x, y, hp = self.state
            step = self._rng.uniform
            self.state = PlayerState(
                player_id,
                seq + 1,
                _clamp(x + step(-STEP, STEP)),
                _clamp(y + step(-STEP, STEP)),
                hp,
            )
            self._writes.tell(wbactor.Push(self.state))  # returns at once
            return None
        if isinstance(message, GetState):
            return self.state
        return super().on_receive(message)


# --8<-- [end:player]


# ------------------------------------------------------------------- stores


class StoreFlusher(Protocol):
    """What `SQLiteFlusher` and `PostgresFlusher` offer."""

    def flush(self, batch: list[PlayerState], /) -> None: ...
    def close(self) -> None: ...


# --8<-- [start:flushers]
# A PlayerState is a row already (a NamedTuple in COLUMNS order), so no
# values= function is needed. version="seq" adds the guard WHERE
# excluded.seq > game_shard_players.seq: a row only ever moves forward.
# isolate_rows=True: when the CHECK refuses a batch (--poison), SQLite tells
# the bad rows from the good in one more call, one statement per row, where
# the queue's bisection would need a dozen calls per bad row, each of which a
# flaky store (--faults) may fail or hang.
def sqlite_flusher(path: Path) -> StoreFlusher:
    """Upsert into the SQLite file (WAL and synchronous=NORMAL by default)."""
    return SQLiteFlusher.upsert(
        path, TABLE, COLUMNS, "player_id", version="seq", isolate_rows=True
    )


def postgres_flusher(dsn: str) -> StoreFlusher:
    """Upsert into PostgreSQL: binary COPY, then one INSERT ... ON CONFLICT."""
    return PostgresFlusher.upsert(dsn, TABLE, COLUMNS, "player_id", version="seq")


# --8<-- [end:flushers]


@dataclass(frozen=True)
class SQLiteStore:
    """An SQLite file.

    Several shard processes may write it: WAL mode (the flusher's default)
    lets readers run beside the one writer, and a writer waits up to 5 s for
    the lock (a write still locked out then fails as a transient error, and
    is retried).
    """

    path: Path
    name: ClassVar[str] = "sqlite"

    def reset(self) -> None:
        try:
            with contextlib.closing(sqlite3.connect(self.path)) as db:
                db.execute("PRAGMA journal_mode = WAL")  # kept in the file
                db.execute(DROP)
                db.execute(SQLITE_SCHEMA)
        except sqlite3.Error as error:
            msg = f"cannot use the SQLite file {self.path}: {error}"
            raise SystemExit(msg) from None

    def flusher(self) -> StoreFlusher:
        return sqlite_flusher(self.path)

    def read(self) -> dict[int, PlayerState]:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            return {r[0]: PlayerState(*r) for r in db.execute(SELECT)}


@dataclass(frozen=True)
class PostgresStore:
    """A PostgreSQL database (`pip install 'wbactor[postgres]'`)."""

    dsn: str
    name: ClassVar[str] = "postgresql"

    def reset(self) -> None:
        import psycopg  # noqa: PLC0415 - an extra, needed only with --dsn

        try:
            with psycopg.connect(self.dsn, connect_timeout=5) as db:  # commits at exit
                db.execute(DROP)
                db.execute(POSTGRES_SCHEMA)
        except psycopg.Error as error:  # a wrong --dsn fails here, at once
            msg = f"cannot use the PostgreSQL database: {error}"
            raise SystemExit(msg) from None

    def flusher(self) -> StoreFlusher:
        return postgres_flusher(self.dsn)

    def read(self) -> dict[int, PlayerState]:
        import psycopg  # noqa: PLC0415 - an extra, needed only with --dsn

        with psycopg.connect(self.dsn, connect_timeout=5) as db:
            return {r[0]: PlayerState(*r) for r in db.execute(SELECT)}


Store = SQLiteStore | PostgresStore
"""Where the players are written, and read back from at the end."""


# --8<-- [start:faults]
class FaultyFlusher:
    """A flaky store: fails a fraction `rate` of flush calls.

    Most faults raise `TransientStoreError` before writing. One in ten hangs
    past `FLUSH_TIMEOUT` instead, then writes late, after the queue has
    retried the batch on a fresh flusher: the upsert keeps the higher `seq`,
    so the late write changes nothing.
    """

    def __init__(self, store: StoreFlusher, rate: float, name: str) -> None:
        self._store = store
        self._rate = rate
        self._name = name  # the store's, for the error
        self._rng = random.Random()

    def flush(self, batch: list[PlayerState]) -> None:
        roll = self._rng.random()
        if roll < self._rate * HANG_SHARE:
            time.sleep(HANG_SECONDS)  # a stalled store, not a wait on a thread
        elif roll < self._rate:
            msg = "injected fault (--faults)"
            raise TransientStoreError(msg, store=self._name)
        self._store.flush(batch)

    def close(self) -> None:
        self._store.close()


# --8<-- [end:faults]


# --8<-- [start:poison]
def poisoned_players(player_ids: range, share: float) -> frozenset[int]:
    """--poison: the players whose every state the table refuses.

    A share of the shard's players (at least one if the share is above 0),
    picked at random, and the same ones at every run.
    """
    count = math.ceil(share * len(player_ids))
    return frozenset(random.Random(player_ids.start).sample(player_ids, count))


# --8<-- [end:poison]


# ------------------------------------------------------------------- shards


class Progress(NamedTuple):
    """A shard's counters, from `wb.stats()`, in a form that pickles."""

    pushed: int = 0
    flushed: int = 0
    batches: int = 0
    coalesced: int = 0
    dropped: int = 0
    rejected: int = 0  # of the dropped: refused by the store (--poison)
    retries: int = 0
    restarts: int = 0
    depth: int = 0
    in_flight: int = 0

    @classmethod
    def of(cls, stats: wbactor.Stats) -> Progress:
        return cls(
            pushed=stats.pushed,
            flushed=stats.flushed,
            batches=stats.batches,
            coalesced=stats.coalesced,
            dropped=stats.dropped_total,
            rejected=stats.dropped.get(wbactor.DropReason.REJECTED, 0),
            retries=stats.retries,
            restarts=stats.restarts,
            depth=stats.depth,
            in_flight=stats.in_flight,
        )

    @classmethod
    def total(cls, each: Iterable[Progress]) -> Progress:
        return cls(*map(sum, zip(*each, strict=True)))


@dataclass(frozen=True)
class Shard:
    """One shard's share of the game: its players, and how to play."""

    index: int
    player_ids: range
    seconds: float
    tick_hz: float
    faults: float
    store: Store
    flusher_process: bool = False  # --flusher-process
    cpu_load: bool = False  # --cpu-load
    journal: Path | None = None  # --journal
    crash_after: float | None = None  # --crash-after
    poison: float = 0.0  # --poison: the share of players the table refuses

    def make_flusher(self) -> StoreFlusher:
        if self.flusher_process:  # called in the worker, whose logging is its own
            configure_logging(erase_line if sys.stdout.isatty() else None)
        flusher = self.store.flusher()
        if not self.faults:
            return flusher
        return FaultyFlusher(flusher, self.faults, self.store.name)


# --8<-- [start:play]
class ShardResult(NamedTuple):
    """What a shard played: its players' latest states and its final counts."""

    shard: int
    latest: list[PlayerState]
    final: Progress
    played: float  # seconds: less than asked after a Ctrl-C
    cpu_load: float | None = None  # --cpu-load: the spinning thread's turns/s


def play(shard: Shard, report: Callable[[Progress], object]) -> ShardResult:
    """Play one shard; return every player's latest state and the final counts."""
    config: wbactor.Config[PlayerState] = wbactor.Config(
        capacity=2 * len(shard.player_ids),
        flusher_factory=shard.make_flusher,  # a fresh connection at each restart
        batch_size=BATCH_SIZE,
        flush_interval=FLUSH_INTERVAL,
        policy=wbactor.Policy.COALESCE_BY_KEY,
        key_func=player_key,
        max_retries=-1,  # keep retrying a failed batch: lose nothing
        flush_timeout=FLUSH_TIMEOUT,
        flusher_process=shard.flusher_process,  # make_flusher then runs there
        journal=shard.journal,
        journal_interval=JOURNAL_INTERVAL,
    )
    load = CpuLoad() if shard.cpu_load else None
    wb = wbactor.start(config)
    poisoned = poisoned_players(shard.player_ids, shard.poison)
    players = [
        Player.start(i, wb.ref, poisoned=i in poisoned) for i in shard.player_ids
    ]
    try:
        if shard.crash_after is not None:
            crash(players, shard, lambda: report(Progress.of(wb.stats())))
        played = drive(players, shard, lambda: report(Progress.of(wb.stats())))
        # Asked after the last tick, so each answer is the last state pushed.
        answers = [player.ask(GET_STATE, block=False) for player in players]
        latest: list[PlayerState] = [answer.get(timeout=30) for answer in answers]
    finally:
        for stopped in [player.stop(block=False) for player in players]:
            stopped.get(timeout=30)
        final = Progress.of(wb.stop(timeout=STOP_TIMEOUT))
        turns = load.stop() if load else None
    return ShardResult(shard.index, latest, final, played, turns)


# --8<-- [end:play]


# --8<-- [start:crash]
def crash(
    players: Sequence[pykka.ActorRef[Player]],
    shard: Shard,
    report: Callable[[], object],
) -> None:
    """Play, note every player's state, play on a little, and SIGKILL this process."""
    assert shard.journal is not None  # noqa: S101 - parse_args checks
    assert shard.crash_after is not None  # noqa: S101
    drive(players, dataclasses.replace(shard, seconds=shard.crash_after), report)
    # Asked after the last tick: each answer is the last state pushed so far.
    answers = [player.ask(GET_STATE, block=False) for player in players]
    noted = [answer.get(timeout=30) for answer in answers]
    write_expected(shard.journal, noted)
    # The players keep pushing newer states: the kill comes mid-game.
    drive(players, dataclasses.replace(shard, seconds=CRASH_MARGIN), report)
    print(
        f"crashing: SIGKILL after {shard.crash_after + CRASH_MARGIN:.1f} s", flush=True
    )
    os.kill(os.getpid(), signal.SIGKILL)


def expected_path(journal: Path) -> Path:
    """The note of the states a crash may not lose, beside the journal."""
    return journal.with_name(journal.name + ".expected")


def write_expected(journal: Path, states: list[PlayerState]) -> None:
    """Write the note durably (written aside, synced, then renamed)."""
    path = expected_path(journal)
    aside = path.with_name(path.name + ".tmp")
    with aside.open("w") as out:
        json.dump([list(state) for state in states], out)
        out.flush()
        os.fsync(out.fileno())
    aside.replace(path)


def recover(store: Store, journal: Path) -> int:
    """Start on the journal, let it write what it recovered, and check the store.

    Every player noted before the crash must be stored with a state at least
    as new (a `seq` at least as high) as the one noted: the journal held it,
    or a newer one, or the store had it already. A poisoned player
    (`--poison`) must have no row.
    """
    noted = [
        PlayerState(*row) for row in json.loads(expected_path(journal).read_text())
    ]
    config: wbactor.Config[PlayerState] = wbactor.Config(
        capacity=2 * len(noted) + 1,
        flusher=store.flusher(),
        batch_size=BATCH_SIZE,
        policy=wbactor.Policy.COALESCE_BY_KEY,
        key_func=player_key,
        max_retries=-1,
        journal=journal,
        journal_interval=JOURNAL_INTERVAL,
    )
    final = wbactor.start(config).stop(timeout=STOP_TIMEOUT)
    print(f"recovered {final.recovered} states from {journal}, {final.flushed} written")
    stored = store.read()
    behind = [
        s.player_id
        for s in noted
        if not refused(s)
        and (s.player_id not in stored or stored[s.player_id].seq < s.seq)
    ]
    # --poison: a poisoned player's states were refused, recovered or not.
    behind += [s.player_id for s in noted if refused(s) and s.player_id in stored]
    if behind:
        print(
            f"FAILED: {len(behind)} of {len(noted)} players are stored older than "
            f"noted before the crash: {_ids(behind)}"
        )
        return 1
    print(f"OK: all {len(noted)} players are stored at least as new as noted")
    expected_path(journal).unlink()
    return 0


# --8<-- [end:crash]


# --8<-- [start:drive]
def drive(
    players: Sequence[pykka.ActorRef[Player]],
    shard: Shard,
    report: Callable[[], object],
) -> float:
    """Tell every player a `Tick` at the tick rate; return the seconds played."""
    period = 1.0 / shard.tick_hz
    now = start = time.monotonic()
    end, next_tick, next_report = now + shard.seconds, now, now
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: stop, then check
        while now < end:
            if now >= next_tick:
                for player in players:
                    player.tell(TICK)
                next_tick = max(next_tick + period, now)  # late: skip, don't burst
            if now >= next_report:
                report()
                next_report += REPORT_EVERY
            time.sleep(max(0.0, min(next_tick, next_report, end) - time.monotonic()))
            now = time.monotonic()
    return now - start


# --8<-- [end:drive]


class CpuLoad:
    """--cpu-load: a thread that runs pure Python without a pause.

    As a physics step or a path finder would: it lets go of the GIL only
    when the interpreter makes it, every switch interval (5 ms).
    """

    def __init__(self) -> None:
        self._turns = 0
        self._stopping = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._spin, name="cpu-load", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stopping.is_set():
            for _ in range(10_000):
                self._turns += 1

    def stop(self) -> float:
        """Stop spinning; return the loop turns per second it made."""
        self._stopping.set()
        self._thread.join()
        return self._turns / (time.monotonic() - self._started)


class ShardProgress(NamedTuple):
    """A shard process's counters, sent to the parent twice a second."""

    shard: int
    progress: Progress


# --8<-- [start:shard_process]
def shard_process(shard: Shard, outbox: Queue[ShardProgress | ShardResult]) -> None:
    """Play one shard in a process of its own; send the outcome to the parent."""
    configure_logging(erase_line if sys.stdout.isatty() else None, shard=shard.index)
    result = play(
        shard, lambda progress: outbox.put(ShardProgress(shard.index, progress))
    )
    outbox.put(result)


# --8<-- [end:shard_process]


def play_shards(
    shards: Sequence[Shard], status: StatusLine
) -> tuple[list[ShardResult], list[str]]:
    """Play each shard in its own process; return their results and failures."""
    context = multiprocessing.get_context("spawn")
    outbox: Queue[ShardProgress | ShardResult] = context.Queue()
    processes = [
        context.Process(target=shard_process, args=(s, outbox), name=f"shard-{s.index}")
        for s in shards
    ]
    for process in processes:
        process.start()
    progress: dict[int, Progress] = {}
    done: dict[int, ShardResult] = {}
    crashed: dict[int, int] = {}
    while len(done) + len(crashed) < len(shards):
        try:
            message = outbox.get(timeout=REPORT_EVERY)
        except queue.Empty:
            for shard, process in zip(shards, processes, strict=True):
                code = process.exitcode
                if code not in (None, 0) and shard.index not in done:
                    crashed[shard.index] = code  # died without reporting
            continue
        except KeyboardInterrupt:
            continue  # the shards got it too: they stop playing and report
        if isinstance(message, ShardResult):
            done[message.shard] = message
        else:
            progress[message.shard] = message.progress
            status.update(Progress.total(progress.values()))
    for process in processes:
        process.join()
    failures = [
        f"shard {i} exited with code {code} before reporting: what it had "
        "queued is lost, and its players are not checked"
        for i, code in crashed.items()
    ]
    return [done[i] for i in sorted(done)], failures


# ------------------------------------------------------------------ verdict


@dataclass(frozen=True)
class Verdict:
    """The store, checked against every player's latest state, and the counts."""

    players: int  # players whose latest state must be stored
    missing: tuple[int, ...]  # no row for these player ids
    stale: tuple[int, ...]  # a row, but not the player's latest state
    poisoned: int = 0  # --poison: players whose states must not be stored
    written: tuple[int, ...] = ()  # poisoned players with a row all the same
    rejected: int = 0  # states the store refused
    miscounts: tuple[str, ...] = ()  # what the queues' counts got wrong

    @property
    def ok(self) -> bool:
        return not (self.missing or self.stale or self.written or self.miscounts)

    def __str__(self) -> str:
        if self.ok:
            text = f"OK: all {self.players} players' latest states are stored"
            if self.poisoned:
                text += (
                    f", and none of the {self.poisoned} poisoned players' "
                    f"({self.rejected} states rejected)"
                )
            return text
        problems = []
        if self.missing or self.stale:
            bad = len(self.missing) + len(self.stale)
            problems.append(
                f"{bad} of {self.players} players' latest states are not "
                f"stored: {len(self.missing)} missing {_ids(self.missing)}, "
                f"{len(self.stale)} stale {_ids(self.stale)}"
            )
        if self.written:
            problems.append(
                f"{len(self.written)} of {self.poisoned} poisoned players have "
                f"a row {_ids(self.written)}"
            )
        return "FAILED: " + "; ".join([*problems, *self.miscounts])


def _ids(ids: Sequence[int], shown: int = 5) -> str:
    more = ", ..." if len(ids) > shown else ""
    return f"[{', '.join(map(str, ids[:shown]))}{more}]"


# --8<-- [start:verify]
def verify(
    latest: Iterable[PlayerState],
    stored: Mapping[int, PlayerState],
    counts: Progress | None = None,
) -> Verdict:
    """Check that `stored` holds each of the `latest` states, exactly.

    A poisoned player's state is checked to be absent instead. With `counts`,
    the queues' final ones, check that they add up too.
    """
    players, missing, stale = 0, [], []
    poisoned, written = 0, []
    made = poisoned_made = 0  # states pushed: its spawn, then one per tick
    for state in latest:
        made += state.seq + 1
        if refused(state):
            poisoned += 1
            poisoned_made += state.seq + 1
            if state.player_id in stored:
                written.append(state.player_id)
            continue
        players += 1
        found = stored.get(state.player_id)
        if found is None:
            missing.append(state.player_id)
        elif found != state:
            stale.append(state.player_id)
    wrong = [] if counts is None else miscounts(counts, made, poisoned, poisoned_made)
    return Verdict(
        players,
        tuple(missing),
        tuple(stale),
        poisoned=poisoned,
        written=tuple(written),
        rejected=0 if counts is None else counts.rejected,
        miscounts=tuple(wrong),
    )


def miscounts(c: Progress, made: int, poisoned: int, poisoned_made: int) -> list[str]:
    """What is wrong with the final counts `c`, of `made` states pushed.

    Each poisoned player's latest state was rejected (nothing coalesced it),
    and nothing but poisoned states was: `poisoned` <= rejected <=
    `poisoned_made`. Every other drop is a loss.
    """
    wrong = []
    placed = c.flushed + c.coalesced + c.dropped + c.depth + c.in_flight
    if c.pushed != placed:
        wrong.append(f"{c.pushed} states pushed, but {placed} accounted for")
    if c.pushed != made:
        wrong.append(f"the queues counted {c.pushed} pushes, the players made {made}")
    if c.dropped != c.rejected:
        wrong.append(f"dropped, not rejected: {c.dropped - c.rejected} states")
    if not poisoned <= c.rejected <= poisoned_made:
        wrong.append(
            f"rejected {c.rejected} states, not between {poisoned} and "
            f"{poisoned_made} (the poisoned players' latest ones, and all of them)"
        )
    return wrong


# --8<-- [end:verify]


# ------------------------------------------------------------------- output


def erase_line() -> None:
    """Erase the terminal's current line (the status line)."""
    sys.stdout.write(ERASE_LINE)


class StatusLine:
    """Live counters: redrawn in place on a terminal, else a line a second."""

    def __init__(
        self, out: TextIO, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._out = out
        self._clock = clock
        self._tty = out.isatty()
        self._every = 0.5 if self._tty else 1.0
        self._lock = threading.Lock()  # log lines come from the queue's threads
        self._drawn = False
        self._shown_at: float | None = None  # the first update sets a baseline
        self._pushed = 0

    def update(self, p: Progress) -> None:
        """Show `p`, unless the last line is too recent."""
        now = self._clock()
        if self._shown_at is None:
            self._shown_at, self._pushed = now, p.pushed
            return
        elapsed = now - self._shown_at
        if elapsed < self._every:
            return
        rate = (p.pushed - self._pushed) / elapsed
        self._shown_at, self._pushed = now, p.pushed
        text = (
            f"pushes/s {rate:6.0f} | depth {p.depth:5} | coalesced {p.coalesced:7} | "
            f"flushed {p.flushed:6} | drops {p.dropped}{_of_which(p)} | "
            f"retries {p.retries} | restarts {p.restarts}"
        )
        with self._lock:
            if self._tty:
                self._out.write(ERASE_LINE + text)
                self._drawn = True
            else:
                self._out.write(text + "\n")
            self._out.flush()

    def clear(self) -> None:
        """Erase the line drawn in place, so a log line can take its place."""
        with self._lock:
            if self._drawn:
                self._out.write(ERASE_LINE)
                self._drawn = False


def configure_logging(
    clear: Callable[[], None] | None, shard: int | None = None
) -> None:
    """Log readable lines at INFO; clear the status line before each.

    Of the lines --poison brings, one per bad row, only the first is shown.
    """
    shown: set[str] = set()

    def make_room(
        _: object, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        name = event["event"]
        if name in PER_BAD_ROW and event.get("permanent", True):  # not transient
            if name in shown:
                raise structlog.DropEvent  # the status line counts them
            shown.add(name)
            event["more"] = "not shown"
        if clear is not None:
            clear()
        if shard is not None:
            event["shard"] = shard
        return event

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            make_room,
            structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


def _of_which(p: Progress) -> str:
    return f" (rejected {p.rejected})" if p.rejected else ""


def summary(progress: Progress, seconds: float, cpu_load: float | None = None) -> str:
    p = progress
    saved = p.coalesced / p.pushed if p.pushed else 0.0
    load = (
        "" if cpu_load is None else f"; CPU-bound thread {cpu_load / 1e6:.1f}M turns/s"
    )
    return (
        f"pushed {p.pushed} states ({p.pushed / seconds:.0f}/s); "
        f"wrote {p.flushed} rows ({p.flushed / seconds:.0f}/s) in {p.batches} batches; "
        f"coalesced {p.coalesced} ({saved:.0%}); dropped {p.dropped}{_of_which(p)}; "
        f"retries {p.retries}; restarts {p.restarts}{load}"
    )


# --------------------------------------------------------------------- main


def run(store: Store, shards: Sequence[Shard]) -> int:
    """Play `shards` against `store`, then check it; return the exit code."""
    journal = shards[0].journal
    if (
        journal is not None
        and shards[0].crash_after is None
        and expected_path(journal).exists()  # the run after a --crash-after
    ):
        configure_logging(None)
        return recover(store, journal)
    store.reset()
    status = StatusLine(sys.stdout)
    configure_logging(status.clear)
    failures: list[str] = []
    if len(shards) == 1:
        results = [play(shards[0], status.update)]
    else:
        results, failures = play_shards(shards, status)
    status.clear()
    for result in results:
        label = f"shard {result.shard}: " if len(shards) > 1 else ""
        print(label + summary(result.final, result.played, result.cpu_load))
    latest = [state for result in results for state in result.latest]
    counts = Progress.total(result.final for result in results)
    verdict = verify(latest, store.read(), counts)
    print(verdict)
    for failure in failures:  # last, so the last line says FAILED
        print(f"FAILED: {failure}")
    return 0 if verdict.ok and not failures else 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        msg = f"must be > 0, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        msg = f"must be > 0, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        msg = f"must be in [0, 1), got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--seconds", type=_positive, default=8.0, help="how long to play"
    )
    parser.add_argument(
        "--players", type=_positive_int, default=300, help="players per shard"
    )
    parser.add_argument(
        "--tick-hz", type=_positive, default=20.0, help="ticks per second"
    )
    parser.add_argument(
        "--faults", type=_fraction, default=0.0, help="share of flush calls that fail"
    )
    parser.add_argument(
        "--poison",
        type=_fraction,
        default=0.0,
        help="share of players whose states the table refuses",
    )
    parser.add_argument(
        "--shards",
        type=_positive_int,
        default=1,
        help="shard processes, one queue each",
    )
    parser.add_argument(
        "--flusher-process",
        action="store_true",
        help="run each shard's flusher in a worker process of its own",
    )
    parser.add_argument(
        "--cpu-load",
        action="store_true",
        help="spin a CPU-bound thread beside each shard's players",
    )
    parser.add_argument(
        "--journal",
        type=Path,
        help="journal the queue to this file (one per shard: PATH-<shard> past 0)",
    )
    parser.add_argument(
        "--crash-after",
        type=_positive,
        help="SIGKILL the shard after this many seconds; rerun with --journal",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", type=Path, help="SQLite file (default: in a temp dir)")
    where.add_argument("--dsn", help="PostgreSQL DSN, e.g. postgresql://localhost/game")
    args = parser.parse_args(argv)
    if args.dsn and importlib.util.find_spec("psycopg") is None:
        parser.error("--dsn needs psycopg: pip install 'wbactor[postgres]'")
    if args.crash_after is not None:
        if args.journal is None or (args.db is None and args.dsn is None):
            parser.error("--crash-after needs --journal and --db (or --dsn)")
        if args.shards != 1:
            parser.error("--crash-after plays one shard")
    return args


def shard_journal(journal: Path | None, index: int) -> Path | None:
    """Shard `index`'s journal: two live queues may not share one."""
    if journal is None or index == 0:
        return journal
    return journal.with_name(f"{journal.name}-{index}")


# --8<-- [start:main]
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        store = (
            PostgresStore(args.dsn)
            if args.dsn
            else SQLiteStore(args.db or Path(tmp) / "game_shard.db")
        )
        shards = [
            Shard(
                index=i,
                player_ids=range(i * args.players, (i + 1) * args.players),
                seconds=args.seconds,
                tick_hz=args.tick_hz,
                faults=args.faults,
                store=store,
                flusher_process=args.flusher_process,
                cpu_load=args.cpu_load,
                journal=shard_journal(args.journal, i),
                crash_after=args.crash_after,
                poison=args.poison,
            )
            for i in range(args.shards)
        ]
        return run(store, shards)


# --8<-- [end:main]


if __name__ == "__main__":
    sys.exit(main())
