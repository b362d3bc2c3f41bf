"""Flusher processes: `flusher_process=True` and `ProcessFlusher`.

Each worker costs a spawn (0.1-0.3 s), so the tests of `ProcessFlusher` that
leave their worker usable share one; the flushers are in `process_flushers`,
which the spawned workers import, and they report through files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import process_flushers
import pytest
from process_flushers import AsyncScripted, Scripted, batches, read_log
from structlog.testing import capture_logs
from support import WAIT, conservation_holds, retries, running

import wbactor
from wbactor._attempts import Attempts
from wbactor._worker import ProcessFlusher, check_picklable
from wbactor.flushers import PermanentStoreError, SQLiteFlusher, TransientStoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie left to init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.01)


def scripted(log: Path, trap: Path | None = None, **options: Any) -> Any:
    return functools.partial(Scripted, str(log), str(trap) if trap else None, **options)


def other_children() -> list[Any]:
    """The child processes alive, but for the shared worker."""
    alive = multiprocessing.active_children()
    return [p for p in alive if p.name != "wbactor-flusher[shared]"]


def worker_pids(log: Path) -> list[int]:
    return [e["pid"] for e in read_log(log) if "started" in e]


def zero_backoff(attempt: int) -> float:
    return 0.0


@pytest.fixture(scope="module")
def shared_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared") / "log.jsonl"


@pytest.fixture(scope="module")
def shared(shared_log: Path) -> Iterator[ProcessFlusher[Any]]:
    """One worker for the tests that leave it usable."""
    flusher: ProcessFlusher[Any] = ProcessFlusher(scripted(shared_log), name="shared")
    yield flusher
    flusher.close()
    assert gone(flusher.pid)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[ProcessFlusher[Any], Path]]:
    """A worker of its own, for a test that kills or closes it."""
    log = tmp_path / "log.jsonl"
    flusher: ProcessFlusher[Any] = ProcessFlusher(scripted(log), name="fresh")
    yield flusher, log
    flusher.close()
    assert gone(flusher.pid)


# ------------------------------------------------------------ ProcessFlusher


def test_batches_are_written_in_the_worker_in_order(
    shared: ProcessFlusher[Any], shared_log: Path
) -> None:
    before = len(batches(shared_log))
    shared.flush([1, 2, 3])
    shared.flush([4, 5])
    written = batches(shared_log)[before:]
    assert written == [(shared.pid, [1, 2, 3]), (shared.pid, [4, 5])]
    assert shared.pid != os.getpid()


@pytest.mark.parametrize(
    ("command", "kind", "failure"),
    [
        ("permanent", PermanentStoreError, wbactor.Failure.PERMANENT),
        ("transient", TransientStoreError, wbactor.Failure.TRANSIENT),
        ("retry_after", wbactor.RetryAfter, wbactor.Failure.TRANSIENT),
        ("partial", wbactor.PartialFailure, wbactor.Failure.TRANSIENT),
    ],
)
def test_the_flushers_errors_come_back_as_themselves(
    shared: ProcessFlusher[Any],
    command: str,
    kind: type[Exception],
    failure: wbactor.Failure,
) -> None:
    with pytest.raises(kind) as raised:
        shared.flush([f"raise:{command}", 1])
    error: Any = raised.value
    assert wbactor.default_classify(error) is failure
    if isinstance(error, PermanentStoreError):
        assert (error.store, str(error)) == ("sqlite", "sqlite constraint")
    if isinstance(error, wbactor.RetryAfter):
        assert error.seconds == 2.5
    if isinstance(error, wbactor.PartialFailure):
        assert error.failed == (1,)
        assert isinstance(error.error, ValueError)


def test_a_base_exception_comes_back_too(shared: ProcessFlusher[Any]) -> None:
    with pytest.raises(KeyboardInterrupt):
        shared.flush(["raise:interrupt"])
    shared.flush([1])  # the worker lives on


@pytest.mark.parametrize(
    ("command", "type_name", "message"),
    [
        ("locks", "process_flushers.LocksError", "holds a lock"),
        ("needs_two", "process_flushers.NeedsTwoError", "a and b"),
        ("hostile", "process_flushers.HostileError", ""),
    ],
)
def test_an_error_that_does_not_pickle_comes_back_as_a_remote_error(
    shared: ProcessFlusher[Any], command: str, type_name: str, message: str
) -> None:
    with pytest.raises(wbactor.RemoteError) as raised:
        shared.flush([f"raise:{command}"])
    assert (raised.value.type_name, raised.value.message) == (type_name, message)
    assert wbactor.default_classify(raised.value) is wbactor.Failure.TRANSIENT


def test_a_partial_failure_keeps_its_indices_when_its_error_does_not_pickle(
    shared: ProcessFlusher[Any],
) -> None:
    with pytest.raises(wbactor.PartialFailure) as raised:
        shared.flush(["raise:partial_locks"])
    assert raised.value.failed == (0,)
    assert isinstance(raised.value.error, wbactor.RemoteError)
    assert raised.value.error.type_name == "process_flushers.LocksError"


@pytest.mark.parametrize(("command", "letter"), [("huge", "x"), ("big", "y")])
def test_a_partial_failure_too_big_for_a_reply_keeps_every_index(
    shared: ProcessFlusher[Any], command: str, letter: str
) -> None:
    # Pickled as is, 29,999 indices and a 100 kB (or a 10 kB) message: over
    # 16 kB, and the 10 kB one would not fit beside the indices' 8 kB either.
    with pytest.raises(wbactor.PartialFailure) as raised:
        shared.flush([f"raise:partial_{command}"])
    assert raised.value.failed == tuple(range(3, 60_000, 2))
    inner = raised.value.error
    assert isinstance(inner, wbactor.RemoteError)
    assert inner.type_name == "ValueError"
    assert inner.message == letter * 1024
    shared.flush([1])  # the conversation goes on


def test_a_batch_that_does_not_pickle_is_a_pickling_error_and_nothing_is_sent(
    shared: ProcessFlusher[Any], shared_log: Path
) -> None:
    class Local:
        pass

    before = batches(shared_log)
    with pytest.raises(pickle.PicklingError) as raised:
        shared.flush([1, threading.Lock(), 3])
    assert "item 1 (a _thread.lock)" in str(raised.value)
    assert "cannot pickle '_thread.lock' object" in str(raised.value)
    assert wbactor.default_classify(raised.value) is wbactor.Failure.PERMANENT
    with pytest.raises(pickle.PicklingError, match=r"item 0 \(a .*Local\)"):
        shared.flush([Local()])
    with pytest.raises(pickle.PicklingError, match=r"item 1 .*function"):
        shared.flush([1, lambda: None])
    assert batches(shared_log) == before
    shared.flush([7])  # nothing half-sent: the conversation goes on
    assert batches(shared_log)[-1] == (shared.pid, [7])


def test_flush_many_writes_in_order_and_stops_at_the_first_failure(
    shared: ProcessFlusher[Any], shared_log: Path
) -> None:
    before = len(batches(shared_log))
    assert shared.flush_many([[1], [2, 3]]) == (2, None)
    written, error = shared.flush_many([[4], ["raise:permanent", 5], [6]])
    assert written == 1
    assert isinstance(error, PermanentStoreError)
    assert [b for _, b in batches(shared_log)[before:]] == [[1], [2, 3], [4]]
    assert shared.flush_many([]) == (0, None)


def test_flush_many_writes_the_batches_before_one_that_does_not_pickle(
    shared: ProcessFlusher[Any], shared_log: Path
) -> None:
    before = batches(shared_log)
    written, error = shared.flush_many([[1], [2], [3, threading.Lock()], [4]])
    assert written == 2
    assert isinstance(error, pickle.PicklingError)
    assert str(error).startswith("batch 2, item 1 (a _thread")
    assert [b for _, b in batches(shared_log)] == [*(b for _, b in before), [1], [2]]
    with pytest.raises(pickle.PicklingError, match=r"^batch 0, item 0 \(a _thread"):
        shared.flush_many([[threading.Lock()], [5]])  # the first: nothing sent
    assert len(batches(shared_log)) == len(before) + 2


def test_a_worker_that_exits_mid_flush_is_a_worker_died_error(
    fresh: tuple[ProcessFlusher[Any], Path],
) -> None:
    flusher, _ = fresh
    with pytest.raises(wbactor.WorkerDiedError, match="exited with code 3") as raised:
        flusher.flush([1, "exit:3"])
    assert raised.value.exitcode == 3
    assert gone(flusher.pid)  # reaped: not even a zombie
    with pytest.raises(wbactor.WorkerDiedError):
        flusher.flush([2])


def test_a_worker_killed_by_a_signal_is_a_worker_died_error(
    fresh: tuple[ProcessFlusher[Any], Path],
) -> None:
    flusher, _ = fresh
    os.kill(flusher.pid, signal.SIGKILL)
    with pytest.raises(wbactor.WorkerDiedError, match="signal SIGKILL") as raised:
        flusher.flush([1])
    assert raised.value.exitcode == -signal.SIGKILL


def test_kill_from_another_thread_ends_a_waiting_flush_at_once(
    fresh: tuple[ProcessFlusher[Any], Path],
) -> None:
    flusher, log = fresh

    def kill_once_sleeping() -> None:
        wait_until(lambda: any("sleeping" in e for e in read_log(log)))
        flusher.kill()

    killer = threading.Thread(target=kill_once_sleeping)
    killer.start()
    started = time.monotonic()
    with pytest.raises(wbactor.WorkerDiedError, match="was killed"):
        flusher.flush(["sleep:30", 1])
    assert time.monotonic() - started < 3.0
    killer.join()
    assert gone(flusher.pid)
    flusher.kill()  # idempotent
    assert not Path(f"{log}.late").exists()


def test_close_closes_the_flusher_in_the_worker_and_reaps_it(
    fresh: tuple[ProcessFlusher[Any], Path],
) -> None:
    flusher, log = fresh
    flusher.flush([1])
    flusher.close()
    assert gone(flusher.pid)
    assert read_log(log)[-1] == {"pid": flusher.pid, "closed": True}
    flusher.close()  # idempotent
    with pytest.raises(wbactor.WorkerDiedError, match="was closed"):
        flusher.flush([2])


def test_close_kills_a_worker_whose_close_hangs_at_the_deadline(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    flusher: ProcessFlusher[Any] = ProcessFlusher(
        scripted(log, close_hangs=True), name="hangs"
    )
    started = time.monotonic()
    flusher.close(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2.0
    assert gone(flusher.pid)
    assert read_log(log)[-1]["closed"]


def test_a_factory_that_raises_in_the_worker_raises_here_and_leaves_no_process() -> (
    None
):
    with pytest.raises(TransientStoreError, match="no store here"):
        ProcessFlusher(process_flushers.failing_factory, name="failing")
    assert other_children() == []


def test_a_factory_the_worker_cannot_import_is_a_config_error() -> None:
    def missing() -> Scripted:
        raise AssertionError

    # Found by name in this process only: a worker imports the module afresh.
    missing.__module__, missing.__qualname__ = "process_flushers", "only_here"
    process_flushers.only_here = missing  # type: ignore[attr-defined]
    try:
        with pytest.raises(wbactor.ConfigError, match="unpickled in the worker"):
            ProcessFlusher(missing, name="missing")
    finally:
        del process_flushers.only_here  # type: ignore[attr-defined]
    assert other_children() == []


def test_an_unpicklable_factory_is_a_config_error_before_any_spawn() -> None:
    with pytest.raises(wbactor.ConfigError, match="<lambda>"):
        ProcessFlusher(lambda: Scripted("x"), name="lambda")
    assert other_children() == []


def test_an_async_flusher_runs_on_one_event_loop_for_the_workers_life(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.jsonl"
    flusher: ProcessFlusher[Any] = ProcessFlusher(
        functools.partial(AsyncScripted, str(log)), name="async"
    )
    try:
        flusher.flush([1])
        flusher.flush([2])
    finally:
        flusher.close()
    loops = [e for e in read_log(log) if "batch" in e]
    assert [e["batch"] for e in loops] == [[1], [2]]
    assert loops[0]["loop"] == loops[1]["loop"]


# ------------------------------------------------------------ what must pickle


def row(item: tuple[int, int]) -> tuple[int, int]:
    return item


def test_check_picklable_names_what_does_not_pickle() -> None:
    def local() -> None:
        pass

    with pytest.raises(
        wbactor.ConfigError, match=r"^flusher_factory must pickle.*<lambda>"
    ):
        check_picklable(lambda: None, "flusher_factory")
    with pytest.raises(
        wbactor.ConfigError,
        match=r"'test_.*\.<locals>\.local' of module test_flusher_process",
    ):
        check_picklable(local, "flusher_factory")
    with pytest.raises(
        wbactor.ConfigError,
        match=r"a _thread\.lock object \(the functools\.partial's argument 1\)",
    ):
        check_picklable(functools.partial(print, "log", threading.Lock()), "x")
    with pytest.raises(
        wbactor.ConfigError,
        match=r"<lambda>' of .* \(the functools\.partial's keyword 'params'\)",
    ):
        check_picklable(
            functools.partial(SQLiteFlusher, "x.db", "sql", params=lambda i: i), "x"
        )
    check_picklable(functools.partial(Scripted, "log"), "x")


def test_the_ready_flushers_factories_pickle(tmp_path: Path) -> None:
    sql = "INSERT INTO kv (k, v) VALUES (?, ?)"
    check_picklable(functools.partial(SQLiteFlusher, tmp_path / "x.db", sql, row), "f")
    with pytest.raises(
        wbactor.ConfigError,
        match=r"<lambda>' .*\(the functools\.partial's argument 2\) does not",
    ):
        check_picklable(functools.partial(SQLiteFlusher, "x.db", sql, lambda r: r), "f")


def test_config_needs_a_picklable_factory_for_flusher_process() -> None:
    with pytest.raises(wbactor.FlusherRequiredError, match="needs flusher_factory"):
        wbactor.Config(capacity=1, flusher=print, flusher_process=True)
    with pytest.raises(wbactor.ConfigError, match="flusher_factory must pickle"):
        wbactor.Config(
            capacity=1, flusher_factory=lambda: Scripted("x"), flusher_process=True
        )
    wbactor.Config(
        capacity=1, flusher_factory=scripted(Path("x")), flusher_process=True
    )
    # Without a worker nothing is pickled: a lambda factory stays fine.
    wbactor.Config(capacity=1, flusher_factory=lambda: Scripted("x"))


# ------------------------------------------------------------ through a queue


def run_queue(
    tmp_path: Path, *, process: bool, trap: str | None = None, **options: Any
) -> tuple[wbactor.Stats, Path]:
    """Push 0..94 in batches of 10 with one trapped attempt; stop; the stats."""
    log, trap_file = tmp_path / f"log-{process}.jsonl", tmp_path / f"trap-{process}"
    if trap:
        trap_file.write_text(trap)
    config: wbactor.Config[Any] = wbactor.Config(
        capacity=1000,
        flusher_factory=scripted(log, trap_file),
        batch_size=10,
        retry_backoff=zero_backoff,
        flusher_process=process,
        **options,
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany(range(95)))
        stats = wb.stop(timeout=WAIT)
    return stats, log


def comparable(stats: wbactor.Stats) -> dict[str, Any]:
    fields = dataclasses.asdict(stats)
    del fields["oldest_age"]
    return fields


def test_a_worker_writes_every_item_in_order_and_counts_as_a_thread_does(
    tmp_path: Path,
) -> None:
    threaded, _ = run_queue(tmp_path, process=False, trap="raise:transient")
    stats, log = run_queue(tmp_path, process=True, trap="raise:transient")
    assert comparable(stats) == comparable(threaded)
    assert (stats.flushed, stats.batches, stats.retries, stats.restarts) == (
        95,
        10,
        1,
        1,
    )
    written = batches(log)
    assert [i for _, b in written for i in b] == list(range(95))
    pids = worker_pids(log)
    assert len(pids) == 2  # a new worker at the restart
    assert os.getpid() not in pids
    assert {pid for pid, _ in written} == {pids[1]}
    assert all(gone(pid) for pid in pids)


def test_a_worker_that_dies_mid_flush_is_a_died_restart_and_writes_once(
    tmp_path: Path,
) -> None:
    with capture_logs() as logs:
        stats, log = run_queue(tmp_path, process=True, trap="exit:3")
    restarts = [e for e in logs if e["event"] == "flusher_restarted"]
    assert [e["cause"] for e in restarts] == ["died"]
    failed = [e for e in logs if e["event"] == "flush_failed"]
    assert "WorkerDiedError" in failed[0]["error"]
    assert "exited with code 3" in failed[0]["error"]
    assert (stats.flushed, stats.retries, stats.restarts) == (95, 1, 1)
    first, second = worker_pids(log)
    written = batches(log)
    assert {pid for pid, _ in written} == {second}
    assert [i for _, b in written for i in b] == list(range(95))
    assert gone(first)
    assert gone(second)


def test_an_attempt_past_flush_timeout_is_killed_and_never_writes_late(
    tmp_path: Path,
) -> None:
    log, trap = tmp_path / "log.jsonl", tmp_path / "trap"
    trap.write_text("sleep:1.5")
    config: wbactor.Config[int] = wbactor.Config(
        capacity=100,
        flusher_factory=scripted(log, trap),
        batch_size=10,
        flush_timeout=0.3,
        retry_backoff=zero_backoff,
        flusher_process=True,
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(wbactor.PushMany(range(10)))
        stats = wb.wait_for(lambda s: s.flushed == 10, WAIT)
        slept = next(e for e in read_log(log) if "sleeping" in e)
        time.sleep(1.7)  # past the end of the killed attempt's sleep
    assert [e["cause"] for e in logs if e["event"] == "flusher_restarted"] == [
        "timeout"
    ]
    assert (stats.retries, stats.restarts, stats.batches) == (1, 1, 1)
    first, second = worker_pids(log)
    assert slept["pid"] == first
    assert batches(log) == [(second, list(range(10)))]  # not a late one from first
    assert not Path(f"{log}.late").exists()
    assert gone(first)


def test_a_stop_that_runs_out_of_time_mid_flush_kills_the_worker(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.jsonl"
    config: wbactor.Config[Any] = wbactor.Config(
        capacity=10, flusher_factory=scripted(log), flusher_process=True
    )
    wb = wbactor.start(config)
    wb.ref.tell(wbactor.PushMany([1, "sleep:30"]))
    wb.ref.tell(wbactor.Flush())
    wait_until(lambda: any("sleeping" in e for e in read_log(log)))
    started = time.monotonic()
    stats = wb.stop(timeout=0.3)
    assert time.monotonic() - started < 2.0
    assert stats.dropped == {wbactor.DropReason.CLOSED: 2}
    (pid,) = worker_pids(log)
    assert gone(pid)
    assert batches(log) == []  # killed: it cannot write late
    assert not Path(f"{log}.late").exists()


def test_stop_kills_a_worker_whose_close_hangs_at_the_stops_deadline(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log.jsonl"
    config: wbactor.Config[int] = wbactor.Config(
        capacity=10,
        flusher_factory=scripted(log, close_hangs=True),
        flusher_process=True,
    )
    wb = wbactor.start(config)
    wb.push(1)
    started = time.monotonic()
    stats = wb.stop(timeout=0.5)
    assert time.monotonic() - started < 2.5
    assert stats.flushed == 1
    (pid,) = worker_pids(log)
    assert gone(pid)
    assert read_log(log)[-1]["closed"]


def test_a_factory_that_fails_in_the_worker_fails_start() -> None:
    config: wbactor.Config[int] = wbactor.Config(
        capacity=10,
        flusher_factory=process_flushers.failing_factory,
        flusher_process=True,
    )
    with pytest.raises(TransientStoreError, match="no store here"):
        wbactor.start(config)
    assert other_children() == []


def test_an_item_that_does_not_pickle_alone_is_rejected(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    lock = threading.Lock()
    dropped: list[tuple[Any, wbactor.DropReason]] = []
    config: wbactor.Config[Any] = wbactor.Config(
        capacity=100,
        flusher_factory=scripted(log),
        batch_size=10,
        on_drop=lambda item, reason: dropped.append((item, reason)),
        flusher_process=True,
    )
    with running(config) as wb:
        wb.ref.tell(wbactor.PushMany([0, 1, 2, lock, 4, 5, 6, 7, 8, 9]))
        stats = wb.stop(timeout=WAIT)
    assert dropped == [(lock, wbactor.DropReason.REJECTED)]
    assert [i for _, b in batches(log) for i in b] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert (stats.flushed, stats.dropped) == (9, {wbactor.DropReason.REJECTED: 1})


def test_a_store_error_logged_in_the_worker_names_the_queue(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kv.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    config: wbactor.Config[Any] = wbactor.Config(
        capacity=10,
        flusher_factory=functools.partial(
            SQLiteFlusher.upsert, path, "kv", ("k", "v"), "k"
        ),
        flusher_process=True,
        name="players",
    )
    with running(config) as wb:
        wb.push((1, None))  # NOT NULL: rejected, after a store_error in the worker
        stats = wb.stop(timeout=WAIT)
    assert stats.dropped == {wbactor.DropReason.REJECTED: 1}
    # The worker's structlog is unconfigured: it prints to the shared stdout.
    [line] = [s for s in capfd.readouterr().out.splitlines() if "store_error" in s]
    assert "queue=players" in line


# ------------------------------------------------------------ the parent's end


def run_script(tmp_path: Path, body: str) -> subprocess.Popen[str]:
    script = tmp_path / "parent.py"
    script.write_text(body)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}
    return subprocess.Popen(  # noqa: S603 - our interpreter, our script
        [sys.executable, str(script), str(tmp_path / "log.jsonl")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


KILLED_PARENT = """
import functools, sys, threading, time
from pathlib import Path
import process_flushers
from wbactor._worker import ProcessFlusher

def main():
    log = sys.argv[1]
    factory = functools.partial(process_flushers.Scripted, log)
    idle = ProcessFlusher(factory, name="idle")
    busy = ProcessFlusher(factory, name="busy")
    threading.Thread(target=busy.flush, args=(["sleep:60"],), daemon=True).start()
    while not any("sleeping" in e for e in process_flushers.read_log(Path(log))):
        time.sleep(0.01)
    print(idle.pid, busy.pid, flush=True)
    time.sleep(60)

if __name__ == "__main__":
    main()
"""


def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    with run_script(tmp_path, KILLED_PARENT) as parent:
        try:
            assert parent.stdout is not None
            idle, busy = map(int, parent.stdout.readline().split())
            assert not gone(idle)
            assert not gone(busy)
        finally:
            parent.kill()
            parent.wait(timeout=WAIT)
    wait_until(lambda: gone(idle) and gone(busy))  # idle: EOF; busy: its watch
    assert not (tmp_path / "log.jsonl.late").exists()


EXIT_WITHOUT_STOP = """
import functools, sys
import process_flushers
import wbactor

def main():
    factory = functools.partial(process_flushers.Scripted, sys.argv[1])
    config = wbactor.Config(
        capacity=100, flusher_factory=factory, batch_size=10, flusher_process=True
    )
    wb = wbactor.start(config)
    wb.ref.tell(wbactor.PushMany(range(25)))
    print("pushed", flush=True)

if __name__ == "__main__":
    main()
"""


def test_a_queue_left_running_at_exit_drains_through_its_worker_and_reaps_it(
    tmp_path: Path,
) -> None:
    with run_script(tmp_path, EXIT_WITHOUT_STOP) as parent:
        out, _ = parent.communicate(timeout=30)
    assert parent.returncode == 0, out
    assert "flusher_restarted" not in out  # the worker was not killed before
    log = tmp_path / "log.jsonl"
    assert [i for _, b in batches(log) for i in b] == list(range(25))
    (pid,) = worker_pids(log)
    assert read_log(log)[-1] == {"pid": pid, "closed": True}
    wait_until(lambda: gone(pid))


# ------------------------------------------------------------ two windows out


def test_a_window_sent_behind_a_failure_is_not_written_until_resumed(
    fresh: tuple[ProcessFlusher[Any], Path], tmp_path: Path
) -> None:
    flusher, log = fresh
    gate = tmp_path / "gate"
    # The first window waits on the gate, so the second is surely out behind it.
    assert flusher.submit([[f"wait:{gate}", 1], ["raise:transient", 2], [3]]) == 3
    assert flusher.submit([[4], [5]]) == 2
    gate.touch()
    written, error = flusher.collect()
    assert (written, type(error)) == (1, TransientStoreError)
    assert flusher.collect() == (0, None)  # skipped: behind the failure
    with pytest.raises(RuntimeError, match="no window is out"):
        flusher.collect()
    assert flusher.submit([[2], [3], [4], [5]]) == 4  # resumes
    assert flusher.collect() == (4, None)
    assert [b for _, b in batches(log)] == [[1], [2], [3], [4], [5]]


def test_submit_sends_the_batches_before_one_that_does_not_pickle(
    shared: ProcessFlusher[Any], shared_log: Path
) -> None:
    before = len(batches(shared_log))
    assert shared.submit([[1], [threading.Lock()], [2]]) == 1
    assert shared.collect() == (1, None)
    with pytest.raises(pickle.PicklingError, match="batch 0, item 0"):
        shared.submit([[threading.Lock()], [2]])
    assert [b for _, b in batches(shared_log)[before:]] == [[1]]


BIG = 4096
"""Items in a batch: a window then holds 8 batches (32,768 items)."""


@dataclasses.dataclass
class TwoWindows:
    """Whole windows, the second sent behind the first: see `windows_out`."""

    out: threading.Event = dataclasses.field(default_factory=threading.Event)
    """Set once a worker has two windows out."""
    taking: threading.Event = dataclasses.field(default_factory=threading.Event)
    """Set once every item is queued: until then no window is taken."""

    def push(self, wb: wbactor.WriteBehind[Any], items: list[Any]) -> None:
        """Queue `items`, then let the flusher take them: windows of 8 batches.

        A `PushMany` is queued a chunk at a time, so a flusher left to run
        would take a window of the batches filled so far.
        """
        wb.ref.tell(wbactor.PushMany(items))
        wb.wait_for(lambda s: s.pushed == len(items), WAIT)
        self.taking.set()


@pytest.fixture
def windows_out(monkeypatch: pytest.MonkeyPatch) -> TwoWindows:
    """Windows taken once every item is queued, and an event for two out."""
    two = TwoWindows()
    submit, window = ProcessFlusher.submit, Attempts.window
    counts: dict[int, int] = {}

    def counting(self: ProcessFlusher[Any], parts: list[list[Any]]) -> int:
        sent = submit(self, parts)
        counts[self.pid] = counts.get(self.pid, 0) + 1
        if counts[self.pid] == 2:  # the second window
            two.out.set()
        return sent

    def held(self: Attempts[Any], *args: Any, **kwargs: Any) -> Any:
        assert two.taking.wait(WAIT)
        return window(self, *args, **kwargs)

    monkeypatch.setattr(ProcessFlusher, "submit", counting)
    monkeypatch.setattr(Attempts, "window", held)
    return two


def windowed(log: Path, trap: Path, **options: Any) -> wbactor.Config[Any]:
    return wbactor.Config(
        capacity=200_000,
        flusher_factory=scripted(log, trap),
        batch_size=BIG,
        retry_backoff=zero_backoff,
        flusher_process=True,
        **options,
    )


ITEMS = 2 * 8 * BIG + 5  # two windows, and a short batch


def written_by(log: Path) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for pid, batch in batches(log):
        out.setdefault(pid, []).extend(batch)
    return out


def test_windows_are_written_in_order_and_counted_as_they_come_back(
    tmp_path: Path, windows_out: TwoWindows
) -> None:
    log, trap, gate = tmp_path / "log.jsonl", tmp_path / "trap", tmp_path / "gate"
    trap.write_text(f"wait:{gate}")
    with running(windowed(log, trap)) as wb:
        windows_out.push(wb, list(range(3 * 8 * BIG + 5)))
        assert windows_out.out.wait(WAIT)
        stats = wb.stats()
        assert (stats.flushed, stats.in_flight) == (0, 2 * 8 * BIG)  # both out
        assert conservation_holds(stats)
        gate.touch()
        stats = wb.stop(timeout=WAIT)
    assert [i for _, b in batches(log) for i in b] == list(range(3 * 8 * BIG + 5))
    assert (stats.flushed, stats.batches, stats.restarts) == (
        3 * 8 * BIG + 5,
        3 * 8 + 1,
        0,
    )


def test_a_failure_in_the_first_window_leaves_the_second_unwritten_in_order(
    tmp_path: Path, windows_out: TwoWindows
) -> None:
    log, trap, gate = tmp_path / "log.jsonl", tmp_path / "trap", tmp_path / "gate"
    trap.write_text(f"wait:{gate}")
    config = windowed(log, trap)
    with running(config) as wb:
        items: list[Any] = list(range(ITEMS))
        items.insert(2 * BIG + 7, f"flake:{tmp_path / 'flaked'}")  # window 1, batch 3
        windows_out.push(wb, items)
        assert windows_out.out.wait(WAIT)
        gate.touch()
        stats = wb.wait_for(retries(1), WAIT)
        assert conservation_holds(stats)
        assert stats.flushed == 2 * BIG  # the two batches before the failure
        assert stats.in_flight == (2 * 8 - 2) * BIG  # the rest of both windows
        stats = wb.stop(timeout=WAIT)
    first, second = worker_pids(log)
    by = written_by(log)
    assert by[first] == list(range(2 * BIG))  # nothing of window 2
    assert by[second] == list(range(2 * BIG, ITEMS))
    assert [i for _, b in batches(log) for i in b] == list(range(ITEMS))
    assert (stats.flushed, stats.retries, stats.restarts) == (ITEMS + 1, 1, 1)
    assert not stats.dropped


def test_a_timeout_with_two_windows_out_kills_and_nothing_is_written_late(
    tmp_path: Path, windows_out: TwoWindows
) -> None:
    log, trap, gate = tmp_path / "log.jsonl", tmp_path / "trap", tmp_path / "gate"
    trap.write_text(f"wait:{gate}")  # opened only after the worker is killed
    with capture_logs() as logs, running(windowed(log, trap, flush_timeout=0.1)) as wb:
        windows_out.push(wb, list(range(ITEMS)))
        assert windows_out.out.wait(WAIT)
        stats = wb.wait_for(lambda s: s.flushed == ITEMS, WAIT)
        first = worker_pids(log)[0]
        assert gone(first)
        gate.touch()  # a worker still alive would now write
        stats = wb.stop(timeout=WAIT)
    assert [e["cause"] for e in logs if e["event"] == "flusher_restarted"] == [
        "timeout"
    ]
    assert first not in written_by(log)
    assert [i for _, b in batches(log) for i in b] == list(range(ITEMS))
    assert (stats.flushed, stats.retries, stats.restarts) == (ITEMS, 1, 1)
    assert stats.batches == 2 * 8 + 1
    assert conservation_holds(stats)


def test_a_worker_that_dies_with_two_windows_out_is_a_died_restart(
    tmp_path: Path, windows_out: TwoWindows
) -> None:
    log, trap, gate = tmp_path / "log.jsonl", tmp_path / "trap", tmp_path / "gate"
    trap.write_text(f"wait:{gate};exit:3")
    with capture_logs() as logs, running(windowed(log, trap)) as wb:
        windows_out.push(wb, list(range(ITEMS)))
        assert windows_out.out.wait(WAIT)
        gate.touch()
        stats = wb.wait_for(lambda s: s.flushed == ITEMS, WAIT)
        assert conservation_holds(stats)
        stats = wb.stop(timeout=WAIT)
    assert [e["cause"] for e in logs if e["event"] == "flusher_restarted"] == ["died"]
    first, second = worker_pids(log)
    assert first not in written_by(log)
    assert [i for _, b in batches(log) for i in b] == list(range(ITEMS))
    assert (stats.flushed, stats.retries, stats.restarts) == (ITEMS, 1, 1)
    assert gone(first)
    assert gone(second)


def test_a_stop_that_runs_out_of_time_with_two_windows_out_kills_the_worker(
    tmp_path: Path, windows_out: TwoWindows
) -> None:
    log, trap, gate = tmp_path / "log.jsonl", tmp_path / "trap", tmp_path / "gate"
    trap.write_text(f"wait:{gate}")
    wb = wbactor.start(windowed(log, trap))
    windows_out.push(wb, list(range(ITEMS)))
    assert windows_out.out.wait(WAIT)
    started = time.monotonic()
    stats = wb.stop(timeout=0.3)
    assert time.monotonic() - started < 3.0
    assert stats.dropped == {wbactor.DropReason.CLOSED: ITEMS}
    assert (stats.flushed, stats.in_flight, stats.depth) == (0, 0, 0)
    (pid,) = worker_pids(log)
    assert gone(pid)
    gate.touch()
    assert batches(log) == []


def test_poison_and_an_unpicklable_item_with_two_windows_out_are_rejected_alone(
    tmp_path: Path, windows_out: TwoWindows
) -> None:
    log, trap, gate = tmp_path / "log.jsonl", tmp_path / "trap", tmp_path / "gate"
    trap.write_text(f"wait:{gate}")
    items: list[Any] = list(range(ITEMS))
    items.insert(8 * BIG + 3 * BIG + 5, threading.Lock())  # window 2
    items.insert(2 * BIG + 7, "raise:permanent")  # window 1
    with running(windowed(log, trap)) as wb:
        windows_out.push(wb, items)
        assert windows_out.out.wait(WAIT)
        gate.touch()
        stats = wb.stop(timeout=WAIT)
    assert stats.dropped == {wbactor.DropReason.REJECTED: 2}
    assert (stats.flushed, stats.restarts) == (ITEMS, 0)
    assert [i for _, b in batches(log) for i in b] == list(range(ITEMS))
    assert len(worker_pids(log)) == 1
