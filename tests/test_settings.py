"""The checks every host-given setting goes through (ipm.domain.settings)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ipm.domain.settings import check_seconds, check_whole


@given(st.integers(min_value=1, max_value=100))
def test_a_whole_number_in_range_is_returned(value: int) -> None:
    """An int within its bounds comes back unchanged."""
    assert check_whole("workers", value, 1, 100) == value


@pytest.mark.parametrize("value", [True, 1.0, "3", None])
def test_a_whole_number_must_be_an_int(value: object) -> None:
    """A bool, float, text or None is a TypeError naming the setting."""
    with pytest.raises(TypeError, match="workers must be an int"):
        check_whole("workers", value, 1, 100)


@pytest.mark.parametrize(("value", "most"), [(0, 100), (101, 100), (-5, None)])
def test_a_whole_number_out_of_range_is_refused(value: int, most: int | None) -> None:
    """Below the least or above the most is a ValueError saying the range."""
    with pytest.raises(ValueError, match="workers must be"):
        check_whole("workers", value, 1, most)


@given(st.floats(min_value=1e-9, max_value=600) | st.integers(1, 600))
def test_seconds_in_range_come_back_as_a_float(value: float) -> None:
    """A number of seconds within its bounds comes back as a float."""
    assert check_seconds("timeout", value, most=600) == float(value)


@pytest.mark.parametrize("value", [True, "1", None, b"1"])
def test_seconds_must_be_a_number(value: object) -> None:
    """Anything but an int or float (bool included) is a TypeError."""
    with pytest.raises(TypeError, match="timeout must be a number of seconds"):
        check_seconds("timeout", value)


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, 601.0])
def test_seconds_out_of_range_are_refused(value: float) -> None:
    """Zero, negatives, NaN, infinity and too much are each a ValueError."""
    with pytest.raises(ValueError, match="timeout must be above 0 and at most 600"):
        check_seconds("timeout", value, most=600)


def test_zero_and_infinity_pass_only_when_allowed() -> None:
    """zero= lets 0 through; infinite= lets infinity mean "no bound"."""
    assert check_seconds("busy_timeout", 0, zero=True, most=3600) == 0.0
    budget = check_seconds("replay_budget", math.inf, zero=True, infinite=True)
    assert budget == math.inf

    with pytest.raises(ValueError, match="from 0 s and finite"):
        check_seconds("slice", math.inf, zero=True)
    with pytest.raises(ValueError, match="from 0 s"):
        check_seconds("replay_budget", math.nan, zero=True, infinite=True)


def test_an_int_beyond_any_float_is_a_value_error_not_an_overflow() -> None:
    """10**400 seconds is refused as out of range, or is "for ever" where allowed."""
    with pytest.raises(ValueError, match="timeout must be above 0"):
        check_seconds("timeout", 10**400)

    assert check_seconds("budget", 10**400, infinite=True) == math.inf
