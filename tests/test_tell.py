"""The queue ref's `tell`, bound per policy, against pykka's behaviour."""

from __future__ import annotations

import pykka
import pytest

import wbactor
from wbactor import Flush, Policy, Push, PushMany
from wbactor._queue import QueueRef
from wbactor.testing import ManualClock, RecordingFlusher


def key(item: tuple[str, int]) -> str:
    return item[0]


def start(
    policy: Policy, clock: ManualClock, flusher: RecordingFlusher[tuple[str, int]]
) -> wbactor.WriteBehind[tuple[str, int]]:
    return wbactor.start(
        wbactor.Config(
            capacity=10,
            flusher=flusher,
            policy=policy,
            key_func=key if policy is Policy.COALESCE_BY_KEY else None,
            clock=clock,
        )
    )


@pytest.mark.parametrize("policy", list(Policy), ids=lambda p: p.value)
def test_tell_takes_pushes_and_passes_other_messages_to_the_actor(
    policy: Policy, clock: ManualClock
) -> None:
    flusher: RecordingFlusher[tuple[str, int]] = RecordingFlusher()
    wb = start(policy, clock, flusher)
    wb.ref.tell(Push(("a", 1)))
    wb.ref.tell(PushMany([("b", 1), ("c", 1)]))
    assert isinstance(wb.ref, QueueRef)
    QueueRef.tell(wb.ref, Push(("d", 1)))  # through the class: the same path
    wb.ref.tell(Flush())  # a control message: pykka's tell, to the actor
    assert flusher.wait_for_items(4) == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    stats = wb.stop(timeout=5)
    assert (stats.pushed, stats.flushed) == (4, 4)


@pytest.mark.parametrize("policy", list(Policy), ids=lambda p: p.value)
def test_tell_after_stop_raises_actor_dead_for_every_message(
    policy: Policy, clock: ManualClock
) -> None:
    wb = start(policy, clock, RecordingFlusher())
    wb.stop(timeout=5)
    for message in (Push(("a", 1)), PushMany([("b", 1)]), Flush(), "other"):
        with pytest.raises(pykka.ActorDeadError):
            wb.ref.tell(message)  # type: ignore[arg-type]  # "other" too
    assert wb.stats().pushed == 0


def test_a_coalescing_tell_with_an_unhashable_key_drops_the_item_as_key_error(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[object] = RecordingFlusher()
    config: wbactor.Config[object] = wbactor.Config(
        capacity=10,
        flusher=flusher,
        policy=Policy.COALESCE_BY_KEY,
        key_func=lambda item: item,
        clock=clock,
    )
    with wbactor.start(config) as wb:
        wb.ref.tell(Push(1))
        wb.ref.tell(Push([2]))  # a list: unhashable, caught by the fast path
        wb.ref.tell(Push(1))  # replaces the queued 1
        wb.flush(timeout=5)
        stats = wb.stats()
    assert flusher.items == [1]
    assert (stats.pushed, stats.coalesced) == (3, 1)
    assert dict(stats.dropped) == {wbactor.DropReason.KEY_ERROR: 1}
