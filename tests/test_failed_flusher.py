"""A flusher actor whose attempt failed runs nothing more (found by a stress run)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pykka
from pykka.messages import ProxyGetAttr
from support import WAIT

import wbactor
from wbactor._attempts import Attempts
from wbactor._flusher import FlusherActor
from wbactor._messages import Dispatched

if TYPE_CHECKING:
    import pytest

    from wbactor.testing import ManualClock


def test_a_run_queued_before_the_failure_does_not_flush_the_batch_again(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A late Dispatched makes the supervisor send a second RunBatches to the
    # flusher while it is still in its attempt. Once the attempt has failed,
    # that run must not retry the batch on its own: the supervisor retries
    # it after the backoff, so the store would see it twice.
    calls: list[list[int]] = []
    first_failed = threading.Event()
    release_supervisor = threading.Event()
    wb: wbactor.WriteBehind[int]

    fail = Attempts.fail

    def slow_fail(self: Any, *args: Any, **kwargs: Any) -> Any:
        release_supervisor.wait(WAIT)  # hold the supervisor back
        return fail(self, *args, **kwargs)

    monkeypatch.setattr(Attempts, "fail", slow_fail)

    def flusher(batch: list[int]) -> None:
        calls.append(batch)
        if len(calls) == 1:
            wb._supervisor.tell(Dispatched())  # the late one
            wb._supervisor.ask(ProxyGetAttr(("actor_urn",)))  # it was handled
            first_failed.set()
            msg = "store down"
            raise ConnectionError(msg)

    wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher, clock=clock))
    wb.push(1)
    clock.advance(1.0)
    assert first_failed.wait(WAIT)
    [actor] = pykka.ActorRegistry.get_by_class(FlusherActor)
    actor.ask(ProxyGetAttr(("actor_urn",)))  # after the queued RunBatches
    assert calls == [[1]]

    release_supervisor.set()
    wb.wait_for(lambda s: s.retries == 1, WAIT)
    clock.advance(wbactor.default_backoff(1))
    wb.wait_for(lambda s: s.flushed == 1, WAIT)
    stats = wb.stop(timeout=WAIT)
    assert calls == [[1], [1]]  # the failed attempt and the one retry
    assert (stats.flushed, stats.retries, stats.restarts) == (1, 1, 1)
