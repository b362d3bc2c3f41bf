"""User-style code that `mypy --strict` checks: asyncio, async flushers, metrics.

Nothing here runs (see api.py beside it); each `# type: ignore[...]` proves the
API refuses the call next to it, as an unused one fails under `--strict`.
"""

from __future__ import annotations

import dataclasses
from typing import assert_type

from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry

import wbactor
from wbactor import metrics


@dataclasses.dataclass(frozen=True)
class Entity:
    entity_id: int
    x: float


class AsyncStore:
    async def flush(self, batch: list[Entity]) -> None:
        del batch

    def close(self) -> None:
        """Called by wbactor on the flusher's thread when it retires the flusher."""


async def write_entities(batch: list[Entity]) -> None:
    del batch


def async_configs() -> list[wbactor.Config[Entity]]:
    with_object: wbactor.Config[Entity] = wbactor.Config(
        capacity=100, flusher=AsyncStore()
    )
    with_function = wbactor.Config(capacity=100, flusher=write_entities)
    assert_type(with_function, wbactor.Config[Entity])
    with_factory: wbactor.Config[Entity] = wbactor.Config(
        capacity=100, flusher_factory=AsyncStore
    )
    return [with_object, with_function, with_factory]


async def game_loop(wb: wbactor.WriteBehind[Entity], entity: Entity) -> None:
    await wb.apush(entity)
    await wb.apush(entity, 0.5)
    await wb.apush(entity, timeout=None)
    await wb.aflush()
    await wb.aflush(1.0)
    await wb.aflush(timeout=2)
    stats = await wb.astop(timeout=5.0)
    assert_type(stats, wbactor.Stats)
    assert_type(await wb.astop(), wbactor.Stats)
    await wb.apush(1)  # type: ignore[arg-type]
    await wb.aflush("1")  # type: ignore[arg-type]
    wb.ref.tell(wbactor.Push(entity))


def instrumented(
    wb: wbactor.WriteBehind[Entity], other: wbactor.WriteBehind[int]
) -> None:
    provider = MeterProvider()
    registration = metrics.instrument(wb, provider)
    assert_type(registration, metrics.Instrumentation)
    assert_type(registration.queue, str)
    registration.close()
    with metrics.instrument(other):
        pass
    metrics.instrument(wb, meter_provider=provider).close()
    metrics.instrument(wb, "provider")  # type: ignore[arg-type]

    registry = CollectorRegistry()
    collector = metrics.PrometheusCollector(wb, other, buckets=(0.01, 0.1, 1.0))
    registry.register(collector)
    registry.register(metrics.PrometheusCollector(wb))
    collector.close()
    metrics.PrometheusCollector()  # type: ignore[call-arg]
