from __future__ import annotations

import wbactor
from wbactor.testing import ManualClock, RecordingFlusher


def test_push_tick_flush_stop(clock: ManualClock) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher, clock=clock))
    wb.ref.tell(wbactor.Push(1))
    wb.push(2)
    clock.advance(1.0)
    assert flusher.wait_for_items(2) == [1, 2]
    stats = wb.stop(timeout=5)
    assert stats.pushed == stats.flushed == 2
