"""Metrics: a queue's `Stats` as OpenTelemetry instruments or Prometheus metrics.

Two ways in, each behind its own extra, so `import wbactor` (and this module)
imports neither library:

- `instrument(wb)` (extra `otel`, `pip install 'wbactor[otel]'`) registers
  observable instruments on the OpenTelemetry meter `wbactor`, read from
  `wb.stats()` at each collection, and a `wbactor.flush.duration` histogram
  fed by every flush attempt.
- `PrometheusCollector(wb)` (extra `prometheus`,
  `pip install 'wbactor[prometheus]'`) is a `prometheus_client` collector for a
  `CollectorRegistry`, with the same figures under Prometheus names.

Every point carries `queue=<Config.name>`. The values are `wb.stats()`'s: the
counters are the queue's own totals since `start()`, read at collection time,
so nothing is counted twice or missed between two collections.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import threading
import weakref
from typing import TYPE_CHECKING, Any, Final, Self

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from types import ModuleType, TracebackType

    from opentelemetry.metrics import (
        CallbackOptions,
        Histogram,
        Meter,
        MeterProvider,
        Observation,
    )
    from prometheus_client.metrics_core import Metric

    from wbactor._api import WriteBehind
    from wbactor._stats import Stats

__all__ = [
    "DURATION_BUCKETS",
    "OUTCOMES",
    "Instrumentation",
    "PrometheusCollector",
    "instrument",
]

DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds, in seconds, of the flush-duration histogram's buckets (an
infinite one follows): from half a millisecond (a small SQLite batch) to 30 s
(a store that hangs until `flush_timeout`)."""

OUTCOMES: Final[tuple[str, ...]] = (
    "pushed",
    "flushed",
    "coalesced",
    "dropped",
    "recovered",
)
"""The values of the `outcome` attribute (label) of `wbactor.items`."""

_OTEL_HINT = (
    "wbactor.metrics.instrument needs the OpenTelemetry API: "
    "pip install 'wbactor[otel]'"
)
_PROMETHEUS_HINT = (
    "wbactor.metrics.PrometheusCollector needs prometheus_client: "
    "pip install 'wbactor[prometheus]'"
)


def _need(module: str, hint: str) -> ModuleType:
    """Import `module`, or raise ImportError with `hint` (which extra to install)."""
    import importlib  # noqa: PLC0415 - only when a metrics library is asked for

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(hint) from error


def _items(stats: Stats) -> Iterator[tuple[str, str, int]]:
    """Yield `(outcome, reason, count)` for `wbactor.items`; reason "" unless dropped.

    Dropped items give one triple per reason with a non-zero count.
    `recovered` (items recovered from a journal) is 0 where `Stats` has no
    such field.
    """
    yield "pushed", "", stats.pushed
    yield "flushed", "", stats.flushed
    yield "coalesced", "", stats.coalesced
    for reason, count in stats.dropped.items():
        if count:
            yield "dropped", str(reason.value), count
    yield "recovered", "", int(getattr(stats, "recovered", 0))


def _attempt_observers(wb: WriteBehind[Any]) -> list[Callable[[float], object]]:
    """Return the list the flusher actor calls with each attempt's duration."""
    observers: list[Callable[[float], object]]
    observers = wb._ledger.attempts.observers  # noqa: SLF001 - the queue's own hook
    return observers


def _stopped(wb: WriteBehind[Any]) -> bool:
    """Return whether `wb` is stopping or stopped (its figures are final)."""
    closed: bool = wb._ledger.closed  # noqa: SLF001 - the queue's own state
    return closed


def _detach(wb: WriteBehind[Any], observer: Callable[[float], object]) -> None:
    """Remove `observer` from `wb`'s attempt observers, if it is still there."""
    with contextlib.suppress(ValueError):
        _attempt_observers(wb).remove(observer)


# ---------------------------------------------------------------- OpenTelemetry


class Instrumentation:
    """One queue's registration on a meter provider, made by `instrument()`.

    `close()` (or leaving a `with` block) detaches the queue: its points are
    no longer reported and its flush attempts no longer recorded.
    OpenTelemetry has no way to remove an observable instrument, so the
    instruments stay on the meter, shared with any other queue instrumented
    on that provider, and report only the queues still attached.
    """

    def __init__(
        self,
        wb: WriteBehind[Any],
        meter: _OtelQueues,
        observer: Callable[[float], object],
    ) -> None:
        """Keep what `close()` undoes; use `instrument()` instead."""
        self._wb = wb
        self._meter = meter
        self._observer = observer
        self._closed = False

    @property
    def queue(self) -> str:
        """The `queue` attribute of this queue's points (its `Config.name`)."""
        return self._wb.name

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    def close(self) -> None:
        """Stop reporting the queue; idempotent."""
        if self._closed:
            return
        self._closed = True
        _detach(self._wb, self._observer)
        self._meter.remove(self._wb)

    def __enter__(self) -> Self:
        """Return the registration; `close()` runs on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Detach the queue."""
        self.close()


class _OtelQueues:
    """The wbactor instruments of one meter provider, and the queues they read.

    OpenTelemetry's SDK keeps the first instrument registered under a name
    and ignores the callbacks of a second one, so every queue instrumented on
    one provider shares one set of instruments; each callback reports every
    attached queue.

    Each collection reads every queue's `stats()` once: the first callback of
    a collection takes the snapshot, the others read it, so the instruments of
    one collection agree with each other (a new collection begins when an
    instrument that has read the snapshot asks again).
    """

    def __init__(self, meter: Meter) -> None:
        """Create the instruments on `meter`."""
        api = _need("opentelemetry.metrics", _OTEL_HINT)
        self._api = api
        self._lock = threading.RLock()
        self._queues: dict[str, WriteBehind[Any]] = {}
        self._snapshot: list[tuple[str, Stats]] | None = None
        self._seen: set[str] = set()
        meter.create_observable_counter(
            "wbactor.items",
            callbacks=[self._reader("items", self._observe_items)],
            unit="{item}",
            description="Items by outcome (and, for dropped ones, reason), "
            "since the queue started.",
        )
        self._gauge_like(
            meter.create_observable_up_down_counter,
            "wbactor.queue.depth",
            "{item}",
            "Items queued, not counting the batch in flight.",
            lambda s: s.depth,
        )
        self._gauge_like(
            meter.create_observable_up_down_counter,
            "wbactor.queue.in_flight",
            "{item}",
            "Items in the batch being flushed or waiting out a retry backoff.",
            lambda s: s.in_flight,
        )
        self._gauge_like(
            meter.create_observable_gauge,
            "wbactor.queue.oldest_age",
            "s",
            "Seconds the oldest queued item has waited (0 when empty).",
            lambda s: s.oldest_age,
        )
        self._gauge_like(
            meter.create_observable_counter,
            "wbactor.flush.retries",
            "{attempt}",
            "Failed flush attempts (errors, timeouts, deaths).",
            lambda s: s.retries,
        )
        self._gauge_like(
            meter.create_observable_counter,
            "wbactor.flusher.restarts",
            "{restart}",
            "Times a flusher was replaced by a fresh one.",
            lambda s: s.restarts,
        )
        self._gauge_like(
            meter.create_observable_counter,
            "wbactor.batches",
            "{batch}",
            "Successful flush calls.",
            lambda s: s.batches,
        )
        self.duration: Histogram = _duration_histogram(meter)

    def _gauge_like(
        self,
        create: Callable[..., object],
        name: str,
        unit: str,
        description: str,
        value: Callable[[Stats], float],
    ) -> None:
        """Create an instrument with one point per queue: `value(stats)`."""

        def observe(snapshot: list[tuple[str, Stats]]) -> Iterator[Observation]:
            for queue, stats in snapshot:
                yield self._api.Observation(value(stats), {"queue": queue})

        create(
            name,
            callbacks=[self._reader(name, observe)],
            unit=unit,
            description=description,
        )

    def _observe_items(
        self, snapshot: list[tuple[str, Stats]]
    ) -> Iterator[Observation]:
        observation = self._api.Observation
        for queue, stats in snapshot:
            for outcome, reason, count in _items(stats):
                attributes = {"outcome": outcome, "queue": queue}
                if outcome == "dropped":
                    attributes["reason"] = reason
                yield observation(count, attributes)

    def _reader(
        self,
        key: str,
        observe: Callable[[list[tuple[str, Stats]]], Iterator[Observation]],
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """Return a callback that observes this collection's snapshot."""

        def callback(options: CallbackOptions) -> Iterable[Observation]:  # noqa: ARG001 - OTel's signature
            return list(observe(self._snapshot_for(key)))

        return callback

    def _snapshot_for(self, key: str) -> list[tuple[str, Stats]]:
        """Return the snapshot of this collection, taking it if it is a new one."""
        with self._lock:
            if self._snapshot is None or key in self._seen:
                self._snapshot = self._take()
                self._seen = set()
            self._seen.add(key)
            return self._snapshot

    def _take(self) -> list[tuple[str, Stats]]:
        snapshot: list[tuple[str, Stats]] = []
        for queue, wb in self._queues.items():
            # A queue in a forked child refuses everything: nothing to report.
            with contextlib.suppress(Exception):
                snapshot.append((queue, wb.stats()))
        return snapshot

    def add(self, wb: WriteBehind[Any]) -> None:
        """Report `wb` from the next collection on.

        A stopped queue of the same name gives way: `wb` takes over its
        points (its counters start again from 0, as after a restart).

        Raises:
            ValueError: a running queue of the same name is reported already.
        """
        with self._lock:
            reported = self._queues.get(wb.name)
            if reported is not None and not _stopped(reported):
                msg = (
                    f"a queue named {wb.name!r} is instrumented on this meter "
                    "provider already; give each queue its own Config.name "
                    "(or close() the first instrumentation)"
                )
                raise ValueError(msg)
            self._queues[wb.name] = wb
            self._snapshot = None

    def remove(self, wb: WriteBehind[Any]) -> None:
        """Stop reporting `wb`."""
        with self._lock:
            if self._queues.get(wb.name) is wb:
                del self._queues[wb.name]
            self._snapshot = None


def _duration_histogram(meter: Meter) -> Histogram:
    """Create `wbactor.flush.duration`, advising bucket bounds in seconds.

    The advice (OpenTelemetry API 1.23 and later) replaces the SDK's
    default bounds, which are made for milliseconds.
    """
    name, unit = "wbactor.flush.duration", "s"
    description = "Seconds each flush attempt took, failed ones included."
    try:
        return meter.create_histogram(
            name,
            unit=unit,
            description=description,
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
    except TypeError:  # an API older than the advice
        return meter.create_histogram(name, unit=unit, description=description)


_providers_lock = threading.Lock()
_providers: weakref.WeakKeyDictionary[Any, _OtelQueues] = weakref.WeakKeyDictionary()


def _queues_of(provider: MeterProvider) -> _OtelQueues:
    """Return the instruments of `provider`, creating them at the first call.

    The global provider is a proxy until `set_meter_provider()`; instruments
    made through the proxy forward to the provider set later, so a queue
    instrumented on that provider afterwards joins them.
    """
    from wbactor import __version__  # noqa: PLC0415 - the package is loaded by now

    with _providers_lock:
        queues = _providers.get(provider)
        if queues is None:
            for proxy, proxied in _providers.items():
                if getattr(proxy, "_real_meter_provider", None) is provider:
                    queues = proxied
                    break
        if queues is None:
            queues = _OtelQueues(provider.get_meter("wbactor", __version__))
            _providers[provider] = queues
        return queues


def instrument(
    wb: WriteBehind[Any], meter_provider: MeterProvider | None = None
) -> Instrumentation:
    """Report `wb`'s figures through OpenTelemetry, on the meter `wbactor`.

    Needs the `otel` extra (`pip install 'wbactor[otel]'`, the OpenTelemetry
    API; an SDK or a distro collects and exports). Registers:

    - `wbactor.items`, observable counter (`{item}`), with attribute
      `outcome`: `pushed`, `flushed`, `coalesced`, `dropped`, `recovered`;
      for `dropped` also `reason` (a `DropReason` value);
    - `wbactor.queue.depth` and `wbactor.queue.in_flight`, observable
      up-down counters (`{item}`);
    - `wbactor.queue.oldest_age`, observable gauge (`s`);
    - `wbactor.flush.retries`, `wbactor.flusher.restarts` and
      `wbactor.batches`, observable counters;
    - `wbactor.flush.duration`, histogram (`s`).

    Every point also carries `queue=<Config.name>`. The observable ones are
    read from one `wb.stats()` snapshot per collection, so they agree with
    each other and with `stats()` at that moment. `dropped` has one point per
    reason with a non-zero count; `recovered` is 0 while the queue has no
    journal. `wbactor.flush.duration` records every flush attempt from now
    on, failed ones included.

    Several queues may be instrumented on one provider, each under its own
    name. A stopped queue goes on reporting its final figures until
    `close()`, or until a new queue of the same name is instrumented there,
    which takes over its points.

    Args:
        wb: The queue to report.
        meter_provider: Where to register; None means the global one
            (`opentelemetry.metrics.get_meter_provider()`). Set the global
            provider before instrumenting, or pass one.

    Returns:
        The registration: `close()` it (or use it as a context manager) to
        stop reporting the queue.

    Raises:
        ImportError: the OpenTelemetry API is not installed.
        ValueError: a running queue of the same name is instrumented on this
            provider.
    """
    api = _need("opentelemetry.metrics", _OTEL_HINT)
    provider: MeterProvider = (
        api.get_meter_provider() if meter_provider is None else meter_provider
    )
    queues = _queues_of(provider)
    queues.add(wb)
    histogram, attributes = queues.duration, {"queue": wb.name}

    def record(seconds: float) -> None:
        histogram.record(seconds, attributes)

    _attempt_observers(wb).append(record)
    return Instrumentation(wb, queues, record)


# ------------------------------------------------------------------ Prometheus


class _Durations:
    """A cumulative histogram of flush-attempt durations, fed by the flusher."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._lock = threading.Lock()
        self._counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one attempt of `seconds` (called on the flusher's thread)."""
        # bisect_left: a duration equal to a bound belongs to that bucket (le).
        index = bisect.bisect_left(self._bounds, seconds)
        with self._lock:
            self._counts[index] += 1
            self._sum += seconds

    def read(self) -> tuple[list[int], float]:
        """Return the cumulative count at each bound (then +Inf), and the sum."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for count in counts:
            running += count
            cumulative.append(running)
        return cumulative, total


class PrometheusCollector:
    """A `prometheus_client` collector of one or more queues' figures.

    Needs the `prometheus` extra (`pip install 'wbactor[prometheus]'`).
    Register it on a registry, and every scrape reads each queue's
    `stats()` once:

        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        collector = PrometheusCollector(wb)
        registry.register(collector)
        start_http_server(9464, addr="127.0.0.1", registry=registry)

    - `wbactor_items_total{outcome, reason, queue}`, counter (`reason` is
      `""` unless `outcome="dropped"`);
    - `wbactor_queue_depth{queue}`, `wbactor_queue_in_flight{queue}` and
      `wbactor_queue_oldest_age_seconds{queue}`, gauges;
    - `wbactor_flush_retries_total{queue}`,
      `wbactor_flusher_restarts_total{queue}` and
      `wbactor_batches_total{queue}`, counters;
    - `wbactor_flush_duration_seconds{queue, le}`, histogram.

    As with `instrument()`, `outcome` is one of `pushed`, `flushed`,
    `coalesced`, `dropped` (one series per reason that has dropped an item)
    and `recovered`. The histogram counts the flush attempts made since the
    collector was created, failed ones included.

    Give one collector every queue of a registry (`PrometheusCollector(a,
    b)`): two collectors would each write the metric families' `# HELP` and
    `# TYPE` lines. A stopped queue goes on reporting its final figures
    until `close()`; unregister the collector from its registry to stop
    reporting altogether.
    """

    def __init__(
        self,
        wb: WriteBehind[Any],
        *more: WriteBehind[Any],
        buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> None:
        """Collect the figures of `wb` (and of `more` queues).

        Args:
            wb: A queue to report.
            *more: Other queues to report, each under its own name.
            buckets: The histogram's finite upper bounds, in seconds,
                increasing (`+Inf` is added).

        Raises:
            ImportError: prometheus_client is not installed.
            ValueError: two queues have the same name, or `buckets` is not
                increasing, or holds a bound that is not finite and positive.
        """
        self._families = _need("prometheus_client.core", _PROMETHEUS_HINT)
        self._go_float = _need("prometheus_client.utils", _PROMETHEUS_HINT)
        bounds = tuple(float(b) for b in buckets)
        if any(not 0 < b < math.inf for b in bounds) or any(
            a >= b for a, b in itertools.pairwise(bounds)
        ):
            msg = f"buckets must be increasing, finite and positive, got {buckets!r}"
            raise ValueError(msg)
        self._les = [self._go_float.floatToGoString(b) for b in bounds] + ["+Inf"]
        queues = (wb, *more)
        names = [q.name for q in queues]
        if len(set(names)) != len(names):
            msg = f"each queue needs its own Config.name, got {names!r}"
            raise ValueError(msg)
        self._queues: list[tuple[WriteBehind[Any], _Durations]] = []
        for queue in queues:
            durations = _Durations(bounds)
            _attempt_observers(queue).append(durations.observe)
            self._queues.append((queue, durations))
        self._closed = False

    def close(self) -> None:
        """Stop recording flush durations; later scrapes report nothing.

        Idempotent. Unregister the collector from its registry too.
        """
        if self._closed:
            return
        self._closed = True
        for queue, durations in self._queues:
            _detach(queue, durations.observe)

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families, from one `stats()` snapshot per queue."""
        if self._closed:
            return
        families = self._families
        items = families.CounterMetricFamily(
            "wbactor_items",
            "Items by outcome (and, for dropped ones, reason) since the queue started.",
            labels=["outcome", "reason", "queue"],
        )

        def gauge(name: str, doc: str) -> Any:
            return families.GaugeMetricFamily(name, doc, labels=["queue"])

        def counter(name: str, doc: str) -> Any:
            return families.CounterMetricFamily(name, doc, labels=["queue"])

        depth = gauge(
            "wbactor_queue_depth", "Items queued, not counting the batch in flight."
        )
        in_flight = gauge(
            "wbactor_queue_in_flight",
            "Items in the batch being flushed or waiting out a retry backoff.",
        )
        oldest_age = gauge(
            "wbactor_queue_oldest_age_seconds",
            "Seconds the oldest queued item has waited (0 when empty).",
        )
        retries = counter(
            "wbactor_flush_retries", "Failed flush attempts (errors, timeouts, deaths)."
        )
        restarts = counter(
            "wbactor_flusher_restarts", "Times a flusher was replaced by a fresh one."
        )
        batches = counter("wbactor_batches", "Successful flush calls.")
        duration = families.HistogramMetricFamily(
            "wbactor_flush_duration_seconds",
            "Seconds each flush attempt took, failed ones included.",
            labels=["queue"],
        )
        for queue, durations in self._queues:
            try:
                stats = queue.stats()
            except Exception:  # noqa: BLE001, S112 - a forked child's queue: nothing to report
                continue
            name = queue.name
            for outcome, reason, count in _items(stats):
                items.add_metric([outcome, reason, name], count)
            depth.add_metric([name], stats.depth)
            in_flight.add_metric([name], stats.in_flight)
            oldest_age.add_metric([name], stats.oldest_age)
            retries.add_metric([name], stats.retries)
            restarts.add_metric([name], stats.restarts)
            batches.add_metric([name], stats.batches)
            cumulative, total = durations.read()
            duration.add_metric(
                [name], list(zip(self._les, cumulative, strict=True)), total
            )
        yield from (items, depth, in_flight, oldest_age, retries, restarts, batches)
        yield duration
