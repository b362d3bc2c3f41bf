"""Run user scripts in fresh interpreters, with a watchdog, and read what they left.

The lifecycle tests (exit, signals, fork, hung flushers) cannot run in the
pytest process: a queue that keeps its process alive, or a deadlock in a
signal handler, would hang pytest itself. Each case is a short script run
with `sys.executable -c`, after `PRELUDE`, which gives it:

- `OUT`, a directory it writes to (`sys.argv[1]`);
- a `faulthandler` watchdog (`sys.argv[2]` seconds): a hung script dumps
  every thread's stack to stderr and exits, which `Run`/`Child` report as a
  hang, stacks included;
- `record_batch` (a flusher) and `record_drop` (an `on_drop`) that append to
  the files `flushed` and `dropped` with one unbuffered write per call, so
  what they saw survives the script being killed by a signal;
- `say(...)` (a flushed print) and `result(**fields)`, the `RESULT {json}`
  line the test reads;
- structlog configured to print INFO and above to stderr, so stdout holds
  only the script's own lines.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import textwrap
import threading
import time
from typing import IO, TYPE_CHECKING, Any, NoReturn, Self

import pytest

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType

HANG = 8.0
"""Seconds after which a script dumps its threads' stacks and exits as hung."""

WATCHDOG = HANG + 4.0
"""Seconds after which the test kills a script that did not even do that."""

PRELUDE = """\
import faulthandler, json, logging, os, signal, sys, threading, time
from pathlib import Path

import pykka
import structlog

import wbactor
from wbactor import DropReason, Policy, Push, PushMany

OUT = Path(sys.argv[1])
faulthandler.dump_traceback_later(float(sys.argv[2]), exit=True)
structlog.configure(
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
)
_FDS = {}


def append(name, lines):
    lines = list(lines)
    if not lines:
        return
    fd = _FDS.get(name)
    if fd is None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        fd = _FDS[name] = os.open(OUT / name, flags, 0o644)
    os.write(fd, "".join(f"{line}\\n" for line in lines).encode())


def record_batch(batch):
    append("flushed", batch)


def record_drop(item, reason):
    append("dropped", [f"{item} {reason.value}"])


def say(*words):
    print(*words, flush=True)


def result(**fields):
    say("RESULT", json.dumps(fields))


def conserved(stats):
    return stats.pushed == (
        stats.flushed + stats.coalesced + sum(stats.dropped.values())
        + stats.depth + stats.in_flight
    )

"""

_HUNG_MARK = "Timeout ("  # how faulthandler's dump_traceback_later starts


def _code(body: str) -> str:
    return PRELUDE + textwrap.dedent(body)


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data


class Output:
    """What a script wrote to `OUT`."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def lines(self, name: str) -> list[str]:
        """The lines of the file `name` in `OUT`; none if it was never written."""
        path = self.out / name
        return path.read_text().splitlines() if path.exists() else []

    def flushed(self) -> list[int]:
        """Every item `record_batch` was given, in order."""
        return [int(line) for line in self.lines("flushed")]

    def dropped(self) -> list[tuple[int, str]]:
        """Every `(item, reason)` `record_drop` was given, in order."""
        pairs = [line.split() for line in self.lines("dropped")]
        return [(int(item), reason) for item, reason in pairs]


class Run(Output):
    """A script that ran to its end: its exit status, output and duration."""

    def __init__(
        self,
        out: Path,
        returncode: int,
        stdout: str,
        stderr: str,
        seconds: float,
    ) -> None:
        super().__init__(out)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.seconds = seconds

    def describe(self) -> str:
        return (
            f"exit status {self.returncode} after {self.seconds:.2f} s\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )

    def result(self) -> dict[str, Any]:
        """The script's last `RESULT` line, parsed."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("RESULT "):
                parsed: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
                return parsed
        pytest.fail(f"the script printed no RESULT line\n{self.describe()}")


def run_script(
    body: str, out: Path, *, hang: float = HANG, watchdog: float = WATCHDOG
) -> Run:
    """Run `PRELUDE + body` in a fresh interpreter; fail the test if it hangs."""
    started = time.monotonic()
    try:
        done = subprocess.run(  # noqa: S603 - our interpreter, our code
            [sys.executable, "-c", _code(body), str(out), str(hang)],
            capture_output=True,
            text=True,
            timeout=watchdog,
            check=False,
        )
    except subprocess.TimeoutExpired as hung:
        pytest.fail(
            f"the script did not exit within {watchdog} s and was killed\n"
            f"--- stdout ---\n{_text(hung.stdout)}\n"
            f"--- stderr ---\n{_text(hung.stderr)}"
        )
    run = Run(
        out, done.returncode, done.stdout, done.stderr, time.monotonic() - started
    )
    if _HUNG_MARK in run.stderr:
        pytest.fail(f"the script hung for {hang} s (stacks below)\n{run.describe()}")
    return run


class Child(Output):
    """A script the test talks to while it runs: waits for its lines, signals it.

    Use as a context manager: on the way out the process is killed if it is
    still running, and its pipes are closed.
    """

    def __init__(self, body: str, out: Path, *, hang: float = HANG) -> None:
        super().__init__(out)
        self.hang = hang
        self.proc = subprocess.Popen(  # noqa: S603 - our interpreter, our code
            [sys.executable, "-c", _code(body), str(out), str(hang)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started = time.monotonic()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            threading.Thread(
                target=self._pump, args=(self.proc.stdout, self.stdout, True)
            ),
            threading.Thread(
                target=self._pump, args=(self.proc.stderr, self.stderr, False)
            ),
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, stream: IO[str], into: list[str], announce: bool) -> None:
        for line in stream:
            into.append(line)
            if announce:
                self._lines.put(line)
        if announce:
            self._lines.put(None)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end()

    def _end(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def describe(self) -> str:
        return (
            f"exit status {self.proc.poll()} after "
            f"{time.monotonic() - self.started:.2f} s\n"
            f"--- stdout ---\n{''.join(self.stdout)}\n"
            f"--- stderr ---\n{''.join(self.stderr)}"
        )

    def fail(self, why: str) -> NoReturn:
        """Kill the script and fail the test, with everything it printed."""
        self._end()
        stderr = "".join(self.stderr)
        if _HUNG_MARK in stderr:
            why += f" (the script hung for {self.hang} s: stacks below)"
        pytest.fail(f"{why}\n{self.describe()}")

    def expect(self, prefix: str, timeout: float | None = None) -> str:
        """Wait for the script to print a line starting with `prefix`; return it.

        By default waits a second longer than the script's own watchdog, so
        that a hung script shows its stacks.
        """
        timeout = self.hang + 1.0 if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.fail(f"no line starting with {prefix!r} within {timeout} s")
            if line is None:
                self._lines.put(None)  # stay at the end for a later expect()
                self.proc.wait(WATCHDOG)
                self.fail(f"the script ended before printing {prefix!r}")
            if line.startswith(prefix):
                return line.rstrip("\n")

    def signal(self, signum: int) -> None:
        """Send `signum`, unless the script already exited."""
        self.proc.send_signal(signum)

    def wait(self, timeout: float = WATCHDOG) -> int:
        """Wait for the script to exit; return its status (-N: killed by signal N)."""
        try:
            returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"the script did not exit within {timeout} s")
        for reader in self._readers:
            reader.join(5)
        if _HUNG_MARK in "".join(self.stderr):
            self.fail("the script hung")
        return returncode

    def result(self) -> dict[str, Any]:
        """The script's last `RESULT` line, parsed."""
        for line in reversed(self.stdout):
            if line.startswith("RESULT "):
                parsed: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
                return parsed
        return self.fail("the script printed no RESULT line")
