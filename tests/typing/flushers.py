"""User-style code that `mypy --strict` checks against `wbactor.flushers`.

Nothing here runs; an unused `# type: ignore[...]` fails under `--strict`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, assert_type

from psycopg import sql

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


def composed_forms() -> list[wbactor.Config[Score]]:
    upsert = PostgresFlusher.upsert(
        "postgresql://localhost/game",
        ("game", "scores"),
        ["player", "points"],
        "player",
        values=score_row,
        version="points",
        connect_kwargs={"application_name": "scores"},
    )
    assert_type(upsert, PostgresFlusher[Score])
    rows = PostgresFlusher.append("postgresql://localhost/game", "log", ["a", "b"])
    assert_type(rows, PostgresFlusher[Sequence[Any]])
    lite = SQLiteFlusher.upsert(
        Path("scores.db"), "scores", ["player", "points"], ["player"], values=score_row
    )
    assert_type(lite, SQLiteFlusher[Score])
    lite_rows = SQLiteFlusher.append(
        "scores.db", "log", ["a"], pragmas={"synchronous": "FULL"}
    )
    assert_type(lite_rows, SQLiteFlusher[Sequence[Any]])
    composed = PostgresFlusher(
        "postgresql://localhost/game",
        sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier("scores")),
        score_row,
    )
    assert_type(composed, PostgresFlusher[Score])
    tuples: wbactor.Config[tuple[str, int]] = wbactor.Config(
        capacity=10,
        flusher_factory=lambda: SQLiteFlusher.upsert("s.db", "t", ["a", "b"], "a"),
    )
    del tuples
    return [
        wbactor.Config(capacity=10, flusher_factory=lambda: upsert),
        wbactor.Config(capacity=10, flusher_factory=lambda: lite),
    ]


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
    not_a_row: PostgresFlusher[Score] = PostgresFlusher.upsert(
        "postgresql://localhost/game",
        "scores",
        ["player"],
        "player",
        values=lambda score: 3,  # type: ignore[arg-type,return-value]
    )


def errors(error: StoreError) -> bool:
    assert_type(error.sqlstate, str | None)
    assert_type(error.store, str)
    assert isinstance(error, wbactor.WriteBehindError)
    return isinstance(error, PermanentStoreError | TransientStoreError)
