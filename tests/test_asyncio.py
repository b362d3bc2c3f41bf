"""asyncio: apush, aflush and astop never block a ticking loop; async flushers."""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from support import WAIT, conservation_holds, running

import wbactor
from wbactor.testing import GatedFlusher, RecordingFlusher

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine

R = TypeVar("R")

TICK = 0.01
MAX_GAP = 0.1
"""The longest a 10 ms ticker may go without running: the loop never blocks."""


class Ticker:
    """A task that records `loop.time()` every 10 ms while the test awaits."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.times.append(loop.time())
            await asyncio.sleep(TICK)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._tick())

    async def stop(self) -> float:
        """Stop ticking; return the longest gap between two ticks."""
        assert self._task is not None
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task
        self.times.append(asyncio.get_running_loop().time())
        return max(b - a for a, b in zip(self.times, self.times[1:], strict=False))


async def while_ticking(awaitable: Awaitable[R]) -> tuple[R, float]:
    """Await `awaitable` beside a ticker; return its result and the longest gap."""
    ticker = Ticker()
    ticker.start()
    await asyncio.sleep(0)
    try:
        result = await awaitable
    finally:
        gap = await ticker.stop()
    return result, gap


def join_flusher_threads() -> None:
    """Wait for abandoned flusher actors' threads to end (once their gate opens)."""
    for thread in threading.enumerate():
        if thread.name.startswith("FlusherActor"):
            thread.join(timeout=WAIT)
            assert not thread.is_alive()


def release_later(flusher: GatedFlusher[Any], seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, flusher.release)
    timer.start()
    return timer


def run(coroutine: Coroutine[Any, Any, R]) -> R:
    return asyncio.run(coroutine)


def gated(
    capacity: int = 100, **kwargs: Any
) -> tuple[GatedFlusher[int], wbactor.Config[int]]:
    flusher: GatedFlusher[int] = GatedFlusher()
    config: wbactor.Config[int] = wbactor.Config(
        capacity=capacity, flusher=flusher, flush_interval=0.01, **kwargs
    )
    return flusher, config


# -- aflush ---------------------------------------------------------------------


def test_aflush_waits_for_a_slow_flusher_while_the_loop_keeps_ticking() -> None:
    flusher, config = gated()
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany([1, 2, 3]))
        timer = release_later(flusher, 0.5)

        async def main() -> float:
            started = time.monotonic()
            _, gap = await while_ticking(wb.aflush(timeout=WAIT))
            assert time.monotonic() - started >= 0.4
            return gap

        gap = run(main())
        timer.join()
        assert flusher.items == [1, 2, 3]
        assert wb.stats().flushed == 3
    assert isinstance(gap, float)
    assert gap < MAX_GAP


def test_aflush_times_out_without_blocking_the_loop() -> None:
    flusher, config = gated()
    with running(config) as wb:
        wb.ref.tell(wbactor.Push(1))
        assert flusher.entered.wait(WAIT)

        async def main() -> float:
            started = time.monotonic()
            with pytest.raises(TimeoutError, match=r"not done within 0\.3 s"):
                await while_ticking(wb.aflush(0.3))
            elapsed = time.monotonic() - started
            assert 0.25 <= elapsed < 2.0
            ticker = Ticker()
            ticker.start()
            with pytest.raises(TimeoutError):
                await wb.aflush(timeout=0.2)
            return await ticker.stop()

        gap = run(main())
        flusher.release()
        wb.flush(WAIT)  # the flush went on
    assert isinstance(gap, float)
    assert gap < MAX_GAP


def test_aflush_with_nothing_queued_returns() -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    with running(wbactor.Config(capacity=10, flusher=flusher)) as wb:
        run(wb.aflush())
        wb.ref.tell(wbactor.Push(7))
        run(wb.aflush(math.inf))
        assert flusher.items == [7]


def test_a_cancelled_aflush_leaves_the_flush_running() -> None:
    flusher, config = gated()
    with running(config) as wb:
        wb.ref.tell(wbactor.Push(1))
        assert flusher.entered.wait(WAIT)

        async def main() -> None:
            task = asyncio.create_task(wb.aflush())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        run(main())
        flusher.release()
        wb.flush(WAIT)
        assert flusher.items == [1]
    deadline = time.monotonic() + WAIT
    while any(t.name == "wbactor-aflush" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the aflush helper thread lingers"
        time.sleep(0.01)


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_bad_timeouts_raise_value_error_before_anything_happens(bad: float) -> None:
    flusher, config = gated(capacity=1, policy=wbactor.Policy.BLOCK)
    with running(config) as wb:

        async def main() -> None:
            with pytest.raises(ValueError, match="aflush"):
                await wb.aflush(bad)
            with pytest.raises(ValueError, match="apush"):
                await wb.apush(1, bad)
            with pytest.raises(ValueError, match="astop"):
                await wb.astop(timeout=bad)

        run(main())
        assert wb.stats().pushed == 0
        assert wb.depth() == 0
        wb.push(2)  # still running: astop changed nothing
        flusher.release()


def test_aflush_and_apush_on_a_stopped_queue_raise_queue_closed() -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher))
    wb.stop(WAIT)

    async def main() -> None:
        with pytest.raises(wbactor.QueueClosedError):
            await wb.aflush()
        with pytest.raises(wbactor.QueueClosedError):
            await wb.apush(1)

    run(main())
    assert wb.stats().pushed == 0


def test_aflush_from_the_flusher_itself_raises_instead_of_waiting() -> None:
    errors: list[BaseException] = []
    holder: list[wbactor.WriteBehind[int]] = []

    async def flush(batch: list[int]) -> None:
        del batch
        try:
            await holder[0].aflush()
        except RuntimeError as error:
            errors.append(error)

    with running(wbactor.Config(capacity=10, flusher=flush)) as wb:
        holder.append(wb)
        wb.ref.tell(wbactor.Push(1))
        wb.flush(WAIT)
    assert len(errors) == 1
    assert "aflush()" in str(errors[0])


# -- astop ----------------------------------------------------------------------


def test_astop_drains_a_slow_flusher_while_the_loop_keeps_ticking() -> None:
    flusher, config = gated()
    wb = wbactor.start(config)
    wb.ref.tell(wbactor.PushMany(range(10)))
    timer = release_later(flusher, 0.5)

    async def main() -> tuple[wbactor.Stats, float]:
        return await while_ticking(wb.astop(timeout=WAIT))

    stats, gap = asyncio.run(main())
    timer.join()
    assert gap < MAX_GAP
    assert stats.flushed == 10
    assert stats.depth == stats.in_flight == 0
    assert wb.stop() == stats
    assert asyncio.run(wb.astop()) == stats  # idempotent


def test_astop_with_a_timeout_drops_what_is_left_as_closed() -> None:
    flusher, config = gated()
    wb = wbactor.start(config)
    wb.ref.tell(wbactor.PushMany(range(5)))
    assert flusher.entered.wait(WAIT)

    async def main() -> tuple[wbactor.Stats, float]:
        return await while_ticking(wb.astop(0.2))

    stats, gap = asyncio.run(main())
    flusher.release()  # the abandoned attempt ends; its result counts for nothing
    join_flusher_threads()
    assert gap < MAX_GAP
    assert stats.dropped == {wbactor.DropReason.CLOSED: 5}
    assert conservation_holds(stats)


def test_a_cancelled_astop_still_stops_the_queue() -> None:
    flusher, config = gated()
    wb = wbactor.start(config)
    wb.ref.tell(wbactor.PushMany(range(3)))
    assert flusher.entered.wait(WAIT)

    async def main() -> None:
        task = asyncio.create_task(wb.astop())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    flusher.release()
    stats = wb.stop(WAIT)  # waits for the stop the cancelled astop began
    assert stats.flushed == 3
    with pytest.raises(wbactor.QueueClosedError):
        wb.push(4)


# -- apush ----------------------------------------------------------------------


def test_apush_under_block_waits_for_room_while_the_loop_keeps_ticking() -> None:
    flusher, config = gated(capacity=2, batch_size=1, policy=wbactor.Policy.BLOCK)
    with running(config) as wb:
        wb.push(1)
        assert flusher.entered.wait(WAIT)  # 1 in flight
        wb.push(2)
        wb.push(3)  # full: 2 and 3 queued
        timer = release_later(flusher, 0.4)

        async def main() -> float:
            started = time.monotonic()
            _, gap = await while_ticking(wb.apush(4, timeout=WAIT))
            assert time.monotonic() - started >= 0.3
            return gap

        gap = run(main())
        timer.join()
        wb.flush(WAIT)
        assert flusher.items == [1, 2, 3, 4]
        assert wb.stats().pushed == 4
    assert isinstance(gap, float)
    assert gap < MAX_GAP


def test_apush_under_block_times_out_and_is_not_counted() -> None:
    flusher, config = gated(capacity=1, batch_size=1, policy=wbactor.Policy.BLOCK)
    with running(config) as wb:
        wb.push(1)
        assert flusher.entered.wait(WAIT)
        wb.push(2)  # full

        async def main() -> float:
            started = time.monotonic()
            with pytest.raises(wbactor.PushTimeoutError, match=r"within 0\.2 s"):
                await while_ticking(wb.apush(3, 0.2))
            assert 0.15 <= time.monotonic() - started < 2.0
            with pytest.raises(wbactor.PushTimeoutError):
                await wb.apush(3, timeout=0)
            ticker = Ticker()
            ticker.start()
            with pytest.raises(TimeoutError):  # PushTimeoutError is a TimeoutError
                await wb.apush(3, timeout=0.1)
            return await ticker.stop()

        gap = run(main())
        assert gap < MAX_GAP
        assert wb.stats().pushed == 2
        flusher.release()


def test_a_cancelled_apush_under_block_never_pushes_later() -> None:
    flusher, config = gated(capacity=1, batch_size=1, policy=wbactor.Policy.BLOCK)
    with running(config) as wb:
        wb.push(1)
        assert flusher.entered.wait(WAIT)
        wb.push(2)  # full

        async def main() -> None:
            task = asyncio.create_task(wb.apush(3))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            flusher.release()  # room from now on
            await asyncio.sleep(0.2)

        run(main())
        wb.flush(WAIT)
        assert flusher.items == [1, 2]
        assert wb.stats().pushed == 2


def test_apush_is_released_with_queue_closed_when_the_queue_stops() -> None:
    flusher, config = gated(capacity=1, batch_size=1, policy=wbactor.Policy.BLOCK)
    wb = wbactor.start(config)
    wb.push(1)
    assert flusher.entered.wait(WAIT)
    wb.push(2)

    async def main() -> None:
        task = asyncio.create_task(wb.apush(3))
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(wb.astop(WAIT))
        with pytest.raises(wbactor.QueueClosedError):
            await task
        flusher.release()
        stats = await stopping
        assert stats.flushed == stats.pushed == 2

    asyncio.run(main())


@pytest.mark.parametrize(
    "policy",
    [wbactor.Policy.DROP_OLDEST, wbactor.Policy.DROP_NEWEST, wbactor.Policy.BLOCK],
)
def test_apush_with_room_pushes_at_once(policy: wbactor.Policy) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(capacity=10, flusher=flusher, policy=policy)
    with running(config) as wb:

        async def main() -> None:
            for n in range(5):
                await wb.apush(n)
            await wb.aflush()

        run(main())
        assert flusher.items == [0, 1, 2, 3, 4]


def test_apush_coalesces_by_key() -> None:
    flusher: RecordingFlusher[tuple[str, int]] = RecordingFlusher()
    config = wbactor.Config(
        capacity=10,
        flusher=flusher,
        policy=wbactor.Policy.COALESCE_BY_KEY,
        key_func=lambda item: item[0],
        flush_interval=60.0,
    )
    with running(config) as wb:

        async def main() -> None:
            await wb.apush(("a", 1))
            await wb.apush(("a", 2))
            await wb.aflush()

        run(main())
        assert flusher.items == [("a", 2)]
        assert wb.stats().coalesced == 1


# -- async flushers -------------------------------------------------------------


class AsyncFlaky:
    """An async flusher: fails its first `failures` attempts, hangs on `hang`."""

    def __init__(self, failures: int = 0, hang: int | None = None) -> None:
        self.failures = failures
        self.hang = hang
        self.attempts = 0
        self.items: list[int] = []
        self.loops: set[int] = set()
        self.threads: set[int] = set()
        self.hang_over = threading.Event()

    async def flush(self, batch: list[int]) -> None:
        self.attempts += 1
        self.loops.add(id(asyncio.get_running_loop()))
        self.threads.add(threading.get_ident())
        await asyncio.sleep(0.001)
        if self.attempts == self.hang:
            await asyncio.sleep(0.5)
            self.hang_over.set()
        if self.attempts <= self.failures:
            msg = "async store down"
            raise ConnectionError(msg)
        self.items.extend(batch)


def test_an_async_flusher_is_retried_and_runs_on_one_loop_per_actor() -> None:
    flusher = AsyncFlaky(failures=2)
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=2,
        retry_backoff=lambda attempt: 0.01,
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany(range(6)))
        wb.flush(WAIT)
        stats = wb.stats()
    assert flusher.items == list(range(6))
    assert stats.retries == 2
    assert stats.restarts == 2
    assert stats.flushed == 6


def test_an_async_flusher_runs_its_batches_on_the_same_loop() -> None:
    flusher = AsyncFlaky()
    config = wbactor.Config(capacity=100, flusher=flusher, batch_size=1)
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany(range(5)))
        wb.flush(WAIT)
    assert flusher.items == list(range(5))
    assert len(flusher.threads) == 1
    assert len(flusher.loops) == 1  # the actor's own loop, not one per batch


def test_an_async_flusher_that_hangs_past_flush_timeout_is_restarted() -> None:
    flusher = AsyncFlaky(hang=1)
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        flush_timeout=0.2,
        retry_backoff=lambda attempt: 0.01,
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany([1, 2]))
        wb.flush(WAIT)
        stats = wb.stats()
        assert flusher.hang_over.wait(WAIT)  # the abandoned attempt ends by itself
    assert stats.retries >= 1
    assert stats.restarts >= 1
    assert stats.flushed == 2
    assert 1 in flusher.items
    assert 2 in flusher.items


def test_an_async_callable_flusher_exhausts_its_retries() -> None:
    calls: list[int] = []

    async def always_down(batch: list[int]) -> None:
        calls.append(len(batch))
        msg = "down"
        raise OSError(msg)

    config = wbactor.Config(
        capacity=10,
        flusher=always_down,
        max_retries=2,
        retry_backoff=lambda attempt: 0.01,
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.Push(1))
        wb.flush(WAIT)
        stats = wb.stats()
    assert calls == [1, 1, 1]
    assert stats.dropped == {wbactor.DropReason.RETRIES_EXHAUSTED: 1}


def test_a_game_loop_pushes_flushes_and_stops_without_stalling() -> None:
    flusher = AsyncFlaky()
    config = wbactor.Config(
        capacity=1000,
        flusher=flusher,
        batch_size=50,
        flush_interval=0.02,
        policy=wbactor.Policy.BLOCK,
    )
    wb = wbactor.start(config)

    async def game() -> wbactor.Stats:
        ticker = Ticker()
        ticker.start()
        for tick in range(20):
            for entity in range(20):
                await wb.apush(tick * 20 + entity)
            if tick % 5 == 4:
                await wb.aflush(timeout=WAIT)
            await asyncio.sleep(0.005)
        stats = await wb.astop(timeout=WAIT)
        assert await ticker.stop() < MAX_GAP
        return stats

    stats = asyncio.run(game())
    assert stats.flushed == stats.pushed == 400
    assert flusher.items == list(range(400))


def test_the_async_methods_are_coroutine_functions() -> None:
    for name in ("apush", "aflush", "astop"):
        assert inspect.iscoroutinefunction(getattr(wbactor.WriteBehind, name))
