"""Stopping while producers push, and stopping a queue whose flusher never recovers.

The races are `tests/stress/races.py`, run a few times here and 300 times in
`tox -e stress`.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from support import WAIT, conservation_holds

import wbactor
from wbactor import DropReason
from wbactor.testing import DropRecorder, GatedFlusher

sys.path.insert(0, str(Path(__file__).with_name("stress")))
from races import race

FAST_RACES = 16  # four per policy; the stress env runs 300


@pytest.mark.parametrize("index", range(FAST_RACES))
def test_no_accepted_item_is_lost_when_stop_races_with_producers(index: int) -> None:
    result = race(seed=0, index=index, stop_timeout=WAIT)
    assert result.violations == []
    assert result.accepted > 0


def always_failing(batch: list[int]) -> None:
    msg = f"the store is gone ({len(batch)} items not written)"
    raise ConnectionError(msg)


STOP_TIMEOUT = 0.3


def stop_and_time(wb: wbactor.WriteBehind[int]) -> tuple[wbactor.Stats, float]:
    started = time.monotonic()
    stats = wb.stop(timeout=STOP_TIMEOUT)
    return stats, time.monotonic() - started


def assert_everything_closed(
    stats: wbactor.Stats, drops: DropRecorder[int], items: list[int]
) -> None:
    assert dict(stats.dropped) == {DropReason.CLOSED: len(items)}
    assert (stats.flushed, stats.depth, stats.in_flight) == (0, 0, 0)
    assert conservation_holds(stats)
    assert sorted(drops.items) == items
    assert set(drops.reasons) == {DropReason.CLOSED}


def test_stop_timeout_returns_in_time_when_the_flusher_always_raises() -> None:
    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=1000,
        flusher=always_failing,
        batch_size=10,
        flush_interval=0.01,
        retry_backoff=lambda _: 0.001,
        max_retries=-1,
        on_drop=drops,
    )
    wb = wbactor.start(config)
    items = list(range(35))
    wb.ref.tell(wbactor.PushMany(items))
    wb.wait_for(lambda s: s.retries >= 3, WAIT)  # retrying, forever
    stats, elapsed = stop_and_time(wb)
    assert elapsed < STOP_TIMEOUT + WAIT  # generous: the machine may be busy
    assert stats.retries >= 3
    assert_everything_closed(stats, drops, items)


@pytest.mark.parametrize("flush_timeout", [None, 0.01], ids=["no_timeout", "timeout"])
def test_stop_timeout_returns_in_time_when_every_attempt_hangs(
    flush_timeout: float | None,
) -> None:
    # Without flush_timeout the one attempt hangs; with it, every retry on a
    # fresh flusher hangs too. Either way stop(timeout) gives up in time.
    flusher: GatedFlusher[int] = GatedFlusher()
    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=1000,
        flusher=flusher,
        batch_size=10,
        flush_interval=0.01,
        retry_backoff=lambda _: 0.001,
        max_retries=-1,
        on_drop=drops,
        flush_timeout=flush_timeout,
    )
    wb = wbactor.start(config)
    items = list(range(35))
    try:
        wb.ref.tell(wbactor.PushMany(items))
        assert flusher.entered.wait(WAIT)
        if flush_timeout is not None:
            wb.wait_for(lambda s: s.retries >= 2, WAIT)  # abandoned twice, at least
        stats, elapsed = stop_and_time(wb)
    finally:
        flusher.release()  # the hung attempts return now, late
    assert elapsed < STOP_TIMEOUT + WAIT
    assert_everything_closed(stats, drops, items)
    for thread in threading.enumerate():
        if thread.name.startswith("FlusherActor"):
            thread.join(WAIT)
    assert wb.stats() == stats  # the late results count for nothing
    assert len(drops.calls) == len(items)
