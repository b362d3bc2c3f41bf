"""Lanes: several batches in flight, per-key order, one failing lane alone."""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from process_flushers import Scripted, batches
from support import WAIT, conservation_holds, first, running

import wbactor
from wbactor import ConfigError, DropReason, Policy, Push, PushMany
from wbactor.testing import DropRecorder, GatedFlusher, ManualClock, RecordingFlusher

if TYPE_CHECKING:
    from pathlib import Path

Item = tuple[str, int]


def lane_of(key: str, lanes: int) -> int:
    return hash(key) % lanes


def keys_in_lane(lane: int, lanes: int, count: int) -> list[str]:
    """`count` keys that route to `lane` (str hashes differ between runs)."""
    keys: list[str] = []
    n = 0
    while len(keys) < count:
        key = f"k{n}"
        if lane_of(key, lanes) == lane:
            keys.append(key)
        n += 1
    return keys


class Gates:
    """A flusher whose every call blocks until released; counts calls in flight."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.inside = 0
        self.open = False
        self.batches: list[list[Any]] = []

    def flush(self, batch: list[Any]) -> None:
        with self._cond:
            self.inside += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.open, WAIT)
            self.inside -= 1
            self.batches.append(list(batch))

    def wait_inside(self, count: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.inside >= count, WAIT), self.inside

    def release(self) -> None:
        with self._cond:
            self.open = True
            self._cond.notify_all()


# -- config -----------------------------------------------------------------


@pytest.mark.parametrize("lanes", [0, -1, 1.0, "2", True, None, 1025])
def test_lanes_must_be_an_int_from_1_to_1024(lanes: object) -> None:
    with pytest.raises(ConfigError, match="lanes"):
        wbactor.Config(capacity=10, flusher=print, lanes=lanes)  # type: ignore[arg-type]


def test_key_func_is_accepted_with_any_policy_and_one_lane() -> None:
    for policy in (Policy.DROP_OLDEST, Policy.DROP_NEWEST, Policy.BLOCK):
        config = wbactor.Config(
            capacity=10, flusher=print, policy=policy, key_func=first
        )
        assert config.lanes == 1


# -- several batches at once --------------------------------------------------


@pytest.mark.parametrize("keyed", [False, True])
def test_every_lane_has_a_batch_in_flight_at_once(keyed: bool) -> None:
    gates = Gates()
    config: wbactor.Config[Item] = wbactor.Config(
        capacity=1000,
        flusher=gates,
        batch_size=10,
        lanes=4,
        key_func=first if keyed else None,
        flush_interval=1000.0,
        clock=ManualClock(),
    )
    with running(config) as wb:
        if keyed:  # ten keys for each lane
            keys = [key for lane in range(4) for key in keys_in_lane(lane, 4, 10)]
            items = [(key, n) for n, key in enumerate(keys)]
        else:
            items = [("k", n) for n in range(40)]
        wb.ref.tell(PushMany(items))
        gates.wait_inside(4)
        stats = wb.stats()
        assert stats.in_flight == 40
        assert [lane.in_flight for lane in stats.lanes] == [10, 10, 10, 10]
        assert [lane.state for lane in stats.lanes] == ["flushing"] * 4
        gates.release()
        wb.flush(WAIT)
        stats = wb.stats()
    assert stats.flushed == 40
    assert stats.batches == 4
    assert sorted(n for batch in gates.batches for _, n in batch) == sorted(
        n for _, n in items
    )


def test_per_key_order_holds_under_random_latency_and_transient_failures() -> None:
    rng = random.Random(7)  # noqa: S311 - faults, not secrets
    lock = threading.Lock()
    written: defaultdict[str, list[int]] = defaultdict(list)

    def flush(batch: list[Item]) -> None:
        with lock:
            fail = rng.random() < 0.2
            delay = rng.random() * 0.002
        time.sleep(delay)  # the store's latency, not a wait for another thread
        if fail:
            msg = "transient"
            raise ConnectionError(msg)
        with lock:
            for key, n in batch:
                written[key].append(n)

    config: wbactor.Config[Item] = wbactor.Config(
        capacity=100_000,
        flusher=flush,
        batch_size=25,
        lanes=4,
        key_func=first,
        max_retries=-1,
        retry_backoff=lambda attempt: 0.0,
        flush_interval=0.01,
    )
    pushed: defaultdict[str, list[int]] = defaultdict(list)
    with running(config) as wb:
        for n in range(5000):
            key = f"p{n % 37}"
            pushed[key].append(n)
            wb.ref.tell(Push((key, n)))
        wb.flush(WAIT * 4)
        stats = wb.stats()
    assert stats.flushed == 5000
    assert stats.retries > 0
    assert dict(written) == dict(pushed)  # every item once, each key in push order


def test_without_a_key_func_every_item_is_written_once() -> None:
    recorder: RecordingFlusher[int] = RecordingFlusher()
    config: wbactor.Config[int] = wbactor.Config(
        capacity=100_000, flusher=recorder, batch_size=10, lanes=3, flush_interval=0.01
    )
    with running(config) as wb:
        wb.ref.tell(PushMany(range(1000)))
        wb.flush(WAIT)
    assert sorted(recorder.items) == list(range(1000))


# -- a failing lane -----------------------------------------------------------


def test_a_stuck_lane_backs_off_alone_while_the_others_flow() -> None:
    clock = ManualClock()
    bad = set(keys_in_lane(0, 4, 3))
    recorder: RecordingFlusher[Item] = RecordingFlusher()

    def flush(batch: list[Item]) -> None:
        if any(key in bad for key, _ in batch):
            msg = "this shard of the store is down"
            raise ConnectionError(msg)
        recorder.flush(batch)

    config: wbactor.Config[Item] = wbactor.Config(
        capacity=1000,
        flusher=flush,
        batch_size=5,
        lanes=4,
        key_func=first,
        max_retries=-1,
        flush_interval=1000.0,
        clock=clock,  # the backoff ends only when the test moves the clock
    )
    good = [k for lane in (1, 2, 3) for k in keys_in_lane(lane, 4, 2)]
    with running(config) as wb:
        wb.ref.tell(PushMany([(key, 0) for key in sorted(bad)]))
        clock.advance(1000.0)  # a tick: lane 0's partial batch goes, and fails
        wb.wait_for(lambda s: s.lanes[0].state == "backing_off", WAIT)
        items = [(key, n) for n in range(50) for key in good]
        wb.ref.tell(PushMany(items))  # full batches: they go without a tick
        # The clock stays put, so lane 0's retry never comes due and it is
        # still backing off when every other lane has written all of its rows.
        wb.wait_for(lambda s: s.flushed == len(items), WAIT)
        stats = wb.stats()
        assert stats.lanes[0].state == "backing_off"
        assert stats.lanes[0].failures >= 1
        assert stats.lanes[0].in_flight == 3
        assert all(lane.state == "idle" for lane in stats.lanes[1:])
        assert all(lane.failures == 0 for lane in stats.lanes[1:])
        assert conservation_holds(stats)
        final = wb.stop(timeout=0.1)  # lane 0 is still stuck: its rows close
    assert final.dropped == {wbactor.DropReason.CLOSED: 3}
    assert conservation_holds(final)
    assert sorted(recorder.items) == sorted(items)


def test_poison_items_are_isolated_within_their_lane() -> None:
    drops: DropRecorder[Item] = DropRecorder()
    recorder: RecordingFlusher[Item] = RecordingFlusher()

    def flush(batch: list[Item]) -> None:
        if any(n < 0 for _, n in batch):
            msg = "check constraint"
            raise wbactor.PermanentError(msg)
        recorder.flush(batch)

    config: wbactor.Config[Item] = wbactor.Config(
        capacity=1000,
        flusher=flush,
        batch_size=16,
        lanes=2,
        key_func=first,
        on_drop=drops,
        flush_interval=1000.0,
        clock=ManualClock(),
    )
    items = [(f"p{n % 8}", -n if n in {5, 40} else n) for n in range(64)]
    with running(config) as wb:
        wb.ref.tell(PushMany(items))
        wb.flush(WAIT)
        stats = wb.stats()
    assert sorted(drops.items) == sorted([("p5", -5), ("p0", -40)])
    assert set(drops.reasons) == {DropReason.REJECTED}
    assert stats.dropped == {DropReason.REJECTED: 2}
    assert stats.flushed == 62
    assert sorted(recorder.items) == sorted(i for i in items if i[1] >= 0)


# -- capacity and policies over the whole queue --------------------------------


def test_drop_oldest_evicts_the_oldest_item_of_all_lanes() -> None:
    gates = Gates()
    drops: DropRecorder[Item] = DropRecorder()
    config: wbactor.Config[Item] = wbactor.Config(
        capacity=6,
        flusher=gates,
        batch_size=1,
        lanes=2,
        key_func=first,
        on_drop=drops,
        flush_interval=1000.0,
        clock=ManualClock(),
    )
    a, b = keys_in_lane(0, 2, 1)[0], keys_in_lane(1, 2, 1)[0]
    with running(config) as wb:
        wb.ref.tell(PushMany([(a, 0), (b, 0)]))  # one batch in flight per lane
        gates.wait_inside(2)
        pushes = [(a, 1), (b, 1), (b, 2), (a, 2), (b, 3), (a, 3), (a, 4), (b, 4)]
        wb.ref.tell(PushMany(pushes))
        stats = wb.stats()
        assert stats.depth == 6
        assert sum(lane.depth for lane in stats.lanes) == 6
        assert drops.items == [(a, 1), (b, 1)]  # the two oldest, across lanes
        gates.release()
    assert stats.dropped == {DropReason.DROP_OLDEST: 2}


def test_drop_newest_refuses_when_the_whole_queue_is_full() -> None:
    gates = Gates()
    config: wbactor.Config[Item] = wbactor.Config(
        capacity=4,
        flusher=gates,
        batch_size=100,
        lanes=4,
        key_func=first,
        policy=Policy.DROP_NEWEST,
        flush_interval=1000.0,
        clock=ManualClock(),
    )
    key = keys_in_lane(2, 4, 1)[0]
    with running(config) as wb:
        wb.ref.tell(PushMany([(key, n) for n in range(4)]))
        wb.ref.tell(Push(("other", 9)))
        stats = wb.stats()
        gates.release()
    assert stats.depth == 4
    assert stats.lanes[lane_of(key, 4)].depth == 4
    assert stats.dropped == {DropReason.DROP_NEWEST: 1}


def test_block_waits_for_room_in_the_whole_queue() -> None:
    gates = Gates()
    config: wbactor.Config[Item] = wbactor.Config(
        capacity=2,
        flusher=gates,
        batch_size=100,
        lanes=2,
        key_func=first,
        policy=Policy.BLOCK,
        flush_interval=1000.0,
        clock=ManualClock(),
    )
    with running(config) as wb:
        wb.push(("a", 1))
        wb.push(("b", 1))
        with pytest.raises(wbactor.PushTimeoutError):
            wb.push(("c", 1), timeout=0.01)
        stats = wb.stats()
        gates.release()
    assert stats.pushed == 2
    assert stats.depth == 2


def test_coalescing_works_per_key_across_lanes() -> None:
    recorder: RecordingFlusher[Item] = RecordingFlusher()
    config: wbactor.Config[Item] = wbactor.Config(
        capacity=100,
        flusher=recorder,
        batch_size=100,
        lanes=3,
        key_func=first,
        policy=Policy.COALESCE_BY_KEY,
        flush_interval=1000.0,
        clock=ManualClock(),
    )
    with running(config) as wb:
        wb.ref.tell(PushMany([(f"p{n % 10}", n) for n in range(100)]))
        stats = wb.stats()
        wb.flush(WAIT)
    assert stats.coalesced == 90
    assert stats.depth == 10
    assert sorted(recorder.items) == sorted((f"p{n}", 90 + n) for n in range(10))


def test_a_key_func_that_raises_drops_the_item_as_key_error() -> None:
    def key(item: Item) -> str:
        if item[1] == 3:
            msg = "no key"
            raise ValueError(msg)
        return item[0]

    recorder: RecordingFlusher[Item] = RecordingFlusher()
    config: wbactor.Config[Item] = wbactor.Config(
        capacity=100, flusher=recorder, lanes=2, key_func=key, clock=ManualClock()
    )
    with running(config) as wb:
        wb.ref.tell(PushMany([("a", n) for n in range(5)]))
        wb.flush(WAIT)
        stats = wb.stats()
    assert stats.dropped == {DropReason.KEY_ERROR: 1}
    assert recorder.items == [("a", 0), ("a", 1), ("a", 2), ("a", 4)]


# -- stats ------------------------------------------------------------------


def test_unrouted_items_not_yet_cut_show_in_lane_zero() -> None:
    gates = Gates()
    config: wbactor.Config[int] = wbactor.Config(
        capacity=100,
        flusher=gates,
        batch_size=5,
        lanes=2,
        flush_interval=1000.0,
        clock=ManualClock(),
    )
    with running(config) as wb:
        wb.ref.tell(PushMany(range(17)))
        gates.wait_inside(2)
        stats = wb.stats()
        gates.release()
    assert [lane.depth for lane in stats.lanes] == [7, 0]
    assert [lane.in_flight for lane in stats.lanes] == [5, 5]
    assert (stats.depth, stats.in_flight) == (7, 10)
    assert conservation_holds(stats)


def test_stats_as_dict_carries_the_lanes() -> None:
    config: wbactor.Config[int] = wbactor.Config(
        capacity=10, flusher=print, lanes=2, clock=ManualClock()
    )
    with running(config) as wb:
        plain = wb.stats().as_dict()
    assert (
        plain["lanes"]
        == [
            {"depth": 0, "in_flight": 0, "failures": 0, "state": "idle"},
        ]
        * 2
    )


# -- flushers and stop --------------------------------------------------------


class Closing:
    made: ClassVar[list[Closing]] = []

    def __init__(self) -> None:
        self.closed = 0
        self.batches = 0
        Closing.made.append(self)

    def flush(self, batch: list[Any]) -> None:
        self.batches += 1

    def close(self) -> None:
        self.closed += 1


def test_each_lane_gets_its_own_flusher_from_the_factory_closed_at_stop() -> None:
    Closing.made = []
    config: wbactor.Config[int] = wbactor.Config(
        capacity=1000,
        flusher_factory=Closing,
        batch_size=10,
        lanes=3,
        clock=ManualClock(),
    )
    with running(config) as wb:
        wb.ref.tell(PushMany(range(300)))
        wb.flush(WAIT)
    assert len(Closing.made) == 3
    assert [flusher.closed for flusher in Closing.made] == [1, 1, 1]
    assert sum(flusher.batches for flusher in Closing.made) == 30


def test_a_shared_flusher_is_closed_once_at_stop() -> None:
    shared = Closing()
    config: wbactor.Config[int] = wbactor.Config(
        capacity=1000, flusher=shared, batch_size=10, lanes=4, clock=ManualClock()
    )
    with running(config) as wb:
        wb.ref.tell(PushMany(range(100)))
        wb.flush(WAIT)
    assert shared.closed == 1
    assert shared.batches == 10


def test_stop_with_a_timeout_drains_the_healthy_lanes_and_closes_the_rest() -> None:
    clock = ManualClock()
    stuck = keys_in_lane(1, 2, 1)[0]
    healthy = keys_in_lane(0, 2, 1)[0]
    gate: GatedFlusher[Item] = GatedFlusher()
    recorder: RecordingFlusher[Item] = RecordingFlusher()

    def flush(batch: list[Item]) -> None:
        if batch[0][0] == stuck:
            gate.flush(batch)  # hangs until released
        else:
            recorder.flush(batch)

    config: wbactor.Config[Item] = wbactor.Config(
        capacity=1000,
        flusher=flush,
        batch_size=4,
        lanes=2,
        key_func=first,
        flush_interval=1000.0,
        clock=clock,
    )
    wb = wbactor.start(config)
    wb.ref.tell(PushMany([(stuck, n) for n in range(8)]))
    gate.entered.wait(WAIT)
    wb.ref.tell(PushMany([(healthy, n) for n in range(10)]))
    final = wb.stop(timeout=0.3)
    gate.release()
    assert recorder.items == [(healthy, n) for n in range(10)]
    assert final.flushed == 10
    assert final.dropped == {DropReason.CLOSED: 8}
    assert conservation_holds(final)


def test_flush_covers_every_lane() -> None:
    recorder: RecordingFlusher[Item] = RecordingFlusher()
    config: wbactor.Config[Item] = wbactor.Config(
        capacity=1000,
        flusher=recorder,
        batch_size=50,
        lanes=4,
        key_func=first,
        flush_interval=1000.0,
        clock=ManualClock(),
    )
    with running(config) as wb:
        wb.ref.tell(PushMany([(f"k{n % 13}", n) for n in range(130)]))
        wb.flush(WAIT)  # no tick: the flush alone sends each lane's partial batch
        assert len(recorder.items) == 130
        stats = wb.stats()
    assert stats.depth == 0
    assert conservation_holds(stats)


# -- worker processes ---------------------------------------------------------


def test_each_lane_writes_through_a_worker_process_of_its_own(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    config: wbactor.Config[Any] = wbactor.Config(
        capacity=1000,
        flusher_factory=functools.partial(Scripted, str(log), None),
        batch_size=5,
        lanes=2,
        key_func=lambda n: n % 2 if isinstance(n, int) else 0,  # lane n % 2
        flusher_process=True,
        flush_interval=1000.0,
        clock=ManualClock(),
    )
    with running(config) as wb:
        wb.ref.tell(PushMany([*range(20), "raise:permanent", 21]))
        wb.flush(WAIT)
        stats = wb.stats()
    written = batches(log)
    pids = {pid for pid, _ in written}
    assert len(pids) == 2
    for pid in pids:
        items = [n for p, batch in written if p == pid for n in batch]
        assert items == sorted(items)  # each lane in push order
        assert len({n % 2 for n in items}) == 1  # one lane's keys only (ints hash
        # to themselves)
    assert sorted(n for _, batch in written for n in batch) == [*range(20), 21]
    assert stats.dropped == {DropReason.REJECTED: 1}
    assert stats.flushed == 21
