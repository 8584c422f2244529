"""Import slices: read, check and apply a bounded run of NDJSON lines.

Theory of operation. A slice has two halves.

The first half runs outside any transaction. It reads the job's data from
the committed cursor on, frames and parses it (:mod:`ipm.domain.ndjson`),
turns each record into what the target stores (an event exactly as
``publish()`` builds it) and checks it against the event catalog as
``publish()`` does (a compiled validator; the reference explains each
refusal). For events, a plain line is proven good by one compiled check
(:mod:`ipm.usecases.event_lane`) and every other line takes the rules one
by one. A line that fails any check becomes a report line; nothing of it
reaches the transaction, so one bad line can never roll back the others.

The second half is one write unit of work. It reloads the job and drops
the slice if the cursor moved meanwhile (another worker committed the same
lines first). Otherwise it records the good lines through the Recorder —
an existing event id with the same content is a duplicate, with other
content an ``event_id_conflict`` line — and writes the report lines, the
action of every line, the counters and the new cursor, then commits.
Killed at any instant, a slice has committed whole or not at all, and the
next ``continue`` starts where the last committed slice ended. The
payloads are checked against the catalog again there only if it changed
since the first half read its generation.

A validate-only run takes the very same path, but its second half predicts
instead of recording: an event id that is stored already, or was seen
earlier in the file (kept per job), is a duplicate or a conflict exactly
as the real run would find it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import attrs

from ipm.domain.errors import EventIdConflict, InvalidRequest, Problem, pointer_token
from ipm.domain.events import NO_AUDIT, Audit, Event, NewEvent
from ipm.domain.jobs import (
    ACTIONS,
    Counters,
    Cursor,
    Job,
    ReportLine,
    action_letter,
    action_name,
)
from ipm.domain.jsoncodec import dumps, loads
from ipm.domain.kpi import RecordKpi, same_value, snapshot_from_wire
from ipm.domain.ndjson import BOM_BYTES, LineError, NdjsonReader, Scanned
from ipm.domain.timeutil import format_utc
from ipm.domain.webhooks import Routes, Webhook
from ipm.ports import Clock, Ids, UnitOfWork, close_chunks
from ipm.usecases.catalog import OWN_SERVICE
from ipm.usecases.cdc import (
    MAX_PAYLOAD_BYTES,
    Recorded,
    Recorder,
    catalog_generation,
    event_from_mapping,
    oversized_payload,
)
from ipm.usecases.event_lane import (
    DERIVED_ID_PLACEHOLDER,
    EXPORT_ONLY_FIELDS,
    EventLane,
    with_derived_id,
)
from ipm.usecases.kpis import Kpis

log = logging.getLogger(__name__)

_CHECK_CLOCK_EVERY = 64
_EXCERPT_CHARS = 80


@attrs.frozen
class Refusal:
    """Why a record cannot be imported: a report code, message and pointer."""

    code: str
    message: str
    pointer: str = ""


class Good(NamedTuple):
    """A line that passed every check outside the transaction."""

    line: int
    offset: int
    item: Any
    record: dict[str, Any]


Entry = Good | ReportLine | None
"""One line of a slice in order: good, failed, or blank (``None``)."""


@attrs.define
class SliceInput:
    """What the first half of a slice read: entries and where it stopped."""

    start: Cursor
    end: Cursor
    entries: list[Entry]
    exhausted: bool
    data_end: int
    """Where the data read ended: ``end``'s position, or past it when the
    data ran out after no line (a file that is only a byte order mark
    holds no line but three bytes)."""
    checked_at: int | None = None
    """What the target's checks depended on, read before them."""
    audit: Audit = NO_AUDIT
    """Who runs the slice: a line that names no audit is theirs."""

    @property
    def failed(self) -> int:
        return sum(1 for entry in self.entries if isinstance(entry, ReportLine))


class LineTarget(Protocol):
    """What an import writes: checks records, then applies or predicts them."""

    def generation(self) -> int | None:
        """A number that changes whenever :meth:`check` could answer otherwise
        (read before a slice's checks, given back to :meth:`apply`)."""

    def check(self, record: dict[str, Any], audit: Audit = NO_AUDIT) -> Any | Refusal:
        """The item to store, or why the record is refused.

        ``audit`` is the slice's: what a line that names none records.
        """

    def apply(
        self,
        uow: UnitOfWork,
        job: Job,
        items: Sequence[Good],
        checked_at: int | None = None,
        audit: Audit = NO_AUDIT,
    ) -> list[str | Refusal]:
        """Store each item; an action name or a refusal per item."""

    def predict(
        self, uow: UnitOfWork, job: Job, items: Sequence[Good]
    ) -> list[str | Refusal]:
        """What :meth:`apply` would answer, without storing anything."""


# -- the cyclic collector -------------------------------------------------------

_pause_lock = threading.Lock()
_pausers = 0
_resume = False


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Hold back Python's cyclic garbage collector for one slice.

    A slice keeps thousands of small containers alive until its write
    (records, events, rows), and the collector, triggered by their number,
    scans them again and again: measured, a fifth of an import's time, for
    nothing (they are freed by reference counting when the slice ends). A
    slice is bounded in lines and seconds, so what it could leave as cyclic
    garbage is bounded too; the collector runs as usual once no slice is in
    progress. Nested and concurrent slices share one pause, and a collector
    the host had disabled stays disabled.
    """
    global _pausers, _resume
    with _pause_lock:
        if _pausers == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pausers += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pausers -= 1
            if _pausers == 0 and _resume:
                gc.enable()


# -- reading ----------------------------------------------------------------


READ_SHARE = 0.4
"""The part of a slice's seconds spent reading and checking lines: writing
what was read (records, report, actions, cursor) took about 1.5 times as
long again, so a slice whose reading used the whole budget ran 2.5 times
over it (a 1 s slice of a large max_lines took 2.6 s)."""


@attrs.frozen
class SliceLimits:
    lines: int
    seconds: float
    max_line_bytes: int
    bytes: int


SLICE_DELIVERIES = 20_000
"""The most webhook deliveries one import slice queues. Each costs a row in
the slice's write transaction (tens of microseconds): an org with a hundred
webhooks on a service would otherwise hold the database's write lock for
tens of seconds per slice of 10,000 lines, and other writers would wait or
be refused (503). A slice that would queue more is read again, shorter."""

_KPI_EVENT = (OWN_SERVICE, "kpi.recorded")
"""What a KPI line records: one of ipm's own events."""


def lines_within_deliveries(
    webhooks: Sequence[Webhook], read: SliceInput, budget: int
) -> int | None:
    """How many of ``read``'s lines to take so that writing them queues at
    most ``budget`` deliveries (one line at least), or None when all may be
    taken. A line's deliveries: the webhooks with a filter on its service
    and action (a repeated or unchanged line is counted too, so this may
    count more, never fewer)."""
    if not webhooks:
        return None

    routes = Routes(webhooks)
    total = 0
    for before, entry in enumerate(read.entries):
        if not isinstance(entry, Good):
            continue
        item = entry.item
        name = (item.service, item.action) if isinstance(item, NewEvent) else _KPI_EVENT
        total += len(routes.naming(*name))
        if total > budget:
            return max(1, before)

    return None


def read_slice(
    job: Job,
    chunks: Iterator[bytes],
    target: LineTarget,
    limits: SliceLimits,
    audit: Audit = NO_AUDIT,
) -> SliceInput:
    """The first half of a slice: every line checked, nothing written.

    ``audit`` says who runs the slice (the continue call's audit).
    """
    start = job.cursor
    reader = NdjsonReader(
        max_line_bytes=limits.max_line_bytes,
        start_offset=start.position,
        start_line=start.lines,
    )
    checked_at = target.generation()
    lines = reader.scan(chunks)
    try:
        entries, last, exhausted = _take(lines, target, limits, job, audit)
    finally:
        # Let go of the blob now, not whenever the reader is collected.
        for source in (lines, chunks):
            close_chunks(source)

    end = Cursor(start.position, start.lines, start.slices + 1)
    if last is not None:
        number, _, end_offset, _ = last
        end = Cursor(end_offset, number, start.slices + 1)
    data_end = end.position
    if exhausted and last is None and start.position == 0 and reader.bom:
        data_end = BOM_BYTES

    return SliceInput(start, end, entries, exhausted, data_end, checked_at, audit)


def _take(
    lines: Iterator[Scanned],
    target: LineTarget,
    limits: SliceLimits,
    job: Job,
    audit: Audit,
) -> tuple[list[Entry], Scanned | None, bool]:
    """Check lines until a budget runs out: (entries, last line, exhausted)."""
    allowance = _failure_allowance(job)
    deadline = time.monotonic() + limits.seconds * READ_SHARE
    byte_end = job.cursor.position + limits.bytes
    check = target.check
    entries: list[Entry] = []
    append = entries.append
    last: Scanned | None = None
    failed = faults = 0
    for last in lines:
        number, offset, _, verdict = last
        if verdict is None:
            append(None)
        elif type(verdict) is dict:
            try:
                item = check(verdict, audit)
                if last[2] - offset > _MEASURED_FROM and type(item) is NewEvent:
                    item = _within_cap(item)
            except Exception:
                # A fault of ipm's on this line: every later try would meet
                # it again, so the line is reported and the job goes on.
                # The first of a slice is logged with its traceback.
                log.error(
                    "could not check line %d of job %s",
                    number,
                    job.job_id,
                    exc_info=faults == 0,
                )
                faults += 1
                append(_internal_error(number, offset))
                failed += 1
            else:
                if type(item) is Refusal:
                    append(_report(number, offset, item, _excerpt(verdict)))
                    failed += 1
                else:
                    append(Good(number, offset, item, verdict))
        else:
            append(_line_error(number, offset, verdict))
            failed += 1
        if failed and allowance is not None and failed > allowance:
            return entries, last, False
        count = len(entries)
        if count >= limits.lines or last[2] >= byte_end:
            return entries, last, False
        if count % _CHECK_CLOCK_EVERY == 0 and time.monotonic() >= deadline:
            return entries, last, False

    return entries, last, True


_MEASURED_FROM = MAX_PAYLOAD_BYTES // 5
"""Line length from which an event's payload is measured as it will be
stored: written again compactly, a payload can grow almost fivefold (1e15
is stored as 1000000000000000.0), so a shorter line cannot reach the cap
and pays nothing."""


def _within_cap(new: NewEvent) -> NewEvent | Refusal:
    """``new``, or its refusal when its payload as stored passes
    MAX_PAYLOAD_BYTES, as publish() refuses it: its export line, with the
    fields an export adds, would be too long to import again."""
    too_large = oversized_payload(new.payload)
    if too_large is not None:
        return _refusal(too_large)

    return new


def _internal_error(number: int, offset: int) -> ReportLine:
    return ReportLine(
        number, offset, "internal_error", "ipm could not check this line (logged)"
    )


def _failure_allowance(job: Job) -> int | None:
    if job.max_failed_lines is None:
        return None

    return job.max_failed_lines - job.counters.failed


def _line_error(number: int, offset: int, error: Any) -> ReportLine:
    assert isinstance(error, LineError)

    return ReportLine(
        number, offset, error.code, error.message, error.pointer, error.excerpt
    )


def _report(number: int, offset: int, refusal: Refusal, excerpt: str) -> ReportLine:
    return ReportLine(
        number, offset, refusal.code, refusal.message, refusal.pointer, excerpt
    )


def _excerpt(record: Mapping[str, Any]) -> str:
    text = dumps(dict(record))[: 4 * _EXCERPT_CHARS].decode("utf-8", "replace")

    return text[:_EXCERPT_CHARS]


# -- applying -----------------------------------------------------------------


@attrs.frozen
class SliceOutcome:
    counters: Counters
    report: list[ReportLine]
    actions: bytes


def settle(
    uow: UnitOfWork, job: Job, read: SliceInput, target: LineTarget
) -> SliceOutcome:
    """The second half of a slice, inside ``uow``: store or predict each line."""
    good = [entry for entry in read.entries if type(entry) is Good]
    if job.mode == "validate":
        verdicts = target.predict(uow, job, good)
    else:
        verdicts = target.apply(uow, job, good, read.checked_at, read.audit)
    if len(verdicts) != len(good):
        raise ValueError("a target must answer once for each good line")

    report: list[ReportLine] = []
    actions = bytearray()
    # The good entries come in line order, and so do their verdicts.
    answers = iter(verdicts)
    for entry in read.entries:
        if entry is None:
            actions += _BLANK
        elif isinstance(entry, ReportLine):
            report.append(entry)
            actions += _FAILED
        else:
            verdict = next(answers)
            if isinstance(verdict, Refusal):
                report.append(
                    _report(entry.line, entry.offset, verdict, _excerpt(entry.record))
                )
                verdict = "failed"
            actions += _LETTERS[verdict]

    written = 0 if job.mode == "validate" else _written(actions)
    counters = Counters.of_actions(bytes(actions), written=written)

    return SliceOutcome(counters, report, bytes(actions))


_LETTERS = {action: action_letter(action) for action in ACTIONS}
_BLANK, _FAILED = _LETTERS["blank"], _LETTERS["failed"]


def _written(actions: bytearray) -> int:
    return actions.count(action_letter("created")) + actions.count(
        action_letter("updated")
    )


# -- the events target --------------------------------------------------------


_UNDATED = Problem("/occurred_at", "occurred_at is required in an import")
_STAND_IN_TIME = "2000-01-01T00:00:00Z"


class EventLines:
    """Lines that are events, recorded exactly as ``publish()`` records them.

    Two choices differ from ``publish()``, because a file records the past
    and is meant to be importable again: ``occurred_at`` is required (there
    is no meaningful "now" for a line), and a line without ``event_id``
    gets one derived from its content, so importing the same file twice
    adds nothing the second time.
    """

    def __init__(
        self, recorder: Recorder, ids: Ids, clock: Clock, *, lane: bool = True
    ) -> None:
        self._recorder = recorder
        self._ids = ids
        self._clock = clock
        self._lane = EventLane(recorder.catalog) if lane else None

    def generation(self) -> int:
        return catalog_generation(self._recorder.catalog)

    def check(
        self, record: dict[str, Any], audit: Audit = NO_AUDIT
    ) -> NewEvent | Refusal:
        if self._lane is not None:
            new = self._lane.admit(record, audit)
            if new is not None:
                return new

        return self.check_slowly(record, audit)

    def check_slowly(
        self, record: dict[str, Any], audit: Audit = NO_AUDIT
    ) -> NewEvent | Refusal:
        """Every rule, one by one: the source of every refusal's message."""
        # The record stays as read (its excerpt may go in the report).
        fields = record
        if not record.keys().isdisjoint(EXPORT_ONLY_FIELDS):
            fields = {k: v for k, v in record.items() if k not in EXPORT_ONLY_FIELDS}
        if audit is not NO_AUDIT and fields.get("audit") in (None, {}):
            # A line that names no audit (absent, null or {}) is the
            # importer's change; an all-null audit is kept as written.
            fields = {**fields, "audit": audit.to_wire()}
        undated = fields.get("occurred_at") is None
        if undated:
            # Checked with a stand-in time, so the report also names the
            # line's other faults.
            fields = {**fields, "occurred_at": _STAND_IN_TIME}
        derive = fields.get("event_id") is None
        if derive:
            fields = {**fields, "event_id": DERIVED_ID_PLACEHOLDER}

        try:
            # The reader parsed the line strictly: no need to walk it again.
            new = event_from_mapping(fields, self._ids, self._clock, proven_strict=True)
            self._recorder.catalog.check_payload(new)
        except InvalidRequest as error:
            if undated:
                error = InvalidRequest(error.message, [_UNDATED, *error.details])
            return _refusal(error)
        if undated:
            return _refusal(InvalidRequest(_UNDATED.message, [_UNDATED]))

        return with_derived_id(new) if derive else new

    def apply(
        self,
        uow: UnitOfWork,
        job: Job,
        items: Sequence[Good],
        checked_at: int | None = None,
        audit: Audit = NO_AUDIT,
    ) -> list[str | Refusal]:
        # The slice's audit went into each event at check time.
        news: list[NewEvent] = [item.item for item in items]
        recorder = self._recorder
        outcomes = recorder.record_many(uow, job.orgcode, news, checked_at=checked_at)

        return ["created" if type(o) is Event else _verdict(o) for o in outcomes]

    def predict(
        self, uow: UnitOfWork, job: Job, items: Sequence[Good]
    ) -> list[str | Refusal]:
        news: list[NewEvent] = [item.item for item in items]
        ids = {new.event_id for new in news}
        stored = uow.events.existing_ids(job.orgcode, ids)
        earlier = uow.jobs.seen(job.job_id, ids)
        first_seen: list[tuple[str, str]] = []
        verdicts: list[str | Refusal] = []
        for new in news:
            content = new.content_hash()
            known = stored.get(new.event_id) or earlier.get(new.event_id)
            if known is None:
                earlier[new.event_id] = content
                first_seen.append((new.event_id, content))
                verdicts.append("created")
            elif known == content:
                verdicts.append("duplicate")
            else:
                verdicts.append(_CONFLICT)
        uow.jobs.add_seen(job.job_id, first_seen)

        return verdicts


class KpiLines:
    """Lines that are KPI snapshots, recorded as ``/kpi/record`` records them.

    A line is the ``kpi`` object of that route (the ``Kpi`` fields a KPI
    read returns are accepted and ignored). An import replaces existing
    snapshots without ``expected_revision``, like any bulk load, so each
    line is ``created``, ``updated`` or ``unchanged``.
    """

    def __init__(self, kpis: Kpis) -> None:
        self._kpis = kpis

    def generation(self) -> None:
        return None

    def check(
        self, record: dict[str, Any], audit: Audit = NO_AUDIT
    ) -> RecordKpi | Refusal:
        unknown = sorted(set(record) - _KPI_FIELDS - _KPI_READ_ONLY)
        if unknown:
            where = f"/{pointer_token(unknown[0])}"
            return Refusal("schema_violation", "unknown field", where)
        try:
            return snapshot_from_wire(record, "")
        except InvalidRequest as error:
            return _refusal(error)

    def apply(
        self,
        uow: UnitOfWork,
        job: Job,
        items: Sequence[Good],
        checked_at: int | None = None,
        audit: Audit = NO_AUDIT,
    ) -> list[str | Refusal]:
        # A snapshot has no audit of its own: each change is the importer's.
        given = None if audit is NO_AUDIT else audit
        verdicts: list[str | Refusal] = []
        for item in items:
            try:
                _, outcome = self._kpis.record_in(
                    uow, job.orgcode, item.item, given, upsert=True
                )
            except InvalidRequest as error:
                verdicts.append(_refusal(error))
            else:
                verdicts.append(outcome)

        return verdicts

    def predict(
        self, uow: UnitOfWork, job: Job, items: Sequence[Good]
    ) -> list[str | Refusal]:
        snapshots: list[RecordKpi] = [item.item for item in items]
        keys = [_kpi_key(s) for s in snapshots]
        latest = {k: loads(v) for k, v in uow.jobs.seen(job.job_id, keys).items()}
        verdicts: list[str | Refusal] = []
        for key, snapshot in zip(keys, snapshots, strict=True):
            if key not in latest:
                stored = uow.kpis.get(
                    job.orgcode,
                    snapshot.kpi_code,
                    snapshot.scope,
                    snapshot.bucket,
                    snapshot.bucket_start,
                )
                latest[key] = _MISSING if stored is None else stored.value
            verdicts.append(_outcome(latest[key], snapshot.value))
            latest[key] = snapshot.value
        pairs = [(k, dumps(v).decode()) for k, v in latest.items() if v is not _MISSING]
        uow.jobs.add_seen(job.job_id, pairs)

        return verdicts


_KPI_FIELDS = {"kpi_code", "scope", "bucket", "bucket_start", "bucket_end", "value"}
_KPI_READ_ONLY = {"kpi_id", "revision", "created_at", "updated_at"}
_MISSING: Any = object()


def _kpi_key(snapshot: RecordKpi) -> str:
    start = format_utc(snapshot.bucket_start)
    return f"kpi|{snapshot.kpi_code}|{snapshot.scope}|{snapshot.bucket}|{start}"


def _outcome(previous: Any, value: Any) -> str:
    if previous is _MISSING:
        return "created"

    return "unchanged" if same_value(previous, value) else "updated"


_CONFLICT = Refusal(
    "event_id_conflict", "event_id was already used for other content", "/event_id"
)


def _verdict(outcome: Recorded) -> str | Refusal:
    if isinstance(outcome, Event):
        return "created"
    if isinstance(outcome, EventIdConflict):
        return _CONFLICT
    if isinstance(outcome, InvalidRequest):
        # The catalog changed since the check (a host registered a schema
        # meanwhile): the line is refused, the slice goes on.
        return _refusal(outcome)

    return outcome


def _refusal(error: InvalidRequest) -> Refusal:
    """A refused line's report entry: the error and every problem it names.

    The pointer is the first problem's; the message says them all, so a
    line with two faults is not fixed one report at a time.
    """
    problems = error.details
    if not problems:
        return Refusal("schema_violation", error.message[:500])

    texts = [_problem_text(problem) for problem in problems]
    said = "; ".join(texts)
    # A message that only lists the problems (in the order they were found,
    # not the pointer order of the details) would say each one twice.
    repeats = set(error.message.split("; ")) <= set(texts)
    message = said if repeats else f"{error.message}: {said}"

    return Refusal("schema_violation", _shortened(message), problems[0].pointer)


def _problem_text(problem: Problem) -> str:
    """``field: message``, unless the message names its field already."""
    field = problem.pointer.rsplit("/", 1)[-1]
    if not field or problem.message.startswith(field):
        return problem.message

    return f"{problem.pointer.lstrip('/')}: {problem.message}"


def _shortened(message: str, most: int = 500) -> str:
    return message if len(message) <= most else message[: most - 1] + "…"


def action_lines(first: int, actions: bytes) -> bytes:
    """A run of per-line actions as the results file gives them."""
    return b"".join(
        dumps({"line": first + i, "action": action_name(letter)}) + b"\n"
        for i, letter in enumerate(actions)
    )
