"""Defects found by probing the wire: user input that ends in a 500 or a wedged job.

Each test sends what a client can send and expects the documented answer
(a 400 envelope, a reported line, an empty series) instead of a crash.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

import ipm
from ipm.api.wsgi import iter_body
from tests.conftest import Caller


def local(url: str) -> str:
    """The path and query of an absolute link."""
    parts = urlsplit(url)

    return f"{parts.path}?{parts.query}"


SURROGATE_KEYED = [
    b'{"\\ud800": 1}',
    # A refused number under such a key: its pointer could not be written
    # (a 500, and an import stuck for good, before).
    b'{"\\ud800": NaN}',
    b'{"a": {"\\udfff": Infinity}}',
    b'{"x\\ud800": [1, NaN]}',
    b'{"\\ud800": 1e99999}',
    b'{"\\ud800": ' + b"9" * 5000 + b"}",
    # A key of more digits than int() converts, beside a bad value: sorting
    # the problems by pointer must not convert it (a wedged import before).
    b'{"' + b"1" * 4301 + b'": NaN}',
    b'{"' + b"1" * 4301 + b'": 1}',
]


@pytest.mark.parametrize("body", SURROGATE_KEYED)
def test_a_lone_surrogate_in_a_key_is_a_400_envelope(call: Caller, body: bytes) -> None:
    """A body whose object key is a lone surrogate is refused with a 400 envelope."""
    status, answer = call("/cdc/list", raw=body)

    assert status == 400
    assert answer["error"]["code"] == "invalid_request"
    for problem in answer["error"]["details"]:
        problem["pointer"].encode("utf-8")


def test_a_lone_surrogate_in_a_nested_key_is_a_400_envelope(call: Caller) -> None:
    """A lone surrogate in a nested key is refused like one at the top."""
    body = b'{"next_token": {"\\udc00": 1}}'

    status, answer = call("/cdc/list", raw=body)

    assert status == 400
    assert answer["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("bad", SURROGATE_KEYED)
def test_an_import_line_with_a_lone_surrogate_key_is_reported(
    call: Caller, bad: bytes
) -> None:
    """An import line whose key is a lone surrogate fails alone; the job ends
    and its report can be read."""
    good = {
        "event_id": "sale-1",
        "service": "pos",
        "action": "sale.created",
        "occurred_at": "2026-03-01T10:00:00Z",
        "payload": {"sale_id": 1},
    }
    data = json.dumps(good).encode() + b"\n" + bad + b"\n"
    status, created = call("/bulk/import/create", {})
    assert status == 200
    uploaded = call.app.handle("PUT", local(created["data"]["upload_url"]), {}, data)
    assert uploaded.status == 200
    job = json.loads(uploaded.body)["data"]["job"]
    status, _ = call(
        "/bulk/import/commit",
        {"job_id": job["job_id"], "expected_revision": job["revision"]},
    )
    assert status == 200

    status, answer = call("/bulk/import/continue", {"job_id": job["job_id"]})

    assert status == 200, answer
    finished = answer["data"]["job"]
    assert finished["status"] == "completed_with_errors"
    assert finished["counters"]["ok"] == 1
    assert finished["counters"]["failed"] == 1
    _, got = call("/bulk/job/get", {"job_id": job["job_id"]})
    report = call.app.handle("GET", local(got["data"]["report_url"]), {}, b"")
    lines = [json.loads(line) for line in b"".join(iter_body(report.body)).splitlines()]
    assert [line["line"] for line in lines] == [2]


def test_a_query_ending_in_the_grid_s_last_second_is_answered(call: Caller) -> None:
    """A to_utc with a fraction in 9999-12-31T23:59:59 gives a series, not a 500."""
    query = {
        "kpi_code": "NET_SALES",
        "bucket": "daily",
        "from_utc": "2026-01-01T00:00:00Z",
        "to_utc": "9999-12-31T23:59:59.5Z",
    }

    status, answer = call("/kpi/query", query)

    assert status == 200, answer
    assert answer["data"]["series"] == []


def test_handle_answers_a_surrogate_key_without_raising(app: ipm.Application) -> None:
    """handle() returns a Response for a surrogate key; it never raises."""
    key = app.create_api_key("ops@acme.example", ["ACME01"])
    headers = {"authorization": f"Bearer {key}", "x-orgcode": "ACME01"}

    response = app.handle("POST", "/kpi/query", headers, b'{"\\udfff": 0}')

    assert response.status == 400
