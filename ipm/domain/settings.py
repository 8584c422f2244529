"""Checks for the settings a host passes in code, not on the wire.

A setting of the wrong type or out of its range is the host's programming
mistake: it raises ``TypeError`` or ``ValueError`` naming the setting when
the object that takes it is built, instead of failing far away on first
use. A ``bool`` is never a number here, though Python lets it pass for
one, and every comparison is written so that NaN fails it.
"""

from __future__ import annotations

import math
from typing import TypeVar

_Command = TypeVar("_Command")


def check_whole(name: str, value: object, least: int, most: int | None = None) -> int:
    """``value`` as an int from ``least`` to ``most`` (inclusive), or raise."""
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")

    if value < least or (most is not None and value > most):
        bound = f"at least {least:,}" if most is None else f"from {least:,} to {most:,}"
        raise ValueError(f"{name} must be {bound}")

    return value


def check_command(value: object, kind: type[_Command]) -> _Command:
    """``value`` if it is a ``kind`` (a typed call's command), else TypeError.

    A ``dict`` where a ``RecordKpi`` belongs is the host's slip in code; it
    is named at once rather than failing on a missing attribute.
    """
    if not isinstance(value, kind):
        raise TypeError(f"expected a {kind.__name__}, got {type(value).__name__}")

    return value


def check_seconds(
    name: str,
    value: object,
    *,
    zero: bool = False,
    most: float = math.inf,
    infinite: bool = False,
) -> float:
    """``value`` as seconds above 0 (or from 0 with ``zero``) up to ``most``.

    Infinity is refused unless ``infinite`` says it means "no bound".
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds")

    low_ok = value >= 0 if zero else value > 0
    high_ok = value <= most and (infinite or value < math.inf)
    if not (low_ok and high_ok):
        raise ValueError(f"{name} must be {_range(zero, most, infinite)}")

    try:
        return float(value)
    except OverflowError:
        # An int beyond any float (10**400): no bound means "for ever".
        if infinite:
            return math.inf
        raise ValueError(f"{name} must be {_range(zero, most, infinite)}") from None


def _range(zero: bool, most: float, infinite: bool) -> str:
    low = "from 0" if zero else "above 0"
    if most < math.inf:
        # 2678400 s, not 2.6784e+06 s: a bound is read, not computed with.
        shown = f"{most:.0f}" if most == int(most) else f"{most:g}"
        return f"{low} {'to' if zero else 'and at most'} {shown} s"

    return f"{low} s" if infinite else f"{low} s and finite"
