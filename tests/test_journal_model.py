"""The journal against the queue it follows, step by step, with lanes.

A real queue with a journal, one to three lanes, routed or not, under each
dropping policy; its flusher holds every batch until the test lets one go.
After every step the journal is committed, and what a crash would bring
back (`peek`) must be exactly what is in flight or queued at that moment:
nothing flushed, dropped or coalesced away comes back, nothing accepted is
missing. At the end, `stop(timeout)` leaves it all in the journal and a
second start recovers it, each key's items in their push order.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile
import threading
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from support import MODEL_SCALE, WAIT

import wbactor
from wbactor._journalfile import peek
from wbactor.testing import ManualClock, RecordingFlusher

Item = tuple[int, int]  # (key, serial)
POLICIES = [
    wbactor.Policy.DROP_OLDEST,
    wbactor.Policy.DROP_NEWEST,
    wbactor.Policy.COALESCE_BY_KEY,
]


def key_of(item: Item) -> int:
    return item[0]


class Held:
    """A flusher whose every call waits for a permit; it counts what it wrote."""

    def __init__(self) -> None:
        self.permits = threading.Semaphore(0)
        self.cond = threading.Condition()
        self.calls = 0
        self.written: list[Item] = []

    def flush(self, batch: list[Item]) -> None:
        with self.cond:
            self.calls += 1
            self.cond.notify_all()
        assert self.permits.acquire(timeout=30)  # never waits for good
        with self.cond:
            self.written += batch


class JournalModel(RuleBasedStateMachine):
    @initialize(
        policy=st.sampled_from(POLICIES),
        lanes=st.integers(min_value=1, max_value=3),
        routed=st.booleans(),
        capacity=st.integers(min_value=2, max_value=12),
        batch_size=st.integers(min_value=1, max_value=4),
    )
    def start(
        self,
        policy: wbactor.Policy,
        lanes: int,
        routed: bool,
        capacity: int,
        batch_size: int,
    ) -> None:
        self.folder = pathlib.Path(tempfile.mkdtemp())
        self.path = self.folder / "model.wbj"
        self.keyed = policy is wbactor.Policy.COALESCE_BY_KEY
        self.routed = lanes > 1 and (routed or self.keyed)
        self.settings: dict[str, Any] = {
            "capacity": capacity,
            "batch_size": batch_size,
            "policy": policy,
            "lanes": lanes,
            "key_func": key_of if (routed or self.keyed) else None,
            "journal": self.path,
            "journal_interval": 3600.0,  # commits only when a step says so
        }
        self.flusher = Held()
        self.released = 0
        self.serial = 0
        self.wb = wbactor.start(
            wbactor.Config(flusher=self.flusher, clock=ManualClock(), **self.settings)
        )
        self.stopped = False

    def _commit(self) -> None:
        journal = self.wb._run.journal
        assert journal is not None
        assert journal.wait_synced(WAIT)

    def _live(self) -> list[Item]:
        ledger = self.wb._ledger
        with ledger.lock:
            buffer = ledger.buffer
            flying = [i for f in buffer.flights for i in (f.items or [])]
            return flying + buffer.queued()

    @rule(keys=st.lists(st.integers(min_value=0, max_value=5), max_size=8))
    def push(self, keys: list[int]) -> None:
        items = []
        for key in keys:
            self.serial += 1
            items.append((key, self.serial))
        self.wb.ref.tell(wbactor.PushMany(items))

    def _batch_due(self) -> bool:
        """Whether a batch is in flight or one is full: a flush call comes."""
        ledger = self.wb._ledger
        with ledger.lock:
            buffer = ledger.buffer
            size = self.settings["batch_size"]
            return any(f.items for f in buffer.flights) or any(
                len(q) >= size for q in buffer.queues
            )

    @rule()
    def let_one_batch_go(self) -> None:
        # Decided by the queue's contents, not by how far the actors got,
        # so that a step does the same thing whenever it is run again.
        if not self._batch_due():
            return
        flusher = self.flusher
        with flusher.cond:
            assert flusher.cond.wait_for(lambda: flusher.calls > self.released, WAIT)
        before = self.wb.stats().batches
        self.released += 1
        flusher.permits.release()
        stats, _ = self.wb._ledger.wait_progress(lambda s: s.batches > before, WAIT)
        assert stats is not None, "the batch let go was not counted"

    @invariant()
    def a_crash_now_recovers_exactly_what_is_live(self) -> None:
        if self.stopped:
            return
        live = self._live()
        self._commit()
        assert Counter(peek(str(self.path))) == Counter(live)
        assert Counter(self._live()) == Counter(live)  # nothing moved meanwhile

    def teardown(self) -> None:
        try:
            live = self._live()
            final = self.wb.stop(timeout=0.05)
            self.stopped = True
            assert final.journaled == len(live)
            assert final.recovered + final.pushed == (
                final.flushed
                + final.coalesced
                + sum(final.dropped.values())
                + final.journaled
            )
            self.flusher.permits.release(10_000)  # the hung flushes end
            self._recover(live)
        finally:
            self.flusher.permits.release(10_000)
            shutil.rmtree(self.folder, ignore_errors=True)

    def _recover(self, live: list[Item]) -> None:
        again: RecordingFlusher[Item] = RecordingFlusher()
        wb = wbactor.start(wbactor.Config(flusher=again, **self.settings))
        try:
            wb.flush(WAIT)
        finally:
            final = wb.stop(WAIT)
        items = again.items
        assert final.recovered == len(live)
        if self.keyed:  # a key's version in flight and its queued one: the newer
            newest: dict[int, int] = {}
            for key, serial in live:
                newest[key] = max(serial, newest.get(key, 0))
            assert sorted(items) == sorted(newest.items())
        else:
            assert Counter(items) == Counter(live)
        if self.routed:  # unrouted lanes write batches side by side, in any order
            for key in {k for k, _ in items}:
                serials = [s for k, s in items if k == key]
                assert serials == sorted(serials), f"key {key} out of order"
        if self.settings["lanes"] == 1 and not self.keyed:
            assert [s for _, s in items] == sorted(s for _, s in items)


JournalModel.TestCase.settings = settings(
    max_examples=25 * MODEL_SCALE,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# A failure shrinks for minutes (each step runs real actors): not a hang.
test_the_journal_follows_the_queue = pytest.mark.timeout(300)(JournalModel.TestCase)
