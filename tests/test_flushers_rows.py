"""The rows of a batch reduced to one per key, against a one-by-one model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import MODEL_SCALE

from wbactor.flushers._tables import Target, latest_rows

Row: TypeAlias = Sequence[Any]

rows_strategy = st.lists(
    st.tuples(
        st.integers(0, 4),  # a few keys, so that they repeat
        st.one_of(st.none(), st.integers(0, 5)),  # versions, NULL among them
        st.integers(),  # a payload, to tell rows apart
    ),
    max_size=30,
)


def one_by_one(rows: list[Row], *, versioned: bool) -> dict[Any, Row]:
    """What `INSERT ... ON CONFLICT DO UPDATE [WHERE excluded.v > t.v]` leaves."""
    table: dict[Any, Row] = {}
    for row in rows:
        old = table.get(row[0])
        if (
            old is None
            or not versioned
            or (row[1] is not None and old[1] is not None and row[1] > old[1])
        ):
            table[row[0]] = row
    return table


@settings(max_examples=200 * MODEL_SCALE)
@given(rows=rows_strategy, versioned=st.booleans())
def test_the_rows_kept_are_those_writing_one_by_one_would_leave(
    rows: list[Row], versioned: bool
) -> None:
    kept = latest_rows(rows, lambda row: row[0], 1 if versioned else None)
    assert {row[0]: row for row in kept} == one_by_one(rows, versioned=versioned)
    assert len({row[0] for row in kept}) == len(kept)


def test_unhashable_keys_are_compared_by_equality() -> None:
    rows: list[Row] = [([1], 1, "a"), ([2], 1, "b"), ([1], 2, "c"), ([1], 0, "d")]
    assert latest_rows(rows, lambda row: row[0], None) == [([1], 0, "d"), ([2], 1, "b")]
    assert latest_rows(rows, lambda row: row[0], 1) == [([1], 2, "c"), ([2], 1, "b")]


def test_a_batch_without_repeats_is_returned_as_it_is() -> None:
    rows: list[Row] = [(1, "a"), (2, "b")]
    assert latest_rows(rows, lambda row: row[0], None) is rows


def test_versions_that_do_not_compare_raise_type_error() -> None:
    with pytest.raises(TypeError):
        latest_rows([(1, "x"), (1, 2)], lambda row: row[0], 1)


def test_a_composite_key_is_a_tuple_of_its_columns() -> None:
    target = Target.of("t", ["a", "b", "c"], ["c", "a"], upsert=True)
    assert target.key_of()((1, 2, 3)) == (3, 1)
    assert target.updated == ("b",)
    single = Target.of(("s", "t"), ["a", "b"], "a", "b", upsert=True)
    assert (single.table, single.key_of()((1, 2)), single.version_index()) == (
        ("s", "t"),
        1,
        1,
    )
