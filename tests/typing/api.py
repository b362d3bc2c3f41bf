"""User-style code that `mypy --strict` checks against the public API.

Nothing here runs: every use sits in a function, and the file is not collected
as a test. An unused `# type: ignore[...]` fails under `--strict`, so each one
proves that the API refuses the ill-typed call next to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, assert_type

from pykka.messages import ProxyGetAttr

import wbactor
import wbactor.testing


@dataclasses.dataclass(frozen=True)
class PlayerState:
    player_id: int
    x: float
    y: float


class PlayerStore:
    def __init__(self) -> None:
        self.rows: dict[int, PlayerState] = {}

    def flush(self, batch: list[PlayerState]) -> None:
        for state in batch:
            self.rows[state.player_id] = state


def write_players(batch: list[PlayerState]) -> None:
    del batch


def write_ints(batch: list[int]) -> None:
    del batch


def player_key(state: PlayerState) -> int:
    return state.player_id


def report_drop(state: PlayerState, reason: wbactor.DropReason) -> None:
    assert_type(reason, wbactor.DropReason)
    del state


def backoff(attempt: int) -> float:
    return wbactor.default_backoff(attempt) * 2


def configs() -> list[wbactor.Config[PlayerState]]:
    clock = wbactor.testing.ManualClock()
    with_object = wbactor.Config(
        capacity=10_000,
        flusher=PlayerStore(),
        batch_size=100,
        flush_interval=1.0,
        policy=wbactor.Policy.COALESCE_BY_KEY,
        key_func=player_key,
        retry_backoff=backoff,
        max_retries=-1,
        on_drop=report_drop,
        flush_timeout=5.0,
        block_timeout=None,
        clock=clock,
        name="players",
        exit_timeout=2.5,
    )
    assert_type(with_object, wbactor.Config[PlayerState])
    assert_type(with_object.name, str)
    assert_type(with_object.exit_timeout, float)
    no_drain: wbactor.Config[PlayerState] = wbactor.Config(
        capacity=10, flusher=write_players, exit_timeout=0
    )
    with_function = wbactor.Config(capacity=10, flusher=write_players)
    assert_type(with_function, wbactor.Config[PlayerState])
    with_factory: wbactor.Config[PlayerState] = wbactor.Config(
        capacity=10, flusher_factory=PlayerStore, clock=wbactor.MonotonicClock()
    )
    with_lambda: wbactor.Config[PlayerState] = wbactor.Config(
        capacity=10,
        flusher=lambda batch: None,
        key_func=lambda state: (state.player_id, round(state.x)),
        on_drop=lambda state, reason: (state.player_id, reason.value),
    )
    return [with_object, with_function, with_factory, with_lambda, no_drain]


def ill_typed_configs() -> None:
    wrong_flusher: wbactor.Config[PlayerState] = wbactor.Config(
        capacity=10,
        flusher=write_ints,  # type: ignore[arg-type]
    )
    wrong_key: wbactor.Config[PlayerState] = wbactor.Config(
        capacity=10,
        flusher=write_players,
        key_func=lambda n: n + 1,  # type: ignore[operator]
    )
    wrong_policy = wbactor.Config(
        capacity=10,
        flusher=write_players,
        policy="drop_oldest",  # type: ignore[arg-type]
    )
    # capacity has no default in the typed signature: leaving it out is an
    # error (a default there would make this ignore unused, itself an error).
    no_capacity: wbactor.Config[PlayerState] = wbactor.Config(  # type: ignore[call-arg]
        flusher=write_players
    )
    positional = wbactor.Config(10, write_players)  # type: ignore[call-arg]
    bad_name: wbactor.Config[PlayerState] = wbactor.Config(
        capacity=10,
        flusher=write_players,
        name=None,  # type: ignore[arg-type]
    )
    bad_exit_timeout: wbactor.Config[PlayerState] = wbactor.Config(
        capacity=10,
        flusher=write_players,
        exit_timeout="5",  # type: ignore[arg-type]
    )


def use_a_queue(cfg: wbactor.Config[PlayerState], state: PlayerState) -> None:
    wb: wbactor.WriteBehind[PlayerState] = wbactor.start(cfg)
    assert_type(wbactor.start(cfg), wbactor.WriteBehind[PlayerState])
    wb.ref.tell(wbactor.Push(state))
    wb.ref.tell(wbactor.PushMany([state, state]))
    wb.ref.tell(wbactor.Flush())
    assert_type(wbactor.Push(state), wbactor.Push[PlayerState])
    assert_type(wbactor.Push(state).item, PlayerState)
    wb.push(state)
    wb.push(state, timeout=0.5)
    wb.push(1)  # type: ignore[arg-type]
    assert_type(wb.depth(), int)
    wb.flush()
    wb.flush(timeout=1.0)
    assert_type(wb.stats(), wbactor.Stats)
    assert_type(wb.wait_for(lambda s: s.flushed >= 3, 5.0), wbactor.Stats)
    stats: wbactor.Stats = wb.stop()
    assert_type(wb.stop(timeout=1.0), wbactor.Stats)
    assert_type(stats.pushed, int)
    assert_type(stats.dropped, Mapping[wbactor.DropReason, int])
    assert_type(stats.dropped_total, int)
    assert_type(stats.oldest_age, float)
    assert_type(stats.as_dict(), dict[str, Any])
    stats.dropped[wbactor.DropReason.CLOSED] = 1  # type: ignore[index]


def typed_queue_ref(wb: wbactor.WriteBehind[int]) -> None:
    # `wb.ref` is typed by the item type: the pushes it accepts are checked.
    ref: wbactor.QueueRef[int] = wb.ref
    ref.tell(wbactor.Push(1))
    ref.tell(wbactor.PushMany([1, 2]))
    ref.tell(wbactor.PushMany(range(3)))
    ref.tell(wbactor.Flush())
    wb.ref.tell(wbactor.Push(1))
    wb.ref.tell(wbactor.Push("x"))  # type: ignore[arg-type]
    # pykka's own messages and methods still type-check.
    wb.ref.ask(wbactor.Flush(), timeout=1.0)
    wb.ref.ask(ProxyGetAttr(attr_path=("actor_urn",)))
    assert_type(wb.ref.is_alive(), bool)
    wb.ref.stop()


def use_a_context_manager(cfg: wbactor.Config[PlayerState], state: PlayerState) -> None:
    with wbactor.start(cfg) as wb2:
        assert_type(wb2, wbactor.WriteBehind[PlayerState])
        wb2.push(state)


def match_messages(message: object) -> PlayerState | None:
    match message:
        case wbactor.Push(PlayerState() as state):
            return state
        case _:
            return None


def testing_helpers(state: PlayerState) -> None:
    clock = wbactor.testing.ManualClock()
    clock.advance(1.0)
    assert_type(clock.now(), float)
    recorder: wbactor.testing.RecordingFlusher[PlayerState] = (
        wbactor.testing.RecordingFlusher()
    )
    cfg = wbactor.Config(capacity=10, flusher=recorder, clock=clock)
    assert_type(cfg, wbactor.Config[PlayerState])
    with wbactor.start(cfg) as wb:
        wb.push(state)
        assert_type(recorder.wait_for_items(1), list[PlayerState])
    flaky: wbactor.testing.FlakyFlusher[PlayerState] = wbactor.testing.FlakyFlusher(
        failures=2
    )
    gated: wbactor.testing.GatedFlusher[PlayerState] = wbactor.testing.GatedFlusher()
    wbactor.Config(capacity=1, flusher=flaky)
    wbactor.Config(capacity=1, flusher=gated)
    drops: wbactor.testing.DropRecorder[PlayerState] = wbactor.testing.DropRecorder()
    wbactor.Config(capacity=1, flusher=recorder, on_drop=drops)
    assert_type(drops.wait_for(1), list[tuple[PlayerState, wbactor.DropReason]])
    assert_type(drops.items, list[PlayerState])


def errors() -> None:
    try:
        wbactor.Config(capacity=0, flusher=write_players)
    except wbactor.CapacityRequiredError as err:
        assert_type(err, wbactor.CapacityRequiredError)
    except wbactor.ConfigError as err:
        assert_type(err, wbactor.ConfigError)
    assert_type(wbactor.__version__, str)
    reason: str = wbactor.DropReason.CLOSED
    delay: float = wbactor.default_backoff(3)
    del reason, delay
