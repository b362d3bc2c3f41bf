"""Ready-made flushers for real stores: SQLite and PostgreSQL.

Name the table, its columns and its key, and the flusher composes the SQL,
quoting every name::

    import wbactor
    from wbactor.flushers import PostgresFlusher, SQLiteFlusher

    config = wbactor.Config(
        capacity=10_000,
        flusher_factory=lambda: SQLiteFlusher.upsert(
            "game.db", "players", ["id", "tick", "x"], "id", version="tick"
        ),
    )

`PostgresFlusher.upsert` and `.append` write each batch with binary COPY;
`SQLiteFlusher.upsert` and `.append` with one `executemany`. The plain
constructors, `SQLiteFlusher(path, sql, params)` and `PostgresFlusher(dsn,
sql, params)`, run a statement of yours with `executemany`. Every form writes
a batch in one transaction, connects lazily on the first flush (on the
flusher actor's thread), pickles without its connection, and raises a
`PermanentStoreError` or a `TransientStoreError` for what the driver raised,
so the queue knows whether to isolate bad rows or retry.

`PostgresFlusher` and `AsyncPostgresFlusher` need psycopg 3 (`pip install
'wbactor[postgres]'`); it is imported only when one is made, so `import
wbactor.flushers` works without it.
"""

from wbactor.flushers._errors import (
    PermanentStoreError,
    StoreError,
    TransientStoreError,
)
from wbactor.flushers._postgres import PostgresFlusher
from wbactor.flushers._postgres_async import AsyncPostgresFlusher
from wbactor.flushers._sqlite import SQLiteFlusher

__all__ = [
    "AsyncPostgresFlusher",
    "PermanentStoreError",
    "PostgresFlusher",
    "SQLiteFlusher",
    "StoreError",
    "TransientStoreError",
]
