"""The wire ⇄ model edge: one cattrs converter for every handler.

Request bodies have already passed their JSON Schema when they get here,
so structuring is about shape, not about checking; still, a failure is
reported as ``invalid_request`` with a JSON pointer per problem, never as
a 500. Timestamps cross this edge only through :mod:`ipm.domain.timeutil`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, TypeVar

import cattrs
from cattrs.errors import ClassValidationError

from ipm.domain.errors import InvalidRequest, Problem
from ipm.domain.timeutil import format_utc, parse_utc

T = TypeVar("T")

_PATH = re.compile(r"\[['\"]?([^]'\"]+)['\"]?\]|\.([A-Za-z0-9_]+)")


def make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(datetime, lambda value, _: _datetime(value))
    converter.register_unstructure_hook(datetime, format_utc)

    return converter


converter = make_converter()


def structure(body: Any, cls: type[T], *, drop: tuple[str, ...] = ()) -> T:
    """Build ``cls`` from a checked body, leaving out the envelope-level keys."""
    if isinstance(body, dict) and drop:
        body = {k: v for k, v in body.items() if k not in drop}
    try:
        return converter.structure(body, cls)
    except ClassValidationError as error:
        problems = [_problem(line) for line in cattrs.transform_error(error)]
        raise InvalidRequest("request body has the wrong shape", problems) from None
    except InvalidRequest:
        raise
    except (TypeError, ValueError) as error:
        raise InvalidRequest(
            "request body has the wrong shape", [Problem("", str(error)[:200])]
        ) from None


def unstructure(value: Any) -> Any:
    return converter.unstructure(value)


def _datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value

    return parse_utc(value, "")


def _problem(line: str) -> Problem:
    message, _, path = line.rpartition(" @ ")
    parts = [a or b for a, b in _PATH.findall(path.removeprefix("$"))]

    return Problem("".join(f"/{p}" for p in parts), message or line)
