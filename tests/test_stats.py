from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pytest

import wbactor
from wbactor import DropReason, LaneStats, Policy, Push, Stats
from wbactor._stats import DroppedCounts
from wbactor.testing import RecordingFlusher

if TYPE_CHECKING:
    from wbactor.testing import ManualClock

CLOSED = DropReason.CLOSED
OLDEST = DropReason.DROP_OLDEST


def snapshot(**overrides: Any) -> Stats:
    values: dict[str, Any] = {
        "pushed": 12,
        "flushed": 5,
        "coalesced": 1,
        "dropped": Stats.freeze_dropped(
            {OLDEST: 2, CLOSED: 1, DropReason.KEY_ERROR: 0}
        ),
        "retries": 3,
        "restarts": 1,
        "batches": 2,
        "depth": 2,
        "in_flight": 1,
        "oldest_age": 0.25,
        "lanes": (
            LaneStats(2, 0, 0, "idle"),
            LaneStats(0, 1, 3, "backing_off"),
        ),
    }
    values.update(overrides)
    return Stats(**values)


# -- pickling and copying ---------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_stats_pickle_with_every_protocol(protocol: int) -> None:
    stats = snapshot()
    back = pickle.loads(pickle.dumps(stats, protocol=protocol))  # noqa: S301 - our own bytes
    assert back == stats
    assert type(back.dropped) is DroppedCounts
    assert dict(back.dropped) == {OLDEST: 2, CLOSED: 1}
    assert all(type(reason) is DropReason for reason in back.dropped)
    assert back.dropped_total == 3


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_dropped_counts_pickle_alone(protocol: int) -> None:
    counts = DroppedCounts({CLOSED: 4})
    back = pickle.loads(pickle.dumps(counts, protocol=protocol))  # noqa: S301 - our own bytes
    assert type(back) is DroppedCounts
    assert back == counts
    assert back is not counts


def test_stats_copy_and_deepcopy() -> None:
    stats = snapshot()
    for clone in (copy.copy(stats), copy.deepcopy(stats)):
        assert clone == stats
        assert type(clone.dropped) is DroppedCounts
    deep = copy.deepcopy(stats.dropped)
    assert isinstance(deep, DroppedCounts)
    assert isinstance(stats.dropped, DroppedCounts)
    assert deep == stats.dropped
    assert deep._counts is not stats.dropped._counts


def test_dataclasses_asdict_works() -> None:
    as_fields = dataclasses.asdict(snapshot())
    assert as_fields["pushed"] == 12
    assert as_fields["dropped"] == {"drop_oldest": 2, "closed": 1}
    assert set(as_fields) == {f.name for f in dataclasses.fields(Stats)}


def test_dataclasses_replace_works() -> None:
    stats = snapshot()
    later = dataclasses.replace(stats, flushed=6, depth=1)
    assert later.flushed == 6
    assert later.dropped == stats.dropped


def test_a_real_snapshot_pickles_and_converts(clock: ManualClock) -> None:
    flusher: RecordingFlusher[int] = RecordingFlusher()
    config = wbactor.Config(
        capacity=2, flusher=flusher, policy=Policy.DROP_NEWEST, clock=clock
    )
    with wbactor.start(config) as wb:
        for item in range(5):
            wb.ref.tell(Push(item))
        stats = wb.stats()
    assert dict(stats.dropped) == {DropReason.DROP_NEWEST: 3}
    assert pickle.loads(pickle.dumps(stats)) == stats  # noqa: S301 - our own bytes
    assert json.loads(json.dumps(stats.as_dict()))["dropped"] == {"drop_newest": 3}


# -- as_dict ----------------------------------------------------------------


def test_as_dict_has_every_field_as_a_plain_json_value() -> None:
    plain = snapshot().as_dict()
    assert type(plain) is dict
    assert list(plain) == [f.name for f in dataclasses.fields(Stats)]
    assert plain == {
        "pushed": 12,
        "flushed": 5,
        "coalesced": 1,
        "dropped": {"drop_oldest": 2, "closed": 1},
        "retries": 3,
        "restarts": 1,
        "batches": 2,
        "depth": 2,
        "in_flight": 1,
        "oldest_age": 0.25,
        "recovered": 0,
        "journaled": 0,
        "lanes": [
            {"depth": 2, "in_flight": 0, "failures": 0, "state": "idle"},
            {"depth": 0, "in_flight": 1, "failures": 3, "state": "backing_off"},
        ],
    }
    for name, value in plain.items():
        if name == "dropped":
            assert type(value) is dict
        elif name == "lanes":
            assert all(type(lane) is dict for lane in value)
        elif name == "oldest_age":
            assert type(value) is float
        else:
            assert type(value) is int, name


def test_as_dict_dropped_keys_are_plain_strs_not_drop_reasons() -> None:
    dropped = snapshot().as_dict()["dropped"]
    assert dropped
    assert all(type(reason) is str for reason in dropped)
    assert all(type(count) is int for count in dropped.values())


def test_as_dict_round_trips_through_json() -> None:
    plain = snapshot().as_dict()
    text = json.dumps(plain)
    assert json.loads(text) == plain
    assert '"dropped": {"drop_oldest": 2, "closed": 1}' in text


def test_as_dict_of_an_empty_snapshot() -> None:
    plain = snapshot(dropped=Stats.freeze_dropped({}), oldest_age=0.0).as_dict()
    assert plain["dropped"] == {}
    assert type(plain["oldest_age"]) is float
    assert json.loads(json.dumps(plain)) == plain


def test_as_dict_is_a_fresh_copy() -> None:
    stats = snapshot()
    plain = stats.as_dict()
    plain["dropped"]["closed"] = 100
    plain["pushed"] = 0
    assert stats.dropped[CLOSED] == 1
    assert stats.pushed == 12
    assert stats.as_dict()["dropped"]["closed"] == 1


def test_as_dict_refuses_a_field_it_has_no_json_form_for() -> None:
    # A new kind of field must get its own case rather than slip through.
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class MoreStats(Stats):
        shards: tuple[int, ...] = ()

    more = MoreStats(
        **{f.name: getattr(snapshot(), f.name) for f in dataclasses.fields(Stats)}
    )
    with pytest.raises(TypeError, match="shards"):
        more.as_dict()


# -- the dropped mapping ----------------------------------------------------


def test_dropped_is_read_only() -> None:
    dropped: Any = snapshot().dropped
    with pytest.raises(TypeError):
        dropped[CLOSED] = 5
    with pytest.raises(TypeError):
        dropped["closed"] = 5
    with pytest.raises(TypeError):
        del dropped[CLOSED]
    for method in ("pop", "popitem", "update", "clear", "setdefault"):
        assert not hasattr(dropped, method), method
    with pytest.raises(AttributeError):
        dropped.extra = 1
    assert dropped == {OLDEST: 2, CLOSED: 1}


def test_dropped_is_a_mapping_with_str_lookups() -> None:
    dropped = snapshot().dropped
    assert isinstance(dropped, Mapping)
    assert dropped["closed"] == 1  # type: ignore[index]
    assert "drop_oldest" in dropped
    assert DropReason.KEY_ERROR not in dropped  # zero counts are left out
    assert dropped.get(DropReason.KEY_ERROR, 0) == 0
    assert list(dropped) == [OLDEST, CLOSED]
    assert list(dropped.values()) == [2, 1]
    assert len(dropped) == 2
    with pytest.raises(KeyError):
        dropped[DropReason.PUSH_TIMEOUT]


def test_dropped_equals_dicts_and_other_mappings() -> None:
    dropped = snapshot().dropped
    assert dropped == {OLDEST: 2, CLOSED: 1}
    assert dropped == {"drop_oldest": 2, "closed": 1}
    plain: object = {"closed": 1, "drop_oldest": 2}
    assert plain == dropped  # dict.__eq__ gives way to ours
    assert dropped == MappingProxyType({OLDEST: 2, CLOSED: 1})
    assert dropped == DroppedCounts({CLOSED: 1, OLDEST: 2})
    assert dropped != {OLDEST: 2}
    assert dropped != {OLDEST: 2, CLOSED: 2}
    not_mappings: list[object] = [[(OLDEST, 2), (CLOSED, 1)], "drop_oldest", None]
    for other in not_mappings:
        assert dropped != other
        assert other != dropped
    assert DroppedCounts() == {}


def test_dropped_is_not_hashable() -> None:
    with pytest.raises(TypeError):
        hash(snapshot().dropped)


def test_dropped_repr_shows_plain_reasons() -> None:
    assert repr(snapshot().dropped) == "DroppedCounts({'drop_oldest': 2, 'closed': 1})"
    assert repr(DroppedCounts()) == "DroppedCounts({})"
    assert "DroppedCounts({'drop_oldest': 2, 'closed': 1})" in repr(snapshot())


def test_dropped_counts_keys_become_drop_reasons() -> None:
    counts = DroppedCounts({"closed": 1, "drop_newest": 0})  # type: ignore[dict-item]
    assert [type(reason) for reason in counts] == [DropReason, DropReason]
    assert dict(counts) == {CLOSED: 1, DropReason.DROP_NEWEST: 0}
    with pytest.raises(ValueError, match="nope"):
        DroppedCounts({"nope": 1})  # type: ignore[dict-item]


def test_freeze_dropped_copies_and_leaves_out_zeros() -> None:
    source = dict.fromkeys(DropReason, 0)
    source[CLOSED] = 2
    frozen = Stats.freeze_dropped(source)
    source[CLOSED] = 99
    source[OLDEST] = 1
    assert dict(frozen) == {CLOSED: 2}
    assert type(frozen) is DroppedCounts


def test_a_stats_given_a_plain_dict_holds_dropped_counts() -> None:
    stats = snapshot(dropped={"closed": 2, "drop_oldest": 0})
    assert type(stats.dropped) is DroppedCounts
    assert dict(stats.dropped) == {CLOSED: 2}
    assert stats == pickle.loads(pickle.dumps(stats))  # noqa: S301 - our own bytes


def test_dropped_total_sums_every_reason() -> None:
    assert snapshot().dropped_total == 3
    assert snapshot(dropped={}).dropped_total == 0


def test_stats_is_frozen_with_slots() -> None:
    stats = snapshot()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.pushed = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.dropped = {}  # type: ignore[misc]
    assert not hasattr(stats, "__dict__")
