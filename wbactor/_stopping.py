"""Stopping a queue: close, drain with a deadline, stop every actor, account.

`stop_queue` is what `WriteBehind.stop()` runs. Whatever user code does (a
flush, `close()` or a factory that hangs), it returns within about the
deadline: an actor hung in user code is abandoned on its daemon thread,
taken out of pykka's registry and logged as `actor_abandoned`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pykka

from wbactor._log import ACTOR_ABANDONED, QUEUE_STOPPED
from wbactor._messages import Flush, RetireFlushers

if TYPE_CHECKING:
    from wbactor._api import _Running
    from wbactor._stats import Stats

__all__ = ["STOP_GRACE", "stop_queue"]

STOP_GRACE = 0.25
"""Seconds `stop(timeout)` gives the actors to stop once the drain's time is
up; an actor whose user code (a flush, `close()`, a factory) hangs past it is
abandoned on its daemon thread."""

_STOP_FLOOR = 0.1
"""Seconds every actor gets to stop even once the deadline has passed, so that
one whose user code hangs does not eat the time of those behind it."""


def stop_queue(run: _Running[Any], limit: float | None) -> Stats:
    """Close, drain until `limit` seconds pass, stop the actors; account."""
    deadline = None if limit is None else time.monotonic() + limit
    run.ledger.close()
    try:
        drained = _drain(run, deadline)
    except BaseException:
        # A KeyboardInterrupt in the drain (a second Ctrl-C at exit):
        # what is left is dropped, counted, and the actors stopped.
        run.drops.report(*run.ledger.abandon())
        _stop_actors(run, time.monotonic())
        _close_journal(run, time.monotonic())
        _finish(run)
        raise
    if not drained:
        # With a journal, what it holds stays there (Stats.journaled).
        run.drops.report(*run.ledger.abandon())
    _stop_actors(run, deadline)
    _close_journal(run, deadline)
    return _finish(run)


def _close_journal(run: _Running[Any], deadline: float | None) -> None:
    """Wait for the journal's last commit: empty after a drain, else what is left."""
    if run.journal is not None:
        remaining = None if deadline is None else deadline - time.monotonic()
        run.journal.close(None if remaining is None else remaining + STOP_GRACE)


def _finish(run: _Running[Any]) -> Stats:
    run.drop_log.flush_all()
    final, evicted = run.ledger.stats()
    if evicted is not None:
        run.drops.report(*evicted)
    run.log.logger.info(
        QUEUE_STOPPED,
        pushed=final.pushed,
        flushed=final.flushed,
        coalesced=final.coalesced,
        dropped={r.value: n for r, n in final.dropped.items()},
        retries=final.retries,
        restarts=final.restarts,
        batches=final.batches,
        depth=final.depth,
        in_flight=final.in_flight,
        oldest_age=final.oldest_age,
        recovered=final.recovered,
        journaled=final.journaled,
        lanes=final.lanes,
    )
    return final


def _drain(run: _Running[Any], deadline: float | None) -> bool:
    """Wait for every accepted item to settle; return whether it did."""
    future = run.ref.ask(Flush(), block=False)
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        future.get(timeout=remaining)
    except pykka.Timeout:
        return False
    except pykka.ActorDeadError:
        pass  # stopped some other way: its on_stop accounted for the rest
    return True


def _stop_actors(run: _Running[Any], deadline: float | None) -> None:
    """Stop every actor of the queue, giving up on one at the deadline.

    The flusher actors first (so a shared flusher is closed once, when
    none uses it), then the supervisors, the queue actor and the timer.
    The waits end at `deadline` plus `STOP_GRACE`, but each actor gets at
    least `_STOP_FLOOR`.
    """
    until = None if deadline is None else max(deadline, time.monotonic())
    until = None if until is None else until + STOP_GRACE
    asked = [(ref, ref.ask(RetireFlushers(), block=False)) for ref in run.supervisors]
    hung = []
    for supervisor, future in asked:
        flushers = _wait(run, future, until, supervisor)
        if flushers is None:
            hung.append(supervisor)
        for ref, stopped in flushers or ():
            _wait(run, stopped, until, ref)
    # Asked to stop together; a supervisor that did not answer above is
    # hung in user code (a factory) and was logged there already.
    stops = [(ref, ref.stop(block=False)) for ref in (*run.supervisors, run.ref)]
    stops.append((run.timer, run.timer.stop(block=False)))
    for ref, stopped in stops:
        if not any(ref is supervisor for supervisor in hung):
            _wait(run, stopped, until, ref)


def _wait(
    run: _Running[Any],
    future: pykka.Future[Any],
    until: float | None,
    ref: pykka.ActorRef[Any],
) -> Any:
    """Return what `future` holds; None if `ref`'s actor is abandoned or dead."""
    remaining = None
    if until is not None:
        remaining = max(_STOP_FLOOR, until - time.monotonic())
    try:
        return future.get(timeout=remaining)
    except pykka.Timeout:
        # Hung in user code, on a daemon thread: out of the registry, so
        # ActorRegistry.stop_all() does not wait for it either.
        pykka.ActorRegistry.unregister(ref)
        run.log.logger.warning(ACTOR_ABANDONED, actor=str(ref))
    except pykka.ActorDeadError:
        pass  # stopped already
    return None
