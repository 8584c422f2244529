"""Real answers, success and refusal, are the ones the OpenAPI document describes."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest

import ipm
from tests.conftest import ORG, OTHER, Caller

HOUR = {"bucket": "hourly", "bucket_start": "2026-01-01T00:00:00Z"}
KPI = {**HOUR, "kpi_code": "NET_SALES", "bucket_end": "2026-01-01T01:00:00Z"}


def _answer_schema(
    document: dict[str, Any], method: str, path: str, status: int
) -> Any:
    """The schema the document gives for this answer; fails when it gives none."""
    responses = document["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, undescribed"
    response = responses[str(status)]
    if "$ref" in response:
        response = _resolve(document, response["$ref"])
    (content,) = response["content"].values()

    return content["schema"]


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]

    return node


def _check(
    document: dict[str, Any], method: str, path: str, status: int, body: Any
) -> None:
    schema = {**_answer_schema(document, method, path, status)}
    schema["components"] = document["components"]
    jsonschema.Draft202012Validator(schema).validate(body)


@pytest.fixture
def document(app: ipm.Application) -> dict[str, Any]:
    return app.openapi()


def test_route_answers_match_the_document(
    app: ipm.Application, call: Caller, key: str, document: dict[str, Any]
) -> None:
    """200, 400, 401, 403, 404, 409 and 428 answers each fit their description."""
    anonymous = Caller(app, None, ORG)
    foreign = Caller(app, key, OTHER)
    cases: list[tuple[str, Caller, dict[str, Any]]] = [
        ("/kpi/record", call, {"kpi": {**KPI, "value": 5}}),
        ("/kpi/record", call, {"kpi": {**KPI, "value": 6}}),
        ("/kpi/record", call, {"kpi": {**KPI, "value": 6}, "expected_revision": "x"}),
        ("/kpi/record", call, {"kpi": {**KPI, "value": "five"}}),
        ("/kpi/record", foreign, {"kpi": {**KPI, "value": 5}}),
        ("/kpi/query", anonymous, {"kpi_code": "NET_SALES"}),
        ("/webhook/get", call, {"webhook_id": "wh_missing"}),
        ("/cdc/list", call, {"limit": 2}),
    ]

    seen = set()
    for path, caller, body in cases:
        status, answer = caller(path, body)
        seen.add(status)

        _check(document, "POST", path, status, answer)

    assert seen == {200, 400, 401, 403, 404, 409, 428}


def test_link_answers_match_the_document(
    app: ipm.Application, call: Caller, document: dict[str, Any]
) -> None:
    """An upload's answer, a refused link and a download fit their description."""
    _, created = call("/bulk/import/create", {})
    target = urlsplit(created["data"]["upload_url"])
    path = f"{target.path}?{target.query}"
    line = {"service": "pos", "action": "sale.created", "payload": {}}

    uploaded = app.handle("PUT", path, {}, json.dumps(line).encode() + b"\n")
    refused = app.handle("PUT", path.replace("sig=", "sig=0"), {}, b"{}\n")
    described = app.handle("GET", "/openapi.json", {}, b"")

    _check(document, "PUT", "/bulk/upload/{job_id}", 200, uploaded.json())
    _check(document, "PUT", "/bulk/upload/{job_id}", 403, refused.json())
    assert refused.status == 403
    _check(document, "GET", "/openapi.json", 200, described.json())


@pytest.mark.parametrize(
    "path", ["/openapi.json", "/openapi.yaml", "/schemas/Job.json", "/stat"]
)
def test_a_whole_body_says_its_length_to_get_and_head_alike(path: str) -> None:
    """Regression: the document and the schemas went without Content-Length
    on GET (HEAD had it), so servers sent them chunked or close-delimited
    and a HEAD-vs-GET length check failed."""
    with ipm.open_memory() as app:
        got = app.handle("GET", path, {}, b"")
        head = app.handle("HEAD", path, {}, b"")

    length = [v for k, v in got.headers if k.lower() == "content-length"]
    assert length == [str(len(got.body))]
    assert [v for k, v in head.headers if k.lower() == "content-length"] == length
