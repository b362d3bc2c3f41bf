"""Logs: event names, levels and keys, drop aggregation, no item contents."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from collections.abc import MutableMapping
from typing import Any

import pykka
from structlog.testing import capture_logs
from support import WAIT, retries, running, sync

import wbactor
from wbactor._flusher import FlusherActor
from wbactor._log import FLUSHING_FOR
from wbactor.testing import (
    DropRecorder,
    FlakyFlusher,
    GatedFlusher,
    ManualClock,
    RecordingFlusher,
)

MARKER = "SECRET-ITEM-42"

LogEntries = list[MutableMapping[str, Any]]


def item(n: int) -> str:
    return f"{MARKER}-{n}"


def events(logs: LogEntries, name: str) -> LogEntries:
    return [entry for entry in logs if entry["event"] == name]


def assert_no_item_contents(logs: LogEntries) -> None:
    assert logs
    for entry in logs:
        assert MARKER not in repr(entry), entry


def test_items_dropped_is_aggregated_to_one_line_per_reason_per_second(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[str] = RecordingFlusher()
    config = wbactor.Config(
        capacity=10,
        flusher=flusher,
        batch_size=100,
        flush_interval=1000.0,
        clock=clock,
    )
    with capture_logs() as logs:
        with running(config) as wb:
            for n in range(1000):
                wb.ref.tell(wbactor.Push(item(n)))
            assert wb.stats().dropped == {wbactor.DropReason.DROP_OLDEST: 990}
            assert len(events(logs, "items_dropped")) <= 1
            clock.advance(1.0)
            for n in range(1000, 1100):
                wb.ref.tell(wbactor.Push(item(n)))
            assert len(events(logs, "items_dropped")) == 2
        final = wb.stop(timeout=WAIT)
    dropped = events(logs, "items_dropped")
    assert final.dropped == {wbactor.DropReason.DROP_OLDEST: 1090}
    assert sum(entry["count"] for entry in dropped) == 1090
    assert len(dropped) == 3
    for entry in dropped:
        assert entry.keys() == {"event", "log_level", "queue", "reason", "count"}
        assert (entry["log_level"], entry["reason"]) == ("warning", "drop_oldest")
    assert flusher.items == [item(n) for n in range(1090, 1100)]
    assert_no_item_contents(logs)


def test_flush_failed_flusher_restarted_and_batch_flushed_carry_their_keys(
    clock: ManualClock,
) -> None:
    flusher: FlakyFlusher[str] = FlakyFlusher(
        failures=2, error=lambda: ConnectionError("connection reset by peer")
    )
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=3,
        flush_interval=1000.0,
        max_retries=3,
        clock=clock,
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(wbactor.PushMany([item(1), item(2), item(3)]))
        for attempt in (1, 2):
            wb.wait_for(retries(attempt), WAIT)
            clock.advance(wbactor.default_backoff(attempt))
        wb.wait_for(lambda s: s.batches == 1, WAIT)
        wb.flush(WAIT)
        sync(wb._supervisor)
    failed = {
        "event": "flush_failed",
        "log_level": "warning",
        "queue": "wbactor",
        "max_retries": 3,
        "batch_size": 3,
        "error": "ConnectionError: connection reset by peer",
    }
    assert events(logs, "flush_failed") == [
        {**failed, "attempt": 1, "retry_in": 0.1},
        {**failed, "attempt": 2, "retry_in": 0.2},
    ]
    restarted = {
        "event": "flusher_restarted",
        "log_level": "warning",
        "queue": "wbactor",
    }
    assert events(logs, "flusher_restarted") == [
        {**restarted, "restarts": 1, "cause": "error"},
        {**restarted, "restarts": 2, "cause": "error"},
    ]
    [flushed] = events(logs, "batch_flushed")
    assert flushed.keys() == {"event", "log_level", "queue", "batch_size", "duration"}
    assert (flushed["log_level"], flushed["batch_size"]) == ("debug", 3)
    assert isinstance(flushed["duration"], float)
    assert flushed["duration"] >= 0.0
    assert_no_item_contents(logs)


def test_retries_exhausted_is_an_error_and_on_drop_failures_are_logged(
    clock: ManualClock,
) -> None:
    on_drop_calls: DropRecorder[str] = DropRecorder()

    def on_drop(dropped: str, reason: wbactor.DropReason) -> None:
        on_drop_calls(dropped, reason)
        msg = "audit sink unavailable"
        raise ValueError(msg)

    flusher: FlakyFlusher[str] = FlakyFlusher(
        failures=2, error=lambda: RuntimeError("database unavailable")
    )
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=2,
        flush_interval=1000.0,
        max_retries=1,
        retry_backoff=lambda attempt: 1.0,
        on_drop=on_drop,
        clock=clock,
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(wbactor.PushMany([item(1), item(2)]))
        wb.wait_for(lambda s: s.retries == 1, WAIT)
        clock.advance(1.0)
        wb.wait_for(lambda s: s.dropped_total == 2, WAIT)
        on_drop_calls.wait_for(2)
        sync(wb._supervisor)
        wb.ref.tell(wbactor.PushMany([item(3), item(4)]))
        wb.flush(WAIT)
    assert flusher.items == [item(3), item(4)]
    assert events(logs, "retries_exhausted") == [
        {
            "event": "retries_exhausted",
            "log_level": "error",
            "queue": "wbactor",
            "batch_size": 2,
            "attempts": 2,
            "error": "RuntimeError: database unavailable",
        }
    ]
    assert [entry["attempt"] for entry in events(logs, "flush_failed")] == [1]
    assert (
        events(logs, "on_drop_failed")
        == [
            {
                "event": "on_drop_failed",
                "log_level": "warning",
                "queue": "wbactor",
                "reason": "retries_exhausted",
                "error": "ValueError: audit sink unavailable",
            }
        ]
        * 2
    )
    dropped = events(logs, "items_dropped")
    assert [(e["reason"], e["count"]) for e in dropped] == [("retries_exhausted", 2)]
    assert_no_item_contents(logs)


def test_key_func_failures_are_logged_without_the_item(clock: ManualClock) -> None:
    def key_func(value: str) -> object:
        if value.endswith("-bad"):
            msg = "record has no id"
            raise LookupError(msg)
        if value.endswith("-list"):
            return [value]  # unhashable
        return value

    flusher: RecordingFlusher[str] = RecordingFlusher()
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        policy=wbactor.Policy.COALESCE_BY_KEY,
        key_func=key_func,
        flush_interval=1000.0,
        clock=clock,
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(wbactor.Push(f"{MARKER}-bad"))
        wb.push(f"{MARKER}-list")
        wb.ref.tell(wbactor.Push(item(1)))
        wb.flush(WAIT)
        stats = wb.stats()
    assert stats.dropped == {wbactor.DropReason.KEY_ERROR: 2}
    assert flusher.items == [item(1)]
    failed = events(logs, "key_func_failed")
    assert failed[0] == {
        "event": "key_func_failed",
        "log_level": "warning",
        "queue": "wbactor",
        "error": "LookupError: record has no id",
    }
    assert len(failed) == 2
    assert failed[1].keys() == {"event", "log_level", "queue", "error"}
    assert failed[1]["error"].startswith("TypeError")
    assert_no_item_contents(logs)


def test_queue_started_logs_a_config_summary_at_info(clock: ManualClock) -> None:
    flusher: RecordingFlusher[str] = RecordingFlusher()
    config = wbactor.Config(
        capacity=10,
        flusher=flusher,
        batch_size=5,
        flush_interval=2.0,
        policy=wbactor.Policy.DROP_NEWEST,
        max_retries=2,
        flush_timeout=3.0,
        clock=clock,
    )
    with capture_logs() as logs, running(config) as wb:
        wb.push(item(1))
    [started] = events(logs, "queue_started")
    assert started["log_level"] == "info"
    assert {
        key: started[key]
        for key in ("capacity", "batch_size", "flush_interval", "max_retries")
    } == {"capacity": 10, "batch_size": 5, "flush_interval": 2.0, "max_retries": 2}
    assert started["policy"] in {wbactor.Policy.DROP_NEWEST, "drop_newest"}
    assert started["flush_timeout"] == 3.0
    assert_no_item_contents(logs)


def test_queue_stopped_logs_the_final_stats_at_info(clock: ManualClock) -> None:
    flusher: RecordingFlusher[str] = RecordingFlusher()
    config = wbactor.Config(
        capacity=10,
        flusher=flusher,
        batch_size=100,
        flush_interval=1000.0,
        policy=wbactor.Policy.DROP_NEWEST,
        clock=clock,
    )
    with capture_logs() as logs:
        wb = wbactor.start(config)
        wb.ref.tell(wbactor.PushMany([item(n) for n in range(12)]))
        final = wb.stop(timeout=WAIT)
    [stopped] = events(logs, "queue_stopped")
    assert stopped["log_level"] == "info"
    assert final.dropped == {wbactor.DropReason.DROP_NEWEST: 2}
    assert (final.pushed, final.flushed, final.batches) == (12, 10, 1)
    for field in dataclasses.fields(wbactor.Stats):
        if field.name in stopped:
            value = getattr(final, field.name)
            if field.name == "dropped":
                assert dict(stopped["dropped"]) == dict(value)
            else:
                assert stopped[field.name] == value, field.name
    expected = {"pushed", "flushed", "coalesced", "dropped", "retries", "restarts"}
    expected |= {"batches", "depth", "in_flight"}
    assert expected <= stopped.keys()
    assert_no_item_contents(logs)


def test_queue_stopped_logs_every_stats_field(clock: ManualClock) -> None:
    flusher: RecordingFlusher[str] = RecordingFlusher()
    config = wbactor.Config(capacity=10, flusher=flusher, clock=clock)
    with capture_logs() as logs:
        wb = wbactor.start(config)
        wb.push(item(1))
        wb.stop(timeout=WAIT)
    [stopped] = events(logs, "queue_stopped")
    fields = {field.name for field in dataclasses.fields(wbactor.Stats)}
    assert stopped.keys() - {"event", "log_level", "queue"} == fields


def test_an_unknown_message_is_logged_by_type_and_the_queue_keeps_working(
    clock: ManualClock,
) -> None:
    class LeakyMessage:
        def __init__(self, payload: str) -> None:
            self.payload = payload

        def __repr__(self) -> str:
            return f"LeakyMessage({self.payload!r})"

    flusher: RecordingFlusher[str] = RecordingFlusher()
    config = wbactor.Config(
        capacity=100, flusher=flusher, flush_interval=1000.0, clock=clock
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(LeakyMessage(item(0)))  # type: ignore[arg-type]
        wb.flush(WAIT)
        wb.ref.tell(wbactor.Push(item(1)))
        wb.push(item(2))
        wb.flush(WAIT)
        assert wb.ref.is_alive()
    assert flusher.items == [item(1), item(2)]
    assert events(logs, "unknown_message") == [
        {
            "event": "unknown_message",
            "log_level": "warning",
            "queue": "wbactor",
            "message_type": "LeakyMessage",
        }
    ]
    assert_no_item_contents(logs)


def test_a_flusher_runs_knowing_its_queues_name_async_or_not(
    clock: ManualClock,
) -> None:
    seen: list[str | None] = []

    def flush(batch: list[int]) -> None:
        seen.append(FLUSHING_FOR.get())

    async def aflush(batch: list[int]) -> None:
        seen.append(FLUSHING_FOR.get())

    for name, flusher in (("sync", flush), ("async", aflush)):
        config = wbactor.Config(capacity=10, flusher=flusher, clock=clock, name=name)
        with running(config) as wb:
            wb.push(1)
            wb.flush(WAIT)
    assert seen == ["sync", "async"]
    assert FLUSHING_FOR.get() is None  # the queue's threads', not the caller's


def test_the_library_never_configures_structlog() -> None:
    code = textwrap.dedent(
        """
        import sys

        import structlog

        import wbactor
        from wbactor.testing import ManualClock, RecordingFlusher

        before = structlog.is_configured()
        wb = wbactor.start(
            wbactor.Config(capacity=10, flusher=RecordingFlusher(), clock=ManualClock())
        )
        wb.push(1)
        wb.flush(5)
        wb.stop(timeout=5)
        print(f"RESULT before={before} after={structlog.is_configured()}",
              file=sys.stderr)
        """
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "RESULT before=False after=False" in result.stderr


def test_batch_flushed_follows_structlog_configured_after_the_queue_started(
    clock: ManualClock,
) -> None:
    flusher: RecordingFlusher[str] = RecordingFlusher()
    with running(wbactor.Config(capacity=10, flusher=flusher, clock=clock)) as wb:
        wb.push(item(1))
        wb.flush(WAIT)  # the flusher logs once with the config of the moment
        with capture_logs() as logs:  # reconfigures structlog
            wb.push(item(2))
            wb.flush(WAIT)
        wb.push(item(3))
        wb.flush(WAIT)  # back to the old config: not captured
    assert [e["batch_size"] for e in events(logs, "batch_flushed")] == [1]
    assert flusher.items == [item(1), item(2), item(3)]


def test_the_late_result_of_an_abandoned_attempt_logs_no_batch_flushed(
    clock: ManualClock,
) -> None:
    # batch_flushed means "counted": an attempt abandoned after flush_timeout
    # that returns later is ignored, so it must not log one either.
    flusher: GatedFlusher[str] = GatedFlusher()
    config = wbactor.Config(
        capacity=10,
        flusher=flusher,
        batch_size=1,
        flush_interval=1000.0,
        flush_timeout=2.0,
        clock=clock,
    )
    with capture_logs() as logs, running(config) as wb:
        wb.push(item(1))
        assert flusher.entered.wait(WAIT)
        [hung] = pykka.ActorRegistry.get_by_class(FlusherActor)
        sync(wb._supervisor)
        sync(wb._timer)
        clock.advance(2.0)  # flush_timeout: the attempt is abandoned
        wb.wait_for(retries(1), WAIT)
        flusher.release()  # it completes late...
        assert hung.actor_stopped.wait(WAIT)
        assert events(logs, "batch_flushed") == []  # ...and is not counted
        clock.advance(wbactor.default_backoff(1))  # the retry, counted
        wb.wait_for(lambda s: s.batches == 1, WAIT)
    assert flusher.batches == [[item(1)], [item(1)]]
    assert [e["batch_size"] for e in events(logs, "batch_flushed")] == [1]
