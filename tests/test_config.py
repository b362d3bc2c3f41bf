from __future__ import annotations

import dataclasses
import inspect
import math
import threading
import typing
from typing import Any

import pykka
import pytest

import wbactor
from wbactor.testing import ManualClock


def write_batch(batch: list[int]) -> None:
    """A plain function flusher."""


class ObjectFlusher:
    def flush(self, batch: list[int]) -> None:
        """An object flusher."""


def make(**overrides: Any) -> wbactor.Config[int]:
    """Build a Config from valid values, with `overrides` applied."""
    values: dict[str, Any] = {"capacity": 10, "flusher": write_batch}
    values.update(overrides)
    return wbactor.Config(**values)


def raised(error: type[Exception], **overrides: Any) -> Exception:
    """Return the exception `make(**overrides)` raises, which must be `error`."""
    with pytest.raises(error) as info:
        make(**overrides)
    assert type(info.value) is error
    return info.value


def assert_is_config_error_naming(err: Exception, field: str) -> None:
    assert isinstance(err, wbactor.ConfigError)
    assert isinstance(err, ValueError)
    assert isinstance(err, wbactor.WriteBehindError)
    assert field in str(err)


# -- capacity ---------------------------------------------------------------


def test_missing_capacity_raises_capacity_required_naming_capacity() -> None:
    # As in the Go package: an unset capacity is "capacity required". mypy
    # refuses the call too (tests/typing/api.py); at run time it is this error.
    with pytest.raises(wbactor.CapacityRequiredError) as info:
        wbactor.Config(flusher=write_batch)  # type: ignore[call-arg]
    assert type(info.value) is wbactor.CapacityRequiredError
    assert str(info.value) == (
        "capacity is required and must be a positive int (the most items to "
        "hold while the store is slow), none given"
    )


def test_invalid_capacity_message_shows_the_value() -> None:
    err = raised(wbactor.CapacityRequiredError, capacity=0)
    assert str(err) == (
        "capacity is required and must be a positive int (the most items to "
        "hold while the store is slow), got 0"
    )


def test_nothing_given_fails_on_capacity_first() -> None:
    with pytest.raises(wbactor.CapacityRequiredError):
        wbactor.Config()  # type: ignore[call-arg]


def test_the_capacity_default_is_a_sentinel_not_a_capacity() -> None:
    # The typed signature has no default; the run-time one only marks "unset".
    field = dataclasses.fields(wbactor.Config)[0]
    assert field.name == "capacity"
    assert field.default is not dataclasses.MISSING
    assert not isinstance(field.default, int)
    assert repr(field.default) == "<required>"
    err = raised(wbactor.CapacityRequiredError, capacity=field.default)
    assert "none given" in str(err)


@pytest.mark.parametrize(
    "capacity",
    [0, -1, -10_000, True, False, 1.0, 10.5, "10", None, math.inf],
    ids=repr,
)
def test_capacity_must_be_a_positive_int(capacity: object) -> None:
    err = raised(wbactor.CapacityRequiredError, capacity=capacity)
    assert_is_config_error_naming(err, "capacity")


@pytest.mark.parametrize("capacity", [1, 2, 10_000])
def test_any_positive_int_capacity_is_accepted(capacity: int) -> None:
    assert make(capacity=capacity).capacity == capacity


# -- flusher ----------------------------------------------------------------


def test_flusher_is_required_without_a_factory() -> None:
    err = raised(wbactor.FlusherRequiredError, flusher=None)
    assert_is_config_error_naming(err, "flusher")


@pytest.mark.parametrize("flusher", [42, "store", object(), [1, 2]], ids=repr)
def test_flusher_without_flush_method_that_is_not_callable_is_refused(
    flusher: object,
) -> None:
    err = raised(wbactor.FlusherRequiredError, flusher=flusher)
    assert_is_config_error_naming(err, "flusher")


def test_flusher_whose_flush_attribute_is_not_callable_is_refused() -> None:
    class NotAFlusher:
        flush = "not a method"

    err = raised(wbactor.FlusherRequiredError, flusher=NotAFlusher())
    assert_is_config_error_naming(err, "flusher")


def test_object_with_flush_method_and_plain_callable_are_flushers() -> None:
    store = ObjectFlusher()
    assert make(flusher=store).flusher is store
    assert make(flusher=write_batch).flusher is write_batch


def test_flusher_may_be_none_when_a_factory_is_given() -> None:
    cfg = make(flusher=None, flusher_factory=ObjectFlusher)
    assert cfg.flusher is None
    assert cfg.flusher_factory is ObjectFlusher


@pytest.mark.parametrize("factory", [42, "factory", ObjectFlusher()], ids=repr)
def test_flusher_factory_must_be_callable(factory: object) -> None:
    err = raised(wbactor.FlusherRequiredError, flusher=None, flusher_factory=factory)
    assert_is_config_error_naming(err, "flusher_factory")


def test_non_callable_factory_is_refused_even_with_a_flusher() -> None:
    err = raised(wbactor.FlusherRequiredError, flusher_factory=42)
    assert_is_config_error_naming(err, "flusher_factory")


# -- key_func and policy ----------------------------------------------------


def test_coalesce_by_key_needs_key_func() -> None:
    err = raised(wbactor.CoalesceNeedsKeyError, policy=wbactor.Policy.COALESCE_BY_KEY)
    assert_is_config_error_naming(err, "key_func")


def test_coalesce_by_key_with_key_func_is_accepted() -> None:
    cfg = make(policy=wbactor.Policy.COALESCE_BY_KEY, key_func=abs)
    assert cfg.policy is wbactor.Policy.COALESCE_BY_KEY
    assert cfg.key_func is abs


@pytest.mark.parametrize(
    "policy",
    [p for p in wbactor.Policy if p is not wbactor.Policy.COALESCE_BY_KEY],
)
def test_other_policies_need_no_key_func(policy: wbactor.Policy) -> None:
    assert make(policy=policy).policy is policy


@pytest.mark.parametrize(
    "policy", ["drop_oldest", "coalesce_by_key", 0, None, "DROP_OLDEST"], ids=repr
)
def test_unknown_policy_is_a_config_error(policy: object) -> None:
    err = raised(wbactor.ConfigError, policy=policy)
    assert_is_config_error_naming(err, "policy")


# -- the rest ---------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, 2.0, True, "10", None], ids=repr)
def test_batch_size_must_be_a_positive_int(batch_size: object) -> None:
    err = raised(wbactor.ConfigError, batch_size=batch_size)
    assert_is_config_error_naming(err, "batch_size")


TOO_LONG = [
    math.inf,
    -math.inf,
    math.nan,
    threading.TIMEOUT_MAX * 2,
    math.nextafter(threading.TIMEOUT_MAX, math.inf),
    # too large for a float: refused, not an OverflowError
    pytest.param(10**400, id="10**400"),
]


@pytest.mark.parametrize(
    "interval", [0, 0.0, -1, -0.5, True, "1", None, *TOO_LONG], ids=repr
)
def test_flush_interval_must_be_a_positive_finite_number(interval: object) -> None:
    err = raised(wbactor.ConfigError, flush_interval=interval)
    assert_is_config_error_naming(err, "flush_interval")
    assert "TIMEOUT_MAX" in str(err)


@pytest.mark.parametrize(
    "interval", [1e-9, 0.0001, 0.0009, math.nextafter(0.001, 0)], ids=repr
)
def test_flush_interval_below_a_millisecond_would_spin(interval: float) -> None:
    err = raised(wbactor.ConfigError, flush_interval=interval)
    assert_is_config_error_naming(err, "flush_interval")
    assert repr(interval) in str(err)
    assert "0.001" in str(err)
    assert "spin" in str(err)


@pytest.mark.parametrize("interval", [0.001, 0.0011, 1, 2.5, threading.TIMEOUT_MAX])
def test_positive_flush_intervals_are_accepted(interval: float) -> None:
    assert make(flush_interval=interval).flush_interval == interval


@pytest.mark.parametrize("max_retries", [-2, -100, 1.5, True, "3", None], ids=repr)
def test_max_retries_must_be_an_int_at_least_minus_one(max_retries: object) -> None:
    err = raised(wbactor.ConfigError, max_retries=max_retries)
    assert_is_config_error_naming(err, "max_retries")


@pytest.mark.parametrize("max_retries", [-1, 0, 1, 50])
def test_max_retries_minus_one_zero_and_positive_are_kept_as_given(
    max_retries: int,
) -> None:
    # Go defect 5: MaxRetries = 0 silently meant 3.
    assert make(max_retries=max_retries).max_retries == max_retries


@pytest.mark.parametrize("field", ["flush_timeout", "block_timeout"])
@pytest.mark.parametrize(
    "value", [0, 0.0, -1, -0.1, True, False, "1", *TOO_LONG], ids=repr
)
def test_timeouts_must_be_none_or_positive(field: str, value: object) -> None:
    err = raised(wbactor.ConfigError, **{field: value})
    assert_is_config_error_naming(err, field)
    assert "TIMEOUT_MAX" in str(err)


@pytest.mark.parametrize("field", ["flush_timeout", "block_timeout"])
@pytest.mark.parametrize("value", [None, 1e-6, 0.01, 5, threading.TIMEOUT_MAX])
def test_timeouts_accept_none_and_positive_numbers(field: str, value: object) -> None:
    assert getattr(make(**{field: value}), field) == value


@pytest.mark.parametrize(
    "field", ["flush_interval", "flush_timeout", "block_timeout", "exit_timeout"]
)
@pytest.mark.parametrize("value", TOO_LONG, ids=repr)
def test_every_duration_is_finite_and_at_most_timeout_max(
    field: str, value: object
) -> None:
    # A value past TIMEOUT_MAX would only fail later, in a Condition.wait.
    err = raised(wbactor.ConfigError, **{field: value})
    assert str(err).startswith(f"{field} must be")
    assert str(err).endswith(f"got {value!r}")


@pytest.mark.parametrize("field", ["on_drop", "retry_backoff", "key_func"])
@pytest.mark.parametrize("value", [1, "f", object()], ids=repr)
def test_hooks_must_be_callable(field: str, value: object) -> None:
    err = raised(wbactor.ConfigError, **{field: value})
    assert_is_config_error_naming(err, field)


@pytest.mark.parametrize("value", [1, "f"], ids=repr)
def test_non_callable_key_func_is_refused_under_coalescing(value: object) -> None:
    with pytest.raises(wbactor.ConfigError) as info:
        make(policy=wbactor.Policy.COALESCE_BY_KEY, key_func=value)
    assert_is_config_error_naming(info.value, "key_func")


@pytest.mark.parametrize("name", ["", None, 1, b"players", ["players"]], ids=repr)
def test_name_must_be_a_non_empty_str(name: object) -> None:
    err = raised(wbactor.ConfigError, name=name)
    assert_is_config_error_naming(err, "name")
    assert repr(name) in str(err)


@pytest.mark.parametrize("name", ["players", "q", "shard-7/positions", "é"])
def test_any_non_empty_name_is_kept(name: str) -> None:
    assert make(name=name).name == name


@pytest.mark.parametrize(
    "value",
    [
        -1,
        -0.001,
        math.nan,
        math.inf,
        -math.inf,
        threading.TIMEOUT_MAX * 2,
        pytest.param(10**400, id="10**400"),  # too large for a float
        True,
        False,
        "5",
        None,
    ],
    ids=repr,
)
def test_exit_timeout_must_be_finite_non_negative_seconds(value: object) -> None:
    err = raised(wbactor.ConfigError, exit_timeout=value)
    assert_is_config_error_naming(err, "exit_timeout")


@pytest.mark.parametrize("value", [0, 0.0, 0.001, 2, 5.0, threading.TIMEOUT_MAX])
def test_exit_timeout_accepts_zero_up_to_timeout_max(value: float) -> None:
    assert make(exit_timeout=value).exit_timeout == value


class NowOnly:
    def now(self) -> float:
        return 0.0


class WaitOnly:
    def wait(self, condition: threading.Condition, deadline: float | None) -> None:
        """Never called."""


class NowNotCallable(WaitOnly):
    now = 0.0


@pytest.mark.parametrize(
    "clock", [NowOnly(), WaitOnly(), NowNotCallable(), 0.0, "clock"], ids=repr
)
def test_clock_needs_callable_now_and_wait(clock: object) -> None:
    err = raised(wbactor.ConfigError, clock=clock)
    assert_is_config_error_naming(err, "clock")


def test_manual_and_monotonic_clocks_are_accepted() -> None:
    manual = ManualClock()
    monotonic = wbactor.MonotonicClock()
    assert make(clock=manual).clock is manual
    assert make(clock=monotonic).clock is monotonic


# -- order of the checks ----------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        # capacity first, whatever else is wrong
        (
            {"capacity": 0, "flusher": None, "policy": wbactor.Policy.COALESCE_BY_KEY},
            wbactor.CapacityRequiredError,
        ),
        (
            {"capacity": -1, "flusher": 42, "batch_size": 0},
            wbactor.CapacityRequiredError,
        ),
        ({"capacity": "x", "flusher_factory": 42}, wbactor.CapacityRequiredError),
        ({"capacity": 0, "policy": "nope"}, wbactor.CapacityRequiredError),
        # then the flusher
        (
            {"flusher": None, "policy": wbactor.Policy.COALESCE_BY_KEY},
            wbactor.FlusherRequiredError,
        ),
        (
            {"flusher": 42, "policy": wbactor.Policy.COALESCE_BY_KEY, "batch_size": 0},
            wbactor.FlusherRequiredError,
        ),
        (
            {"flusher": None, "flusher_factory": 42, "max_retries": -5},
            wbactor.FlusherRequiredError,
        ),
        ({"flusher": None, "policy": "nope"}, wbactor.FlusherRequiredError),
        # then key_func for coalescing
        (
            {
                "policy": wbactor.Policy.COALESCE_BY_KEY,
                "batch_size": 0,
                "flush_interval": -1,
                "on_drop": 1,
                "clock": 1,
            },
            wbactor.CoalesceNeedsKeyError,
        ),
        (
            {
                "flusher": None,
                "flusher_factory": ObjectFlusher,
                "policy": wbactor.Policy.COALESCE_BY_KEY,
                "max_retries": -2,
            },
            wbactor.CoalesceNeedsKeyError,
        ),
        (
            {"capacity": 0, "name": "", "exit_timeout": -1},
            wbactor.CapacityRequiredError,
        ),
        ({"flusher": None, "name": 1}, wbactor.FlusherRequiredError),
        (
            {"flusher": None, "flush_interval": 0.0001, "block_timeout": math.inf},
            wbactor.FlusherRequiredError,
        ),
        (
            {"policy": wbactor.Policy.COALESCE_BY_KEY, "flush_interval": 1e-6},
            wbactor.CoalesceNeedsKeyError,
        ),
        (
            {"policy": wbactor.Policy.COALESCE_BY_KEY, "exit_timeout": math.nan},
            wbactor.CoalesceNeedsKeyError,
        ),
        # then the rest
        ({"policy": "drop_oldest", "batch_size": 0}, wbactor.ConfigError),
    ],
)
def test_checks_run_in_documented_order(
    overrides: dict[str, Any], error: type[Exception]
) -> None:
    raised(error, **overrides)


def test_example_capacity_zero_no_flusher_coalescing_raises_capacity_error() -> None:
    with pytest.raises(wbactor.CapacityRequiredError):
        wbactor.Config(capacity=0, flusher=None, policy=wbactor.Policy.COALESCE_BY_KEY)


def test_example_coalescing_without_flusher_raises_flusher_error() -> None:
    with pytest.raises(wbactor.FlusherRequiredError):
        wbactor.Config[int](capacity=1, policy=wbactor.Policy.COALESCE_BY_KEY)


# -- dataclass shape and defaults -------------------------------------------


def test_config_is_frozen() -> None:
    cfg = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.capacity = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.policy = wbactor.Policy.BLOCK  # type: ignore[misc]
    assert cfg.capacity == 10
    assert cfg.policy is wbactor.Policy.DROP_OLDEST


def test_config_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        wbactor.Config(10, write_batch)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        wbactor.Config(10, flusher=write_batch)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        wbactor.Config(10, capacity=10, flusher=write_batch)  # type: ignore[misc]
    params = inspect.signature(wbactor.Config).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)


def test_config_has_slots_and_no_instance_dict() -> None:
    cfg = make()
    assert "__slots__" in vars(wbactor.Config)
    assert not hasattr(cfg, "__dict__")
    with pytest.raises((AttributeError, TypeError)):
        object.__setattr__(cfg, "not_a_field", 1)


def test_config_is_generic_in_the_item_type() -> None:
    cfg = wbactor.Config[int](capacity=1, flusher=write_batch)
    assert isinstance(cfg, wbactor.Config)
    assert typing.get_origin(wbactor.Config[int]) is wbactor.Config
    assert typing.get_args(wbactor.Config[int]) == (int,)


def test_setting_an_unknown_attribute_is_a_frozen_instance_error() -> None:
    cfg = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.not_a_field = 1  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del cfg.not_a_field  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del cfg.capacity


def test_capacity_is_the_first_field() -> None:
    assert dataclasses.fields(wbactor.Config)[0].name == "capacity"


def test_config_fields_and_defaults_match_the_spec() -> None:
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(wbactor.Config)
        if f.default is not dataclasses.MISSING and f.name != "capacity"
    }
    assert defaults == {
        "flusher": None,
        "batch_size": 100,
        "flush_interval": 1.0,
        "policy": wbactor.Policy.DROP_OLDEST,
        "key_func": None,
        "retry_backoff": None,
        "max_retries": 3,
        "on_drop": None,
        "flush_timeout": None,
        "block_timeout": None,
        "flusher_factory": None,
        "clock": None,
        "name": "wbactor",
        "exit_timeout": 5.0,
        "classify": None,
        "flusher_process": False,
        "lanes": 1,
        "journal": None,
        "journal_interval": 0.05,
    }
    assert all(f.kw_only for f in dataclasses.fields(wbactor.Config))


def test_config_fields_come_in_the_documented_order() -> None:
    # The new fields go last, so the rendered docs list them after the others.
    assert [f.name for f in dataclasses.fields(wbactor.Config)] == [
        "capacity",
        "flusher",
        "batch_size",
        "flush_interval",
        "policy",
        "key_func",
        "retry_backoff",
        "max_retries",
        "on_drop",
        "flush_timeout",
        "block_timeout",
        "flusher_factory",
        "clock",
        "name",
        "exit_timeout",
        "classify",
        "flusher_process",
        "lanes",
        "journal",
        "journal_interval",
    ]


def test_a_minimal_config_takes_the_defaults() -> None:
    cfg = wbactor.Config(capacity=5, flusher=write_batch)
    assert cfg.batch_size == 100
    assert cfg.flush_interval == 1.0
    assert cfg.policy is wbactor.Policy.DROP_OLDEST
    assert cfg.max_retries == 3
    assert cfg.key_func is None
    assert cfg.retry_backoff is None
    assert cfg.on_drop is None
    assert cfg.flush_timeout is None
    assert cfg.block_timeout is None
    assert cfg.flusher_factory is None
    assert cfg.clock is None
    assert cfg.name == "wbactor"
    assert cfg.exit_timeout == 5.0


def test_configs_with_equal_fields_are_equal() -> None:
    assert make(batch_size=7) == make(batch_size=7)
    assert make(batch_size=7) != make(batch_size=8)


# -- default_backoff --------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "seconds"),
    [
        (-5, 0.1),
        (0, 0.1),
        (1, 0.1),
        (2, 0.2),
        (3, 0.4),
        (4, 0.8),
        (5, 1.6),
        (6, 3.2),
        (7, 5.0),
        (8, 5.0),
        (100, 5.0),
        (10_000, 5.0),
        (10**6, 5.0),
        (10**100, 5.0),
    ],
)
def test_default_backoff_doubles_from_a_tenth_and_caps_at_five(
    attempt: int, seconds: float
) -> None:
    result = wbactor.default_backoff(attempt)
    assert isinstance(result, float)
    assert result == pytest.approx(seconds)


# -- errors and drop reasons ------------------------------------------------


def test_error_hierarchy_matches_the_spec() -> None:
    assert issubclass(wbactor.WriteBehindError, Exception)
    assert issubclass(wbactor.ConfigError, wbactor.WriteBehindError)
    assert issubclass(wbactor.ConfigError, ValueError)
    for sub in (
        wbactor.CapacityRequiredError,
        wbactor.FlusherRequiredError,
        wbactor.CoalesceNeedsKeyError,
    ):
        assert issubclass(sub, wbactor.ConfigError)
        assert issubclass(sub, ValueError)
        assert issubclass(sub, wbactor.WriteBehindError)
    assert issubclass(wbactor.QueueClosedError, wbactor.WriteBehindError)
    assert issubclass(wbactor.QueueClosedError, pykka.ActorDeadError)
    assert not issubclass(wbactor.QueueClosedError, wbactor.ConfigError)
    assert issubclass(wbactor.PushTimeoutError, wbactor.WriteBehindError)
    assert issubclass(wbactor.PushTimeoutError, TimeoutError)
    assert not issubclass(wbactor.PushTimeoutError, wbactor.ConfigError)


def test_config_subclasses_are_distinct() -> None:
    subs = [
        wbactor.CapacityRequiredError,
        wbactor.FlusherRequiredError,
        wbactor.CoalesceNeedsKeyError,
    ]
    for a in subs:
        for b in subs:
            assert issubclass(a, b) == (a is b)


def test_queue_closed_error_is_caught_as_actor_dead_error() -> None:
    with pytest.raises(pykka.ActorDeadError):
        raise wbactor.QueueClosedError


def test_push_timeout_error_is_caught_as_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        raise wbactor.PushTimeoutError


def test_drop_reason_values_are_the_spec_strings() -> None:
    assert {r.value for r in wbactor.DropReason} == {
        "drop_oldest",
        "drop_newest",
        "retries_exhausted",
        "push_timeout",
        "closed",
        "key_error",
        "rejected",
    }
    assert len(wbactor.DropReason) == 7


@pytest.mark.parametrize("reason", list(wbactor.DropReason))
def test_drop_reasons_are_strs_equal_to_their_values(
    reason: wbactor.DropReason,
) -> None:
    assert isinstance(reason, str)
    assert reason == reason.value
    assert str(reason) == reason.value
    assert f"{reason}" == reason.value
    assert wbactor.DropReason(reason.value) is reason
    assert hash(reason) == hash(reason.value)


def test_drop_oldest_reason_equals_its_string() -> None:
    reason: object = wbactor.DropReason.DROP_OLDEST
    assert reason == "drop_oldest"
    assert {"drop_oldest": 1}[wbactor.DropReason.DROP_OLDEST] == 1


def test_policy_values_are_not_interchangeable_with_strings() -> None:
    assert {p.value for p in wbactor.Policy} == {
        "drop_oldest",
        "drop_newest",
        "block",
        "coalesce_by_key",
    }
    assert wbactor.Policy("block") is wbactor.Policy.BLOCK
    assert not isinstance(wbactor.Policy.DROP_OLDEST, str)
