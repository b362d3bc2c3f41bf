"""A queue's place in its process: drained at exit, refused after fork, signals.

Every running queue is tracked here from `start()` until its `stop()`
returns, also when its `WriteBehind` handle is dropped (`del wb`):

- At exit (`atexit`, which runs once the main thread is done and, as every
  wbactor actor runs on a daemon thread, nothing else keeps the process
  alive), each queue still tracked is drained for at most its
  `Config.exit_timeout` and stopped. A second Ctrl-C during that drain ends
  it at once; what was left is dropped with `closed`, and counted.
- In a child made by `os.fork()`, every inherited queue refuses everything
  with `QueueClosedError`: its actors' threads did not survive the fork, so
  an accepted item would never be written. Nothing is drained at the
  child's exit; the parent is unaffected.
- `stop_on_signals(wb)` installs signal handlers that stop the queue, then
  let the signal do what it does by default (end the process, status
  128+signum in a shell).
"""

from __future__ import annotations

import atexit

# worker-process wiring: imported before atexit.register below, so that
# multiprocessing's exit hook (which terminates daemonic workers) runs after
# the drain at exit, not before it.
import multiprocessing.util  # noqa: F401
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbactor._config import check_wait_timeout

if TYPE_CHECKING:
    from types import FrameType

    from wbactor._api import WriteBehind

__all__ = ["called_within_wbactor", "in_wbactor", "stop_on_signals", "track", "untrack"]

# Re-entrant: a signal handler may interrupt a track() on the same thread.
_lock = threading.RLock()
_running: dict[int, WriteBehind[Any]] = {}
_on_signal: dict[int, list[tuple[WriteBehind[Any], float | None]]] = {}


def track(wb: WriteBehind[Any]) -> None:
    """Drain and stop `wb` at exit unless it was stopped before."""
    with _lock:
        _running[id(wb)] = wb


def untrack(wb: WriteBehind[Any]) -> None:
    """Forget `wb`: it has stopped."""
    with _lock:
        _running.pop(id(wb), None)


def _stop_all_at_exit() -> None:
    with _lock:
        queues = list(_running.values())
    for wb in queues:
        wb._stop_at_exit()  # noqa: SLF001 - the handle's own exit path


def _after_fork_in_child() -> None:
    parent = os.getppid()
    global _lock  # noqa: PLW0603 - the parent's threads may have held it
    _lock = threading.RLock()
    queues = list(_running.values())
    _running.clear()
    _on_signal.clear()
    for wb in queues:
        wb._after_fork_in_child(parent)  # noqa: SLF001 - the handle's own fork path


atexit.register(_stop_all_at_exit)
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def stop_on_signals(
    wb: WriteBehind[Any], *signals: int, timeout: float | None = None
) -> None:
    """Stop `wb` when one of `signals` arrives, then end as that signal would.

    Opt-in, never installed by `start()`. With no `signals`, SIGTERM and
    SIGINT (a container's stop, and Ctrl-C). On the signal, `wb.stop(timeout)`
    drains the queue (None: for as long as it takes), then the signal's
    default behaviour is restored and the signal raised again, so the
    process ends with the status it would have had (128+signum in a shell).
    A second such signal during the drain ends the process at once. Several
    queues may be registered for one signal: each is stopped, in order.
    The handler replaces any handler installed before it for those signals.
    Call it from the main thread, as `signal.signal` requires.

    Raises:
        ValueError: `timeout` is negative or NaN, or not called from the
            main thread.
    """
    limit = check_wait_timeout(timeout, "stop_on_signals() timeout")
    chosen = signals or (signal.SIGTERM, signal.SIGINT)
    with _lock:
        for signum in chosen:
            queues = _on_signal.setdefault(int(signum), [])
            queues.append((wb, limit))
            signal.signal(signum, _handle)


def _handle(signum: int, frame: FrameType | None) -> None:
    # A second signal of the same kind ends the process at once.
    signal.signal(signum, signal.SIG_DFL)
    with _lock:
        queues = list(_on_signal.pop(signum, ()))
    if in_wbactor(frame) or any(wb.interrupted_here() for wb, _ in queues):
        # The signal interrupted wbactor's own code on this thread (holding a
        # lock, or with a drop counted and not yet told to on_drop): stopping
        # here would wait for that code, or end the process before it is
        # done, so a thread stops the queues while it finishes.
        threading.Thread(
            target=_stop_then_reraise,
            args=(signum, queues),
            name="wbactor-stop-on-signal",
            daemon=False,
        ).start()
        return
    _stop_then_reraise(signum, queues)


def _stop_then_reraise(
    signum: int, queues: list[tuple[WriteBehind[Any], float | None]]
) -> None:
    try:
        for wb, limit in queues:
            wb._stop_now(limit)  # noqa: SLF001 - the handle's own path
            # Drops counted before the stop but told to on_drop on another
            # thread (an interrupted producer): let them be told first.
            wb._wait_reported(_REPORT_WAIT)  # noqa: SLF001 - the handle's own
    finally:
        os.kill(os.getpid(), signum)


_REPORT_WAIT = 1.0
"""Seconds the signal's default action waits for drops still being reported."""

_PACKAGE = (
    str(Path(__file__).parent) + os.sep,
    str(Path(__file__).resolve().parent) + os.sep,
)


def called_within_wbactor(frame: FrameType | None) -> bool:
    """Return whether wbactor's code runs below the first caller outside it.

    From `frame` up, wbactor's own frames (a `with` block's `__exit__`) are
    skipped; past the first frame of other code (the user's, or a signal
    handler), a wbactor frame means that code was called from, or
    interrupted, wbactor's own (an `on_drop`, a handler during a push).
    """
    while frame is not None and _is_wbactor(frame):
        frame = frame.f_back
    return in_wbactor(frame)


def _is_wbactor(frame: FrameType) -> bool:
    return frame.f_code.co_filename.startswith(_PACKAGE)


def in_wbactor(frame: FrameType | None) -> bool:
    """Return whether `frame` or a caller of it runs wbactor's own code."""
    while frame is not None:
        if _is_wbactor(frame):
            return True
        frame = frame.f_back
    return False
