"""The wire contract through ``handle()``: envelope, gates and status codes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import ipm
from tests.conftest import ORG, OTHER, Caller


def test_every_answer_is_the_envelope(call: Caller) -> None:
    """A success carries data, build and stats with the route's call name."""
    status, body = call("/lifecycle/list", {})

    assert status == 200
    assert body["success"] is True
    assert body["build"]["build_id"]
    assert body["stats"]["call"] == "POST /lifecycle/list"
    assert body["stats"]["service"] == "ipm"
    assert body["stats"]["timestamp_utc"].endswith("Z")


def test_stat_needs_neither_key_nor_org(app: ipm.Application) -> None:
    """GET /stat answers without credentials."""
    status, body = Caller(app, None, None)("/stat", method="GET", raw=b"")

    assert status == 200
    assert body["data"]["service"] == "ipm"
    assert body["data"]["status"] == "active"


def test_missing_org_header_is_refused(app: ipm.Application, key: str) -> None:
    """A tenant route without x-orgcode is a 400 orgcode_required."""
    status, body = Caller(app, key, None)("/lifecycle/list", {})

    assert status == 400
    assert body["success"] is False
    assert body["error"]["code"] == "orgcode_required"


def test_missing_key_is_unauthenticated(app: ipm.Application) -> None:
    """No Authorization header is a 401."""
    status, body = Caller(app, None, ORG)("/lifecycle/list", {})

    assert status == 401
    assert body["error"]["code"] == "unauthenticated"


def test_a_401_names_the_scheme_it_wants(app: ipm.Application) -> None:
    """A 401 carries WWW-Authenticate: Bearer, as HTTP requires."""
    response = app.handle("POST", "/cdc/list", {"x-orgcode": ORG}, b"{}")

    assert response.status == 401
    assert (response.header("www-authenticate") or "").startswith("Bearer")


def test_wrong_key_is_unauthenticated(app: ipm.Application, key: str) -> None:
    """A key with a wrong secret part is a 401."""
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")

    status, _ = Caller(app, forged, ORG)("/lifecycle/list", {})

    assert status == 401


def test_body_that_is_not_json_is_refused(call: Caller) -> None:
    """Bytes that are not JSON are a 400 invalid_request."""
    status, body = call("/cdc/list", raw=b"{not json")

    assert status == 400
    assert body["error"]["code"] == "invalid_request"


def test_body_that_is_not_an_object_is_refused(call: Caller) -> None:
    """A JSON array body is a 400 that says the body is one, and that an
    object is wanted (it was called "not strict JSON", which it is)."""
    status, body = call("/cdc/list", raw=b"[1, 2]")

    assert status == 400
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["message"] == (
        "request body must be a JSON object: the body is a JSON array"
    )


def test_a_body_with_a_byte_order_mark_is_refused_as_such(call: Caller) -> None:
    """A UTF-8 byte order mark before a body is a 400 naming it."""
    status, body = call("/cdc/list", raw=b"\xef\xbb\xbf{}")

    assert status == 400
    assert "byte order mark" in body["error"]["message"]


def test_duplicate_keys_and_nan_are_refused(call: Caller) -> None:
    """Strict JSON: duplicate keys and NaN are refused."""
    assert call("/cdc/list", raw=b'{"limit": 1, "limit": 2}')[0] == 400
    assert call("/cdc/list", raw=b'{"limit": NaN}')[0] == 400


@pytest.mark.parametrize(
    ("raw", "pointer"),
    [
        (b'{"limit": NaN}', "/limit"),
        (b'{"service": "pos", "filters": {"x": [1, 1e400]}}', "/filters/x/1"),
        (b'{"after_sequence": -Infinity}', "/after_sequence"),
    ],
)
def test_a_refused_number_is_pointed_at(call: Caller, raw: bytes, pointer: str) -> None:
    """NaN, Infinity or an out-of-range number names where it sits in the body."""
    status, body = call("/cdc/list", raw=raw)

    assert status == 400
    assert [d["pointer"] for d in body["error"]["details"]] == [pointer]


def test_an_error_that_cannot_be_written_is_still_an_envelope(
    call: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal whose details cannot be encoded becomes a 500 envelope, not a raise."""
    from ipm.domain.errors import InvalidRequest, Problem

    def unwritable(*args: object, **kwargs: object) -> None:
        raise InvalidRequest("bad", [Problem("/\ud800", "cannot be encoded")])

    monkeypatch.setattr(type(call.app.kpis), "series_wire", unwritable)
    query = {"kpi_code": "NET", "bucket": "hourly"}
    query |= {"from_utc": "2026-01-01T00:00:00Z", "to_utc": "2026-01-02T00:00:00Z"}

    status, body = call("/kpi/query", query)

    assert status == 500
    assert body["error"]["code"] == "internal"


def test_bodies_are_read_as_strictly_as_ndjson_lines(call: Caller) -> None:
    """A number no double can hold and a lone surrogate are refused with a reason."""
    huge = call("/cdc/list", raw=b'{"limit": 1e400}')
    surrogate = call("/cdc/list", raw=b'{"service": "\\ud800"}')

    assert huge[0] == 400
    assert "range" in huge[1]["error"]["message"]
    assert surrogate[0] == 400
    assert surrogate[1]["error"]["details"][0]["pointer"] == "/service"


def test_wrong_type_names_its_pointer(call: Caller) -> None:
    """A wrongly typed field is a 400 whose details point at it."""
    status, body = call("/cdc/list", {"service": 5, "limit": "x"})

    assert status == 400
    pointers = {d["pointer"] for d in body["error"]["details"]}
    assert {"/service", "/limit"} <= pointers


def test_unknown_field_is_refused(call: Caller) -> None:
    """An unknown field is a 400 pointing at it."""
    status, body = call("/cdc/list", {"servce": "pos"})

    assert status == 400
    assert "/servce" in {d["pointer"] for d in body["error"]["details"]}


def test_a_body_of_thousands_of_faults_lists_a_thousand(call: Caller) -> None:
    """Problems are listed up to 1,000, then one item at "" says more were
    left out: checking stops there, so the answer stays small."""
    body = {f"k{n}": 1 for n in range(20_000)}

    status, answer = call("/cdc/list", body)

    details = answer["error"]["details"]
    assert status == 400
    assert len(details) == 1_001
    assert details[0] == {
        "pointer": "",
        "message": "more problems not listed (at most 1,000 are)",
    }
    assert all(d["message"] == "is not allowed" for d in details[1:])
    # The first found, in the body's order: the same every run.
    assert {d["pointer"] for d in details[1:]} <= {f"/k{n}" for n in range(1_001)}


def test_unknown_route_and_wrong_method(call: Caller) -> None:
    """Unknown paths are 404 route_not_found; a wrong method is 405 with Allow."""
    status, body = call("/nope", {})
    assert (status, body["error"]["code"]) == (404, "route_not_found")

    response = call.app.handle("GET", "/cdc/list", {}, b"")
    assert response.status == 405
    assert response.header("allow") == "POST"
    assert json.loads(response.body)["error"]["code"] == "method_not_allowed"


def test_too_large_body_is_413(app: ipm.Application, key: str) -> None:
    """A body over the configured limit is a 413 before anything else runs."""
    big = b'{"service": "' + b"x" * app.max_body_bytes + b'"}'

    status, body = Caller(app, key, ORG)("/cdc/list", raw=big)

    assert status == 413
    assert body["error"]["code"] == "payload_too_large"


def test_foreign_org_read_looks_like_a_missing_record(
    call: Caller, app: ipm.Application, key: str
) -> None:
    """Reading another org's data answers exactly what a missing record answers."""
    _, missing = call("/specimen/get", {"name": "NoSuchSpecimen"})

    status, foreign = Caller(app, key, OTHER)("/cdc/list", {})

    assert status == 404
    assert foreign["error"] == missing["error"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/webhook/get", {"webhook_id": "wh_absent"}),
        ("/bulk/job/get", {"job_id": "job_absent"}),
    ],
)
def test_a_foreign_org_record_reads_like_an_absent_one(
    call: Caller, app: ipm.Application, key: str, route: str, body: dict[str, str]
) -> None:
    """A record's route answers the same 404 body for a foreign org and a miss."""
    _, missing = call(route, body)

    status, foreign = Caller(app, key, OTHER)(route, body)

    assert status == 404
    assert foreign["error"] == missing["error"]
    assert missing["error"]["code"] == "not_found"


def test_foreign_org_write_is_forbidden(app: ipm.Application, key: str) -> None:
    """Writing to an org the key is not bound to is a 403."""
    status, body = Caller(app, key, OTHER)("/kpi/record", {})

    assert status == 403
    assert body["error"]["code"] == "forbidden"


def test_request_context_org_must_match_header(call: Caller) -> None:
    """request_context.orgcode that differs from x-orgcode is orgcode_mismatch."""
    status, body = call(
        "/webhook/create",
        {
            "request_context": {"orgcode": OTHER},
            "endpoint_url": "https://hooks.example.com/ipm",
            "event_filters": [{"service": "pos"}],
        },
    )

    assert status == 400
    assert body["error"]["code"] == "orgcode_mismatch"


def test_a_text_body_and_no_headers_are_answered_not_crashed(
    app: ipm.Application, key: str
) -> None:
    """handle() takes text as UTF-8 and missing headers as none: never a 500."""
    headers = {"authorization": f"Bearer {key}", "x-orgcode": ORG}

    text = app.handle("POST", "/cdc/list", headers, "{}")
    lone = app.handle("POST", "/cdc/list", headers, '{"service": "\ud800"}')
    bare = app.handle("POST", "/cdc/list", None, None)

    assert text.status == 200
    assert lone.status == 400
    assert bare.status == 401


def test_every_response_carries_a_request_id(app: ipm.Application) -> None:
    """x-request-id is on successes and errors alike."""
    ok = app.handle("GET", "/stat", {}, b"")
    bad = app.handle("GET", "/nope", {}, b"")

    assert ok.header("x-request-id")
    assert bad.header("x-request-id")
    assert ok.header("x-request-id") != bad.header("x-request-id")


def test_unexpected_error_is_a_bare_500(call: Caller, app: ipm.Application) -> None:
    """An exception in a handler is a 500 with no trace or message leak."""

    def explode(call: object, body: object) -> dict[str, object]:
        raise RuntimeError("secret-detail /etc/passwd")

    app.api.attach("POST /pagination/get", explode)

    status, body = call("/pagination/get", {})

    assert status == 500
    assert body["error"]["code"] == "internal"
    assert "secret-detail" not in json.dumps(body)


def test_hostile_inputs_are_400s_not_500s(app: ipm.Application, call: Caller) -> None:
    """Regression: float limits, lone surrogates and huge positions once gave 500s."""
    app.publish(ORG, {"service": "pos", "action": "sale.created", "payload": {}})
    for raw in (
        b'{"limit": 2.0}',
        b'{"logical_guid": "\\ud800"}',
        b'{"after_sequence": 9223372036854775808}',
        b'{"after_sequence": 1e308}',
        b'{"next_token": {"v": 1, "k": [1], "s": "\\ud800"}}',
        b'{"next_token": {"v": true, "k": [1], "s": "x"}}',
    ):
        status, body = call("/cdc/list", raw=raw)
        assert status in (200, 400), (raw, body)
        assert body["success"] is (status == 200)


def test_strange_methods_and_paths_are_not_echoed(app: ipm.Application) -> None:
    """A method or path that is not plain text is answered without echoing it."""
    odd_method = app.handle("FOO<SCRIPT>", "/stat", {}, b"")
    odd_path = app.handle("GET", "/\udcff", {}, b"")

    assert odd_method.status == 405
    assert b"SCRIPT" not in odd_method.body
    assert odd_path.status == 404


def test_documents_answer_405_to_other_methods(app: ipm.Application) -> None:
    """POST to a GET-only document is 405, not 404; Allow names HEAD too,
    which every GET route answers."""
    response = app.handle("POST", "/openapi.json", {}, b"")
    stat = app.handle("POST", "/stat", {}, b"")

    assert response.status == stat.status == 405
    assert response.header("allow") == stat.header("allow") == "GET, HEAD"


def test_head_is_get_without_a_body(app: ipm.Application) -> None:
    """HEAD /stat answers like GET /stat, headers only."""
    head = app.handle("HEAD", "/stat", {}, b"")
    get = app.handle("GET", "/stat", {}, b"")

    assert (head.status, head.body) == (200, b"")
    assert head.header("content-type") == get.header("content-type")
    assert head.header("content-length") == str(len(get.body))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_request_after_close_is_a_503(tmp_path: Path, kind: str) -> None:
    """A closed application answers in the envelope, never with a 500."""
    app = ipm.open_memory() if kind == "memory" else ipm.open_sqlite(tmp_path / "a")
    key = app.create_api_key("ops@acme.example", [ORG])
    app.close()

    status, body = Caller(app, key, ORG)("/lifecycle/list", {})
    health = app.handle("GET", "/stat", {}, b"")

    assert status == 503
    assert body["error"]["code"] == "storage_closed"
    assert health.status == 503, "a closed instance must not look healthy"


def test_a_write_the_database_keeps_locked_is_a_503_with_retry_after(
    tmp_path: Path,
) -> None:
    """Past the busy timeout a write answers 503 storage_busy and Retry-After."""
    db = tmp_path / "ipm.sqlite"
    app = ipm.open_sqlite(db, busy_timeout=0.2)
    key = app.create_api_key("ops@acme.example", [ORG])
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    body = {
        "kpi": {
            "kpi_code": "NET_SALES",
            "bucket": "hourly",
            "bucket_start": "2026-01-01T00:00:00Z",
            "bucket_end": "2026-01-01T01:00:00Z",
            "value": 1,
        }
    }

    try:
        response = app.handle(
            "POST",
            "/kpi/record",
            {"authorization": f"Bearer {key}", "x-orgcode": ORG},
            json.dumps(body).encode(),
        )
    finally:
        holder.rollback()
        holder.close()
        app.close()

    assert response.status == 503
    assert response.json()["error"]["code"] == "storage_busy"
    assert response.header("retry-after") == "1"


def test_a_body_that_is_not_bytes_is_the_host_s_type_error(
    app: ipm.Application,
) -> None:
    """handle() takes bytes, text or None; a dict is refused before any answer."""
    with pytest.raises(TypeError, match="bytes"):
        app.handle("POST", "/lifecycle/list", {}, {"limit": 1})  # type: ignore[arg-type]

    answer = app.handle("POST", "/lifecycle/list", {}, bytearray(b"{}"))
    assert answer.status == 401


def test_a_path_that_looks_like_a_url_is_a_path(call: Caller) -> None:
    """//host/stat is no route: the target is never read as a URL."""
    answer = call.app.handle("GET", "//evil.example/stat", {}, b"")

    assert answer.status == 404
    assert json.loads(answer.body)["error"]["code"] == "route_not_found"


@pytest.mark.parametrize("value", [None, 5, True])
def test_a_header_value_that_is_not_text_is_a_type_error(
    app: ipm.Application, key: str, value: Any
) -> None:
    """Regression: x-orgcode None was read as the org "None" (with a host
    authenticator granting every org, a write landed there)."""
    headers = {"authorization": f"Bearer {key}", "x-orgcode": value}

    with pytest.raises(TypeError, match="text or bytes, not"):
        app.handle("POST", "/cdc/list", headers, b"{}")
    with pytest.raises(TypeError):
        app.handle("POST", "/cdc/list", [(None, ORG)], b"{}")
    answer = app.handle("POST", "/cdc/list", [(b"x-orgcode", bytearray(b"A"))], b"{}")
    assert answer.status == 401


@pytest.mark.parametrize("path", [None, b"/stat", 5])
def test_a_path_that_is_not_text_is_a_type_error(
    app: ipm.Application, path: Any
) -> None:
    """Regression: None raised an AttributeError from deep inside handle()."""
    with pytest.raises(TypeError, match="path must be text"):
        app.handle("GET", path, {}, b"")


@pytest.mark.parametrize(("scheme", "prefix"), [(None, ""), ("https", None), (5, "")])
def test_a_scheme_or_prefix_that_is_not_text_is_a_type_error(
    app: ipm.Application, scheme: Any, prefix: Any
) -> None:
    """A host passing the mount wrongly hears it at once, not as a 500."""
    with pytest.raises(TypeError):
        app.handle("GET", "/stat", {}, b"", scheme=scheme, prefix=prefix)


def test_closing_while_a_request_runs_answers_503(
    app: ipm.Application, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request caught by close() mid-way gets storage_closed, not a 500."""
    opened = app.storage.unit_of_work

    def closed_under_it(*args: Any, **kwargs: Any) -> Any:
        app.close()
        raise sqlite3.ProgrammingError("Cannot operate on a closed database.")

    monkeypatch.setattr(app.storage, "unit_of_work", closed_under_it)
    status, body = Caller(app, key, ORG)("/cdc/list", {})
    monkeypatch.setattr(app.storage, "unit_of_work", opened)

    assert status == 503
    assert body["error"]["code"] == "storage_closed"
