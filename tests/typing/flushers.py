"""User-style code that `mypy --strict` checks against `wbactor.flushers`.

Nothing here runs; an unused `# type: ignore[...]` fails under `--strict`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import assert_type

import wbactor
from wbactor.flushers import (
    PermanentStoreError,
    PostgresFlusher,
    SQLiteFlusher,
    StoreError,
    TransientStoreError,
)


@dataclasses.dataclass(frozen=True)
class Score:
    player: str
    points: int


def score_row(score: Score) -> tuple[str, int]:
    return (score.player, score.points)


def score_mapping(score: Score) -> dict[str, object]:
    return {"player": score.player, "points": score.points}


def configs() -> list[wbactor.Config[Score]]:
    sqlite = wbactor.Config(
        capacity=10,
        flusher_factory=lambda: SQLiteFlusher(
            Path("scores.db"),
            "INSERT INTO scores VALUES (?, ?)",
            score_row,
            setup=["CREATE TABLE IF NOT EXISTS scores (player, points)"],
            timeout=1.0,
        ),
    )
    assert_type(sqlite, wbactor.Config[Score])
    postgres = wbactor.Config(
        capacity=10,
        flusher_factory=lambda: PostgresFlusher(
            "postgresql://localhost/game",
            "INSERT INTO scores VALUES (%(player)s, %(points)s)",
            score_mapping,
            connect_timeout=2.0,
        ),
    )
    assert_type(postgres, wbactor.Config[Score])
    shared: wbactor.Config[Score] = wbactor.Config(
        capacity=10, flusher=SQLiteFlusher("scores.db", "...", score_row)
    )
    return [sqlite, postgres, shared]


def ill_typed() -> None:
    wrong_item: wbactor.Config[int] = wbactor.Config(
        capacity=10,
        flusher=SQLiteFlusher("scores.db", "...", score_row),  # type: ignore[arg-type]
    )
    not_rows: SQLiteFlusher[Score] = SQLiteFlusher(
        "scores.db",
        "...",
        lambda score: 3,  # type: ignore[arg-type,return-value]
    )


def errors(error: StoreError) -> bool:
    assert_type(error.sqlstate, str | None)
    assert_type(error.store, str)
    assert isinstance(error, wbactor.WriteBehindError)
    return isinstance(error, PermanentStoreError | TransientStoreError)
