"""Bulk jobs: imports and exports that move through a lifecycle in slices.

Theory of operation. A job is a frozen record; every change returns a new
job with the next revision. Status changes go through the job's lifecycle
(:data:`~ipm.domain.lifecycle.IMPORT_JOB` or
:data:`~ipm.domain.lifecycle.EXPORT_JOB`), so an illegal move raises
:class:`~ipm.domain.errors.InvalidTransition` naming the allowed ones.

Work happens in slices. A :class:`Cursor` says how far the committed
slices went: for an import, the byte offset and the number of the last
line consumed; for an export, the last event sequence scanned and the
lines written. A slice only ever moves the cursor forward
(:meth:`Job.advance` refuses anything else; committing a validated import
again starts a new run over the upload, from 0), and the cursor, the counters
and the slice's records commit in one transaction, which is what makes a
killed worker harmless: the next slice starts where the last committed one
ended.

Counters always add up: ``ok + failed + blank == lines_read`` and ``ok``
splits into created, updated, unchanged and duplicate lines.

Upload, download and report links are signed here (pure HMAC, the key
comes from outside), so a link cannot be moved to another job, org or
purpose, nor used after it expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import attrs

from ipm.domain.errors import InvalidRequest, InvalidTransition, Problem
from ipm.domain.lifecycle import EXPORT_JOB, IMPORT_JOB, Lifecycle
from ipm.domain.ndjson import LINE_ERROR_CODES
from ipm.domain.revision import FIRST, next_revision
from ipm.domain.tallies import summed
from ipm.domain.timeutil import check_instant, format_utc, parse_utc, parse_utc_bound

JobType = Literal["import", "export"]
Target = Literal["events", "kpis"]
Mode = Literal["apply", "validate"]

JOB_TYPES: tuple[str, ...] = ("import", "export")
TARGETS: tuple[str, ...] = ("events", "kpis")
MODES: tuple[str, ...] = ("apply", "validate")

REPORT_CODES: tuple[str, ...] = (
    *LINE_ERROR_CODES,
    "event_id_conflict",
    "internal_error",
)
"""Every code a line of an error report may carry (closed, documented).

``internal_error`` is a line ipm failed to check through a fault of its
own (logged): the line is reported and the job goes on, never stuck on it.
"""

ACTIONS: tuple[str, ...] = (
    "created",
    "updated",
    "unchanged",
    "duplicate",
    "failed",
    "blank",
)
"""What happened to one line; each is stored as one letter."""

MAX_SLICE_LINES = 1_000_000
"""The most lines one ``continue`` may be asked to process."""

_ACTION_LETTERS = {
    "created": b"c",
    "updated": b"u",
    "unchanged": b"n",
    "duplicate": b"d",
    "failed": b"f",
    "blank": b"b",
}
_LETTER_ACTIONS = {letter[0]: name for name, letter in _ACTION_LETTERS.items()}

JOB_FAILURE_CODES: tuple[str, ...] = (
    "unsupported_encoding",
    "too_many_failed_lines",
    "upload_missing",
    "upload_changed",
    "parts_missing",
    "parts_changed",
    "cancelled",
    "expired",
)
"""Why a whole job failed (``job.error.code``)."""


@attrs.frozen
class Counters:
    """Line counts of a job; they always add up (see :meth:`adds_up`)."""

    lines_read: int = 0
    ok: int = 0
    failed: int = 0
    blank: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicate: int = 0
    records_written: int = 0

    def __add__(self, other: Counters) -> Counters:
        return summed(self, other)

    def adds_up(self) -> bool:
        split = self.created + self.updated + self.unchanged + self.duplicate

        return (
            self.ok + self.failed + self.blank == self.lines_read and split == self.ok
        )

    @classmethod
    def of_actions(cls, actions: bytes, *, written: int = 0) -> Counters:
        """The counters of a run of line actions (one letter per line)."""
        tally = {
            name: actions.count(letter) for name, letter in _ACTION_LETTERS.items()
        }
        ok = tally["created"] + tally["updated"] + tally["unchanged"]

        return cls(
            lines_read=len(actions),
            ok=ok + tally["duplicate"],
            failed=tally["failed"],
            blank=tally["blank"],
            created=tally["created"],
            updated=tally["updated"],
            unchanged=tally["unchanged"],
            duplicate=tally["duplicate"],
            records_written=written,
        )

    def to_wire(self) -> dict[str, int]:
        return attrs.asdict(self)

    @classmethod
    def from_wire(cls, raw: Mapping[str, int]) -> Counters:
        return cls(**raw)


def action_letter(action: str) -> bytes:
    """The one-byte code under which a line's action is stored."""
    return _ACTION_LETTERS[action]


def action_name(letter: int) -> str:
    """The action a stored byte stands for."""
    return _LETTER_ACTIONS[letter]


@attrs.frozen
class Cursor:
    """How far the committed slices went; only ever moves forward.

    ``position`` is a byte offset (import) or an event sequence (export);
    ``lines`` counts the lines consumed (import) or written (export);
    ``slices`` counts the committed slices, and names the next one.
    """

    position: int = 0
    lines: int = 0
    slices: int = 0

    def is_behind(self, other: Cursor) -> bool:
        return (
            self.position <= other.position
            and self.lines <= other.lines
            and self.slices < other.slices
        )


@attrs.frozen
class Upload:
    """What was uploaded: its size and digest as received, and its shape."""

    size: int
    sha256: str
    bom: bool = False
    gzip: bool = False


@attrs.frozen
class Result:
    """The file an export produced."""

    size: int
    sha256: str
    records: int


@attrs.frozen
class Failure:
    """Why a job failed as a whole."""

    code: str
    message: str


def _storable(text: str) -> str:
    """``text`` as UTF-8 can hold it: a lone surrogate from a line becomes U+FFFD.

    A report row that could not be stored would fail its slice every time,
    and the job could never get past the line.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")

    return text


@attrs.frozen
class ReportLine:
    """One line of a job's error report."""

    line: int
    offset: int
    code: str = attrs.field(validator=attrs.validators.in_(REPORT_CODES))
    message: str = attrs.field(converter=_storable)
    pointer: str = attrs.field(default="", converter=_storable)
    excerpt: str = attrs.field(default="", converter=_storable)

    def to_wire(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Job:
    job_id: str
    orgcode: str
    job_type: JobType
    target: Target
    status: str
    created_at: datetime
    updated_at: datetime
    mode: Mode | None = None
    format: str = "ndjson"
    revision: str = FIRST
    counters: Counters = Counters()
    cursor: Cursor = Cursor()
    upload: Upload | None = None
    result: Result | None = None
    error: Failure | None = None
    filters: Mapping[str, Any] | None = None
    high_water_mark: int | None = None
    max_failed_lines: int | None = None
    filename: str | None = None
    validation: Counters | None = None
    """The counters of the validate-only run a job was promoted from."""
    data_key: str | None = None
    """The blob an import reads (the upload, or its gunzipped copy)."""
    data_size: int | None = None
    """Its size in bytes (None for a job recorded before it was kept)."""

    @classmethod
    def new_import(
        cls,
        job_id: str,
        orgcode: str,
        now: datetime,
        *,
        target: Target = "events",
        mode: Mode = "apply",
        max_failed_lines: int | None = None,
        filename: str | None = None,
    ) -> Job:
        return cls(
            job_id=job_id,
            orgcode=orgcode,
            job_type="import",
            target=target,
            status=IMPORT_JOB.initial,
            created_at=now,
            updated_at=now,
            mode=mode,
            max_failed_lines=max_failed_lines,
            filename=filename,
        )

    @classmethod
    def new_export(
        cls,
        job_id: str,
        orgcode: str,
        now: datetime,
        *,
        target: Target,
        filters: Mapping[str, Any],
        high_water_mark: int,
    ) -> Job:
        return cls(
            job_id=job_id,
            orgcode=orgcode,
            job_type="export",
            target=target,
            status=EXPORT_JOB.initial,
            created_at=now,
            updated_at=now,
            filters=dict(filters),
            high_water_mark=high_water_mark,
        )

    @property
    def lifecycle(self) -> Lifecycle:
        return IMPORT_JOB if self.job_type == "import" else EXPORT_JOB

    @property
    def terminal(self) -> bool:
        return self.status in self.lifecycle.terminal

    def move_to(
        self,
        status: str,
        now: datetime,
        *,
        error: Failure | None = None,
        result: Result | None = None,
    ) -> Job:
        """The job in ``status``; an illegal move raises InvalidTransition."""
        self.check_move(status)

        return self._changed(
            now,
            status=status,
            error=error or self.error,
            result=result or self.result,
        )

    def check_move(self, status: str) -> None:
        """Raise InvalidTransition unless the job may move to ``status``; a
        failed job's refusal says why it failed (expired, cancelled, ...)."""
        try:
            # Requests name a job by its id: that is what the refusal is about.
            self.lifecycle.check(self.status, status, pointer="/job_id")
        except InvalidTransition as refused:
            if self.error is None:
                raise
            raise InvalidTransition(
                f"{refused.message} (the job failed, {self.error.code}: "
                f"{self.error.message})",
                refused.details,
            ) from None

    def uploaded(
        self,
        upload: Upload,
        data_key: str,
        now: datetime,
        data_size: int | None = None,
    ) -> Job:
        """Record the upload; ``data_key`` names the blob slices read, of
        ``data_size`` bytes (the upload's own size unless it was gzip)."""
        moved = self.move_to("uploaded", now)
        if data_size is None and not upload.gzip:
            data_size = upload.size

        return attrs.evolve(
            moved, upload=upload, data_key=data_key, data_size=data_size
        )

    def data_changed(self, end: int) -> Failure | None:
        """Why the job fails when its data ran out at byte ``end``: a blob
        read through must end where it ended when stored (a file cut or
        grown behind ipm's back would otherwise import part of itself and
        say nothing). None when it does, or its size was never kept."""
        size = self.data_size
        if size is None and self.upload is not None and not self.upload.gzip:
            size = self.upload.size  # recorded before data_size was kept
        if size is None or end == size:
            return None

        return Failure(
            "upload_changed",
            f"the uploaded file ends at byte {end:,}, not at byte {size:,} as "
            "stored: it changed after the upload, and the rest is not imported",
        )

    def started(self, now: datetime, mode: Mode | None = None) -> Job:
        """Start processing; a validated job restarts from line one.

        Promoting a validate-only run (by default to ``apply``) keeps its
        counters as ``validation`` and reads the very same upload again.
        """
        moved = self.move_to("processing", now)
        if self.status != "validated":
            return attrs.evolve(moved, mode=mode or self.mode)

        return attrs.evolve(
            moved,
            mode=mode or "apply",
            validation=self.counters,
            counters=Counters(),
            cursor=Cursor(),
        )

    def advance(self, cursor: Cursor, delta: Counters, now: datetime) -> Job:
        """Record one committed slice: a cursor further on and its counts."""
        if not self.cursor.is_behind(cursor):
            raise ValueError(f"cursor moves backwards: {self.cursor} -> {cursor}")

        return self._changed(now, cursor=cursor, counters=self.counters + delta)

    def finished_status(self) -> str:
        """Where a job whose input is exhausted ends."""
        if self.job_type == "export":
            return "completed"
        if self.mode == "validate":
            return "validated"
        if self.counters.failed:
            return "completed_with_errors"

        return "completed"

    def too_many_failures(self) -> bool:
        bound = self.max_failed_lines
        return bound is not None and self.counters.failed > bound

    def lines_to_the_bound(self, actions: bytes) -> int | None:
        """How many of a slice's lines (its ``actions``, one letter each)
        run up to the one whose failure crosses ``max_failed_lines``, when
        more lines follow it; ``None`` when the slice need not stop early.
        """
        bound = self.max_failed_lines
        if bound is None:
            return None
        allowed = bound - self.counters.failed
        failed_letter = _ACTION_LETTERS["failed"]
        if actions.count(failed_letter) <= allowed:
            return None

        failed = 0
        for index, letter in enumerate(actions):
            if letter == failed_letter[0]:
                failed += 1
                if failed > allowed:
                    return index + 1 if index + 1 < len(actions) else None

        return None

    def _changed(self, now: datetime, **changes: Any) -> Job:
        return attrs.evolve(
            self, updated_at=now, revision=next_revision(self.revision), **changes
        )

    def to_wire(self) -> dict[str, Any]:
        """The job as the wire shows it (``Job`` schema)."""
        wire: dict[str, Any] = {
            "job_id": self.job_id,
            "orgcode": self.orgcode,
            "job_type": self.job_type,
            "target": self.target,
            "format": self.format,
            "mode": self.mode,
            "status": self.status,
            "created_at": format_utc(self.created_at),
            "updated_at": format_utc(self.updated_at),
            "revision": self.revision,
            "counters": self.counters.to_wire(),
            "upload": _asdict(self.upload),
            "result": _asdict(self.result),
            "error": _asdict(self.error),
            "filters": None if self.filters is None else dict(self.filters),
            "high_water_mark": self.high_water_mark,
            "cursor": {"position": self.cursor.position, "lines": self.cursor.lines},
            "max_failed_lines": self.max_failed_lines,
            "filename": self.filename,
            "validation": (
                None if self.validation is None else self.validation.to_wire()
            ),
        }

        return wire

    def to_record(self) -> dict[str, Any]:
        """Everything about the job, as plain data for storage."""
        record = self.to_wire()
        record["cursor"] = attrs.asdict(self.cursor)
        record["validation"] = _asdict(self.validation)
        record["data_key"] = self.data_key
        record["data_size"] = self.data_size

        return record

    @classmethod
    def from_record(cls, raw: Mapping[str, Any]) -> Job:
        """The job :meth:`to_record` wrote; the inverse of it."""
        validation = raw.get("validation")

        return cls(
            job_id=raw["job_id"],
            orgcode=raw["orgcode"],
            job_type=raw["job_type"],
            target=raw["target"],
            status=raw["status"],
            created_at=parse_utc(raw["created_at"], "/created_at"),
            updated_at=parse_utc(raw["updated_at"], "/updated_at"),
            mode=raw["mode"],
            format=raw["format"],
            revision=raw["revision"],
            counters=Counters.from_wire(raw["counters"]),
            cursor=Cursor(**raw["cursor"]),
            upload=_build(Upload, raw["upload"]),
            result=_build(Result, raw["result"]),
            error=_build(Failure, raw["error"]),
            filters=raw["filters"],
            high_water_mark=raw["high_water_mark"],
            max_failed_lines=raw["max_failed_lines"],
            filename=raw["filename"],
            validation=None if validation is None else Counters.from_wire(validation),
            data_key=raw.get("data_key"),
            data_size=raw.get("data_size"),
        )


def _asdict(value: Any) -> dict[str, Any] | None:
    return None if value is None else attrs.asdict(value)


def _build(cls: Any, raw: Mapping[str, Any] | None) -> Any:
    return None if raw is None else cls(**raw)


ACTIVE = "active"
"""The list filter that stands for every status that is not terminal."""


def statuses_for(status: str | None, job_type: str | None) -> frozenset[str] | None:
    """The statuses a list filter selects (``None``: any)."""
    if status != ACTIVE:
        return None if status is None else frozenset({status})

    lifecycles = [IMPORT_JOB, EXPORT_JOB]
    if job_type is not None:
        lifecycles = [IMPORT_JOB if job_type == "import" else EXPORT_JOB]

    return frozenset(
        state for lc in lifecycles for state in lc.states if state not in lc.terminal
    )


# -- signed links -------------------------------------------------------------

LinkPurpose = Literal["upload", "download", "report", "results"]
LINK_PURPOSES: tuple[str, ...] = ("upload", "download", "report", "results")


def link_signature(
    key: bytes, purpose: str, orgcode: str, job_id: str, expires: int
) -> str:
    """The signature of one link: bound to purpose, org, job and expiry."""
    # surrogatepass: a link's parts come from a query anyone can write, and
    # one holding a lone surrogate must be refused, not raise.
    message = f"{purpose}\n{orgcode}\n{job_id}\n{expires}".encode(
        "utf-8", "surrogatepass"
    )
    digest = hmac.new(key, message, hashlib.sha256).digest()

    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def check_link(
    key: bytes,
    purpose: str,
    orgcode: str,
    job_id: str,
    expires: int,
    signature: str,
    now: datetime,
) -> bool:
    """Whether a link is genuine and still valid at ``now``."""
    expected = link_signature(key, purpose, orgcode, job_id, expires)
    genuine = hmac.compare_digest(
        expected.encode(), signature.encode("utf-8", "surrogatepass")
    )

    return genuine and now.timestamp() < expires


def wire_filters(raw: Any) -> Any:
    """Export filters as the wire gives them: a host's datetimes as text.

    Absent (``None``) filters are dropped; anything that is not a mapping
    is handed on unchanged, for the request schema to refuse.
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        return raw

    filters: dict[Any, Any] = {}
    for name, value in raw.items():
        if isinstance(value, datetime):
            value = _wire_time(value, f"/filters/{name}")
        if value is not None:
            filters[name] = value

    return filters


def _wire_time(moment: datetime, pointer: str) -> str:
    return format_utc(check_instant(moment, pointer))


def filters_from_wire(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """Export filters, checked: each time readable, a window not empty.

    The times are kept as ipm writes them (UTC, ``Z``, a bound finer than
    a microsecond rounded up as the export reads it): the job, its list
    entries and its CDC event say what the window is, in one spelling,
    and not a fraction as long as the request could carry.
    """
    filters = {k: v for k, v in (raw or {}).items() if v is not None}
    bounds = {
        name: parse_utc_bound(filters[name], f"/filters/{name}", end=name == "to_utc")
        for name in ("from_utc", "to_utc")
        if name in filters
    }
    filters.update({name: format_utc(moment) for name, moment in bounds.items()})
    if len(bounds) == 2 and bounds["from_utc"] >= bounds["to_utc"]:
        raise InvalidRequest(
            "the export window is empty",
            [Problem("/filters/to_utc", "must be later than from_utc")],
        )

    return filters
