"""Lifecycle: exit without stop(), signals, fork, bounded stop, time, bad user code.

SPEC.md, Part 2, "Lifecycle: exit, signals, fork, time". Whatever could hang
(or must end a process) runs as a script in a fresh interpreter with a
watchdog (see `lifecycle_scripts`); the rest runs here, on a `ManualClock`
where time matters.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
from lifecycle_scripts import Child, run_script
from structlog.testing import capture_logs
from support import WAIT, Outcome, conservation_holds, retries, running, sync

import wbactor
from wbactor import DropReason, Policy, Push, PushMany
from wbactor.testing import DropRecorder, FlakyFlusher, ManualClock, RecordingFlusher

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator, MutableMapping
    from pathlib import Path

posix_only = pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def events(
    logs: list[MutableMapping[str, Any]], name: str
) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


class Unprintable(Exception):
    """An exception whose str() and repr() raise."""

    def __str__(self) -> str:
        msg = "__str__ is broken"
        raise RuntimeError(msg)

    def __repr__(self) -> str:
        msg = "__repr__ is broken"
        raise RuntimeError(msg)


# -- exit without stop() ------------------------------------------------------

_EXIT_SCRIPT = """
wb = wbactor.start(wbactor.Config(
    capacity=1000, flusher=record_batch, batch_size=100, flush_interval=60.0,
    on_drop=record_drop,
))
for n in range(250):
    wb.ref.tell(Push(n))
say("PUSHED")
{ending}
"""


@pytest.mark.parametrize(
    ("ending", "status"),
    [
        pytest.param("", 0, id="main-returns"),
        pytest.param("raise RuntimeError('main failed')", 1, id="main-raises"),
        pytest.param("sys.exit(3)", 3, id="sys-exit-3"),
        pytest.param("del wb", 0, id="del-wb"),
    ],
)
def test_a_script_that_never_calls_stop_drains_and_exits(
    tmp_path: Path, ending: str, status: int
) -> None:
    # flush_interval=60 and 50 items left over: only the exit drain can
    # flush the last partial batch. exit_timeout is the default, 5 s.
    run = run_script(_EXIT_SCRIPT.format(ending=ending), tmp_path)
    assert run.returncode == status, run.describe()
    assert run.flushed() == list(range(250)), run.describe()
    assert run.dropped() == []
    assert run.seconds < 5.0, run.describe()
    if status == 1:
        assert "RuntimeError: main failed" in run.stderr
    else:
        assert "Traceback" not in run.stderr, run.describe()


def test_exit_timeout_zero_drops_everything_queued_as_closed_at_exit(
    tmp_path: Path,
) -> None:
    run = run_script(
        """
        wb = wbactor.start(wbactor.Config(
            capacity=1000, flusher=record_batch, batch_size=100,
            flush_interval=60.0, on_drop=record_drop, exit_timeout=0,
        ))
        wb.ref.tell(PushMany(range(50)))
        """,
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    assert run.flushed() == []
    assert sorted(run.dropped()) == [(n, "closed") for n in range(50)]
    assert run.seconds < 5.0, run.describe()


def test_a_flusher_hung_at_exit_is_abandoned_after_exit_timeout(
    tmp_path: Path,
) -> None:
    run = run_script(
        """
        def flush(batch):
            if batch[0] >= 100:  # the exit drain's batch: the store hangs
                say("HANGING")
                threading.Event().wait()
            record_batch(batch)

        wb = wbactor.start(wbactor.Config(
            capacity=1000, flusher=flush, batch_size=100, flush_interval=60.0,
            on_drop=record_drop, exit_timeout=0.5,
        ))
        wb.ref.tell(PushMany(range(150)))
        """,
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    assert "HANGING" in run.stdout  # the drain tried the last batch
    assert run.flushed() == list(range(100))
    assert sorted(run.dropped()) == [(n, "closed") for n in range(100, 150)]
    assert run.seconds < 5.0, run.describe()


_DOUBLE_CTRL_C_SCRIPT = """
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal

def flush(batch):
    if batch[0] >= 100:  # the exit drain's batch: the store hangs
        say("DRAINING")
        threading.Event().wait()
    record_batch(batch)

wb = wbactor.start(wbactor.Config(
    capacity=1000, flusher=flush, batch_size=100, flush_interval=60.0,
    on_drop=record_drop, exit_timeout=60.0,
))
wb.ref.tell(PushMany(range(150)))
{first_ctrl_c}
"""


@posix_only
@pytest.mark.parametrize(
    "first_ctrl_c",
    [
        pytest.param("raise KeyboardInterrupt", id="main-raises-KeyboardInterrupt"),
        pytest.param("say('READY')\nthreading.Event().wait()", id="SIGINT-sent"),
    ],
)
def test_a_second_ctrl_c_ends_the_exit_drain_at_once(
    tmp_path: Path, first_ctrl_c: str
) -> None:
    body = _DOUBLE_CTRL_C_SCRIPT.format(first_ctrl_c=first_ctrl_c)
    with Child(body, tmp_path) as child:
        if "READY" in first_ctrl_c:
            child.expect("READY")
            child.signal(signal.SIGINT)  # the first Ctrl-C: main ends
        child.expect("DRAINING")  # exit_timeout is a minute...
        interrupted = time.monotonic()
        child.signal(signal.SIGINT)  # ...the second Ctrl-C ends it now
        status = child.wait()
        seconds = time.monotonic() - interrupted
        assert seconds < 3.0, child.describe()
        assert status != 0, child.describe()
        flushed, dropped = child.flushed(), child.dropped()
    assert flushed == list(range(100))
    assert sorted(dropped) == [(n, "closed") for n in range(100, 150)]


# -- signals ------------------------------------------------------------------

_STOP_ON_SIGNALS_SCRIPT = """
import mmap

signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as a service manager starts us
signal.signal(signal.SIGINT, signal.default_int_handler)
before = {{s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}}
fd = os.open(OUT / "progress", os.O_RDWR)
progress = mmap.mmap(fd, 8)  # shared with the test: survives our death

wb = wbactor.start(wbactor.Config(
    capacity=1000, flusher=record_batch, batch_size=100, flush_interval=0.05,
    on_drop=record_drop,
))
untouched = all(signal.getsignal(s) == h for s, h in before.items())
{install}
installed = {{s.name: signal.getsignal(s) != h for s, h in before.items()}}
n = 0
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    wb.ref.tell(Push(n))
    n += 1
    progress[:8] = n.to_bytes(8, "little")
    if n == 20_000:
        say("READY", json.dumps({{"untouched": untouched, "installed": installed}}))
say("NOT KILLED")
"""


@posix_only
@pytest.mark.parametrize(
    ("install", "signum", "installed"),
    [
        pytest.param(
            "wbactor.stop_on_signals(wb)",
            signal.SIGTERM,
            {"SIGTERM": True, "SIGINT": True},
            id="default-SIGTERM",
        ),
        pytest.param(
            "wbactor.stop_on_signals(wb)",
            signal.SIGINT,
            {"SIGTERM": True, "SIGINT": True},
            id="default-SIGINT",
        ),
        pytest.param(
            "wbactor.stop_on_signals(wb, signal.SIGTERM, timeout=2)",
            signal.SIGTERM,
            {"SIGTERM": True, "SIGINT": False},
            id="SIGTERM-timeout-2",
        ),
    ],
)
def test_stop_on_signals_drains_then_dies_of_the_signal(
    tmp_path: Path, install: str, signum: signal.Signals, installed: dict[str, bool]
) -> None:
    (tmp_path / "progress").write_bytes(bytes(8))
    body = _STOP_ON_SIGNALS_SCRIPT.format(install=install)
    with Child(body, tmp_path) as child:
        ready = child.expect("READY")
        child.signal(signum)
        status = child.wait()
        assert status == -signum, child.describe()  # a shell shows 128 + signum
        flushed, dropped = child.flushed(), child.dropped()
    state = json.loads(ready.removeprefix("READY "))
    assert state == {"untouched": True, "installed": installed}  # start(): none
    accepted = int.from_bytes((tmp_path / "progress").read_bytes(), "little")
    assert accepted >= 20_000
    settled = flushed + [item for item, _ in dropped]
    assert len(settled) == len(set(settled)), "an item was settled twice"
    # Every item the producer got in is flushed or dropped; the one it was
    # pushing when the signal came may or may not have been accepted.
    assert set(settled) in ({*range(accepted)}, {*range(accepted + 1)}), (
        f"accepted {accepted}, settled {len(settled)}, "
        f"missing {sorted(set(range(accepted)) - set(settled))[:10]}"
    )
    assert {reason for _, reason in dropped} <= {"drop_oldest", "closed"}


def test_start_installs_no_signal_handler(clock: ManualClock) -> None:
    def handlers() -> dict[int, object]:
        return {
            signum: signal.getsignal(signum)
            for signum in signal.valid_signals()
            if getattr(signum, "name", "") not in {"SIGKILL", "SIGSTOP"}  # uncatchable
        }

    before = handlers()
    config: wbactor.Config[int] = wbactor.Config(
        capacity=10, flusher=RecordingFlusher(), clock=clock
    )
    with running(config) as wb:
        wb.push(1)
        during = handlers()
    assert during == before
    assert handlers() == before


_SIGNAL_HANDLER_STOP_SCRIPT = """
POLICY = Policy.{policy}
outcomes = []

def on_usr1(signum, frame):
    try:
        outcomes.append(type(wb.stop()).__name__)
    except BaseException as error:
        outcomes.append(f"{{type(error).__name__}}: {{error}}")

signal.signal(signal.SIGUSR1, on_usr1)
wb = wbactor.start(wbactor.Config(
    capacity=500, flusher=lambda batch: None, batch_size=50,
    flush_interval=0.01, policy=POLICY,
    key_func=(lambda n: n % 300) if POLICY is Policy.COALESCE_BY_KEY else None,
))
n = accepted = 0
deadline = time.monotonic() + 20
try:
    while time.monotonic() < deadline:
        wb.ref.tell(Push(n))
        accepted += 1
        wb.push(n + 1)
        accepted += 1
        wb.stats()
        wb.depth()
        n += 2
        if n == 2000:
            say("READY")
except pykka.ActorDeadError:  # QueueClosedError included: stopped
    pass
signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # later signals: not ours
stats = wb.stop()
result(
    outcomes=outcomes, accepted=accepted, pushed=stats.pushed,
    conserved=conserved(stats), depth=stats.depth, in_flight=stats.in_flight,
)
"""


@posix_only
@pytest.mark.parametrize("seed", range(6))
def test_stop_from_a_signal_handler_while_main_pushes_does_not_deadlock(
    tmp_path: Path, seed: int
) -> None:
    policy = ("DROP_OLDEST", "COALESCE_BY_KEY", "BLOCK")[seed % 3]
    rng = random.Random(seed)  # noqa: S311 - signal timing, not a secret
    body = _SIGNAL_HANDLER_STOP_SCRIPT.format(policy=policy)
    with Child(body, tmp_path, hang=5.0) as child:
        child.expect("READY")
        # The signals come at random moments of the hot loop, the later ones
        # close behind the first (a nested handler meets its own stop()).
        # The sleeps pick those moments; nothing waits for a thread.
        time.sleep(rng.uniform(0, 0.05))
        for _ in range(3):
            child.signal(signal.SIGUSR1)
            time.sleep(rng.uniform(0, 0.005))
        status = child.wait(8.0)
        assert status == 0, child.describe()
        result = child.result()
    assert result["outcomes"], "the handler never ran"
    assert set(result["outcomes"]) == {"Stats"}, result
    assert result["pushed"] == result["accepted"], result
    assert result["conserved"], result
    assert (result["depth"], result["in_flight"]) == (0, 0), result


# -- fork ---------------------------------------------------------------------

_FORK_SCRIPT = """
lock = threading.Lock()
parent_flushed = []

def flush(batch):
    with lock:
        parent_flushed.extend(batch)

wb = wbactor.start(wbactor.Config(
    capacity=1000, flusher=flush, batch_size=10, flush_interval=0.05,
))
wb.ref.tell(PushMany(range(95)))  # busy: batches flow while we fork
parent_pid = os.getpid()
sys.stdout.flush()
sys.stderr.flush()
pid = os.fork()
if pid == 0:
    checks = {}

    def save():
        (OUT / "child.tmp").write_text(json.dumps(checks))
        os.replace(OUT / "child.tmp", OUT / "child.json")

    def check(name, call):
        checks[name] = {"state": "running"}
        save()
        started = time.monotonic()
        try:
            value = call()
        except BaseException as error:
            checks[name] = {"raised": type(error).__name__, "message": str(error)}
        else:
            checks[name] = {"returned": type(value).__name__, "value": value}
        checks[name]["seconds"] = time.monotonic() - started
        save()

    check("tell(Push)", lambda: wb.ref.tell(Push(-1)))
    check("tell(PushMany)", lambda: wb.ref.tell(PushMany([-2, -3])))
    check("push", lambda: wb.push(-4))
    check("flush", lambda: wb.flush(1))
    check("stats", lambda: str(wb.stats()))
    check("depth", wb.depth)
    check("stop", lambda: str(wb.stop(timeout=1)))

    def new_queue():
        flushed = []
        wb2 = wbactor.start(wbactor.Config(
            capacity=100, flusher=flushed.extend, batch_size=10,
            flush_interval=60.0,
        ))
        errors = []

        def flush_from_a_new_thread():
            try:
                wb2.flush(5)
            except BaseException as error:
                errors.append(f"{type(error).__name__}: {error}")

        for round in range(4):
            wb2.ref.tell(PushMany(range(1000 + 10 * round, 1005 + 10 * round)))
            wb2.push(1005 + 10 * round)
            thread = threading.Thread(target=flush_from_a_new_thread)
            thread.start()
            thread.join(6)
        stats = wb2.stop(timeout=5)
        return {"errors": errors, "flushed": flushed, "stats": stats.as_dict()}

    check("new queue", new_queue)
    os._exit(0)

waited = []
waiter = threading.Thread(target=lambda: waited.append(os.waitpid(pid, 0)[1]))
waiter.start()
waiter.join(5)
if waiter.is_alive():
    os.kill(pid, signal.SIGKILL)
    waiter.join()
    child_status = "hung: killed after 5 s"
else:
    child_status = os.waitstatus_to_exitcode(waited[0])

wb.ref.tell(PushMany(range(95, 200)))
wb.flush(5)
stats = wb.stop(timeout=5)
result(
    parent_pid=parent_pid, child_status=child_status, flushed=parent_flushed,
    stats=stats.as_dict(),
)
"""

_INHERITED_CALLS = ("tell(Push)", "tell(PushMany)", "push", "flush", "stats", "depth")


@needs_fork
def test_a_forked_child_cannot_use_the_parents_queue_but_can_start_its_own(
    tmp_path: Path,
) -> None:
    run = run_script(_FORK_SCRIPT, tmp_path)
    assert run.returncode == 0, run.describe()
    result = run.result()
    checks = (tmp_path / "child.json").read_text()
    assert result["child_status"] == 0, checks
    child: dict[str, dict[str, Any]] = json.loads(checks)
    parent_pid = str(result["parent_pid"])
    for name in _INHERITED_CALLS:
        outcome = child[name]
        assert outcome.get("raised") == "QueueClosedError", (name, outcome)
        message = outcome["message"].lower()
        assert parent_pid in message, (name, outcome)
        assert "parent" in message, (name, outcome)
        assert "new" in message, (name, outcome)
        assert "child" in message, (name, outcome)
        assert outcome["seconds"] < 2.0, (name, outcome)
    stop = child["stop"]
    assert stop.get("returned") == "str" or stop.get("raised") == "QueueClosedError"
    assert stop["seconds"] < 2.0, stop
    new = child["new queue"]
    assert "returned" in new, new
    assert new["value"]["errors"] == []
    expected = [n for r in range(4) for n in range(1000 + 10 * r, 1006 + 10 * r)]
    assert new["value"]["flushed"] == expected
    assert new["value"]["stats"]["pushed"] == new["value"]["stats"]["flushed"] == 24
    # The parent's queue went on: everything it was given, nothing the child
    # tried to push.
    assert result["flushed"] == list(range(200))
    assert (result["stats"]["pushed"], result["stats"]["flushed"]) == (200, 200)


# -- bounded stop ---------------------------------------------------------------

_BOUNDED_STOP_SCRIPT = """
VARIANT = "{variant}"
never = threading.Event()
entered = threading.Event()
calls = []

class Store:
    def __init__(self, fail=False):
        self.fail = fail

    def flush(self, batch):
        if VARIANT == "flush-hangs":
            entered.set()
            never.wait()
        if self.fail:
            raise RuntimeError("store down")
        record_batch(batch)

    def close(self):
        if VARIANT.startswith("close-hangs"):
            entered.set()
            never.wait()

def factory():
    calls.append(None)
    if len(calls) == 1:
        return Store(fail=True)
    entered.set()  # the restart: the factory hangs
    never.wait()

options = dict(
    capacity=100, batch_size=10, flush_interval=0.05, on_drop=record_drop,
    retry_backoff=lambda attempt: 0.01,
)
if VARIANT == "close-hangs-shared":
    options["flusher"] = Store()
elif VARIANT == "close-hangs-factory":
    options["flusher_factory"] = Store
elif VARIANT == "factory-hangs-on-restart":
    options["flusher_factory"] = factory
else:
    options["flusher"] = Store()
wb = wbactor.start(wbactor.Config(**options))
wb.ref.tell(PushMany(range(30)))
if VARIANT.startswith("close-hangs"):
    wb.flush(5)
else:
    assert entered.wait(5), "the flusher never got a batch"
started = time.monotonic()
stats = wb.stop(timeout=1)
seconds = time.monotonic() - started
result(
    seconds=seconds, stats=stats.as_dict(), conserved=conserved(stats),
    close_called=entered.is_set(),
)
"""  # the script then ends by itself: nothing left may keep it alive


@pytest.mark.parametrize(
    "variant",
    [
        "close-hangs-shared",
        "close-hangs-factory",
        "factory-hangs-on-restart",
        "flush-hangs",
    ],
)
def test_stop_with_a_timeout_returns_whatever_user_code_hangs(
    tmp_path: Path, variant: str
) -> None:
    run = run_script(_BOUNDED_STOP_SCRIPT.format(variant=variant), tmp_path)
    assert run.returncode == 0, run.describe()
    result = run.result()
    stats = result["stats"]
    assert result["seconds"] < 3.0, result
    assert result["conserved"], result
    assert (stats["depth"], stats["in_flight"]) == (0, 0), result
    if variant.startswith("close-hangs"):
        assert result["close_called"]
        assert stats["flushed"] == 30, result
        assert run.flushed() == list(range(30))
    else:
        assert stats["dropped"] == {"closed": 30}, result
        assert sorted(run.dropped()) == [(n, "closed") for n in range(30)]
    assert run.seconds < 6.0, run.describe()  # and the process exited by itself


_ACTORS_AFTER_STOP_SCRIPT = """
VARIANT = "{variant}"
never = threading.Event()
entered = threading.Event()

def flush(batch):
    if VARIANT == "flush-hangs":
        entered.set()
        never.wait()
    raise RuntimeError("store down")

wb = wbactor.start(wbactor.Config(
    capacity=100, flusher=flush, batch_size=10, flush_interval=0.05,
    max_retries=-1, retry_backoff=lambda attempt: 0.001,
))
wb.ref.tell(PushMany(range(30)))
if VARIANT == "flush-hangs":
    assert entered.wait(5)
else:
    wb.wait_for(lambda stats: stats.retries >= 20, 5)
stats = wb.stop(timeout=2)
names = ("QueueActor", "TimerActor", "SupervisorActor", "FlusherActor")
result(
    registry=sorted(ref.actor_class.__name__ for ref in pykka.ActorRegistry.get_all()),
    threads=sorted(
        [t.name, t.daemon] for t in threading.enumerate() if t.name.startswith(names)
    ),
    conserved=conserved(stats),
)
"""


@pytest.mark.parametrize("variant", ["flush-always-raises", "flush-hangs"])
def test_stop_returns_once_every_actor_it_started_has_stopped(
    tmp_path: Path, variant: str
) -> None:
    run = run_script(_ACTORS_AFTER_STOP_SCRIPT.format(variant=variant), tmp_path)
    assert run.returncode == 0, run.describe()
    result = run.result()
    assert result["conserved"], result
    assert result["registry"] == [], result
    if variant == "flush-hangs":
        # The thread stuck in the user's flush cannot be stopped, only
        # abandoned: it may be left, as a daemon thread, and nothing else.
        assert len(result["threads"]) <= 1, result
        for name, daemon in result["threads"]:
            assert name.startswith("FlusherActor"), result
            assert daemon is True, result
    else:
        assert result["threads"] == [], result


# -- durations and timeouts ----------------------------------------------------


def test_an_infinite_timeout_means_no_limit(clock: ManualClock) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    wb = wbactor.start(wbactor.Config(capacity=10, flusher=flusher, clock=clock))
    try:
        wb.push(1)
        wb.flush(timeout=math.inf)
        assert flusher.items == [1]
        wb.push(2)
        stats = wb.stop(timeout=math.inf)
    finally:
        wb.stop(timeout=WAIT)
    assert flusher.items == [1, 2]
    assert (stats.pushed, stats.flushed, stats.dropped) == (2, 2, {})


_BAD_TIMEOUT_CALLS: dict[str, Callable[[wbactor.WriteBehind[int]], object]] = {
    "stop(nan)": lambda wb: wb.stop(math.nan),
    "stop(-1)": lambda wb: wb.stop(-1),
    "stop(timeout=-inf)": lambda wb: wb.stop(timeout=-math.inf),
    "flush(nan)": lambda wb: wb.flush(math.nan),
    "flush(-1)": lambda wb: wb.flush(-1),
}


@pytest.mark.parametrize("call", _BAD_TIMEOUT_CALLS)
def test_a_nan_or_negative_timeout_is_refused_and_changes_nothing(
    clock: ManualClock, call: str
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=100, flusher=flusher, batch_size=10, on_drop=drops, clock=clock
    )
    with running(config) as wb:
        wb.ref.tell(PushMany([1, 2, 3]))
        with pytest.raises(ValueError, match="timeout"):
            _BAD_TIMEOUT_CALLS[call](wb)
        sync(wb.ref)  # had it sent the queue anything, it would show now
        stats = wb.stats()
        assert (stats.depth, stats.in_flight, stats.flushed) == (3, 0, 0)
        wb.push(4)  # still open
        wb.ref.tell(Push(5))
        wb.flush(WAIT)
        final = wb.stop(timeout=WAIT)
    assert flusher.items == [1, 2, 3, 4, 5]
    assert drops.calls == []
    assert (final.pushed, final.flushed, final.dropped) == (5, 5, {})


@pytest.mark.parametrize("delay", [math.inf, 1e10], ids=["inf", "1e10"])
def test_a_huge_retry_backoff_is_clamped_to_an_hour(
    clock: ManualClock, delay: float
) -> None:
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=1)
    config = wbactor.Config(
        capacity=10,
        flusher=flusher,
        batch_size=2,
        flush_interval=100_000.0,
        retry_backoff=lambda attempt: delay,
        clock=clock,
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(PushMany([1, 2]))
        wb.wait_for(retries(1), WAIT)
        clock.advance(3600.0)  # the clamp: the retry is due
        assert flusher.wait_for_items(2, timeout=2.0) == [1, 2]
        wb.push(3)  # the queue lives on
        wb.flush(WAIT)
        stats = wb.stop(timeout=WAIT)
    assert flusher.items == [1, 2, 3]
    assert (stats.flushed, stats.retries, stats.dropped) == (3, 1, {})
    [failed] = events(logs, "flush_failed")
    assert failed["retry_in"] == 3600.0


# -- flush() under load ----------------------------------------------------------


def test_flush_returns_while_the_flusher_never_goes_idle() -> None:
    def slow_store(batch: list[int]) -> None:
        time.sleep(0.001)  # a store taking ~1 ms a batch, not a wait for a thread

    enough = threading.Event()
    config = wbactor.Config(
        capacity=1000, flusher=slow_store, batch_size=100, flush_interval=0.05
    )
    with running(config) as wb:

        def produce() -> None:
            n = 0
            while not enough.is_set():
                wb.ref.tell(Push(n))
                n += 1

        producer = Outcome(produce)
        try:
            wb.wait_for(lambda s: s.batches >= 5, WAIT)  # under way
            for _ in range(3):
                before = wb.stats().pushed
                started = time.monotonic()
                wb.flush(timeout=5)  # not TimeoutError: pushes go on meanwhile
                after = wb.stats()
                assert time.monotonic() - started < 5
                assert after.flushed + sum(after.dropped.values()) >= before
                assert after.pushed > before  # the producer never paused
        finally:
            enough.set()
            producer.join()
        stats = wb.stop(timeout=WAIT)
    assert producer.error is None
    assert conservation_holds(stats)


# -- contained user exceptions ----------------------------------------------------


def _errors_logged(logs: list[MutableMapping[str, Any]]) -> list[str]:
    return [str(entry["error"]) for entry in logs if "error" in entry]


def test_a_flusher_raising_an_unprintable_exception_is_retried(
    clock: ManualClock,
) -> None:
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=1, error=Unprintable)
    config = wbactor.Config(
        capacity=10, flusher=flusher, batch_size=2, flush_interval=100.0, clock=clock
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(PushMany([1, 2]))
        wb.wait_for(retries(1), WAIT)
        clock.advance(wbactor.default_backoff(1))
        assert flusher.wait_for_items(2) == [1, 2]
        wb.ref.tell(PushMany([3, 4]))  # a later batch flushes too
        assert flusher.wait_for_items(4) == [1, 2, 3, 4]
        stats = wb.stop(timeout=WAIT)
    assert (stats.pushed, stats.flushed, stats.retries, stats.dropped) == (4, 4, 1, {})
    assert conservation_holds(stats)
    [failed] = events(logs, "flush_failed")
    assert "Unprintable" in failed["error"]


def test_an_on_drop_raising_an_unprintable_exception_is_swallowed(
    clock: ManualClock,
) -> None:
    def on_drop(item: int, reason: DropReason) -> None:
        raise Unprintable

    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(
        capacity=2, flusher=flusher, batch_size=10, on_drop=on_drop, clock=clock
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(PushMany([1, 2, 3]))  # evicts 1
        wb.ref.tell(Push(4))  # evicts 2
        wb.push(5)  # evicts 3: push() does not raise either
        wb.flush(WAIT)
        stats = wb.stop(timeout=WAIT)
    assert flusher.items == [4, 5]
    assert (stats.pushed, stats.flushed, stats.dropped) == (5, 2, {"drop_oldest": 3})
    assert conservation_holds(stats)
    failures = events(logs, "on_drop_failed")
    assert failures
    assert all("Unprintable" in entry["error"] for entry in failures)


def test_a_key_func_raising_an_unprintable_exception_drops_that_item(
    clock: ManualClock,
) -> None:
    def key(item: int) -> int:
        if item == 3:
            raise Unprintable
        return item

    flusher: RecordingFlusher[int] = RecordingFlusher()
    drops: DropRecorder[int] = DropRecorder()
    config = wbactor.Config(
        capacity=10,
        flusher=flusher,
        batch_size=10,
        policy=Policy.COALESCE_BY_KEY,
        key_func=key,
        on_drop=drops,
        clock=clock,
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(PushMany([1, 2, 3, 4]))
        wb.ref.tell(Push(3))
        wb.ref.tell(Push(5))
        wb.flush(WAIT)
        stats = wb.stop(timeout=WAIT)
    assert flusher.items == [1, 2, 4, 5]
    assert drops.calls == [(3, DropReason.KEY_ERROR), (3, DropReason.KEY_ERROR)]
    assert (stats.pushed, stats.flushed, stats.dropped) == (6, 4, {"key_error": 2})
    failures = events(logs, "key_func_failed")
    assert failures
    assert all("Unprintable" in entry["error"] for entry in failures)


def test_a_factory_raising_an_unprintable_exception_is_a_failed_attempt(
    clock: ManualClock,
) -> None:
    recorder: RecordingFlusher[int] = RecordingFlusher()
    made: list[object] = []

    def factory() -> wbactor.FlusherLike[int]:
        made.append(None)
        if len(made) == 1:
            return FlakyFlusher(failures=1)  # the first flush fails
        if len(made) == 2:
            raise Unprintable  # the restart fails
        return recorder

    config = wbactor.Config(
        capacity=10,
        flusher_factory=factory,
        batch_size=2,
        flush_interval=100.0,
        clock=clock,
    )
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(PushMany([1, 2]))
        wb.wait_for(retries(1), WAIT)
        clock.advance(wbactor.default_backoff(1))  # the factory raises
        wb.wait_for(retries(2), WAIT)
        clock.advance(wbactor.default_backoff(2))  # a working flusher
        assert recorder.wait_for_items(2) == [1, 2]
        wb.ref.tell(PushMany([3, 4]))
        assert recorder.wait_for_items(4) == [1, 2, 3, 4]
        stats = wb.stop(timeout=WAIT)
    assert (stats.flushed, stats.retries, stats.dropped) == (4, 2, {})
    assert any("Unprintable" in error for error in _errors_logged(logs))


# -- async flushers --------------------------------------------------------------


class AsyncStore:
    """An async store: records each batch after an await, on whatever loop runs it."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.attempts = 0
        self.batches: list[list[int]] = []
        self.loops: list[asyncio.AbstractEventLoop] = []  # kept alive: ids unique

    async def flush(self, batch: list[int]) -> None:
        self.attempts += 1
        await asyncio.sleep(0)
        self.loops.append(asyncio.get_running_loop())
        if self.attempts <= self.failures:
            msg = "async store down"
            raise ConnectionError(msg)
        self.batches.append(list(batch))

    @property
    def items(self) -> list[int]:
        return [item for batch in self.batches for item in batch]


def _as_flusher(store: AsyncStore, kind: str) -> wbactor.FlusherLike[int]:
    if kind == "async-def-flush":
        return store

    def flush(batch: list[int]) -> Coroutine[Any, Any, None]:
        return store.flush(batch)  # a plain function returning a coroutine

    return flush


@pytest.mark.parametrize("kind", ["async-def-flush", "callable-returning-coroutine"])
def test_an_async_flusher_runs_every_batch_on_one_event_loop(
    clock: ManualClock, kind: str
) -> None:
    store = AsyncStore()
    config = wbactor.Config(
        capacity=100, flusher=_as_flusher(store, kind), batch_size=3, clock=clock
    )
    with running(config) as wb:
        for n in range(9):
            wb.ref.tell(Push(n))  # three full batches
        wb.push(9)
        wb.flush(WAIT)
        stats = wb.stop(timeout=WAIT)
    assert store.items == list(range(10))  # really written, not just counted
    assert (stats.flushed, stats.batches) == (10, len(store.batches))
    assert len(store.batches) >= 4
    assert len({id(loop) for loop in store.loops}) == 1


@pytest.mark.parametrize("kind", ["async-def-flush", "callable-returning-coroutine"])
def test_an_async_flusher_that_raises_after_an_await_is_retried(
    clock: ManualClock, kind: str
) -> None:
    store = AsyncStore(failures=1)
    config = wbactor.Config(
        capacity=100,
        flusher=_as_flusher(store, kind),
        batch_size=2,
        flush_interval=100.0,
        clock=clock,
    )
    with running(config) as wb:
        wb.ref.tell(PushMany([1, 2]))
        wb.wait_for(retries(1), WAIT)
        clock.advance(wbactor.default_backoff(1))
        wb.wait_for(lambda s: s.flushed == 2, WAIT)
        stats = wb.stop(timeout=WAIT)
    assert store.items == [1, 2]
    assert (stats.flushed, stats.retries, stats.dropped) == (2, 1, {})


# -- PushMany streams -------------------------------------------------------------


def test_an_endless_push_many_stream_stays_within_capacity() -> None:
    enough = threading.Event()
    yielded = [0]

    def numbers() -> Iterator[int]:
        n = 0
        while not enough.is_set():
            yielded[0] += 1
            yield n
            n += 1

    config: wbactor.Config[int] = wbactor.Config(
        capacity=1000, flusher=lambda batch: None, batch_size=100
    )
    seen: list[tuple[int, int]] = []

    def watch(stats: wbactor.Stats) -> bool:
        seen.append((stats.depth, stats.pushed))
        return stats.pushed >= 200_000

    with running(config) as wb:
        producer = Outcome(lambda: wb.ref.tell(PushMany(numbers())))
        try:
            wb.wait_for(watch, WAIT)
            during = wb.stats()
        finally:
            enough.set()
            producer.join()
        stats = wb.stop(timeout=WAIT)
    assert producer.error is None
    assert max(depth for depth, _ in seen) <= 1000
    assert during.depth <= 1000
    assert len({pushed for _, pushed in seen}) > 1  # taken as it streams
    assert stats.pushed == yielded[0]  # every item yielded was taken
    assert conservation_holds(stats)


def test_a_push_many_of_a_million_items_takes_bounded_memory(tmp_path: Path) -> None:
    run = run_script(
        """
        import tracemalloc

        tracemalloc.start()
        wb = wbactor.start(wbactor.Config(
            capacity=1000, flusher=lambda batch: None, batch_size=100,
            policy=Policy.COALESCE_BY_KEY, key_func=lambda n: n % 500,
        ))
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        wb.ref.tell(PushMany(n for n in range(1_000_000)))
        peak = tracemalloc.get_traced_memory()[1] - base
        stats = wb.stop(timeout=5)
        result(peak=peak, pushed=stats.pushed, conserved=conserved(stats))
        """,
        tmp_path,
    )
    assert run.returncode == 0, run.describe()
    result = run.result()
    assert (result["pushed"], result["conserved"]) == (1_000_000, True), result
    # Held as a list, a million ints take ~40 MB; the queue holds 1,000.
    assert result["peak"] < 20_000_000, result


class TenThenBroken:
    """Yields 0..9, then raises; would go on yielding if asked again."""

    def __init__(self) -> None:
        self.calls = 0

    def __iter__(self) -> TenThenBroken:
        return self

    def __next__(self) -> int:
        self.calls += 1
        if self.calls == 11:
            msg = "the stream broke"
            raise OSError(msg)
        return self.calls - 1


def _ten_then_broken_generator() -> Iterator[int]:
    yield from range(10)
    msg = "the stream broke"
    raise OSError(msg)


@pytest.mark.parametrize("source", ["iterator", "generator"])
@pytest.mark.parametrize("policy", list(Policy), ids=lambda p: p.name)
def test_a_push_many_stream_that_raises_keeps_the_items_before(
    clock: ManualClock, policy: Policy, source: str
) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=100,
        policy=policy,
        key_func=(lambda n: n) if policy is Policy.COALESCE_BY_KEY else None,
        clock=clock,
    )
    iterator = TenThenBroken()
    stream = iterator if source == "iterator" else _ten_then_broken_generator()
    with capture_logs() as logs, running(config) as wb:
        wb.ref.tell(PushMany(stream))  # does not raise
        assert wb.stats().pushed == 10
        wb.flush(WAIT)
        stats = wb.stop(timeout=WAIT)
    assert flusher.items == list(range(10))
    assert (stats.pushed, stats.flushed, stats.dropped) == (10, 10, {})
    if source == "iterator":
        assert iterator.calls == 11  # nothing taken after the error
    [failed] = events(logs, "push_many_failed")
    assert "OSError" in failed["error"]
    assert "the stream broke" in failed["error"]


class ClashingKey:
    """A key equal in hash to every other ClashingKey, whose __eq__ raises."""

    def __hash__(self) -> int:
        return 0x5EED

    def __eq__(self, other: object) -> bool:
        msg = "keys cannot be compared"
        raise TypeError(msg)


@pytest.mark.parametrize("container", ["list", "generator"])
def test_a_key_whose_eq_raises_drops_that_item_and_the_push_many_goes_on(
    clock: ManualClock, container: str
) -> None:
    first, second = ClashingKey(), ClashingKey()
    keys: dict[str, object] = {"a": 1, "b": 2, "x": first, "c": 3, "y": second}
    flusher: RecordingFlusher[str] = RecordingFlusher()
    drops: DropRecorder[str] = DropRecorder()
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=100,
        policy=Policy.COALESCE_BY_KEY,
        key_func=lambda name: keys.get(name, name),
        on_drop=drops,
        clock=clock,
    )
    names = ["a", "b", "x", "c", "y", "d", "e"]
    items = names if container == "list" else (name for name in names)
    with running(config) as wb:
        wb.ref.tell(PushMany(items))  # looking up y's key compares it with x's
        wb.flush(WAIT)
        stats = wb.stop(timeout=WAIT)
    assert flusher.items == ["a", "b", "x", "c", "d", "e"]
    assert drops.calls == [("y", DropReason.KEY_ERROR)]
    assert (stats.pushed, stats.flushed, stats.dropped) == (7, 6, {"key_error": 1})


# -- a clock that steps back --------------------------------------------------------


class SteppingClock:
    """Monotonic time plus an offset that the test steps back, as a bad clock does.

    `wait` waits on the condition for the time left, at most 50 ms, so a
    timer reads the clock again soon after a step (returning early is allowed).
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self.offset

    def wait(self, condition: threading.Condition, deadline: float | None) -> None:
        left = 0.05 if deadline is None else deadline - self.now()
        condition.wait(min(max(left, 0.0), 0.05))

    def step_back(self, seconds: float) -> None:
        self.offset -= seconds


def test_ticks_go_on_after_the_clock_steps_back_an_hour() -> None:
    clock = SteppingClock()
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(
        capacity=100, flusher=flusher, batch_size=100, flush_interval=0.05, clock=clock
    )
    with running(config) as wb:
        wb.push(1)
        flusher.wait_for_items(1)  # a tick flushed it
        clock.step_back(3600.0)
        wb.push(2)
        assert flusher.wait_for_items(2, timeout=3.0) == [1, 2]  # not in an hour
        wb.push(3)
        assert flusher.wait_for_items(3, timeout=3.0) == [1, 2, 3]


def test_a_retry_backoff_fires_after_the_clock_steps_back_an_hour() -> None:
    clock = SteppingClock()
    flusher: FlakyFlusher[int] = FlakyFlusher(failures=1)
    config = wbactor.Config(
        capacity=100,
        flusher=flusher,
        batch_size=2,
        flush_interval=3600.0,
        retry_backoff=lambda attempt: 0.2,
        clock=clock,
    )
    with running(config) as wb:
        wb.ref.tell(PushMany([1, 2]))
        wb.wait_for(retries(1), WAIT)  # the retry is due in 0.2 s...
        clock.step_back(3600.0)  # ...on a clock now an hour behind
        assert flusher.wait_for_items(2, timeout=3.0) == [1, 2]


# -- every log line names its queue ---------------------------------------------------


def test_every_log_line_carries_its_queues_name(clock: ManualClock) -> None:
    alpha_flusher: FlakyFlusher[int] = FlakyFlusher(failures=1)
    alpha_config = wbactor.Config(
        capacity=10,
        flusher=alpha_flusher,
        batch_size=2,
        flush_interval=100.0,
        clock=clock,
        name="alpha",
    )
    beta_config = wbactor.Config(
        capacity=1,
        flusher=RecordingFlusher[int](),
        batch_size=10,
        flush_interval=100.0,
        policy=Policy.DROP_NEWEST,
        clock=clock,
        name="beta",
    )
    with capture_logs() as logs:
        alpha = wbactor.start(alpha_config)
        beta = wbactor.start(beta_config)
        try:
            alpha.ref.tell(PushMany([1, 2]))  # a full batch: fails once
            alpha.wait_for(retries(1), WAIT)
            beta.ref.tell(PushMany([1, 2, 3]))  # capacity 1: two dropped
            clock.advance(wbactor.default_backoff(1))
            alpha.wait_for(lambda s: s.flushed == 2, WAIT)
            beta.flush(WAIT)
        finally:
            alpha.stop(timeout=WAIT)
            beta.stop(timeout=WAIT)
    unnamed = [entry for entry in logs if entry.get("queue") not in {"alpha", "beta"}]
    assert unnamed == []

    def names(event: str, **match: object) -> list[str]:
        return [
            entry["queue"]
            for entry in events(logs, event)
            if all(entry.get(key) == value for key, value in match.items())
        ]

    assert names("queue_started", capacity=10) == ["alpha"]
    assert names("queue_started", capacity=1) == ["beta"]
    assert names("flush_failed") == ["alpha"]
    assert names("flusher_restarted") == ["alpha"]
    assert set(names("items_dropped")) == {"beta"}
    assert set(names("batch_flushed")) == {"alpha", "beta"}
    assert names("queue_stopped", pushed=2) == ["alpha"]
    assert names("queue_stopped", pushed=3) == ["beta"]
