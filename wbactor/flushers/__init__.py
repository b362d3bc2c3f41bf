"""Ready-made flushers for real stores: SQLite and PostgreSQL.

Each writes a batch in one transaction with `executemany`, connects lazily on
the first flush (on the flusher actor's thread), and raises a
`PermanentStoreError` or a `TransientStoreError` for what the driver raised,
so the supervisor's log lines say which it was::

    import wbactor
    from wbactor.flushers import SQLiteFlusher

    config = wbactor.Config(
        capacity=10_000,
        flusher_factory=lambda: SQLiteFlusher(
            "game.db",
            "INSERT INTO players (id, x) VALUES (?, ?) "
            "ON CONFLICT (id) DO UPDATE SET x = excluded.x",
            lambda player: (player.id, player.x),
        ),
    )

`PostgresFlusher` needs psycopg 3 (`pip install 'wbactor[postgres]'`); it is
imported only when a `PostgresFlusher` is made, so `import wbactor.flushers`
works without it.
"""

from wbactor.flushers._errors import (
    PermanentStoreError,
    StoreError,
    TransientStoreError,
)
from wbactor.flushers._postgres import PostgresFlusher
from wbactor.flushers._sqlite import SQLiteFlusher

__all__ = [
    "PermanentStoreError",
    "PostgresFlusher",
    "SQLiteFlusher",
    "StoreError",
    "TransientStoreError",
]
