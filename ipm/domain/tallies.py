"""Tallies: attrs records whose fields all add up, field by field."""

from __future__ import annotations

from typing import Any, TypeVar

import attrs

_Tally = TypeVar("_Tally")


def summed(one: _Tally, other: _Tally) -> _Tally:
    """``one`` and ``other`` added field by field (counts add, tuples join).

    Written once for every tally, so a field added to one later is summed
    too, instead of being left out of a hand-written list of fields.
    Anything but a tally of the same kind gives ``NotImplemented``, so
    ``+`` raises Python's own TypeError for it.
    """
    if type(other) is not type(one):
        return NotImplemented  # type: ignore[no-any-return]
    # mypy cannot tell a TypeVar is an attrs class: astuple's check is ours.
    astuple: Any = attrs.astuple
    mine: tuple[Any, ...] = astuple(one, recurse=False)
    theirs: tuple[Any, ...] = astuple(other, recurse=False)

    return type(one)(*(a + b for a, b in zip(mine, theirs, strict=True)))
