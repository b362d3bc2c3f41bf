"""`Ticks`: a count many threads add to without a lock, read exactly."""

from __future__ import annotations

import threading

from wbactor._ticks import Ticks


def test_reads_count_every_tick_and_not_their_own() -> None:
    ticks = Ticks()
    assert ticks.read() == 0
    for _ in range(5):
        ticks.tick()
    assert ticks.read() == 5
    assert ticks.read() == 5  # a read changes nothing it reports
    ticks.tick()
    assert ticks.read() == 6


def test_ticks_from_many_threads_are_all_counted_while_reads_run() -> None:
    ticks = Ticks()
    lock = threading.Lock()
    go = threading.Barrier(5)
    seen: list[int] = []

    def tick() -> None:
        go.wait(5)
        for _ in range(20_000):
            ticks.tick()

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for thread in threads:
        thread.start()
    go.wait(5)
    while any(thread.is_alive() for thread in threads):
        with lock:  # reads share a lock; ticks take none
            seen.append(ticks.read())
    for thread in threads:
        thread.join(5)
    with lock:
        assert ticks.read() == 80_000
    assert seen == sorted(seen)
    assert all(0 <= count <= 80_000 for count in seen)
