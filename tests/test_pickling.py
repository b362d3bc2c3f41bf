"""What crosses to and from a flusher's worker process pickles as itself.

A worker (`flusher_process=True`) sends back the exception its flusher
raised, and `classify` reads it in the parent: an error that came back as
something else (or did not come back) would be classified wrongly.
"""

from __future__ import annotations

import pickle
import sqlite3
from typing import TYPE_CHECKING, TypeVar

import pytest

import wbactor
from wbactor.flushers import (
    PermanentStoreError,
    PostgresFlusher,
    SQLiteFlusher,
    StoreError,
    TransientStoreError,
)

if TYPE_CHECKING:
    from pathlib import Path

E = TypeVar("E")


def round_trip(value: E) -> E:
    copy: E = pickle.loads(pickle.dumps(value, protocol=5))  # noqa: S301 - ours
    return copy


def test_retry_after_keeps_its_seconds_and_message() -> None:
    error = round_trip(wbactor.RetryAfter(2.5, "rate limited"))
    assert (error.seconds, str(error), error.delay) == (2.5, "rate limited", 2.5)
    assert str(round_trip(wbactor.RetryAfter(3))) == "retry after 3 s"


def test_partial_failure_keeps_its_indices_and_error() -> None:
    error = round_trip(wbactor.PartialFailure([3, 1], ValueError("bad row")))
    assert error.failed == (3, 1)
    assert isinstance(error.error, ValueError)
    assert str(error.error) == "bad row"
    assert str(error) == "2 item(s) of the batch failed: ValueError"


def test_a_permanent_error_stays_permanent_with_its_notes() -> None:
    original = wbactor.PermanentError("never")
    original.add_note("row 3")
    error = round_trip(original)
    assert wbactor.default_classify(error) is wbactor.Failure.PERMANENT
    assert error.__notes__ == ["row 3"]


@pytest.mark.parametrize("kind", [PermanentStoreError, TransientStoreError])
def test_store_errors_keep_their_store_and_sqlstate(kind: type[StoreError]) -> None:
    error = round_trip(kind("postgresql UniqueViolation", store="pg", sqlstate="23505"))
    assert type(error) is kind
    assert (str(error), error.store, error.sqlstate) == (
        "postgresql UniqueViolation",
        "pg",
        "23505",
    )
    assert error.permanent is kind.permanent


def test_the_worker_errors_pickle() -> None:
    died = round_trip(wbactor.WorkerDiedError("exited with code 3", 3))
    assert (str(died), died.exitcode) == ("exited with code 3", 3)
    remote = round_trip(wbactor.RemoteError("store.Weird", "no pickle"))
    assert (remote.type_name, remote.message) == ("store.Weird", "no pickle")
    assert str(remote) == "store.Weird: no pickle"
    assert str(wbactor.RemoteError("store.Weird", "")) == "store.Weird"


def kv_params(row: tuple[int, int]) -> tuple[int, int]:
    return row


def test_an_sqlite_flusher_pickles_without_its_connection(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    flusher = SQLiteFlusher(
        path,
        "INSERT INTO kv (k, v) VALUES (?, ?)",
        kv_params,
        setup=["CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v INTEGER)"],
    )
    flusher.flush([(1, 10)])  # connected: the copy must connect on its own
    copy = round_trip(flusher)
    copy.flush([(2, 20)])
    flusher.flush([(3, 30)])
    copy.close()
    flusher.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT k, v FROM kv ORDER BY k").fetchall() == [
            (1, 10),
            (2, 20),
            (3, 30),
        ]
    db.close()


def test_a_postgres_flusher_pickles_without_its_connection() -> None:
    pytest.importorskip("psycopg")
    flusher = PostgresFlusher("postgresql://nowhere/db", "SELECT %s", kv_params)
    copy = round_trip(flusher)
    assert copy._settings == flusher._settings
    assert copy._conn is None
    copy.close()  # its lock is a fresh one
