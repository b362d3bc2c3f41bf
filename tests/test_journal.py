"""The journal: what a crash, a stop and a corrupt file leave, and what comes back."""

from __future__ import annotations

import json
import math
import os
import pathlib
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import pykka
import pytest
from structlog.testing import capture_logs
from support import WAIT, first

import wbactor
from wbactor._journalfile import peek
from wbactor.testing import ManualClock, RecordingFlusher

if TYPE_CHECKING:
    from collections.abc import Iterator

CHILD = pathlib.Path(__file__).with_name("journal_child.py")


def conserved(stats: wbactor.Stats) -> bool:
    return stats.recovered + stats.pushed == (
        stats.flushed
        + stats.coalesced
        + sum(stats.dropped.values())
        + stats.depth
        + stats.in_flight
        + stats.journaled
    )


def rows(path: pathlib.Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT count(*) FROM wbactor_rows").fetchone()[0])
    finally:
        db.close()


def commit(wb: wbactor.WriteBehind[Any]) -> None:
    """Commit the journal now (what the writer does every journal_interval)."""
    journal = wb._run.journal
    assert journal is not None
    assert journal.wait_synced(WAIT)


@pytest.fixture
def path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "queue.wbj"


def config(path: pathlib.Path, flusher: Any, **kw: Any) -> wbactor.Config[Any]:
    values: dict[str, Any] = {
        "capacity": 1000,
        "flusher": flusher,
        "batch_size": 10,
        "journal": path,
    }
    values.update(kw)
    return wbactor.Config(**values)


class Child:
    """A process that pushes into a journaled queue, commits, waits to be killed."""

    def __init__(self, *args: object) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own script
            [sys.executable, str(CHILD), *map(str, args)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = "-"
        while line and not line.startswith("READY "):  # the marker: no sleeping
            line = self.proc.stdout.readline()  # (log lines come first)
        assert line.startswith("READY "), "the child ended before READY"
        self.stats: dict[str, Any] = json.loads(line.removeprefix("READY "))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(WAIT) == -signal.SIGKILL
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class Gate(RecordingFlusher[Any]):
    """Blocks every flush until `release()`; `seen` has each batch as it arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[list[Any]] = []
        self._open = threading.Event()

    def flush(self, batch: list[Any]) -> None:
        with self._cond:
            self.seen.append(list(batch))
            self._cond.notify_all()
        self._open.wait()
        super().flush(batch)

    def wait_for_attempts(self, count: int) -> None:
        self._wait(lambda: len(self.seen) >= count, WAIT, count)

    def release(self) -> None:
        self._open.set()


@pytest.fixture
def gated() -> Iterator[Gate]:
    flusher = Gate()
    yield flusher
    flusher.release()


def restart(path: pathlib.Path, **kw: Any) -> tuple[list[Any], wbactor.Stats]:
    """Start on `path`, flush everything, stop; return what was flushed."""
    flusher: RecordingFlusher[Any] = RecordingFlusher()
    wb = wbactor.start(config(path, flusher, **kw))
    wb.flush(WAIT)
    final = wb.stop(WAIT)
    assert conserved(final)
    assert final.journaled == 0
    assert rows(path) == 0
    return flusher.items, final


# -- a crash ----------------------------------------------------------------


def test_sigkill_after_pushes_then_every_accepted_item_comes_back_in_order(
    path: pathlib.Path,
) -> None:
    child = Child(path, 500, "hang")
    assert child.stats["pushed"] == 500
    child.kill()
    items, final = restart(path)
    assert items == list(range(500))
    assert (final.recovered, final.pushed, final.flushed) == (500, 0, 500)


def test_sigkill_while_flushing_loses_nothing_accepted(
    path: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    written = tmp_path / "written.txt"
    child = Child(path, 2000, "write", "drop_oldest", 100_000, written)
    child.kill()
    before = [json.loads(line) for line in written.read_text().splitlines()]
    items, final = restart(path)
    # At least once: every item was written before the crash or after it,
    # each run in push order; what came back is at most what was unflushed
    # at the last commit.
    assert before == sorted(before)
    assert items == sorted(items)
    assert set(before) | set(items) == set(range(2000))
    assert final.recovered == len(items)


def test_sigkill_does_not_resurrect_items_dropped_by_the_policy(
    path: pathlib.Path,
) -> None:
    child = Child(path, 300, "hang", "drop_oldest", 20)
    stats = child.stats
    assert stats["dropped"]["drop_oldest"] > 0
    child.kill()
    items, final = restart(path)
    assert final.recovered == stats["in_flight"] + stats["depth"]
    assert items == sorted(items)
    assert items[-stats["depth"] :] == list(range(300 - stats["depth"], 300))


def test_sigkill_does_not_resurrect_coalesced_versions(path: pathlib.Path) -> None:
    child = Child(path, 200, "hang", "coalesce_by_key")
    stats = child.stats
    child.kill()
    items, final = restart(path, policy=wbactor.Policy.COALESCE_BY_KEY, key_func=first)
    assert final.recovered == stats["in_flight"] + stats["depth"]
    # Each key once, at its last version pushed: the queued version of a key
    # also in flight replaces it (coalesced) as it comes back.
    assert sorted(items) == sorted((n % 10, n) for n in range(190, 200))
    assert final.coalesced == final.recovered - 10


# -- a stop -----------------------------------------------------------------


def test_a_drained_stop_leaves_an_empty_journal(path: pathlib.Path) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    wb = wbactor.start(config(path, flusher))
    wb.ref.tell(wbactor.PushMany(range(95)))
    commit(wb)
    assert rows(path) > 0
    final = wb.stop(WAIT)
    assert (final.flushed, final.journaled, final.recovered) == (95, 0, 0)
    assert rows(path) == 0
    assert peek(str(path)) == []
    assert restart(path)[0] == []


def test_stop_with_a_timeout_leaves_the_rest_in_the_journal_for_the_next_start(
    path: pathlib.Path, gated: Gate
) -> None:
    wb = wbactor.start(config(path, gated))
    wb.ref.tell(wbactor.PushMany(range(55)))
    gated.wait_for_attempts(1)
    final = wb.stop(timeout=0.2)
    assert final.journaled == 55
    assert final.dropped == {}
    assert (final.depth, final.in_flight) == (0, 0)
    assert conserved(final)
    assert peek(str(path)) == list(range(55))
    gated.release()
    items, again = restart(path)
    # The batch in flight at the stop may have been written late: at least once.
    assert items == list(range(55))
    assert again.recovered == 55


def test_a_push_after_stop_began_is_still_refused(
    path: pathlib.Path, gated: Gate
) -> None:
    wb = wbactor.start(config(path, gated))
    wb.push(1)
    final = wb.stop(timeout=0.1)
    with pytest.raises(wbactor.QueueClosedError):
        wb.push(2)
    assert final.journaled == 1
    gated.release()
    assert restart(path)[0] == [1]


def test_recovered_items_go_first_and_flush_covers_them(path: pathlib.Path) -> None:
    with pickle_free_gate() as gate:
        wb = wbactor.start(config(path, gate))
        wb.ref.tell(wbactor.PushMany(["a", "b", "c"]))
        wb.stop(timeout=0.1)
    flusher: RecordingFlusher[str] = RecordingFlusher()
    wb = wbactor.start(config(path, flusher))
    wb.push("d")
    wb.flush(WAIT)
    assert flusher.items == ["a", "b", "c", "d"]
    stats = wb.stop(WAIT)
    assert (stats.recovered, stats.pushed, stats.flushed) == (3, 1, 4)


class pickle_free_gate:  # noqa: N801 - a context manager used like a function
    """A flusher that never completes until the block ends."""

    def __enter__(self) -> Gate:
        self.flusher = Gate()
        return self.flusher

    def __exit__(self, *exc: object) -> None:
        self.flusher.release()


# -- capacity ---------------------------------------------------------------


def leave(path: pathlib.Path, items: list[Any], **kw: Any) -> None:
    """Leave `items` in the journal at `path`, as a stop(timeout) would."""
    with pickle_free_gate() as gate:
        wb = wbactor.start(config(path, gate, batch_size=len(items) + 1, **kw))
        wb.ref.tell(wbactor.PushMany(items))
        assert wb.stop(timeout=0.05).journaled == len(items)


def test_recovered_items_exceed_capacity_and_a_push_evicts_one(
    path: pathlib.Path, clock: ManualClock
) -> None:
    leave(path, list(range(50)))
    flusher: RecordingFlusher[int] = RecordingFlusher()
    cfg = config(path, flusher, capacity=10, batch_size=100, clock=clock)
    wb = wbactor.start(cfg)
    assert wb.stats().depth == 50
    wb.push(50)
    stats = wb.stats()
    assert (stats.depth, stats.dropped) == (50, {wbactor.DropReason.DROP_OLDEST: 1})
    assert conserved(stats)
    wb.flush(WAIT)
    assert flusher.items == list(range(1, 51))
    wb.push(51)
    assert wb.stats().dropped == {wbactor.DropReason.DROP_OLDEST: 1}
    wb.stop(WAIT)


def test_recovered_items_over_capacity_refuse_new_ones_under_drop_newest(
    path: pathlib.Path, clock: ManualClock
) -> None:
    leave(path, list(range(30)))
    flusher: RecordingFlusher[int] = RecordingFlusher()
    policy = wbactor.Policy.DROP_NEWEST
    wb = wbactor.start(config(path, flusher, capacity=10, policy=policy, clock=clock))
    wb.push(99)
    assert wb.stats().dropped == {wbactor.DropReason.DROP_NEWEST: 1}
    wb.flush(WAIT)
    wb.push(100)
    wb.flush(WAIT)
    assert flusher.items == [*range(30), 100]
    assert conserved(wb.stop(WAIT))


# -- coalescing ---------------------------------------------------------------


def test_a_replacement_of_a_journaled_key_replaces_it_in_the_journal(
    path: pathlib.Path, gated: Gate
) -> None:
    cfg = config(
        path, gated, policy=wbactor.Policy.COALESCE_BY_KEY, key_func=first, batch_size=2
    )
    wb = wbactor.start(cfg)
    wb.push(("a", 1))
    wb.push(("b", 1))  # a full batch: in flight, hung
    gated.wait_for_attempts(1)
    wb.push(("a", 2))
    wb.push(("c", 1))
    commit(wb)
    assert peek(str(path)) == [("a", 1), ("b", 1), ("a", 2), ("c", 1)]
    wb.push(("a", 3))
    wb.push(("c", 2))
    commit(wb)
    assert peek(str(path)) == [("a", 1), ("b", 1), ("a", 3), ("c", 2)]
    final = wb.stop(timeout=0.1)
    assert (final.journaled, final.coalesced) == (4, 2)
    assert conserved(final)
    gated.release()
    items, again = restart(path, policy=wbactor.Policy.COALESCE_BY_KEY, key_func=first)
    assert (again.recovered, again.coalesced) == (4, 1)
    assert items == [("a", 3), ("b", 1), ("c", 2)]  # a's in flight version coalesced


# -- what a crash would recover, step by step -----------------------------------


def test_the_journal_follows_flushes_and_drops_between_commits(
    path: pathlib.Path, gated: Gate
) -> None:
    wb = wbactor.start(config(path, gated, capacity=20))
    wb.ref.tell(wbactor.PushMany(range(10)))  # a full batch: in flight, hung
    gated.wait_for_attempts(1)
    wb.ref.tell(wbactor.PushMany(range(10, 40)))  # 10 evicted: 20..39 queued
    commit(wb)
    assert peek(str(path)) == [*range(10), *range(20, 40)]
    gated.release()
    wb.flush(WAIT)
    commit(wb)
    assert peek(str(path)) == []
    assert conserved(wb.stop(WAIT))


def test_a_drop_newest_eviction_frees_positions_that_new_items_take(
    path: pathlib.Path, gated: Gate
) -> None:
    policy = wbactor.Policy.DROP_NEWEST
    wb = wbactor.start(config(path, gated, capacity=5, batch_size=5, policy=policy))
    wb.ref.tell(wbactor.PushMany(["a", "b", "c", "d"]))
    # Two producers' lock-free appends overshoot capacity; a commit sees both.
    wb._ledger.items.extend(["x", "y"])
    commit(wb)
    assert peek(str(path)) == ["a", "b", "c", "d", "x", "y"]
    wb.stats()  # evicts the overshoot, newest first: y's position is free again
    wb.ref.tell(wbactor.Flush())
    gated.wait_for_attempts(1)
    assert gated.seen == [["a", "b", "c", "d", "x"]]
    wb.ref.tell(wbactor.PushMany(["f", "g"]))  # f takes y's position
    commit(wb)
    assert peek(str(path)) == ["a", "b", "c", "d", "x", "f", "g"]
    wb.stop(timeout=0.1)


# -- items that do not pickle -------------------------------------------------


def test_an_unpicklable_item_is_flushed_but_not_journaled(path: pathlib.Path) -> None:
    lock = threading.Lock()  # does not pickle
    flusher: RecordingFlusher[Any] = RecordingFlusher()
    with capture_logs() as logs:
        wb = wbactor.start(config(path, flusher, clock=ManualClock()))
        wb.ref.tell(wbactor.PushMany([1, lock, 2]))
        commit(wb)
        assert peek(str(path)) == [1, 2]
        wb.flush(WAIT)
        wb.stop(WAIT)
    assert flusher.items == [1, lock, 2]
    skipped = [e for e in logs if e["event"] == "journal_skipped"]
    assert [(e["count"], e["log_level"]) for e in skipped] == [(1, "warning")]


def test_an_unpicklable_item_left_at_stop_is_dropped_as_closed(
    path: pathlib.Path, gated: Gate
) -> None:
    lock = threading.Lock()
    with capture_logs() as logs:
        wb = wbactor.start(config(path, gated, batch_size=100))
        wb.ref.tell(wbactor.PushMany([1, lock, 2]))
        final = wb.stop(timeout=0.1)
    assert final.journaled == 2
    assert final.dropped == {wbactor.DropReason.CLOSED: 1}
    assert conserved(final)
    assert [e["count"] for e in logs if e["event"] == "journal_skipped"] == [1]
    gated.release()
    assert restart(path)[0] == [1, 2]


# -- a file that cannot be read, a file in use ---------------------------------


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 2000],
)
def test_a_corrupt_journal_is_quarantined_and_the_queue_starts_empty(
    path: pathlib.Path, content: bytes
) -> None:
    path.write_bytes(content)
    flusher: RecordingFlusher[int] = RecordingFlusher()
    with capture_logs() as logs:
        wb = wbactor.start(config(path, flusher))
        wb.push(1)
        wb.flush(WAIT)
        final = wb.stop(WAIT)
    assert (final.recovered, final.flushed) == (0, 1)
    [event] = [e for e in logs if e["event"] == "journal_quarantined"]
    assert event["log_level"] == "error"
    assert event["path"] == str(path)
    assert event["error"]
    [aside] = path.parent.glob("queue.wbj.corrupt-*")
    assert aside.read_bytes() == content
    assert aside.name.removeprefix("queue.wbj.corrupt-").isdigit()
    assert rows(path) == 0


def test_a_row_that_does_not_unpickle_quarantines_the_journal(
    path: pathlib.Path,
) -> None:
    leave(path, [1, 2, 3])
    db = sqlite3.connect(path)
    db.execute("UPDATE wbactor_rows SET blob = ?", (pickle.dumps("not a list"),))
    db.commit()
    db.close()
    with capture_logs() as logs:
        items, final = restart(path)
    assert (items, final.recovered) == ([], 0)
    assert [e["event"] for e in logs].count("journal_quarantined") == 1


def test_a_journal_from_a_newer_version_is_quarantined(path: pathlib.Path) -> None:
    leave(path, [1])
    db = sqlite3.connect(path)
    db.execute("UPDATE wbactor_meta SET value = 99 WHERE key = 'format'")
    db.commit()
    db.close()
    with capture_logs() as logs:
        assert restart(path)[0] == []
    [event] = [e for e in logs if e["event"] == "journal_quarantined"]
    assert "99" in event["error"]


def test_two_live_queues_may_not_share_a_journal(path: pathlib.Path) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    wb = wbactor.start(config(path, flusher))
    threads = set(threading.enumerate())
    actors = len(pykka.ActorRegistry.get_all())
    with pytest.raises(wbactor.ConfigError, match="in use by another live queue"):
        wbactor.start(config(path, flusher))
    assert set(threading.enumerate()) <= threads
    assert len(pykka.ActorRegistry.get_all()) == actors
    wb.push(7)
    wb.stop(WAIT)
    assert restart(path)[0] == []  # free again once the first one stopped


def test_a_queue_in_another_process_holds_the_journal(path: pathlib.Path) -> None:
    child = Child(path, 1, "hang")
    with pytest.raises(wbactor.ConfigError):
        wbactor.start(config(path, RecordingFlusher()))
    child.kill()  # a killed process lets go of its lock
    assert restart(path)[0] == [0]


def test_a_journal_that_is_a_directory_or_in_no_directory_is_refused(
    tmp_path: pathlib.Path,
) -> None:
    for bad in (tmp_path, tmp_path / "missing" / "queue.wbj"):
        with pytest.raises(wbactor.ConfigError, match="journal"):
            wbactor.start(config(bad, print))
    assert list(tmp_path.iterdir()) == []


def test_a_factory_that_fails_at_start_releases_the_journal(path: pathlib.Path) -> None:
    def factory() -> Any:
        msg = "no database"
        raise RuntimeError(msg)

    cfg = wbactor.Config(capacity=10, flusher_factory=factory, journal=path)
    with pytest.raises(RuntimeError):
        wbactor.start(cfg)
    assert restart(path)[0] == []


# -- Config ---------------------------------------------------------------------


def test_journal_takes_a_str_or_a_path(path: pathlib.Path) -> None:
    assert config(path, print).journal == path
    assert config(path, print, journal=str(path)).journal == str(path)
    assert config(path, print, journal=None).journal is None
    assert wbactor.Config(capacity=1, flusher=print).journal_interval == 0.05


@pytest.mark.parametrize("bad", [1, b"bytes", "", object()])
def test_a_journal_that_is_not_a_path_is_refused(bad: object) -> None:
    with pytest.raises(wbactor.ConfigError, match="journal"):
        wbactor.Config(capacity=1, flusher=print, journal=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "0.05", None, True])
def test_journal_interval_must_be_a_finite_positive_number(bad: object) -> None:
    with pytest.raises(wbactor.ConfigError, match="journal_interval"):
        wbactor.Config(capacity=1, flusher=print, journal_interval=bad)  # type: ignore[arg-type]


# -- with flusher processes -----------------------------------------------------


def test_a_journal_composes_with_a_flusher_process(
    path: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    import functools  # noqa: PLC0415

    from process_flushers import Scripted, batches  # noqa: PLC0415

    log = tmp_path / "log"
    cfg = wbactor.Config(
        capacity=1000,
        flusher_factory=functools.partial(Scripted, str(log)),
        flusher_process=True,
        batch_size=10,
        journal=path,
    )
    wb = wbactor.start(cfg)
    wb.ref.tell(wbactor.PushMany(range(95)))
    commit(wb)
    wb.flush(WAIT)
    final = wb.stop(WAIT)
    assert (final.flushed, final.journaled) == (95, 0)
    assert [i for _, batch in batches(log) for i in batch] == list(range(95))
    assert rows(path) == 0


# -- lanes ------------------------------------------------------------------


def tens(n: int) -> int:
    """A `key_func` routing ints by their last digit."""
    return n % 10


def by_key(items: list[int]) -> dict[int, list[int]]:
    """Group ints by their last digit, in the order given."""
    groups: dict[int, list[int]] = {}
    for n in items:
        groups.setdefault(n % 10, []).append(n)
    return groups


@pytest.mark.parametrize("again", [1, 2, 4])
def test_sigkill_with_routed_lanes_brings_every_item_back_in_key_order(
    path: pathlib.Path, again: int
) -> None:
    child = Child(path, 500, "hang", "drop_oldest", 100_000, "-", 4, "key")
    assert child.stats["pushed"] == 500
    assert child.stats["in_flight"] == 40  # a batch in each of the four lanes
    child.kill()
    # Started with another number of lanes, the items are routed anew.
    items, final = restart(path, lanes=again, key_func=tens)
    assert sorted(items) == list(range(500))
    assert by_key(items) == by_key(list(range(500)))
    assert (final.recovered, final.flushed) == (500, 500)


def test_sigkill_with_lanes_on_one_queue_brings_every_item_back_in_order(
    path: pathlib.Path,
) -> None:
    child = Child(path, 500, "hang", "drop_oldest", 100_000, "-", 3)
    assert child.stats["in_flight"] == 30  # each lane took a batch of the queue
    child.kill()
    items, final = restart(path)
    assert items == list(range(500))
    assert final.recovered == 500


def test_sigkill_with_coalescing_lanes_keeps_each_keys_last_version(
    path: pathlib.Path,
) -> None:
    child = Child(path, 200, "hang", "coalesce_by_key", 100_000, "-", 2)
    stats = child.stats
    child.kill()
    policy = wbactor.Policy.COALESCE_BY_KEY
    items, final = restart(path, policy=policy, key_func=first, lanes=2)
    assert final.recovered == stats["in_flight"] + stats["depth"]
    assert sorted(items) == sorted((n % 10, n) for n in range(190, 200))


@pytest.mark.parametrize("keyed", [True, False])
def test_stop_with_a_timeout_leaves_every_lane_in_the_journal(
    path: pathlib.Path, gated: Gate, keyed: bool
) -> None:
    key_func = tens if keyed else None
    wb = wbactor.start(config(path, gated, lanes=3, key_func=key_func))
    wb.ref.tell(wbactor.PushMany(range(95)))
    gated.wait_for_attempts(3)
    commit(wb)
    assert sorted(peek(str(path))) == list(range(95))
    final = wb.stop(timeout=0.2)
    assert final.journaled == 95
    assert final.dropped == {}
    assert conserved(final)
    gated.release()
    items, again = restart(path, key_func=key_func)
    assert sorted(items) == list(range(95))
    assert by_key(items) == by_key(list(range(95)))
    assert again.recovered == 95


def test_routed_lanes_journal_flushes_drops_and_replacements(
    path: pathlib.Path, gated: Gate
) -> None:
    policy = wbactor.Policy.COALESCE_BY_KEY
    cfg = config(
        path, gated, lanes=2, policy=policy, key_func=first, batch_size=2, capacity=6
    )
    wb = wbactor.start(cfg)
    keys = [f"k{n}" for n in range(8)]
    wb.ref.tell(wbactor.PushMany([(k, 1) for k in keys]))
    commit(wb)
    journaled = set(peek(str(path)))
    stats = wb.stats()
    # What a crash now would bring back: exactly what is in flight or queued.
    assert len(journaled) == stats.in_flight + stats.depth
    assert stats.dropped.get(wbactor.DropReason.DROP_OLDEST, 0) == 8 - len(journaled)
    wb.ref.tell(wbactor.PushMany([(k, 2) for k, _ in journaled]))  # replace in place
    commit(wb)
    now = set(peek(str(path)))
    flying = {item for batch in gated.seen for item in batch}
    # A queued version is replaced in the journal; one in flight stays beside it.
    assert {(k, 2) for k, _ in journaled} <= now
    assert now - {(k, 2) for k, _ in journaled} == flying
    gated.release()
    wb.flush(WAIT)
    commit(wb)
    assert peek(str(path)) == []
    assert conserved(wb.stop(WAIT))
    assert rows(path) == 0


def test_a_key_func_without_coalescing_journals_the_queue_itself(
    path: pathlib.Path, gated: Gate
) -> None:
    # One lane, DROP_OLDEST and a key_func: the items are in the queue, not
    # in a key index (a crash once recovered nothing here).
    wb = wbactor.start(config(path, gated, key_func=tens, batch_size=5))
    wb.ref.tell(wbactor.PushMany(range(12)))
    gated.wait_for_attempts(1)
    commit(wb)
    assert peek(str(path)) == list(range(12))
    final = wb.stop(timeout=0.1)
    assert final.journaled == 12
    gated.release()
    items, again = restart(path, key_func=tens)
    assert items == list(range(12))
    assert (again.recovered, again.pushed) == (12, 0)


def lane_of(item: object) -> int:
    """Route ints by parity; a command string (a flake) to lane 0."""
    return item % 2 if isinstance(item, int) else 0


def test_a_journal_follows_two_windows_out_per_lane_through_a_failure(
    path: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    import functools  # noqa: PLC0415

    from process_flushers import Scripted, batches  # noqa: PLC0415

    from wbactor._flusher import window_batches  # noqa: PLC0415

    log, size = tmp_path / "log", 4096
    total = 2 * 2 * window_batches(size) * size + 3  # two windows a lane, and more
    items: list[Any] = list(range(total))
    items.insert(3 * size, f"flake:{tmp_path / 'flaked'}")  # lane 0, window 1
    cfg = wbactor.Config(
        capacity=200_000,
        flusher_factory=functools.partial(Scripted, str(log)),
        flusher_process=True,
        batch_size=size,
        lanes=2,
        key_func=lane_of,
        retry_backoff=lambda attempt: 0.0,
        journal=path,
    )
    wb = wbactor.start(cfg)
    wb.ref.tell(wbactor.PushMany(items))
    commit(wb)
    wb.flush(WAIT)
    final = wb.stop(WAIT)
    assert (final.flushed, final.journaled, final.retries) == (total + 1, 0, 1)
    assert rows(path) == 0
    written = [i for _, batch in batches(log) for i in batch]
    assert sorted(written) == list(range(total))
    for lane in (0, 1):
        mine = [i for i in written if i % 2 == lane]
        assert mine == list(range(lane, total, 2))  # each lane in push order


class Partly(RecordingFlusher[Any]):
    """Writes a batch but its items named in `failing`, then raises PartialFailure.

    An item fails with `failing[item]` each time it is given, until the list
    of errors for it runs out.
    """

    def __init__(self, failing: dict[Any, list[BaseException]]) -> None:
        super().__init__()
        self.failing = failing

    def flush(self, batch: list[Any]) -> None:
        bad = [i for i, item in enumerate(batch) if self.failing.get(item)]
        errors = [self.failing[batch[i]].pop(0) for i in bad]
        super().flush([item for i, item in enumerate(batch) if i not in bad])
        if bad:
            raise wbactor.PartialFailure(bad, errors[0])


def test_items_a_partial_failure_rejects_leave_the_journal_with_the_written_ones(
    path: pathlib.Path,
) -> None:
    refused = wbactor.PermanentError("CHECK violation")
    flusher = Partly({"bad3": [refused], "bad7": [refused]})
    wb = wbactor.start(config(path, flusher))
    items = [f"bad{i}" if i in (3, 7) else i for i in range(10)]
    wb.ref.tell(wbactor.PushMany(items))
    wb.flush(WAIT)
    commit(wb)
    assert peek(str(path)) == []  # neither the written nor the rejected come back
    final = wb.stop(WAIT)
    assert flusher.items == [i for i in items if isinstance(i, int)]
    assert final.dropped == {wbactor.DropReason.REJECTED: 2}
    assert (final.flushed, final.journaled) == (8, 0)
    assert conserved(final)
    assert restart(path)[0] == []


def test_an_item_a_partial_failure_retries_stays_journaled_until_written(
    path: pathlib.Path,
) -> None:
    flusher = Partly({"flaky": [TimeoutError("the store timed out")]})
    clock = ManualClock()
    wb = wbactor.start(config(path, flusher, clock=clock))
    wb.ref.tell(wbactor.PushMany([0, 1, "flaky", 3, 4, 5, 6, 7, 8, 9]))
    first_retry = wb.wait_for(lambda s: s.retries == 1, WAIT)
    assert (first_retry.flushed, first_retry.in_flight) == (9, 1)
    commit(wb)
    assert peek(str(path)) == ["flaky"]  # the written nine are gone from it
    final = wb.stop(timeout=0.2)  # the retry waits on the manual clock
    assert (final.journaled, final.flushed, final.dropped) == (1, 9, {})
    assert conserved(final)
    items, again = restart(path)
    assert items == ["flaky"]
    assert again.recovered == 1


_FORKED_CHILD_OUTLIVES = """
import os, sys, warnings
import wbactor

warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: known
path = sys.argv[1]
flushed = []
wb = wbactor.start(wbactor.Config(capacity=100, flusher=flushed.extend, journal=path))
wb.push(1)
wb.flush(5.0)
hold, release = os.pipe()
child = os.fork()
if child == 0:  # outlives the parent's queue, holding what fork gave it
    os.read(hold, 1)
    os._exit(0)
wb.stop(5.0)
try:
    again = wbactor.start(
        wbactor.Config(capacity=100, flusher=flushed.extend, journal=path)
    )
    again.stop(5.0)
    print("restarted")
except wbactor.ConfigError as error:
    print("refused:", error)
finally:
    os.write(release, b"x")
    os.waitpid(child, 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_keep_the_journal_locked(path: pathlib.Path) -> None:
    run = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, "-c", _FORKED_CHILD_OUTLIVES, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "restarted", run.stdout
