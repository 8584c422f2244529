"""The options of bulk jobs: slices, uploads, links and idle imports.

Checked when a :class:`BulkOptions` is built, so a mistake shows where it
is made, not as a job failing later.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from ipm.domain.errors import InvalidRequest, Problem
from ipm.domain.jobs import MAX_SLICE_LINES
from ipm.domain.ndjson import DEFAULT_MAX_LINE_BYTES
from ipm.domain.settings import check_seconds, check_whole

__all__ = [
    "DEFAULT_FILE_SECONDS",
    "DEFAULT_IDLE_SECONDS",
    "DEFAULT_MAX_SLICE_LINES",
    "EXPORT_IDLE_STATUSES",
    "IDLE_STATUSES",
    "MAX_FILE_SECONDS",
    "MAX_IDLE_SECONDS",
    "MAX_LINK_SECONDS",
    "BulkOptions",
    "check_bound",
    "duration_text",
]


def _whole(least: int, most: int | None = None) -> Callable[[Any, Any, Any], None]:
    """An attrs validator: an int (not a bool) from ``least`` to ``most``."""

    def check(_: Any, attribute: Any, value: Any) -> None:
        check_whole(attribute.name, value, least, most)

    return check


def _seconds(most: float, *, optional: bool = False) -> Callable[[Any, Any, Any], None]:
    """An attrs validator: a number of seconds above 0, up to ``most``
    (or ``None`` when ``optional``)."""

    def check(_: Any, attribute: Any, value: Any) -> None:
        if not (optional and value is None):
            check_seconds(attribute.name, value, most=most)

    return check


DEFAULT_MAX_SLICE_LINES = 10_000
"""The most lines of a slice unless the host allows more. Measured with
realistic events of about 350 bytes: an import peaks at about 85 MB with
slices of 10,000 lines and at about 110 MB with 20,000; the issue's
bound is 100 MB."""


MAX_LINK_SECONDS = 31 * 86_400.0
"""Links live a month at most: their expiry must be a date, and an upload
or download link that outlives that is a credential nobody remembers."""


DEFAULT_IDLE_SECONDS = 7 * 86_400.0
MAX_IDLE_SECONDS = 366 * 86_400.0

DEFAULT_FILE_SECONDS = 7 * 86_400.0
MAX_FILE_SECONDS = 366 * 86_400.0

IDLE_STATUSES = frozenset({"awaiting_upload", "uploaded", "validated"})
"""The statuses in which an import waits on its client, not on ipm."""

EXPORT_IDLE_STATUSES = frozenset({"pending", "processing"})
"""The statuses of an export not finished yet: it moves only when its client
calls ``continue``, and the parts it wrote stay on disk meanwhile."""


def waits_on_client(job_type: str, status: str) -> bool:
    """Whether a job in ``status`` can be expired once idle: an import that
    waits on its client (one ``processing`` is resumable and keeps its
    data), or an export not finished (cheap to take again)."""
    if job_type == "import":
        return status in IDLE_STATUSES

    return status in EXPORT_IDLE_STATUSES


@attrs.frozen
class BulkOptions:
    """How big a slice is, how big an upload may be, how long links live.

    Checked when built: a link that expires on arrival or a slice of no
    lines would make every job fail later, far from the mistake.
    """

    slice_lines: int = attrs.field(default=10_000, validator=_whole(1, MAX_SLICE_LINES))
    """Lines a slice reads when its caller names no ``max_lines``."""
    max_slice_lines: int = attrs.field(
        default=DEFAULT_MAX_SLICE_LINES, validator=_whole(1, MAX_SLICE_LINES)
    )
    """Lines a slice reads at most, whatever ``max_lines`` a caller asks
    for: a slice is held in memory (about 3 KB a line of an import), and
    any API key may ask for up to 1,000,000 lines a call."""
    slice_bytes: int = attrs.field(default=32 << 20, validator=_whole(1))
    """Bytes a slice reads (an import, of its data) or writes (an export)
    at most, so a file of long lines cannot fill memory either; a slice
    always takes at least one line."""
    slice_seconds: float = attrs.field(default=1.0, validator=_seconds(3600.0))
    max_upload_bytes: int = attrs.field(default=4 << 30, validator=_whole(1))
    max_line_bytes: int = attrs.field(
        default=DEFAULT_MAX_LINE_BYTES, validator=_whole(1)
    )
    link_seconds: float = attrs.field(
        default=3600.0, validator=_seconds(MAX_LINK_SECONDS)
    )
    idle_seconds: float | None = attrs.field(
        default=DEFAULT_IDLE_SECONDS,
        validator=_seconds(MAX_IDLE_SECONDS, optional=True),
    )
    """How long an import may wait on its client (for its upload, its
    commit or its promotion) before :meth:`Bulk.expire_idle` ends it;
    ``None``: for ever."""
    file_seconds: float | None = attrs.field(
        default=DEFAULT_FILE_SECONDS,
        validator=_seconds(MAX_FILE_SECONDS, optional=True),
    )
    """How long a completed export's file is kept before
    :meth:`Bulk.discard_old_files` deletes it (the job and its digest stay);
    ``None``: until it is discarded by hand."""

    def __attrs_post_init__(self) -> None:
        if self.slice_lines > self.max_slice_lines:
            raise ValueError(
                f"slice_lines ({self.slice_lines:,}) is above max_slice_lines "
                f"({self.max_slice_lines:,}): lower slice_lines with it (the "
                "lines a slice takes by default), or raise max_slice_lines"
            )


def duration_text(seconds: float | None) -> str:
    """``7 days``, ``1 hour``, ``90 minutes``: how long ``idle_seconds`` is."""
    assert seconds is not None
    for unit, size in (("day", 86_400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'' if count == 1 else 's'}"

    return f"{seconds:g} second{'' if seconds == 1 else 's'}"


def check_bound(name: str, value: int | None, least: int, most: int | None) -> None:
    """Refuse a count outside its bounds, as the HTTP schemas refuse it."""
    if value is None:
        return

    if type(value) is not int or value < least or (most is not None and value > most):
        bounds = f"at least {least}" + ("" if most is None else f", at most {most:,}")
        raise InvalidRequest(
            f"{name} must be an integer {bounds}",
            [Problem(f"/{name}", f"must be an integer {bounds}")],
        )
