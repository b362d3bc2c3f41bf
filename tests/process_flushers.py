"""Flushers for worker processes: importable by a spawned worker, so top-level.

A worker (`flusher_process=True`) unpickles its factory, which names a class
in this module; pytest puts `tests/` on `sys.path`, and a spawned process
starts with its parent's `sys.path`, so the worker imports it too.

`Scripted` reports through files, as a worker shares no memory with the
test: every batch it writes is a JSON line `{"pid": ..., "batch": [...]}` in
its `log`. Its items are ints, written; or strings, commands run before the
write (`"raise:permanent"`, `"exit:3"`, `"sleep:1.5"`, `"wait:PATH"`: until
the test creates the file PATH, `"flake:PATH"`: fail transient unless PATH
exists, and create it, ...). A `trap` file, when it exists at the
start of a flush, holds commands to run once, `;` between them (the file is
removed first), so a test can make the first attempt of a batch fail and the
retry, in the next worker, succeed.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import wbactor
from wbactor.flushers import PermanentStoreError, TransientStoreError


class LocksError(Exception):
    """Does not pickle: it holds a lock."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


class NeedsTwoError(Exception):
    """Pickles, but does not unpickle: `args` is not what `__init__` takes."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first} and {second}")


class HostileError(Exception):
    """Neither pickles nor has a `str()`."""

    def __reduce__(self) -> Any:
        raise RuntimeError

    def __str__(self) -> str:
        raise RuntimeError


_ERRORS: dict[str, Any] = {
    "permanent": lambda: PermanentStoreError("sqlite constraint", store="sqlite"),
    "transient": lambda: TransientStoreError("sqlite locked", store="sqlite"),
    "retry_after": lambda: wbactor.RetryAfter(2.5, "rate limited"),
    "partial": lambda: wbactor.PartialFailure([1], ValueError("bad row")),
    "partial_locks": lambda: wbactor.PartialFailure([0], LocksError()),
    "partial_huge": lambda: wbactor.PartialFailure(
        range(3, 60_000, 2), ValueError("x" * 100_000)
    ),
    "partial_big": lambda: wbactor.PartialFailure(
        range(3, 60_000, 2), ValueError("y" * 10_000)
    ),
    "locks": LocksError,
    "needs_two": lambda: NeedsTwoError("a", "b"),
    "hostile": HostileError,
    "interrupt": KeyboardInterrupt,
}


class Scripted:
    """Writes int items to `log`; runs string items as commands (module doc)."""

    def __init__(
        self, log: str, trap: str | None = None, *, close_hangs: bool = False
    ) -> None:
        self.log = Path(log)
        self.trap = Path(trap) if trap else None
        self.close_hangs = close_hangs
        self.record({"started": True})

    def record(self, line: dict[str, Any]) -> None:
        with self.log.open("a") as out:
            out.write(json.dumps({"pid": os.getpid(), **line}) + "\n")
            out.flush()

    def flush(self, batch: list[Any]) -> None:
        if self.trap is not None and self.trap.exists():
            commands = self.trap.read_text()
            self.trap.unlink()
            for command in commands.split(";"):
                self.run(command)
        for item in batch:
            if isinstance(item, str):
                self.run(item)
        self.record({"batch": [i for i in batch if not isinstance(i, str)]})

    def run(self, command: str) -> None:
        verb, _, argument = command.partition(":")
        if verb == "raise":
            error = _ERRORS[argument]()
            raise error
        if verb == "exit":
            os._exit(int(argument))
        if verb == "flake" and not Path(argument).exists():
            Path(argument).touch()
            error = _ERRORS["transient"]()
            raise error
        if verb == "wait":  # for the test, at most a minute
            self.record({"waiting": argument})
            deadline = time.monotonic() + 60
            while not Path(argument).exists() and time.monotonic() < deadline:
                time.sleep(0.005)
        if verb == "sleep":
            self.record({"sleeping": float(argument)})
            time.sleep(float(argument))
            Path(f"{self.log}.late").touch()  # only an attempt let run gets here

    def close(self) -> None:
        self.record({"closed": True})
        if self.close_hangs:
            time.sleep(60)


class AsyncScripted(Scripted):
    """`Scripted` with an async flush; records which event loop ran it."""

    async def flush(self, batch: list[Any]) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        loop = id(asyncio.get_running_loop())
        self.record({"batch": batch, "loop": loop})


def failing_factory() -> Scripted:
    msg = "no store here"
    raise TransientStoreError(msg, store="sqlite")


def read_log(log: Path) -> list[dict[str, Any]]:
    """Every line the flushers wrote to `log`, in order."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def batches(log: Path) -> list[tuple[int, list[int]]]:
    """The batches written to `log`: (pid of the worker, items)."""
    return [(e["pid"], e["batch"]) for e in read_log(log) if "batch" in e]
