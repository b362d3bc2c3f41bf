"""Waiting for a queue from a coroutine without blocking its event loop.

The helpers behind `WriteBehind.aflush()` and `astop()`: the blocking wait
runs on a thread of its own, and its outcome is handed back to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

import pykka

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["hand_over", "off_loop", "wait_settled"]

R = TypeVar("R")

_AWAIT_SLICE = 0.05
"""Seconds the thread behind `aflush()` waits at a time; it gives up within one
slice once the awaiting task is cancelled."""


async def wait_settled(future: pykka.Future[Any], limit: float | None) -> Any:
    """Return what `future` holds, waiting on a helper thread, not on the loop.

    pykka's `await future` would block the loop in `future.get()`. The thread
    waits in `_AWAIT_SLICE` slices, up to `limit` seconds (then
    `pykka.Timeout`), and stops at the end of a slice once the awaiting task
    is cancelled.
    """
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[Any] = loop.create_future()
    given_up = threading.Event()
    deadline = None if limit is None else time.monotonic() + limit

    def wait() -> None:
        while not given_up.is_set():
            wait_for = _AWAIT_SLICE
            last = False
            if deadline is not None:
                remaining = deadline - time.monotonic()
                last = remaining <= _AWAIT_SLICE
                wait_for = max(0.0, min(remaining, _AWAIT_SLICE))
            try:
                value = future.get(timeout=wait_for)
            except pykka.Timeout as error:
                if last:
                    hand_over(loop, outcome, error=error)
                    return
            except BaseException as error:  # noqa: BLE001 - the loop re-raises it
                hand_over(loop, outcome, error=error)
                return
            else:
                hand_over(loop, outcome, value=value)
                return

    threading.Thread(target=wait, name="wbactor-aflush", daemon=True).start()
    try:
        return await outcome
    finally:
        given_up.set()


async def off_loop(call: Callable[[], R], name: str) -> R:
    """Run `call` on a (non-daemon) thread of its own; return or raise its outcome.

    A cancelled awaiting task stops waiting, but `call` runs to its end.
    """
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[R] = loop.create_future()

    def run() -> None:
        try:
            value = call()
        except BaseException as error:  # noqa: BLE001 - the loop re-raises it
            hand_over(loop, outcome, error=error)
        else:
            hand_over(loop, outcome, value=value)

    threading.Thread(target=run, name=name, daemon=False).start()
    return await outcome


def hand_over(
    loop: asyncio.AbstractEventLoop,
    outcome: asyncio.Future[Any],
    *,
    value: Any = None,
    error: BaseException | None = None,
) -> None:
    """Settle `outcome` on its loop, from another thread, unless it is done."""

    def settle() -> None:
        if outcome.done():  # the awaiting task was cancelled
            return
        if error is None:
            outcome.set_result(value)
        else:
            outcome.set_exception(error)

    # The loop may be closed by now, its task cancelled: nobody is waiting.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)
