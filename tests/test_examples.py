"""The README's and the docs' code runs, and so does every example script."""

from __future__ import annotations

import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import game_shard
import pytest
import structlog

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_GAME_SHARD = ROOT / "examples" / "game_shard.py"
_SHORT = ["--seconds", "1", "--players", "50"]
_ARGS = {"game_shard.py": _SHORT}  # the default run plays for 8 s


@pytest.mark.parametrize("path", _DOCS, ids=lambda p: p.name)
def test_doc_snippets_run(path: Path) -> None:
    """Run a page's python blocks in order, in one namespace, as a reader would."""
    namespace: dict[str, object] = {"__name__": "__snippet__"}
    for i, code in enumerate(_FENCE.findall(path.read_text())):
        if "--8<--" not in code:  # an included example: run below as itself
            exec(compile(code, f"{path.name}#{i}", "exec"), namespace)  # noqa: S102


def run_example(script: Path, *args: str) -> str:
    """Run an example script; return its output, after checking it said OK."""
    result = subprocess.run(  # noqa: S603 - our own example, our interpreter
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    return result.stdout


@pytest.mark.parametrize("script", sorted((ROOT / "examples").glob("*.py")), ids=str)
def test_example_script_succeeds(script: Path) -> None:
    run_example(script, *_ARGS.get(script.name, []))


def test_game_shard_loses_nothing_to_a_flaky_store() -> None:
    run_example(_GAME_SHARD, *_SHORT, "--faults", "0.3")


def test_game_shard_runs_shard_processes_on_one_sqlite_file() -> None:
    out = run_example(_GAME_SHARD, *_SHORT, "--shards", "2")
    assert "shard 1:" in out
    assert "OK: all 100 players' latest states are stored" in out


def rejected_in(out: str) -> int:
    """The rejected count the verdict line gives (after OK)."""
    found = re.search(r"^OK: .* \((\d+) states rejected\)$", out, re.MULTILINE)
    assert found, out
    return int(found.group(1))


def test_game_shard_stores_every_player_but_the_poisoned() -> None:
    out = run_example(_GAME_SHARD, *_SHORT, "--poison", "0.1")
    assert "OK: all 45 players' latest states are stored, and none of the 5 " in out
    rejected = rejected_in(out)
    assert rejected >= 5  # each poisoned player's latest state, at least
    assert f"dropped {rejected} (rejected {rejected});" in out


def test_game_shard_rejects_poison_on_a_flaky_store() -> None:
    # Each batch holds bad rows and each call may fail or hang: isolating
    # them must not outlast the final drain.
    out = run_example(_GAME_SHARD, *_SHORT, "--faults", "0.3", "--poison", "0.1")
    assert "OK: all 45 players' latest states are stored, and none of the 5 " in out
    rejected = rejected_in(out)
    assert f"dropped {rejected} (rejected {rejected});" in out  # nothing closed


def test_game_shard_writes_through_a_flusher_process_under_cpu_load() -> None:
    out = run_example(_GAME_SHARD, *_SHORT, "--cpu-load", "--flusher-process")
    assert "rows (" in out
    assert "CPU-bound thread" in out


def test_game_shard_logs_as_configured_in_a_flusher_process() -> None:
    out = run_example(_GAME_SHARD, *_SHORT, "--flusher-process", "--poison", "0.1")
    assert rejected_in(out) >= 5
    # The worker logs one store_error for every failed flush call; shown once.
    assert out.count("store_error") == 1


def _pg_dsn() -> str:
    dsn = os.environ.get("WBACTOR_TEST_PG_DSN")
    if dsn:
        return dsn
    if os.environ.get("CI") == "true":
        pytest.fail("CI must export WBACTOR_TEST_PG_DSN (a PostgreSQL server)")
    pytest.skip("set WBACTOR_TEST_PG_DSN to run against PostgreSQL")


def test_game_shard_recovers_a_crash_from_its_journal(tmp_path: Path) -> None:
    db, journal = tmp_path / "game.db", tmp_path / "game.wbj"
    where = ["--db", str(db), "--journal", str(journal), "--players", "50"]
    crashed = subprocess.run(  # noqa: S603 - our own example, our interpreter
        [sys.executable, str(_GAME_SHARD), *where, "--crash-after", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert (tmp_path / "game.wbj.expected").exists()
    again = subprocess.run(  # noqa: S603
        [sys.executable, str(_GAME_SHARD), *where],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert "OK: all 50 players are stored at least as new as noted" in again.stdout
    assert not (tmp_path / "game.wbj.expected").exists()


def test_game_shard_on_postgres() -> None:
    run_example(_GAME_SHARD, *_SHORT, "--dsn", _pg_dsn())


def test_game_shard_processes_with_faults_on_postgres() -> None:
    out = run_example(
        _GAME_SHARD, *_SHORT, "--dsn", _pg_dsn(), "--shards", "2", "--faults", "0.3"
    )
    assert "OK: all 100 players' latest states are stored" in out


def test_game_shard_processes_reject_poisoned_players_on_postgres() -> None:
    out = run_example(
        _GAME_SHARD, *_SHORT, "--dsn", _pg_dsn(), "--shards", "2", "--poison", "0.1"
    )
    assert "OK: all 90 players' latest states are stored, and none of the 10 " in out
    assert rejected_in(out) >= 10
    assert "shard 1:" in out


# The verdict: what makes the example exit non-zero.

_STATES = [game_shard.PlayerState(i, 10 + i, 1.5 * i, 2.0) for i in range(4)]


def test_verdict_is_ok_when_every_latest_state_is_stored() -> None:
    verdict = game_shard.verify(_STATES, {s.player_id: s for s in _STATES})
    assert verdict.ok
    assert str(verdict) == "OK: all 4 players' latest states are stored"


def test_verdict_names_missing_and_stale_players() -> None:
    stored = {s.player_id: s for s in _STATES}
    del stored[1]
    stored[2] = stored[2]._replace(seq=stored[2].seq - 1)  # an older state
    stored[3] = stored[3]._replace(x=0.0)  # the right seq, the wrong place
    verdict = game_shard.verify(_STATES, stored)
    assert not verdict.ok
    assert verdict.missing == (1,)
    assert verdict.stale == (2, 3)
    assert str(verdict).startswith("FAILED: 3 of 4 players' latest states")


# Two poisoned players, of 4 states each: with _STATES, 58 states made.
_POISONED = [
    game_shard.PlayerState(i, 3, 0.0, 0.0, game_shard.POISONED_HP) for i in (8, 9)
]
_STORED = {s.player_id: s for s in _STATES}


def _counts(**changes: int) -> game_shard.Progress:
    """Final counts that add up for _STATES and _POISONED, then `changes`."""
    fine = game_shard.Progress(
        pushed=58, flushed=30, coalesced=24, dropped=4, rejected=4
    )
    return fine._replace(**changes)


def test_verdict_is_ok_when_no_poisoned_state_is_stored_and_the_counts_add_up() -> None:
    verdict = game_shard.verify([*_STATES, *_POISONED], _STORED, _counts())
    assert verdict.ok, verdict
    assert str(verdict) == (
        "OK: all 4 players' latest states are stored, "
        "and none of the 2 poisoned players' (4 states rejected)"
    )


def test_verdict_fails_when_a_poisoned_state_is_stored() -> None:
    stored = {**_STORED, 9: _POISONED[1]}  # a table without its CHECK
    verdict = game_shard.verify([*_STATES, *_POISONED], stored, _counts())
    assert verdict.written == (9,)
    assert str(verdict) == "FAILED: 1 of 2 poisoned players have a row [9]"


@pytest.mark.parametrize(
    ("changes", "wrong"),
    [
        ({"pushed": 59}, "59 states pushed, but 58 accounted for; the queues"),
        ({"depth": 1}, "58 states pushed, but 59 accounted for"),
        ({"coalesced": 23, "dropped": 5}, "dropped, not rejected: 1 states"),
        (
            {"coalesced": 27, "dropped": 1, "rejected": 1},
            "rejected 1 states, not between 2 and 8 (the poisoned",
        ),
        (
            {"coalesced": 19, "dropped": 9, "rejected": 9},
            "rejected 9 states, not between 2 and 8",
        ),
    ],
)
def test_verdict_fails_when_the_counts_do_not_add_up(
    changes: dict[str, int], wrong: str
) -> None:
    verdict = game_shard.verify([*_STATES, *_POISONED], _STORED, _counts(**changes))
    assert not verdict.ok
    assert str(verdict).startswith(f"FAILED: {wrong}")


def test_verdict_without_poison_counts_no_rejected_state() -> None:
    counts = game_shard.Progress(
        pushed=50, flushed=40, coalesced=9, rejected=1, dropped=1
    )
    verdict = game_shard.verify(_STATES, _STORED, counts)
    [wrong] = verdict.miscounts
    assert wrong.startswith("rejected 1 states, not between 0 and 0 ")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_prints_a_line_a_second_when_not_on_a_terminal() -> None:
    out, now = io.StringIO(), [100.0]
    status = game_shard.StatusLine(out, clock=lambda: now[0])
    status.update(game_shard.Progress(pushed=500))  # the baseline
    now[0] += 0.5
    status.update(game_shard.Progress(pushed=3000))  # too soon
    now[0] += 0.5
    status.update(game_shard.Progress(pushed=6500, coalesced=4, retries=2))
    line = (
        "pushes/s   6000 | depth     0 | coalesced       4 | flushed      0 | "
        "drops 0 | retries 2 | restarts 0"
    )
    assert out.getvalue().splitlines() == [line]


def test_status_line_shows_the_rejected_among_the_drops() -> None:
    out, now = io.StringIO(), [0.0]
    status = game_shard.StatusLine(out, clock=lambda: now[0])
    status.update(game_shard.Progress())
    now[0] += 1.0
    status.update(game_shard.Progress(dropped=7, rejected=7))
    assert "| drops 7 (rejected 7) | retries 0 |" in out.getvalue()


def test_status_line_redraws_in_place_on_a_terminal() -> None:
    out, now = Terminal(), [0.0]
    status = game_shard.StatusLine(out, clock=lambda: now[0])
    for pushed in (0, 100, 200):
        status.update(game_shard.Progress(pushed=pushed))
        now[0] += 0.5
    status.clear()
    status.clear()  # nothing drawn: nothing to erase
    drawn = out.getvalue()
    assert "\n" not in drawn
    assert drawn.count("\r\x1b[Kpushes/s    200 |") == 2
    assert drawn.endswith("restarts 0\r\x1b[K")


@dataclass(frozen=True)
class LosingStore(game_shard.SQLiteStore):
    """An SQLite store that loses one player's row just before it is read."""

    def read(self) -> dict[int, game_shard.PlayerState]:
        with sqlite3.connect(self.path) as db:
            db.execute("DELETE FROM game_shard_players WHERE player_id = 3")
        db.close()
        return super().read()


@pytest.fixture
def _restore_structlog() -> Iterator[None]:
    """The example configures structlog for its process; undo it after."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("_restore_structlog")
def test_game_shard_fails_when_the_store_lost_a_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = LosingStore(tmp_path / "game.db")
    shard = game_shard.Shard(
        index=0,
        player_ids=range(10),
        seconds=0.3,
        tick_hz=20.0,
        faults=0.0,
        store=store,
    )
    assert game_shard.run(store, [shard]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 1 of 10 players' latest states are not stored: 1 missing [3]" in out


@pytest.mark.usefixtures("_restore_structlog")
def test_game_shard_fails_when_a_shard_process_dies(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    store = game_shard.SQLiteStore(tmp_path / "game.db")
    shards = [
        game_shard.Shard(
            index=i,
            player_ids=range(i * 5, i * 5 + 5),
            seconds=0.3,
            tick_hz=20.0 if i == 0 else 0.0,  # shard 1 dies dividing by zero
            faults=0.0,
            store=store,
        )
        for i in range(2)
    ]
    assert game_shard.run(store, shards) == 1
    last = capfd.readouterr().out.splitlines()[-2:]
    assert last[0] == "OK: all 5 players' latest states are stored"
    assert last[1].startswith("FAILED: shard 1 exited with code 1 before reporting")


@pytest.mark.usefixtures("_restore_structlog")
def test_game_shard_shows_the_first_of_the_lines_logged_per_bad_row(
    capsys: pytest.CaptureFixture[str],
) -> None:
    game_shard.configure_logging(None)
    log = structlog.get_logger("wbactor")
    for _ in range(3):
        log.warning("store_error", permanent=True)
        log.warning("items_rejected", count=1)
    log.warning("store_error", permanent=False)  # transient: each one is shown
    log.warning("store_error", permanent=False)
    lines = capsys.readouterr().out.splitlines()
    events = [line.split()[3] for line in lines]
    assert events == ["store_error", "items_rejected", "store_error", "store_error"]
    assert [("more='not shown'" in line) for line in lines] == [
        True,
        True,
        False,
        False,
    ]
