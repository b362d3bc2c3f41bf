"""Metrics: serve a queue's figures on /metrics for Prometheus, under load.

A queue writes "sensor readings" to a store that is slow now and then and
fails one write in ten, so the figures move: depth, in flight, drops (the
queue is small and DROP_OLDEST), retries and restarts, flush durations. A
`wbactor.metrics.PrometheusCollector` serves them on
http://127.0.0.1:PORT/metrics while the load runs; the example scrapes
itself a few times, stops the queue, and checks that a last scrape equals
the final `Stats`.

    pip install 'wbactor[prometheus]'
    python examples/metrics_server.py [--port 9464] [--seconds 2] [--serve]

`--port 0` (the default) picks a free port; `--serve` keeps serving after
the run, until Ctrl-C, for a Prometheus to scrape.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import threading
import time
import urllib.request
from typing import NamedTuple

import structlog
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import wbactor
from wbactor.metrics import PrometheusCollector

FAILURE_RATE = 0.1
BURST = 60
"""Readings pushed every 2 ms: about what the store takes, so at times the
queue fills up and drops its oldest."""


class Reading(NamedTuple):
    sensor: int
    value: float


class FlakyStore:
    """A store that takes 1-5 ms a batch, and fails one batch in ten."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.rows: dict[int, float] = {}

    def flush(self, batch: list[Reading]) -> None:
        with self._lock:
            pause = self._rng.uniform(0.001, 0.005)
            fail = self._rng.random() < FAILURE_RATE
        time.sleep(pause)
        if fail:
            msg = "store briefly unavailable"
            raise ConnectionError(msg)
        with self._lock:
            for reading in batch:
                self.rows[reading.sensor] = reading.value


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Fetch /metrics and return every sample, by name and labels."""
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own server
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def expected(stats: wbactor.Stats) -> dict[str, float]:
    """The figures a scrape must show for `stats`."""
    figures: dict[str, float] = {
        "pushed": stats.pushed,
        "flushed": stats.flushed,
        "depth": stats.depth,
        "retries": stats.retries,
        "restarts": stats.restarts,
        "batches": stats.batches,
    }
    for reason, count in stats.dropped.items():
        figures[f"dropped/{reason.value}"] = count
    return figures


def shown(samples: Samples, queue: str) -> dict[str, float]:
    """The same figures, read from a scrape."""
    figures: dict[str, float] = {}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if label.get("queue") != queue:
            continue
        if name == "wbactor_items_total" and label["outcome"] in {"pushed", "flushed"}:
            figures[label["outcome"]] = value
        elif name == "wbactor_items_total" and label["outcome"] == "dropped":
            figures[f"dropped/{label['reason']}"] = value
        elif name == "wbactor_queue_depth":
            figures["depth"] = value
        elif name == "wbactor_flush_retries_total":
            figures["retries"] = value
        elif name == "wbactor_flusher_restarts_total":
            figures["restarts"] = value
        elif name == "wbactor_batches_total":
            figures["batches"] = value
    return figures


def run(port: int, seconds: float, *, serve: bool) -> bool:
    store = FlakyStore(seed=1)
    config: wbactor.Config[Reading] = wbactor.Config(
        capacity=500,
        flusher=store,
        batch_size=100,
        flush_interval=0.05,
        retry_backoff=lambda attempt: 0.01 * attempt,
        max_retries=-1,  # the store always comes back: retry for ever
        name="sensors",
    )
    wb = wbactor.start(config)
    registry = CollectorRegistry()
    collector = PrometheusCollector(wb)
    registry.register(collector)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    print(f"serving {url}")
    try:
        rng = random.Random(2)
        deadline = time.monotonic() + seconds
        next_scrape = time.monotonic() + seconds / 4
        while time.monotonic() < deadline:
            for _ in range(BURST):
                wb.ref.tell(wbactor.Push(Reading(rng.randrange(1000), rng.random())))
            time.sleep(0.002)
            if time.monotonic() >= next_scrape:
                figures = shown(scrape(url), "sensors")
                print(
                    "scrape: "
                    + ", ".join(f"{k} {v:g}" for k, v in sorted(figures.items()))
                )
                next_scrape += seconds / 4
        final = wb.stop(timeout=10)
        last = shown(scrape(url), "sensors")
        print(f"final: {final}")
        if last != expected(final):
            print(f"FAILED: the last scrape {last} is not the final Stats {final}")
            return False
        print(
            f"OK: /metrics matches the final Stats: {final.pushed} pushed, "
            f"{final.flushed} flushed, {final.dropped_total} dropped, "
            f"{final.retries} retries"
        )
        if serve:
            print(f"serving {url} until Ctrl-C")
            thread.join()
        return True
    finally:
        wb.stop(timeout=10)
        collector.close()
        server.shutdown()
        server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--seconds", type=float, default=2.0, help="load duration")
    parser.add_argument(
        "--serve", action="store_true", help="keep serving after the run"
    )
    args = parser.parse_args()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR)
    )
    try:
        return 0 if run(args.port, args.seconds, serve=args.serve) else 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
