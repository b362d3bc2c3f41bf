"""A process for tests/test_journal.py to SIGKILL: pushes, commits, says READY.

Usage: journal_child.py PATH COUNT MODE [POLICY [CAPACITY [WRITTEN [LANES [ROUTE]]]]]

MODE `hang`: the flusher blocks for good, so nothing is flushed; `write`: it
appends each item, one line each, to the file WRITTEN as it flushes (`-`:
none). Items are ints (or `(key, n)` pairs under coalesce_by_key: keys
`n % 10`). LANES flushers; ROUTE `key` routes ints by `n % 10` too. After
the pushes the child commits the journal, prints `READY` and its Stats as
JSON, then waits for its end.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import structlog

import wbactor


def main() -> None:
    # Logs to stderr: stdout carries the marker alone, whole.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    path, count, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    policy = wbactor.Policy(sys.argv[4]) if len(sys.argv) > 4 else None
    capacity = int(sys.argv[5]) if len(sys.argv) > 5 else 100_000
    written = sys.argv[6] if len(sys.argv) > 6 and sys.argv[6] != "-" else None
    lanes = int(sys.argv[7]) if len(sys.argv) > 7 else 1
    by_key = len(sys.argv) > 8 and sys.argv[8] == "key"
    forever = threading.Event()
    out = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_APPEND) if written else -1

    def flush(batch: list[Any]) -> None:
        if mode == "hang":
            forever.wait()
        os.write(out, "".join(f"{json.dumps(i)}\n" for i in batch).encode())

    keyed = policy is wbactor.Policy.COALESCE_BY_KEY
    key_func = (lambda item: item[0]) if keyed else (lambda n: n % 10)
    wb = wbactor.start(
        wbactor.Config(
            capacity=capacity,
            flusher=flush,
            batch_size=10,
            flush_interval=0.01,
            policy=policy or wbactor.Policy.DROP_OLDEST,
            key_func=key_func if keyed or by_key else None,
            journal=path,
            lanes=lanes,
        )
    )
    for n in range(count):
        wb.ref.tell(wbactor.Push((n % 10, n) if keyed else n))
    journal = wb._run.journal  # the test's hook: commit now
    assert journal is not None
    journal.wait_synced(5.0)
    stats = wb.stats()
    print("READY", json.dumps(stats.as_dict()), flush=True)  # noqa: T201 - the marker
    forever.wait()


if __name__ == "__main__":
    main()
