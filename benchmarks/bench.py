#!/usr/bin/env python3
"""Measure wbactor's producer path against a floor and its peers, in one run.

Modelled on the project's baseline script. Every scenario moves N small
items `(player_id, x, y)` over 1,000 ids from its producer(s) to a no-op
consumer that only counts the items of each batch of up to 100. Rounds are
interleaved (every scenario once per round, order rotated), and every figure
is a median over rounds: absolute numbers swing between runs on a busy
machine, ratios from one run much less.

Scenarios:

  A    the floor: `deque.append` + `Event` wake when a batch is full; a
       consumer thread pops batches of 100.
  A4   the same, 4 producer threads.
  C    stock pykka: `ref.tell(item)` to a `ThreadingActor` that batches.
  E    OpenTelemetry's `BatchSpanProcessor.on_end(span)`, a no-op exporter,
       a queue of N so that it drops nothing.
  F    the coalescing floor: `with lock: d[key] = item`; the consumer swaps
       the dict out.
  W    wbactor `ref.tell(Push(item))`, `DROP_OLDEST`, capacity N.
  Wc   wbactor `ref.tell(Push(item))`, `COALESCE_BY_KEY` over the 1,000 ids.
  Wm   wbactor `ref.tell(PushMany(items))`, 100 items a message.
  W4   W with 4 producer threads.
  Ws   W with a slow flusher (50 ms per batch): the producer's cost should
       not change; its e2e is not measured (the flusher is made fast once
       the producer is done, to drain).

Columns:

  e2e items/s     N / (first push -> the consumer has everything).
  producer ns     median, over chunks of 100 pushes timed while the consumer
                  runs, of ns per push (robust to GIL hand-offs).
  max stall       the longest 100-push chunk in any round: the worst wait a
                  producer saw.
  vol. csw/item   voluntary context switches of the whole process per item.
  peak queued     the most items queued, sampled every 5,000 pushes.

Memory (`--memory`, and a fresh subprocess at the end of a full run):
a flusher that never returns (gated), capacity 100,000, `DROP_OLDEST`; push
5,000,000 fresh items and compare the RSS growth with what the first 100,000
queued items took.

structlog is configured at INFO, debug filtered, as in production.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import gc
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter, perf_counter_ns
from typing import TYPE_CHECKING, Any, ClassVar

import pykka
import structlog
from _machine import cpu_model
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanContext, TraceFlags

import wbactor

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

Item = tuple[int, float, float]
Chunks = list[list[Item]]

BATCH = 100
NKEYS = 1000
CHUNK = 100  # pushes per timing sample
SAMPLE_EVERY = 50  # chunks between backlog samples (5,000 pushes)
SLOW_FLUSH = 0.05  # seconds per batch for the slow flusher
MEM_CAPACITY = 100_000
MEM_PUSHES = 5_000_000
PAGE = os.sysconf("SC_PAGE_SIZE")

# The drop path logs a warning now and then; keep it off the table.
structlog.configure(
    wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    cache_logger_on_first_use=True,
)
logging.getLogger("opentelemetry").setLevel(logging.ERROR)


# ------------------------------------------------------------------ helpers


class RSS:
    """The process's RSS from /proc/self/statm, read without releasing the GIL.

    `os.pread` would release and retake the GIL; done every few ms in the
    producer, that resets the forced-switch timer of a waiting thread and
    starves the consumer. A `ctypes.PyDLL` call keeps the GIL.
    """

    _libc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6")
    _libc.pread.argtypes = (
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_long,
    )
    _libc.pread.restype = ctypes.c_ssize_t
    _buf = ctypes.create_string_buffer(128)
    _fd = -1

    @classmethod
    def now(cls) -> int:
        """Return the resident set size in bytes."""
        if cls._fd < 0:
            cls._fd = os.open("/proc/self/statm", os.O_RDONLY)
        k = cls._libc.pread(cls._fd, cls._buf, 128, 0)
        return int(cls._buf.raw[:k].split()[1]) * PAGE

    @classmethod
    def trim(cls) -> None:
        """Hand freed heap back to the OS, so reuse does not hide growth."""
        trim = getattr(cls._libc, "malloc_trim", None)  # glibc only
        if trim is not None:
            trim(0)


class Sink:
    """The no-op consumer: counts items and batches."""

    __slots__ = ("batches", "items")

    def __init__(self) -> None:
        self.items = 0
        self.batches = 0

    def __call__(self, batch: Sequence[object]) -> None:
        self.items += len(batch)
        self.batches += 1


def make_items(n: int) -> list[Item]:
    """Return `n` items `(player_id, x, y)` over `NKEYS` ids."""
    return [(i % NKEYS, float(i), float(i) * 0.5) for i in range(n)]


def chunked(items: list[Item]) -> Chunks:
    """Cut `items` into chunks of `CHUNK`, the unit a producer is timed by."""
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]


def call_loop(
    push: Callable[[Any], None],
    chunks: Chunks,
    samples: list[int],
    sampler: Callable[[], None],
) -> None:
    """Push every item, timing each chunk."""
    pc = perf_counter_ns
    rec = samples.append
    k = 0
    for chunk in chunks:
        t0 = pc()
        for it in chunk:
            push(it)
        rec(pc() - t0)
        k += 1
        if k == SAMPLE_EVERY:
            k = 0
            sampler()


# ---------------------------------------------------------------- scenarios


class Scenario:
    """One way of moving N items from producer(s) to a counting consumer."""

    key: ClassVar[str] = "?"
    label: ClassVar[str] = "?"
    nprod = 1
    exact = True  # the consumer must see exactly N items
    e2e = True  # whether end-to-end time means anything

    def setup(self, n: int) -> None:
        """Build the queue and its consumer for `n` items."""

    def produce(
        self, chunks: Chunks, samples: list[int], sampler: Callable[[], None]
    ) -> None:
        """Push every item of `chunks`, timing each chunk into `samples`."""
        raise NotImplementedError

    def producer_done(self) -> None:
        """Note that one producer is done."""

    def wait_done(self) -> int:
        """Wait until the consumer has everything; return the items it saw."""
        raise NotImplementedError

    def backlog(self) -> int:
        """Return the items queued now."""
        return 0

    def teardown(self) -> None:
        """Stop threads and actors."""


class _EventFloor(Scenario):
    """A floor: a consumer thread woken by an Event when a batch is ready."""

    def _start_consumer(self, n: int) -> None:
        self.n = n
        self.ev = threading.Event()
        self.done = threading.Event()
        self.sink = Sink()
        self.thread = threading.Thread(target=self._consume, daemon=True)
        self.thread.start()

    def _consume(self) -> None:
        raise NotImplementedError

    def producer_done(self) -> None:
        self.ev.set()  # the tail

    def wait_done(self) -> int:
        self.done.wait()
        return self.sink.items

    def teardown(self) -> None:
        self.thread.join()


class DequeEvent(_EventFloor):
    """A: the floor, a deque and an Event."""

    key = "A"
    label = "deque.append + Event (floor)"

    def __init__(self, nprod: int = 1) -> None:
        self.nprod = nprod

    def setup(self, n: int) -> None:
        self.dq: collections.deque[Item] = collections.deque()
        self._start_consumer(n)

    def _consume(self) -> None:
        dq, ev, sink, n = self.dq, self.ev, self.sink, self.n
        popleft = dq.popleft
        while sink.items < n:
            ev.wait(1.0)
            ev.clear()
            while dq:
                k = min(len(dq), BATCH)
                sink([popleft() for _ in range(k)])
        self.done.set()

    def produce(
        self, chunks: Chunks, samples: list[int], sampler: Callable[[], None]
    ) -> None:
        dq = self.dq
        append = dq.append
        is_set = self.ev.is_set
        ev_set = self.ev.set
        pc = perf_counter_ns
        rec = samples.append
        k = 0
        for chunk in chunks:
            t0 = pc()
            for it in chunk:
                append(it)
                if len(dq) >= BATCH and not is_set():
                    ev_set()
            rec(pc() - t0)
            k += 1
            if k == SAMPLE_EVERY:
                k = 0
                sampler()

    def backlog(self) -> int:
        return len(self.dq)


class DequeEvent4(DequeEvent):
    """A4: the floor with 4 producers."""

    key = "A4"
    label = "deque.append + Event, 4 producers"

    def __init__(self) -> None:
        super().__init__(4)


class _FlushAll:
    __slots__ = ()


FLUSH_ALL = _FlushAll()


class BatchingActor(pykka.ThreadingActor):
    """Stock pykka: one item per message, handed on in batches of 100."""

    use_daemon_thread = True

    def __init__(self, sink: Sink) -> None:
        super().__init__()
        self.buf: list[Item] = []
        self.sink = sink

    def on_receive(self, message: Any) -> Any:
        if message is FLUSH_ALL:
            if self.buf:
                self.sink(self.buf)
                self.buf = []
            return self.sink.items
        buf = self.buf
        buf.append(message)
        if len(buf) >= BATCH:
            self.sink(buf)
            self.buf = []
        return None


class PykkaTell(Scenario):
    """C: stock pykka `tell(item)`."""

    key = "C"
    label = "pykka tell(item)"

    def setup(self, n: int) -> None:  # noqa: ARG002 - the actor needs no size
        self.sink = Sink()
        self.ref = BatchingActor.start(self.sink)

    def produce(
        self, chunks: Chunks, samples: list[int], sampler: Callable[[], None]
    ) -> None:
        call_loop(self.ref.tell, chunks, samples, sampler)

    def wait_done(self) -> int:
        return int(self.ref.ask(FLUSH_ALL, block=True))

    def backlog(self) -> int:
        return int(self.ref.actor_inbox.qsize())  # type: ignore[attr-defined]

    def teardown(self) -> None:
        self.ref.stop()


class CountingExporter(SpanExporter):
    """A no-op span exporter that counts."""

    def __init__(self) -> None:
        self.n = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.n += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:  # noqa: ARG002
        return True


SPAN = ReadableSpan(
    name="bench",
    context=SpanContext(
        trace_id=0x0123456789ABCDEF0123456789ABCDEF,
        span_id=0x0123456789ABCDEF,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    ),
)


class OtelBSP(Scenario):
    """E: OpenTelemetry's BatchSpanProcessor, a queue that does not drop."""

    key = "E"
    label = "OTel BatchSpanProcessor, queue N"

    def setup(self, n: int) -> None:
        self.exporter = CountingExporter()
        self.bsp = BatchSpanProcessor(
            self.exporter,
            max_queue_size=n,
            max_export_batch_size=BATCH,
            schedule_delay_millis=1000,
        )
        self.queue = self.bsp._batch_processor._queue  # noqa: SLF001 - backlog only

    def produce(
        self, chunks: Chunks, samples: list[int], sampler: Callable[[], None]
    ) -> None:
        on_end, span = self.bsp.on_end, SPAN
        call_loop(lambda _: on_end(span), chunks, samples, sampler)

    def wait_done(self) -> int:
        self.bsp.force_flush()
        return self.exporter.n

    def backlog(self) -> int:
        return len(self.queue)

    def teardown(self) -> None:
        self.bsp.shutdown()  # type: ignore[no-untyped-call]


class CoalesceDict(_EventFloor):
    """F: the coalescing floor, a dict behind a lock swapped out by the consumer."""

    key = "F"
    label = "dict + lock, swapped out (coalescing floor)"
    exact = False

    def setup(self, n: int) -> None:
        self.lock = threading.Lock()
        self.d: dict[int, Item] = {}
        self.count = [0]
        self.writes = 0
        self._start_consumer(n)

    def _consume(self) -> None:
        lock, d, count, ev, sink = self.lock, self.d, self.count, self.ev, self.sink
        while self.writes < self.n:
            ev.wait(1.0)
            ev.clear()
            with lock:
                snap = d.copy()
                d.clear()
                w = count[0]
                count[0] = 0
            values = list(snap.values())
            for i in range(0, len(values), BATCH):
                sink(values[i : i + BATCH])
            self.writes += w
        self.done.set()

    def produce(
        self, chunks: Chunks, samples: list[int], sampler: Callable[[], None]
    ) -> None:
        lock, d, count = self.lock, self.d, self.count
        is_set = self.ev.is_set
        ev_set = self.ev.set
        pc = perf_counter_ns
        rec = samples.append
        k = 0
        for chunk in chunks:
            t0 = pc()
            for it in chunk:
                with lock:
                    d[it[0]] = it
                    c = count[0] + 1
                    count[0] = c
                if c >= BATCH and not is_set():
                    ev_set()
            rec(pc() - t0)
            k += 1
            if k == SAMPLE_EVERY:
                k = 0
                sampler()

    def backlog(self) -> int:
        return len(self.d)


def player_id(item: Item) -> int:
    """Return the coalescing key of `item`."""
    return item[0]


class WbPush(Scenario):
    """W: wbactor `ref.tell(Push(item))` under DROP_OLDEST."""

    key = "W"
    label = "wbactor tell(Push), DROP_OLDEST"
    policy = wbactor.Policy.DROP_OLDEST
    many = False
    slow = False

    def __init__(self, nprod: int = 1) -> None:
        self.nprod = nprod

    def setup(self, n: int) -> None:
        self.sink = sink = Sink()
        self.fast = fast = threading.Event()
        if not self.slow:
            fast.set()

        def flush(batch: list[Item]) -> None:
            if not fast.is_set():
                time.sleep(SLOW_FLUSH)  # a slow store
            sink(batch)

        coalescing = self.policy is wbactor.Policy.COALESCE_BY_KEY
        self.wb = wbactor.start(
            wbactor.Config(
                capacity=n,
                flusher=flush,
                batch_size=BATCH,
                policy=self.policy,
                key_func=player_id if coalescing else None,
            )
        )

    def produce(
        self, chunks: Chunks, samples: list[int], sampler: Callable[[], None]
    ) -> None:
        tell = self.wb.ref.tell
        pc = perf_counter_ns
        rec = samples.append
        k = 0
        if self.many:
            push_many = wbactor.PushMany
            for chunk in chunks:
                t0 = pc()
                tell(push_many(chunk))
                rec(pc() - t0)
                k += 1
                if k == SAMPLE_EVERY:
                    k = 0
                    sampler()
            return
        push = wbactor.Push
        for chunk in chunks:
            t0 = pc()
            for it in chunk:
                tell(push(it))
            rec(pc() - t0)
            k += 1
            if k == SAMPLE_EVERY:
                k = 0
                sampler()

    def wait_done(self) -> int:
        self.fast.set()
        self.wb.flush()
        stats = self.wb.stats()
        if stats.dropped or stats.depth or stats.in_flight:
            msg = f"{self.key}: unexpected {stats}"
            raise AssertionError(msg)
        return stats.flushed + stats.coalesced  # every item, accounted for

    def backlog(self) -> int:
        return self.wb.depth()

    def teardown(self) -> None:
        self.wb.stop()


class WbCoalesce(WbPush):
    """Wc: COALESCE_BY_KEY over 1,000 keys."""

    key = "Wc"
    label = "wbactor tell(Push), COALESCE_BY_KEY"
    policy = wbactor.Policy.COALESCE_BY_KEY


class WbPushMany(WbPush):
    """Wm: PushMany of 100 items a message."""

    key = "Wm"
    label = "wbactor tell(PushMany(100 items))"
    many = True


class WbPush4(WbPush):
    """W4: 4 producers."""

    key = "W4"
    label = "wbactor tell(Push), 4 producers"

    def __init__(self) -> None:
        super().__init__(4)


class WbSlow(WbPush):
    """Ws: a flusher that takes 50 ms a batch."""

    key = "Ws"
    label = "wbactor tell(Push), flusher 50 ms/batch"
    slow = True
    e2e = False


def all_scenarios() -> list[Scenario]:
    """Return every scenario, in table order."""
    return [
        DequeEvent(),
        DequeEvent4(),
        PykkaTell(),
        OtelBSP(),
        CoalesceDict(),
        WbPush(),
        WbCoalesce(),
        WbPushMany(),
        WbPush4(),
        WbSlow(),
    ]


# ------------------------------------------------------------------- runner


def run_once(scn: Scenario, chunks: Chunks, n: int) -> dict[str, float]:
    """Run `scn` once over `chunks` and return its measures."""
    gc.collect()
    scn.setup(n)
    peak = [0]

    def sampler() -> None:
        peak[0] = max(peak[0], scn.backlog())

    ru0 = _rusage()
    if scn.nprod == 1:
        samples: list[int] = []
        t0 = perf_counter()
        scn.produce(chunks, samples, sampler)
        sampler()
        scn.producer_done()
    else:
        m = scn.nprod
        per = -(-len(chunks) // m)
        parts = [chunks[i * per : (i + 1) * per] for i in range(m)]
        lists: list[list[int]] = [[] for _ in range(m)]
        go = threading.Event()

        def worker(i: int) -> None:
            go.wait()
            scn.produce(parts[i], lists[i], sampler)
            scn.producer_done()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(m)]
        for t in threads:
            t.start()
        t0 = perf_counter()
        go.set()
        for t in threads:
            t.join()
        sampler()
        samples = [s for lst in lists for s in lst]
    delivered = scn.wait_done()
    t1 = perf_counter()
    ru1 = _rusage()
    scn.teardown()
    if scn.exact and delivered != n:
        msg = f"{scn.key}: delivered {delivered} != {n}"
        raise AssertionError(msg)
    samples.sort()
    return {
        "e2e_s": t1 - t0,
        "chunk_med_ns": samples[len(samples) // 2] / CHUNK,
        "chunk_max_ms": samples[-1] / 1e6,
        "vcsw_per_item": (ru1[0] - ru0[0]) / n,
        "peak_queued": peak[0],
    }


def _rusage() -> tuple[int, int]:
    import resource  # noqa: PLC0415 - POSIX only, like the rest

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_nvcsw, ru.ru_nivcsw


@dataclass
class Row:
    """The medians of one scenario over the rounds."""

    key: str
    label: str
    e2e: bool
    e2e_med: float
    e2e_min: float
    e2e_max: float
    ns_med: float
    ns_min: float
    ns_max: float
    stall_ms: float
    vcsw: float
    peak_queued: float
    raw: list[dict[str, float]] = field(repr=False)


def summarize(scn: Scenario, runs: list[dict[str, float]], n: int) -> Row:
    """Return the medians of `scn`'s runs."""
    rates = [n / r["e2e_s"] for r in runs]
    ns = [r["chunk_med_ns"] for r in runs]
    return Row(
        key=scn.key,
        label=scn.label,
        e2e=scn.e2e,
        e2e_med=statistics.median(rates),
        e2e_min=min(rates),
        e2e_max=max(rates),
        ns_med=statistics.median(ns),
        ns_min=min(ns),
        ns_max=max(ns),
        stall_ms=max(r["chunk_max_ms"] for r in runs),
        vcsw=statistics.median(r["vcsw_per_item"] for r in runs),
        peak_queued=statistics.median(r["peak_queued"] for r in runs),
        raw=runs,
    )


# ------------------------------------------------------------------- memory


def measure_memory(pushes: int, capacity: int = MEM_CAPACITY) -> dict[str, float]:
    """Push `pushes` fresh items into a stalled queue of `capacity`; report RSS."""
    gate = threading.Event()

    def stalled(batch: list[Item]) -> None:  # noqa: ARG001 - never stores
        gate.wait()

    # Pay the process's one-time costs of the drop path (the first
    # `items_dropped` line, lazily built structures) on another queue.
    with wbactor.start(wbactor.Config(capacity=10, flusher=stalled)) as warm:
        for i in range(10_000):
            warm.ref.tell(wbactor.Push((i % NKEYS, float(i), i * 0.5)))
        gate.set()
    gate.clear()

    wb = wbactor.start(wbactor.Config(capacity=capacity, flusher=stalled))
    tell, push = wb.ref.tell, wbactor.Push
    gc.collect()
    RSS.trim()
    rss0 = RSS.now()
    # Fill it: `capacity` items queued behind the first batch, stuck in flight,
    # and a batch's worth of evictions, whose first ones take a few pages
    # once (8 KiB here, whether 1M or 5M pushes follow).
    filled = capacity + 2 * BATCH
    for i in range(filled):
        tell(push((i % NKEYS, float(i), i * 0.5)))
    full = RSS.now()
    peak = full
    t0 = perf_counter()
    for i in range(filled, pushes):
        tell(push((i % NKEYS, float(i), i * 0.5)))
        if not i % 5000:
            peak = max(peak, RSS.now())
    drop_ns = (perf_counter() - t0) / max(1, pushes - filled) * 1e9
    peak = max(peak, RSS.now())
    stats = wb.stats()
    gate.set()
    wb.stop()
    return {
        "pushes": pushes,
        "capacity": capacity,
        "queued": stats.depth,
        "in_flight": stats.in_flight,
        "dropped": sum(stats.dropped.values()),
        "full_bytes": full - rss0,
        "bytes_per_item": (full - rss0) / (capacity + BATCH),
        "growth_bytes": peak - rss0,
        "drop_path_ns": drop_ns,
    }


def memory_in_subprocess(pushes: int) -> dict[str, float] | None:
    """Run the memory measure in a fresh interpreter, for a clean RSS."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child"]
    cmd += ["--pushes", str(pushes)]
    proc = subprocess.run(  # noqa: S603 - this very script
        cmd, capture_output=True, text=True, check=False, timeout=600
    )
    if proc.returncode:
        print(f"# memory run failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------- report


def version(dist: str) -> str:
    """Return the installed version of `dist`, or `?`."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine() -> str:
    """Describe the CPU, the interpreter and the versions that matter."""
    cpu = cpu_model()
    return (
        f"{cpu}, {os.cpu_count()} cores; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"pykka {version('pykka')}, opentelemetry-sdk {version('opentelemetry-sdk')}, "
        f"structlog {version('structlog')}, wbactor {version('wbactor')}; "
        f"{platform.system()}"
    )


def fmt_rate(x: float) -> str:
    """Format items/s in thousands."""
    return f"{x / 1e3:,.0f}k"


def table(rows: list[Row]) -> list[str]:
    """Return the results table, ratios to the floor included."""
    base = {r.key: r for r in rows}
    a = base["A"]
    hdr = (
        "key",
        "scenario",
        "e2e items/s [min-max]",
        "e2e x A",
        "producer ns/push [min-max]",
        "producer x A",
        "max stall ms",
        "vol. csw/item",
        "peak queued",
    )
    lines: list[tuple[str, ...]] = []
    for r in rows:
        e2e = (
            f"{fmt_rate(r.e2e_med)} [{fmt_rate(r.e2e_min)}-{fmt_rate(r.e2e_max)}]"
            if r.e2e
            else "-"
        )
        lines.append(
            (
                r.key,
                r.label,
                e2e,
                f"{r.e2e_med / a.e2e_med:.2f}" if r.e2e else "-",
                f"{r.ns_med:.0f} [{r.ns_min:.0f}-{r.ns_max:.0f}]",
                f"{r.ns_med / a.ns_med:.2f}",
                f"{r.stall_ms:.1f}",
                f"{r.vcsw:.4f}",
                f"{r.peak_queued:,.0f}",
            )
        )
    return md_table([hdr, *lines])


@dataclass
class Target:
    """A goal: `measured` against `goal`, higher or lower being better."""

    name: str
    measured: float
    goal: float
    at_least: bool
    unit: str = "x"
    digits: int = 2

    @property
    def met(self) -> bool:
        """Whether the goal is met."""
        return (
            self.measured >= self.goal if self.at_least else self.measured <= self.goal
        )

    def cells(self) -> tuple[str, str, str, str]:
        """Return the target's row of the targets table."""
        sign = ">=" if self.at_least else "<="
        if self.unit == "x":
            return (
                self.name,
                f"{sign} {self.goal:g}x",
                f"{self.measured:.{self.digits}f}x",
                "PASS" if self.met else "MISS",
            )
        return (
            self.name,
            f"{sign} {self.goal:g} {self.unit}",
            f"{self.measured:.4g} {self.unit}",
            "PASS" if self.met else "MISS",
        )


# (name, numerator key, denominator key, column, goal, whether at least)
RATIO_TARGETS = [
    ("e2e tell(Push) vs OTel BSP (W/E)", "W", "E", "e2e_med", 1.25, True),
    ("e2e tell(Push) vs stock pykka (W/C)", "W", "C", "e2e_med", 8.0, True),
    ("producer ns per tell(Push) vs floor (W/A)", "W", "A", "ns_med", 8.0, False),
    ("e2e PushMany(100) vs floor (Wm/A)", "Wm", "A", "e2e_med", 1.0, True),
    ("e2e COALESCE_BY_KEY vs coalescing floor (Wc/F)", "Wc", "F", "e2e_med", 0.5, True),
    ("e2e 4 producers vs 1 (W4/W)", "W4", "W", "e2e_med", 0.9, True),
    ("producer ns, slow flusher vs no-op (Ws/W)", "Ws", "W", "ns_med", 1.2, False),
]


def targets(rows: list[Row], mem: dict[str, float] | None) -> list[Target]:
    """Return every target the rows (and the memory measure) can judge."""
    r = {row.key: row for row in rows}
    out = [
        Target(name, getattr(r[a], col) / getattr(r[b], col), goal, at_least=least)
        for name, a, b, col, goal, least in RATIO_TARGETS
        if a in r and b in r
    ]
    ours = [r[k] for k in ("W", "Wc", "Wm", "W4") if k in r]
    if ours:
        worst = max(ours, key=lambda row: row.vcsw)
        name = f"voluntary csw per item (worst: {worst.key})"
        out.append(Target(name, worst.vcsw, 0.01, at_least=False, unit="/item"))
    if mem is not None:
        name = (
            f"RSS growth, {mem['pushes']:,.0f} pushes vs "
            f"{mem['capacity']:,.0f} queued items"
        )
        # RSS moves in pages and allocator arenas: 1 % of slack for that
        # (an unbounded queue would grow 50x here).
        growth = mem["growth_bytes"] / mem["full_bytes"]
        out.append(Target(name, growth, 1.01, at_least=False, unit="x", digits=3))
    return out


def md_table(cells: list[tuple[str, ...]]) -> list[str]:
    """Lay out a markdown table, the first row being the header."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [line(cells[0]) + " |", rule] + [line(row) + " |" for row in cells[1:]]


def report(
    rows: list[Row],
    mem: dict[str, float] | None,
    args: argparse.Namespace,
    command: str,
) -> str:
    """Return the whole report, in markdown."""
    out = [
        f"Machine: {machine()}.",
        "",
        (
            f"Command: `{command}`; N = {args.n:,} items `(player_id, x, y)` over "
            f"{NKEYS:,} ids, batches of {BATCH}, {args.rounds} interleaved rounds, "
            "medians [min-max]."
        ),
        "",
        *table(rows),
    ]
    if mem is not None:
        out += [
            "",
            (
                f"Memory: a stalled flusher, capacity {mem['capacity']:,.0f}, "
                f"{mem['pushes']:,.0f} pushes (DROP_OLDEST): the first "
                f"{mem['capacity']:,.0f} queued items (and a batch in flight) took "
                f"{mem['full_bytes'] / 2**20:.1f} MiB "
                f"({mem['bytes_per_item']:.0f} bytes each, item included); "
                f"the RSS grew {mem['growth_bytes'] / 2**20:.1f} MiB in all; "
                f"{mem['dropped']:,.0f} dropped, {mem['queued']:,.0f} queued, "
                f"{mem['in_flight']:,.0f} in flight; "
                f"{mem['drop_path_ns']:.0f} ns per push at capacity (each one evicts)."
            ),
        ]
    tg = targets(rows, mem)
    if tg:
        out += [
            "",
            *md_table([("target", "goal", "measured", ""), *(t.cells() for t in tg)]),
        ]
    return "\n".join(out) + "\n"


def chart(rows: list[Row], path: Path, title: str) -> None:
    """Draw e2e items/s and producer ns per push, median with min-max bars."""
    import matplotlib as mpl  # noqa: PLC0415 - only for --chart

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    e2e_rows = [r for r in rows if r.e2e]
    colours = ["tab:blue" if r.key.startswith("W") else "tab:gray" for r in rows]
    labels = [f"{r.key}  {r.label}" for r in e2e_rows]
    ax1.barh(
        labels,
        [r.e2e_med / 1e3 for r in e2e_rows],
        xerr=[
            [(r.e2e_med - r.e2e_min) / 1e3 for r in e2e_rows],
            [(r.e2e_max - r.e2e_med) / 1e3 for r in e2e_rows],
        ],
        color=[c for c, r in zip(colours, rows, strict=True) if r.e2e],
    )
    ax1.set_xscale("log")
    ax1.set_xlabel("end-to-end items/s, thousands (log; higher is better)")
    ax1.invert_yaxis()
    ax2.barh(
        [r.key for r in rows],
        [r.ns_med for r in rows],
        xerr=[[r.ns_med - r.ns_min for r in rows], [r.ns_max - r.ns_med for r in rows]],
        color=colours,
    )
    ax2.set_xscale("log")
    ax2.set_xlabel("producer ns per push (log; lower is better)")
    ax2.invert_yaxis()
    fig.suptitle(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="N=100k, 3 rounds, 1M pushes")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    ap.add_argument("--n", type=int, default=500_000, help="items per run (500,000)")
    ap.add_argument("--only", default="", help="comma-separated scenario keys")
    ap.add_argument("--chart", type=Path, help="write a PNG chart here")
    ap.add_argument("--json", type=Path, help="write the raw results here")
    ap.add_argument("--markdown", type=Path, help="write the report here too")
    ap.add_argument("--memory", action="store_true", help="run the memory measure only")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measure")
    ap.add_argument("--pushes", type=int, default=MEM_PUSHES, help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 100_000)
        args.rounds = min(args.rounds, 3)
        args.pushes = min(args.pushes, 1_000_000)
    if args.n % CHUNK:
        ap.error(f"--n must be a multiple of {CHUNK}")
    return args


def run_rounds(scns: list[Scenario], args: argparse.Namespace) -> list[Row]:
    """Warm every scenario up, run the interleaved rounds, return the medians."""
    started = perf_counter()
    chunks = chunked(make_items(args.n))
    gc.collect()
    gc.freeze()  # the items are not the subject: keep them out of GC passes
    warm = chunks[: 20_000 // CHUNK]
    for s in scns:
        run_once(s, warm, len(warm) * CHUNK)
    results: dict[str, list[dict[str, float]]] = {s.key: [] for s in scns}
    for rnd in range(args.rounds):
        order = scns[rnd % len(scns) :] + scns[: rnd % len(scns)]
        for s in order:
            results[s.key].append(run_once(s, chunks, args.n))
        elapsed = perf_counter() - started
        print(f"# round {rnd + 1} done at {elapsed:.0f} s", flush=True)
    gc.unfreeze()
    return [summarize(s, results[s.key], args.n) for s in scns]


def write_outputs(
    rows: list[Row], mem: dict[str, float] | None, args: argparse.Namespace
) -> None:
    """Write the chart and the raw results, if asked for."""
    if args.chart and rows:
        chart(rows, args.chart, machine())
    if args.json:
        payload = {
            "machine": machine(),
            "n": args.n,
            "rounds": args.rounds,
            "rows": [r.__dict__ for r in rows],
            "memory": mem,
        }
        args.json.write_text(json.dumps(payload, indent=1))


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and the memory measure; print the report."""
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(measure_memory(args.pushes)))
        return 0
    command = " ".join(["python benchmarks/bench.py", *sys.argv[1:]])
    started = perf_counter()
    print(f"# {machine()}", flush=True)
    scns = [] if args.memory else all_scenarios()
    if args.only:
        keep = set(args.only.split(","))
        scns = [s for s in scns if s.key in keep]
    if scns and not any(s.key == "A" for s in scns):
        print("# the table needs scenario A (the floor)")
        return 2
    rows = run_rounds(scns, args) if scns else []
    mem = None
    if not args.no_memory and (args.memory or not args.only):
        mem = memory_in_subprocess(args.pushes)
        print(f"# memory done at {perf_counter() - started:.0f} s", flush=True)
    text = report(rows, mem, args, command) if rows else json.dumps(mem, indent=1)
    print(f"\n{text}")
    if args.markdown:
        args.markdown.write_text(text)
    write_outputs(rows, mem, args)
    print(f"# total {perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
