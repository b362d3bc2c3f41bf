"""What the `upsert` and `append` forms of the store flushers share.

The table, its columns, the key and the version column, checked once when a
flusher is made; the rows of a batch, with the rows that repeat a key reduced
to the one that wins; and the check that a flusher's configuration pickles,
so a flusher can be sent to a worker process.
"""

from __future__ import annotations

import dataclasses
import operator
import pickle
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    Row = Sequence[Any]

__all__ = [
    "Target",
    "check_callable",
    "check_pickles",
    "latest_rows",
    "qualname",
]


def _name(what: str, name: object) -> str:
    """Return `name` if it can be an SQL identifier; raise otherwise."""
    if not isinstance(name, str):
        msg = f"{what} must be a str, got {type(name).__name__}"
        raise TypeError(msg)
    if not name:
        msg = f"{what} must not be empty"
        raise ValueError(msg)
    if "\x00" in name:
        # Neither store can hold it, and a driver may cut the name there.
        msg = f"{what} must not contain a NUL character: {name!r}"
        raise ValueError(msg)
    return name


def _names(what: str, names: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        return (_name(what, names),)
    return tuple(_name(what, name) for name in names)


def _table(table: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(table, str):
        return (_name("table", table),)
    parts = _names("table", table)
    if not 1 <= len(parts) <= 2:  # noqa: PLR2004 - a name, or (schema, table)
        msg = f"table must be a name or (schema, table), got {table!r}"
        raise ValueError(msg)
    return parts


def _columns(columns: Sequence[str]) -> tuple[str, ...]:
    if isinstance(columns, str):
        msg = "columns must be a sequence of names, not one str"
        raise TypeError(msg)
    names = _names("a column", columns)
    if not names:
        msg = "columns must name at least one column"
        raise ValueError(msg)
    if len(set(names)) != len(names):
        msg = f"columns must not repeat a name: {names!r}"
        raise ValueError(msg)
    return names


def _key(
    key: str | Sequence[str], columns: tuple[str, ...], *, upsert: bool
) -> tuple[str, ...]:
    keys = _names("key", key)
    if upsert and not keys:
        msg = "an upsert needs a key: the column(s) of its conflict target"
        raise ValueError(msg)
    if len(set(keys)) != len(keys):
        msg = f"key must not repeat a column: {keys!r}"
        raise ValueError(msg)
    for name in keys:
        if name not in columns:
            msg = f"key column {name!r} is not among the columns {columns!r}"
            raise ValueError(msg)
    return keys


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """The table an `upsert` or `append` flusher writes, and how.

    Every name is an identifier as it is in the database, quoted by the
    flusher when it builds its SQL: never split, never formatted raw.

    Attributes:
        table: The table's name, or `(schema, table)`.
        columns: The columns written, in the order of `values(item)`.
        key: The columns of the conflict target (a primary key or a unique
            constraint), or `()` for an append.
        version: The column that orders writes of one key, or None.
    """

    table: tuple[str, ...]
    columns: tuple[str, ...]
    key: tuple[str, ...] = ()
    version: str | None = None

    @classmethod
    def of(
        cls,
        table: str | Sequence[str],
        columns: Sequence[str],
        key: str | Sequence[str] = (),
        version: str | None = None,
        *,
        upsert: bool,
    ) -> Target:
        """Check the names of an `upsert` (`upsert=True`) or an `append`.

        Raises:
            TypeError: A name is not a str (`columns` a str, say).
            ValueError: An empty or NUL-holding name, a table of more than two
                parts, no columns or a repeated one, an upsert without a key,
                a key or version that is not among the columns, or a version
                that is part of the key.
        """
        names = _columns(columns)
        keys = _key(key, names, upsert=upsert)
        if version is not None:
            version = _name("version", version)
            if version not in names:
                msg = f"version column {version!r} is not among the columns"
                raise ValueError(msg)
            if version in keys:
                msg = f"version column {version!r} must not be part of the key"
                raise ValueError(msg)
        return cls(_table(table), names, keys, version)

    @property
    def updated(self) -> tuple[str, ...]:
        """The columns an upsert sets on a conflict: all but the key."""
        return tuple(name for name in self.columns if name not in self.key)

    def key_of(self) -> Callable[[Row], Any]:
        """Return a function from a row to its key: a value, or a tuple."""
        return operator.itemgetter(*(self.columns.index(k) for k in self.key))

    def version_index(self) -> int | None:
        """Return the version column's position in a row, or None."""
        return None if self.version is None else self.columns.index(self.version)


def latest_rows(
    rows: list[Row], key_of: Callable[[Row], Any], version: int | None
) -> list[Row]:
    """Return `rows` with one row per key: the one that wins.

    Without a version the last row of a key, in push order, wins. With one,
    the rows of a key are taken as if written one by one, each replacing the
    one before only if its version is greater: so the highest version wins,
    the first of equal versions stays (an equal version is a replay), and a
    row whose version is NULL (None) replaces nothing and is replaced by
    nothing, as `WHERE excluded.version > table.version` would have it.

    Rows are returned in the order their keys first appear; when no key
    repeats, `rows` itself is returned.

    Raises:
        TypeError: Two versions of one key cannot be compared.
    """
    try:
        keys = list(map(key_of, rows))
        last = dict(zip(keys, rows, strict=True))
    except TypeError:  # an unhashable key (a list, say): compare by ==
        return _latest_by_equality(rows, key_of, version)
    if len(last) == len(rows):
        return rows
    if version is None:
        return list(last.values())
    kept: dict[Any, Row] = {}
    for key, row in zip(keys, rows, strict=True):
        old = kept.get(key)
        if old is None or _newer(row, old, version):
            kept[key] = row
    return list(kept.values())


def _newer(row: Row, old: Row, version: int) -> bool:
    new_version, old_version = row[version], old[version]
    if new_version is None or old_version is None:
        return False
    return bool(new_version > old_version)


def _latest_by_equality(
    rows: Iterable[Row], key_of: Callable[[Row], Any], version: int | None
) -> list[Row]:
    kept: list[tuple[Any, Row]] = []
    for row in rows:
        key = key_of(row)
        for i, (old_key, old) in enumerate(kept):
            if old_key == key:
                if version is None or _newer(row, old, version):
                    kept[i] = (key, row)
                break
        else:
            kept.append((key, row))
    return [row for _, row in kept]


def qualname(value: object) -> str:
    """Name a function (or any object) by its module and qualified name."""
    module = getattr(value, "__module__", None) or "?"
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{module}.{name}"


def check_pickles(owner: str, fields: Iterable[tuple[str, object]]) -> None:
    """Raise `pickle.PicklingError` naming the first field that does not pickle.

    A lambda or a local function, given as `values` or `params`, is the usual
    culprit: the message says which, so the fix (a module-level function) is
    plain. Field values are not shown, as a connection string may hold a
    password; functions are named.

    Raises:
        pickle.PicklingError: A field does not pickle.
    """
    for name, value in fields:
        try:
            pickle.dumps(value)
        except Exception as error:  # any failure: say which field
            shown = f" ({qualname(value)})" if callable(value) else ""
            msg = (
                f"{owner} does not pickle: its {name}{shown} does not "
                f"({type(error).__name__}: {error}); use a function defined at "
                "module level, not a lambda or a local function"
            )
            raise pickle.PicklingError(msg) from error


def check_callable(what: str, value: object) -> None:
    """Raise `TypeError` unless `value` is a callable or None."""
    if value is not None and not callable(value):
        msg = f"{what} must be a callable or None, not {type(value).__name__}"
        raise TypeError(msg)


def check_flag(what: str, value: object) -> None:
    """Raise `TypeError` unless `value` is a bool (not 1, not "yes")."""
    if not isinstance(value, bool):
        msg = f"{what} must be True or False, not {type(value).__name__}"
        raise TypeError(msg)
