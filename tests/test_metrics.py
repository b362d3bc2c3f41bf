"""Metrics: OpenTelemetry instruments and the Prometheus collector equal `stats()`."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from support import WAIT, retries, running

import wbactor
from wbactor import metrics
from wbactor.testing import FlakyFlusher, GatedFlusher, ManualClock

if TYPE_CHECKING:
    from collections.abc import Iterator

OBSERVABLE = {
    "wbactor.items",
    "wbactor.queue.depth",
    "wbactor.queue.in_flight",
    "wbactor.queue.oldest_age",
    "wbactor.flush.retries",
    "wbactor.flusher.restarts",
    "wbactor.batches",
}

Points = dict[str, dict[frozenset[tuple[str, Any]], Any]]


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield provider
    provider.shutdown()


def collect(reader: InMemoryMetricReader) -> tuple[Points, dict[str, Any]]:
    """Return each metric's points by attributes, and each metric itself."""
    data = reader.get_metrics_data()
    assert data is not None
    points: Points = {}
    found: dict[str, Any] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "wbactor"
            for metric in scope.metrics:
                found[metric.name] = metric
                by_attributes = points.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    key = frozenset((point.attributes or {}).items())
                    assert key not in by_attributes
                    by_attributes[key] = point
    return points, found


def value(points: Points, name: str, **attributes: str) -> Any:
    return points[name][frozenset(attributes.items())].value


def expected_items(stats: wbactor.Stats, queue: str) -> dict[frozenset[Any], int]:
    expected = {
        frozenset({"outcome": outcome, "queue": queue}.items()): count
        for outcome, count in [
            ("pushed", stats.pushed),
            ("flushed", stats.flushed),
            ("coalesced", stats.coalesced),
            ("recovered", 0),
        ]
    }
    for reason, count in stats.dropped.items():
        attributes = {"outcome": "dropped", "reason": reason.value, "queue": queue}
        expected[frozenset(attributes.items())] = count
    return expected


def assert_points_equal_stats(points: Points, stats: wbactor.Stats, queue: str) -> None:
    items = {
        attributes: point.value
        for attributes, point in points["wbactor.items"].items()
        if ("queue", queue) in attributes
    }
    assert items == expected_items(stats, queue)
    for name, expected in [
        ("wbactor.queue.depth", stats.depth),
        ("wbactor.queue.in_flight", stats.in_flight),
        ("wbactor.queue.oldest_age", stats.oldest_age),
        ("wbactor.flush.retries", stats.retries),
        ("wbactor.flusher.restarts", stats.restarts),
        ("wbactor.batches", stats.batches),
    ]:
        assert value(points, name, queue=queue) == expected, name


@contextlib.contextmanager
def stalled(
    clock: ManualClock, name: str = "wbactor", **kwargs: Any
) -> Iterator[tuple[wbactor.WriteBehind[int], GatedFlusher[int]]]:
    """A queue whose flusher hangs until released: its figures stand still.

    Released and stopped on the way out, also when the test fails.
    """
    flusher: GatedFlusher[int] = GatedFlusher()
    config: wbactor.Config[int] = wbactor.Config(
        capacity=10,
        flusher=flusher,
        batch_size=4,
        flush_interval=1.0,
        clock=clock,
        name=name,
        **kwargs,
    )
    wb = wbactor.start(config)
    try:
        yield wb, flusher
    finally:
        flusher.release()
        wb.stop(WAIT)


def stall_with_drops(wb: wbactor.WriteBehind[int], flusher: GatedFlusher[int]) -> None:
    """Leave 4 items in flight, 10 queued and 6 dropped."""
    wb.ref.tell(wbactor.PushMany(range(4)))
    assert flusher.entered.wait(WAIT)
    wb.ref.tell(wbactor.PushMany(range(4, 20)))


# -- OpenTelemetry ----------------------------------------------------------------


def test_otel_points_equal_stats_of_a_stalled_queue(
    clock: ManualClock, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    with (
        stalled(clock, name="players") as (wb, flusher),
        metrics.instrument(wb, provider) as registration,
    ):
        assert registration.queue == "players"
        stall_with_drops(wb, flusher)
        clock.advance(2.5)  # the oldest item has waited 2.5 s
        stats = wb.stats()
        assert stats.dropped == {wbactor.DropReason.DROP_OLDEST: 6}
        assert stats.oldest_age == 2.5
        points, found = collect(reader)
        assert stats == wb.stats()  # nothing moved meanwhile
        assert set(found) == OBSERVABLE  # no attempt has ended yet
        assert_points_equal_stats(points, stats, "players")
        flusher.release()
        wb.flush(WAIT)
        stats = wb.stats()
        points, found = collect(reader)
        assert_points_equal_stats(points, stats, "players")
        assert set(found) == OBSERVABLE | {"wbactor.flush.duration"}
        assert stats.flushed == 14
        assert stats.batches == 4


def test_otel_kinds_and_units(
    clock: ManualClock, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum  # noqa: PLC0415

    with stalled(clock) as (wb, flusher), metrics.instrument(wb, provider):
        flusher.release()
        wb.push(1)
        wb.flush(WAIT)
        _, found = collect(reader)
    kinds = {name: type(metric.data) for name, metric in found.items()}
    assert kinds == {
        "wbactor.items": Sum,
        "wbactor.queue.depth": Sum,
        "wbactor.queue.in_flight": Sum,
        "wbactor.queue.oldest_age": Gauge,
        "wbactor.flush.retries": Sum,
        "wbactor.flusher.restarts": Sum,
        "wbactor.batches": Sum,
        "wbactor.flush.duration": Histogram,
    }
    monotonic = {
        name: found[name].data.is_monotonic for name in kinds if kinds[name] is Sum
    }
    assert monotonic == {
        "wbactor.items": True,
        "wbactor.queue.depth": False,
        "wbactor.queue.in_flight": False,
        "wbactor.flush.retries": True,
        "wbactor.flusher.restarts": True,
        "wbactor.batches": True,
    }
    assert found["wbactor.queue.oldest_age"].unit == "s"
    assert found["wbactor.flush.duration"].unit == "s"


def test_otel_counts_retries_restarts_and_every_attempt_duration(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=2)
    config = wbactor.Config(
        capacity=10,
        flusher=flusher,
        retry_backoff=lambda attempt: 0.01,
        name="flaky",
    )
    with running(config) as wb, metrics.instrument(wb, provider):
        wb.push(1)
        wb.flush(WAIT)
        stats = wb.stats()
        points, _ = collect(reader)
    assert (stats.retries, stats.restarts, stats.batches) == (2, 2, 1)
    assert_points_equal_stats(points, stats, "flaky")
    durations = points["wbactor.flush.duration"]
    assert list(durations) == [frozenset({("queue", "flaky")})]
    histogram = next(iter(durations.values()))
    assert histogram.count == 3  # two failed attempts and the one that worked
    assert histogram.sum >= 0
    assert histogram.explicit_bounds[:2] == (0.0005, 0.001)  # seconds, not ms


def test_otel_reports_every_queue_on_one_provider_under_its_name(
    clock: ManualClock, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    with (
        stalled(clock, name="a") as (a, flusher_a),
        stalled(clock, name="b", policy=wbactor.Policy.DROP_NEWEST) as (b, flusher_b),
    ):
        metrics.instrument(a, provider)
        registration_b = metrics.instrument(b, provider)
        stall_with_drops(a, flusher_a)
        stall_with_drops(b, flusher_b)
        stats_a, stats_b = a.stats(), b.stats()
        assert stats_b.dropped == {wbactor.DropReason.DROP_NEWEST: 6}
        points, _ = collect(reader)
        assert_points_equal_stats(points, stats_a, "a")
        assert_points_equal_stats(points, stats_b, "b")
        for name in OBSERVABLE:
            for attributes in points[name]:
                assert dict(attributes)["queue"] in {"a", "b"}
        registration_b.close()
        registration_b.close()  # idempotent
        assert registration_b.closed
        points, _ = collect(reader)
        queues = {dict(k)["queue"] for k in points["wbactor.queue.depth"]}
        assert queues == {"a"}


def test_otel_refuses_a_second_queue_of_the_same_name(
    provider: MeterProvider,
) -> None:
    flusher = FlakyFlusher[int](failures=0)
    config = wbactor.Config(capacity=10, flusher=flusher, name="twin")
    with running(config) as one, running(config) as two:
        registration = metrics.instrument(one, provider)
        with pytest.raises(ValueError, match="'twin'"):
            metrics.instrument(two, provider)
        registration.close()
        metrics.instrument(two, provider).close()  # its name is free again


def test_otel_a_new_queue_takes_over_the_name_of_a_stopped_one(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    flusher = FlakyFlusher[int](failures=0)
    config = wbactor.Config(capacity=10, flusher=flusher, name="shard")
    old = wbactor.start(config)
    metrics.instrument(old, provider)  # never closed
    old.push(1)
    old.stop(WAIT)
    with running(config) as new, metrics.instrument(new, provider):
        points, _ = collect(reader)
        assert value(points, "wbactor.items", outcome="pushed", queue="shard") == 0


def test_otel_reads_one_snapshot_per_collection(
    clock: ManualClock,
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with stalled(clock) as (wb, flusher), metrics.instrument(wb, provider):
        calls: list[wbactor.Stats] = []
        real = wb.stats

        def counted() -> wbactor.Stats:
            calls.append(real())
            return calls[-1]

        monkeypatch.setattr(wb, "stats", counted)
        collect(reader)
        assert len(calls) == 1
        wb.ref.tell(wbactor.PushMany(range(4)))  # a full batch
        assert flusher.entered.wait(WAIT)
        points, _ = collect(reader)
        assert len(calls) == 2  # a fresh snapshot for the next collection
        assert value(points, "wbactor.queue.in_flight", queue="wbactor") == 4


def test_otel_detached_queue_records_no_more_durations(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    flusher = FlakyFlusher[int](failures=0)
    with running(wbactor.Config(capacity=10, flusher=flusher, name="q")) as wb:
        registration = metrics.instrument(wb, provider)
        observers = wb._ledger.attempts.observers
        assert len(observers) == 1
        registration.close()
        assert observers == []
        wb.push(1)
        wb.flush(WAIT)
        assert reader.get_metrics_data() is None  # not a single point


def test_otel_keeps_reporting_a_stopped_queue_until_closed(
    provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    flusher = FlakyFlusher[int](failures=0)
    wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher, name="done"))
    registration = metrics.instrument(wb, provider)
    wb.push(1)
    final = wb.stop(WAIT)
    points, _ = collect(reader)
    assert_points_equal_stats(points, final, "done")
    registration.close()


def test_otel_global_provider_is_used_by_default(
    monkeypatch: pytest.MonkeyPatch,
    provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    from opentelemetry import metrics as otel  # noqa: PLC0415

    monkeypatch.setattr(otel, "get_meter_provider", lambda: provider)
    flusher = FlakyFlusher[int](failures=0)
    with running(wbactor.Config(capacity=10, flusher=flusher, name="g")) as wb:
        with metrics.instrument(wb):
            wb.push(1)
            points, _ = collect(reader)
        assert value(points, "wbactor.items", outcome="pushed", queue="g") == 1


# -- Prometheus -------------------------------------------------------------------


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def assert_samples_equal_stats(
    registry: CollectorRegistry, stats: wbactor.Stats, queue: str
) -> None:
    for outcome, count in [
        ("pushed", stats.pushed),
        ("flushed", stats.flushed),
        ("coalesced", stats.coalesced),
        ("recovered", 0),
    ]:
        labels = {"outcome": outcome, "reason": "", "queue": queue}
        assert sample(registry, "wbactor_items_total", **labels) == count, outcome
    for reason, count in stats.dropped.items():
        labels = {"outcome": "dropped", "reason": reason.value, "queue": queue}
        assert sample(registry, "wbactor_items_total", **labels) == count, reason
    dropped_series = [
        s
        for family in registry.collect()
        for s in family.samples
        if s.name == "wbactor_items_total"
        and s.labels["outcome"] == "dropped"
        and s.labels["queue"] == queue
    ]
    assert len(dropped_series) == len(stats.dropped)
    for name, expected in [
        ("wbactor_queue_depth", stats.depth),
        ("wbactor_queue_in_flight", stats.in_flight),
        ("wbactor_queue_oldest_age_seconds", stats.oldest_age),
        ("wbactor_flush_retries_total", stats.retries),
        ("wbactor_flusher_restarts_total", stats.restarts),
        ("wbactor_batches_total", stats.batches),
    ]:
        assert sample(registry, name, queue=queue) == expected, name


def test_prometheus_samples_equal_stats_of_a_stalled_queue(clock: ManualClock) -> None:
    with stalled(clock, name="players") as (wb, flusher):
        registry = CollectorRegistry()
        collector = metrics.PrometheusCollector(wb)
        registry.register(collector)
        stall_with_drops(wb, flusher)
        clock.advance(1.5)
        stats = wb.stats()
        assert_samples_equal_stats(registry, stats, "players")
        assert stats == wb.stats()
        flusher.release()
        wb.flush(WAIT)
        assert_samples_equal_stats(registry, wb.stats(), "players")
        text = generate_latest(registry).decode()
        assert "# TYPE wbactor_items_total counter" in text
        assert "# TYPE wbactor_queue_depth gauge" in text
        assert "# TYPE wbactor_flush_duration_seconds histogram" in text
        collector.close()


def test_prometheus_histogram_counts_every_attempt() -> None:
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=1)
    config = wbactor.Config(
        capacity=10, flusher=flusher, retry_backoff=lambda attempt: 0.01, name="q"
    )
    with running(config) as wb:
        registry = CollectorRegistry()
        registry.register(metrics.PrometheusCollector(wb, buckets=(0.5, 60.0)))
        wb.push(1)
        wb.wait_for(retries(1), WAIT)
        wb.flush(WAIT)
        stats = wb.stats()
        assert_samples_equal_stats(registry, stats, "q")
        name = "wbactor_flush_duration_seconds"
        assert sample(registry, f"{name}_count", queue="q") == 2
        assert sample(registry, f"{name}_bucket", queue="q", le="0.5") == 2
        assert sample(registry, f"{name}_bucket", queue="q", le="60.0") == 2
        assert sample(registry, f"{name}_bucket", queue="q", le="+Inf") == 2
        total = sample(registry, f"{name}_sum", queue="q")
        assert total is not None
        assert 0 <= total < 0.5


def test_prometheus_buckets_hold_durations_at_or_below_their_bound() -> None:
    durations = metrics._Durations((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 3.0):
        durations.observe(seconds)
    cumulative, total = durations.read()
    assert cumulative == [2, 4, 5]
    assert total == pytest.approx(4.65)


def test_prometheus_one_collector_for_several_queues(clock: ManualClock) -> None:
    with stalled(clock, name="a") as (a, flusher_a), stalled(clock, name="b") as (b, _):
        registry = CollectorRegistry()
        registry.register(metrics.PrometheusCollector(a, b))
        stall_with_drops(a, flusher_a)
        b.push(1)
        assert_samples_equal_stats(registry, a.stats(), "a")
        assert_samples_equal_stats(registry, b.stats(), "b")
        text = generate_latest(registry).decode()
        assert text.count("# TYPE wbactor_queue_depth gauge") == 1


def test_prometheus_refuses_twin_names_and_bad_buckets() -> None:
    flusher = FlakyFlusher[int](failures=0)
    config = wbactor.Config(capacity=10, flusher=flusher, name="twin")
    with running(config) as one, running(config) as two:
        with pytest.raises(ValueError, match=r"own Config\.name"):
            metrics.PrometheusCollector(one, two)
        for bad in [(1.0, 0.5), (0.0,), (float("inf"),), (1.0, 1.0)]:
            with pytest.raises(ValueError, match="buckets"):
                metrics.PrometheusCollector(one, buckets=bad)
        assert one._ledger.attempts.observers == []


def test_prometheus_closed_collector_reports_nothing() -> None:
    flusher = FlakyFlusher[int](failures=0)
    with running(wbactor.Config(capacity=10, flusher=flusher)) as wb:
        collector = metrics.PrometheusCollector(wb)
        collector.close()
        collector.close()
        assert list(collector.collect()) == []
        assert wb._ledger.attempts.observers == []


# -- the module --------------------------------------------------------------------


def test_all_resolves() -> None:
    names = list(metrics.__all__)
    assert len(names) == len(set(names))
    assert all(hasattr(metrics, name) for name in names)
    assert metrics.OUTCOMES == (
        "pushed",
        "flushed",
        "coalesced",
        "dropped",
        "recovered",
    )


# -- optional imports -------------------------------------------------------------


def test_import_wbactor_and_wbactor_metrics_imports_no_metrics_library() -> None:
    code = textwrap.dedent(
        """
        import sys
        import wbactor
        assert "wbactor.metrics" not in sys.modules
        import wbactor.metrics
        optional = ("opentelemetry", "prometheus_client")
        loaded = [m for m in sys.modules if m.startswith(optional)]
        assert not loaded, loaded
        print("clean")
        """
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "clean", result.stderr


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    flusher = FlakyFlusher[int](failures=0)
    with running(wbactor.Config(capacity=10, flusher=flusher)) as wb:
        monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
        with pytest.raises(ImportError, match=r"pip install 'wbactor\[otel\]'"):
            metrics.instrument(wb)
        monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
        with pytest.raises(ImportError, match=r"pip install 'wbactor\[prometheus\]'"):
            metrics.PrometheusCollector(wb)
        assert wb._ledger.attempts.observers == []
