"""Bulk job rules: lifecycle moves, counters, cursors, links, storage form."""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipm.domain.errors import InvalidRequest, InvalidTransition
from ipm.domain.jobs import (
    ACTIONS,
    Counters,
    Cursor,
    Failure,
    Job,
    ReportLine,
    Result,
    Upload,
    action_letter,
    action_name,
    check_link,
    filters_from_wire,
    link_signature,
    statuses_for,
)
from ipm.domain.lifecycle import EXPORT_JOB, IMPORT_JOB
from ipm.testing.storage import T0

KEY = b"k" * 32


def an_import(**changes: object) -> Job:
    job = Job.new_import("job_1", "ACME", T0)
    return attrs.evolve(job, **changes) if changes else job


def test_new_import_waits_for_its_upload() -> None:
    """A new import starts in the lifecycle's initial state, revision 1."""
    job = an_import()

    assert job.status == IMPORT_JOB.initial == "awaiting_upload"
    assert job.revision == "1"
    assert job.counters == Counters()


def test_illegal_move_names_the_allowed_ones() -> None:
    """Committing before the upload is refused with the allowed moves."""
    with pytest.raises(InvalidTransition) as caught:
        an_import().move_to("processing", T0)

    assert "awaiting_upload" in caught.value.message
    assert "uploaded, failed" in caught.value.message


def test_every_change_bumps_the_revision() -> None:
    """Upload, start and each slice give the job a new revision."""
    job = an_import()
    uploaded = job.uploaded(Upload(10, "0" * 64), "jobs/job_1/u", T0)
    started = uploaded.started(T0)
    advanced = started.advance(Cursor(10, 2, 1), Counters(2, 2, created=2), T0)

    revisions = [j.revision for j in (job, uploaded, started, advanced)]

    assert len(set(revisions)) == 4
    assert advanced.counters.created == 2


def test_cursor_never_moves_backwards() -> None:
    """A slice that would move the cursor back or stand still is refused."""
    job = an_import(status="processing", cursor=Cursor(100, 10, 3))

    for cursor in (Cursor(90, 11, 4), Cursor(110, 9, 4), Cursor(110, 11, 3)):
        with pytest.raises(ValueError):
            job.advance(cursor, Counters(), T0)


def test_promotion_restarts_from_line_one_and_keeps_the_verdict() -> None:
    """A validated job starts again for real; the validate counters stay."""
    counters = Counters(lines_read=3, ok=2, failed=1, created=2)
    job = an_import(
        status="validated", mode="validate", counters=counters, cursor=Cursor(9, 3, 1)
    )

    promoted = job.started(T0)

    assert promoted.status == "processing"
    assert promoted.mode == "apply"
    assert promoted.cursor == Cursor()
    assert promoted.counters == Counters()
    assert promoted.validation == counters


@pytest.mark.parametrize(
    ("mode", "failed", "status"),
    [
        ("apply", 0, "completed"),
        ("apply", 1, "completed_with_errors"),
        ("validate", 0, "validated"),
        ("validate", 4, "validated"),
    ],
)
def test_where_a_finished_import_ends(mode: str, failed: int, status: str) -> None:
    """Failed lines make completed_with_errors; a validate run ends validated."""
    job = an_import(mode=mode, counters=Counters(failed=failed))

    assert job.finished_status() == status


def test_max_failed_lines_is_an_upper_bound() -> None:
    """Reaching max_failed_lines is allowed; going past it is too many."""
    job = an_import(max_failed_lines=2, counters=Counters(failed=2))

    assert not job.too_many_failures()
    assert attrs.evolve(job, counters=Counters(failed=3)).too_many_failures()
    assert not an_import(counters=Counters(failed=10**6)).too_many_failures()


ACTION_RUNS = st.lists(st.sampled_from(ACTIONS), max_size=200)


@given(ACTION_RUNS)
@settings(max_examples=200)
def test_counters_of_actions_always_add_up(actions: list[str]) -> None:
    """Whatever the lines did, ok + failed + blank = lines read, and ok splits."""
    codes = b"".join(action_letter(a) for a in actions)

    counters = Counters.of_actions(codes)

    assert counters.adds_up()
    assert counters.lines_read == len(actions)
    assert [action_name(code) for code in codes] == actions


@given(ACTION_RUNS, ACTION_RUNS)
@settings(max_examples=100)
def test_counters_of_two_slices_add_like_one(
    first: list[str], second: list[str]
) -> None:
    """Counting two slices and adding equals counting them as one run."""
    a = b"".join(action_letter(x) for x in first)
    b = b"".join(action_letter(x) for x in second)

    assert Counters.of_actions(a) + Counters.of_actions(b) == Counters.of_actions(a + b)


COUNTS = st.integers(min_value=0, max_value=2**40)
JOBS = st.builds(
    Job,
    job_id=st.from_regex(r"job_[0-9a-z]{1,26}", fullmatch=True),
    orgcode=st.from_regex(r"[A-Z][A-Z0-9]{0,10}", fullmatch=True),
    job_type=st.sampled_from(["import", "export"]),
    target=st.sampled_from(["events", "kpis"]),
    status=st.sampled_from(IMPORT_JOB.states + EXPORT_JOB.states),
    created_at=st.datetimes(timezones=st.just(T0.tzinfo)).map(lambda t: t),
    updated_at=st.just(T0 + timedelta(microseconds=5)),
    mode=st.sampled_from([None, "apply", "validate"]),
    revision=st.integers(1, 10**6).map(str),
    counters=st.builds(Counters, *[COUNTS] * 9),
    cursor=st.builds(Cursor, COUNTS, COUNTS, COUNTS),
    upload=st.none() | st.builds(Upload, COUNTS, st.just("a" * 64), st.booleans()),
    result=st.none() | st.builds(Result, COUNTS, st.just("b" * 64), COUNTS),
    error=st.none() | st.builds(Failure, st.just("too_many_failed_lines"), st.text()),
    filters=st.none() | st.just({"service": "pos", "from_utc": "2026-01-01T00:00:00Z"}),
    high_water_mark=st.none() | COUNTS,
    max_failed_lines=st.none() | COUNTS,
    filename=st.none() | st.text(max_size=20),
    validation=st.none() | st.builds(Counters, COUNTS),
    data_key=st.none() | st.just("jobs/x/upload"),
)


@given(JOBS)
@settings(max_examples=100)
def test_storage_form_round_trips(job: Job) -> None:
    """A job survives to_record/from_record unchanged."""
    assert Job.from_record(job.to_record()) == job


def test_links_are_bound_to_purpose_org_job_and_time() -> None:
    """A link checks only for its own purpose, org and job, before it expires."""
    expires = int((T0 + timedelta(hours=1)).timestamp())
    signature = link_signature(KEY, "upload", "ACME", "job_1", expires)

    def valid(**changes: object) -> bool:
        args = {
            "purpose": "upload",
            "orgcode": "ACME",
            "job_id": "job_1",
            "expires": expires,
            "signature": signature,
            "now": T0,
        }
        args.update(changes)
        return check_link(KEY, **args)  # type: ignore[arg-type]

    assert valid()
    assert not valid(purpose="download")
    assert not valid(orgcode="OTHER")
    assert not valid(job_id="job_2")
    assert not valid(expires=expires + 3600)
    assert not valid(signature=signature[:-1] + "A")
    assert not valid(now=T0 + timedelta(hours=1))


def test_active_means_every_status_that_is_not_terminal() -> None:
    """The active filter selects the non-terminal statuses of the job type."""
    assert statuses_for("active", "export") == {"pending", "processing"}
    assert statuses_for("active", None) == {
        "awaiting_upload",
        "uploaded",
        "processing",
        "validated",
        "pending",
    }
    assert statuses_for("failed", None) == {"failed"}
    assert statuses_for(None, "import") is None


def test_empty_export_window_is_refused() -> None:
    """An export window whose end is not after its start is a 400."""
    with pytest.raises(InvalidRequest) as caught:
        filters_from_wire(
            {"from_utc": "2026-01-02T00:00:00Z", "to_utc": "2026-01-01T00:00:00Z"}
        )

    assert caught.value.details[0].pointer == "/filters/to_utc"


def test_report_codes_are_a_closed_list() -> None:
    """A report line with a code outside the documented list cannot exist."""
    with pytest.raises(ValueError):
        ReportLine(1, 0, "something_else", "m")


def test_tallies_add_field_by_field_and_refuse_anything_else() -> None:
    """Counters (and the delivery report) add up field by field; adding
    anything else is Python's TypeError (it was attrs' NotAnAttrsClassError,
    so sum() without a start value failed oddly)."""
    from ipm.usecases.lanes import DeliveryReport

    one = Counters(lines_read=2, ok=2, created=2)
    report = DeliveryReport(attempted=1, disabled=("wh_1",))

    assert one + one == Counters(lines_read=4, ok=4, created=4)
    assert report + report == DeliveryReport(attempted=2, disabled=("wh_1", "wh_1"))
    for stranger in (0, report):
        with pytest.raises(TypeError, match="unsupported operand"):
            one + stranger  # type: ignore[operator]
    with pytest.raises(TypeError, match="unsupported operand"):
        sum([one, one])  # type: ignore[list-item]


def test_a_slice_cap_below_the_default_slice_says_both_ways_out() -> None:
    """Lowering only max_slice_lines is refused with advice that fits: lower
    slice_lines with it (the message said to raise the cap)."""
    from ipm.usecases.bulk_options import BulkOptions

    with pytest.raises(ValueError, match="lower slice_lines with it") as caught:
        BulkOptions(max_slice_lines=5000)

    assert "or raise max_slice_lines" in str(caught.value)
    assert BulkOptions(slice_lines=5000, max_slice_lines=5000).slice_lines == 5000
