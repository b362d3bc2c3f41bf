"""The checks behind `flush(timeout)`/`stop(timeout)` and the backoff clamp."""

from __future__ import annotations

import math
import threading
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

import wbactor
from wbactor._config import check_wait_timeout, clamp_backoff

HUGE = 10**400  # too large for a float: float(HUGE) raises OverflowError


class HostileRepr:
    def __repr__(self) -> str:
        msg = "repr is broken"
        raise RuntimeError(msg)


class SubFloat(float):
    pass


# -- check_wait_timeout -----------------------------------------------------


@pytest.mark.parametrize(
    "timeout",
    [
        None,
        math.inf,
        threading.TIMEOUT_MAX * 2,
        math.nextafter(threading.TIMEOUT_MAX, math.inf),
        pytest.param(HUGE, id="10**400"),
    ],
    ids=repr,
)
def test_no_limit_is_none(timeout: float | None) -> None:
    assert check_wait_timeout(timeout, "flush() timeout") is None


@pytest.mark.parametrize(
    ("timeout", "seconds"),
    [
        (0, 0.0),
        (0.0, 0.0),
        (1, 1.0),
        (2.5, 2.5),
        (1e-9, 1e-9),
        (SubFloat(0.25), 0.25),
        (threading.TIMEOUT_MAX, threading.TIMEOUT_MAX),
    ],
    ids=repr,
)
def test_a_finite_timeout_is_returned_as_a_float(
    timeout: float, seconds: float
) -> None:
    result = check_wait_timeout(timeout, "stop() timeout")
    assert type(result) is float
    assert result == seconds


def test_minus_zero_is_zero() -> None:
    result = check_wait_timeout(-0.0, "stop() timeout")
    assert result == 0.0
    assert math.copysign(1.0, result) == 1.0


@pytest.mark.parametrize(
    "timeout",
    [-1, -0.001, -math.inf, math.nextafter(0.0, -1.0), pytest.param(-HUGE, id="-huge")],
    ids=repr,
)
def test_a_negative_timeout_is_a_value_error_naming_it(timeout: float) -> None:
    with pytest.raises(ValueError, match=r"^stop\(\) timeout must be") as info:
        check_wait_timeout(timeout, "stop() timeout")
    assert type(info.value) is ValueError
    assert str(info.value).endswith(f"got {timeout!r}")


def test_nan_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"^flush\(\) timeout .* got nan$") as info:
        check_wait_timeout(math.nan, "flush() timeout")
    assert type(info.value) is ValueError


@pytest.mark.parametrize(
    "timeout",
    [
        True,
        False,
        "1",
        b"1",
        [1],
        object(),
        1j,
        Decimal(1),
        Fraction(1, 2),
        HostileRepr(),
    ],
    ids=lambda v: type(v).__name__,
)
def test_a_non_number_is_a_type_error_naming_its_type(timeout: object) -> None:
    with pytest.raises(TypeError) as info:
        check_wait_timeout(timeout, "flush() timeout")  # type: ignore[arg-type]
    assert str(info.value) == (
        f"flush() timeout must be None or a number of seconds, "
        f"got {type(timeout).__name__}"
    )


@given(st.floats())
def test_any_float_is_refused_or_kept_or_no_limit(timeout: float) -> None:
    try:
        result = check_wait_timeout(timeout, "t")
    except ValueError:
        assert math.isnan(timeout) or timeout < 0
        return
    if timeout > threading.TIMEOUT_MAX:
        assert result is None
    else:
        assert result == timeout
        assert 0.0 <= result <= threading.TIMEOUT_MAX


# -- clamp_backoff ----------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [
        (0.5, 0.5),
        (1, 1.0),
        (0, 0.0),
        (0.0, 0.0),
        (-0.0, 0.0),
        (-1, 0.0),
        (-math.inf, 0.0),
        (math.nan, 0.0),
        (3599.5, 3599.5),
        (3600, 3600.0),
        (3600.5, 3600.0),
        (threading.TIMEOUT_MAX, 3600.0),
        (math.inf, 3600.0),
        (SubFloat(2.0), 2.0),
        pytest.param(HUGE, 3600.0, id="10**400"),
        pytest.param(-HUGE, 0.0, id="-10**400"),
    ],
    ids=repr,
)
def test_backoff_is_clamped_to_an_hour_as_a_float(delay: float, seconds: float) -> None:
    result = clamp_backoff(delay)
    assert type(result) is float
    assert result == seconds
    assert math.copysign(1.0, result) == 1.0  # never -0.0


@pytest.mark.parametrize(
    "delay",
    [None, True, False, "1", b"1", [1], 1j, Decimal(1), object(), HostileRepr()],
    ids=lambda v: type(v).__name__,
)
def test_a_non_number_backoff_is_a_type_error(delay: object) -> None:
    with pytest.raises(TypeError, match="retry_backoff must return") as info:
        clamp_backoff(delay)
    assert type(delay).__name__ in str(info.value)


@pytest.mark.parametrize("attempt", range(-1, 12))
def test_the_default_backoff_passes_unchanged(attempt: int) -> None:
    delay = wbactor.default_backoff(attempt)
    assert clamp_backoff(delay) == delay


@given(st.floats() | st.integers())
def test_any_number_clamps_into_zero_to_an_hour(delay: float) -> None:
    result = clamp_backoff(delay)
    assert 0.0 <= result <= 3600.0
    if 0 <= delay <= 3600:
        assert result == delay
