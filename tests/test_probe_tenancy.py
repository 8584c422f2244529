"""Defects found by a tenancy probe: headers sent twice, paths with an
encoded ``?``, loose signed-link parameters, and refusals of ``ipm serve``
that were not in the envelope.

Each test sends what a client (or a gateway in front of ipm) can send and
expects the documented answer.
"""

from __future__ import annotations

import io
import json
import wsgiref.handlers
from collections.abc import Iterable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

import ipm
from tests.conftest import ORG, OTHER, raw_exchange, run_asgi


@pytest.fixture
def memory_app() -> Iterator[ipm.Application]:
    app = ipm.open_memory()
    yield app
    app.close()


def _post(path: bytes, headers: bytes, body: bytes = b"{}") -> bytes:
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + headers
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


# -- a header sent twice -------------------------------------------------------


@pytest.mark.parametrize("name", ["authorization", "x-orgcode", "host"])
def test_handle_refuses_a_security_header_sent_twice(
    memory_app: ipm.Application, name: str
) -> None:
    """Which of two keys or orgs a gateway checked cannot be known: a 400."""
    key = memory_app.create_api_key("ops@acme.example", [ORG, OTHER])
    headers = [
        ("authorization", f"Bearer {key}"),
        ("x-orgcode", ORG),
        ("host", "127.0.0.1"),
    ]
    first = dict(headers)[name]
    headers.append((name.title(), first))

    response = memory_app.handle("POST", "/cdc/list", headers, b"{}")

    answer = json.loads(response.body)
    assert response.status == 400
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["details"] == [
        {"pointer": f"/headers/{name}", "message": "must be sent once"}
    ]


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (f" {ORG}\t", 200),  # HTTP's own optional whitespace
        (f"\xa0{ORG}", 400),
        (f"{ORG}\x1c", 400),
        (f"\x85{ORG}", 400),
        (f"\u3000{ORG}", 400),
    ],
)
def test_only_http_whitespace_is_trimmed_from_x_orgcode(
    memory_app: ipm.Application, sent: str, status: int
) -> None:
    """Regression: str.strip() also dropped NBSP, NEL and the separator
    controls, which HTTP does not call whitespace (and a gateway comparing
    bytes would not), so "\\xa0ACME01" was served as ACME01."""
    key = memory_app.create_api_key("ops@acme.example", [ORG])
    headers = {"authorization": f"Bearer {key}", "x-orgcode": sent}

    response = memory_app.handle("POST", "/cdc/list", headers, b"{}")

    assert response.status == status
    if status == 400:
        answer = json.loads(response.body)
        assert answer["error"]["details"][0]["pointer"] == "/headers/x-orgcode"


def test_two_forwarded_proto_lines_read_as_one_list(
    memory_app: ipm.Application,
) -> None:
    """A second proxy's own X-Forwarded-Proto line is a list item, not a refusal:
    the first value (the client's scheme) shapes the links."""
    key = memory_app.create_api_key("ops@acme.example", [ORG])
    headers = [
        ("authorization", f"Bearer {key}"),
        ("x-orgcode", ORG),
        ("host", "shop.example"),
        ("x-forwarded-proto", "https"),
        ("X-Forwarded-Proto", "http"),
    ]

    response = memory_app.handle("POST", "/bulk/import/create", headers, b"{}")

    assert response.status == 200
    assert json.loads(response.body)["data"]["upload_url"].startswith(
        "https://shop.example/"
    )


def test_asgi_refuses_two_orgcodes(memory_app: ipm.Application) -> None:
    """The ASGI adapter hands every header pair over; the second org is refused."""
    key = memory_app.create_api_key("ops@acme.example", [ORG, OTHER])
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/cdc/list",
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {key}".encode()),
            (b"x-orgcode", OTHER.encode()),
            (b"x-orgcode", ORG.encode()),
            (b"content-length", b"2"),
        ],
    }

    sent = run_asgi(memory_app, scope)

    assert sent[0]["status"] == 400


def test_ipm_serve_refuses_two_authorization_headers(
    server: tuple[ipm.Application, int],
) -> None:
    """The standard library would join them with a comma; ipm refuses them."""
    served, port = server
    key = served.create_api_key("ops@acme.example", [ORG])
    headers = (
        f"Authorization: Bearer {key}\r\nAuthorization: Bearer {key}\r\n"
        f"x-orgcode: {ORG}\r\n"
    ).encode()

    status, answer = raw_exchange(port, _post(b"/cdc/list", headers))

    assert status == 400
    assert answer["error"]["details"][0]["pointer"] == "/headers/authorization"


@pytest.mark.parametrize(
    ("sent", "status"),
    [(b" ACME01\t", 200), (b"\xa0ACME01", 400), (b"ACME01\x0b", 400)],
)
def test_ipm_serve_trims_only_http_whitespace(
    server: tuple[ipm.Application, int], sent: bytes, status: int
) -> None:
    """Regression: wsgiref trims every header value with str.strip(), so
    under ipm serve x-orgcode "\\xa0ACME01" still reached ipm as ACME01."""
    served, port = server
    key = served.create_api_key("ops@acme.example", [ORG])
    headers = f"Authorization: Bearer {key}\r\n".encode() + b"x-orgcode: " + sent
    answer = raw_exchange(port, _post(b"/cdc/list", headers + b"\r\n"))

    assert answer[0] == status


def test_ipm_serve_takes_no_header_from_its_own_environment(
    server: tuple[ipm.Application, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: wsgiref starts each request from the process's
    environment, so a server started with HTTP_AUTHORIZATION (or
    HTTP_X_ORGCODE, HTTP_PROXY...) set served requests that sent none."""
    served, port = server
    key = served.create_api_key("ops@acme.example", [ORG])
    inherited = {"HTTP_AUTHORIZATION": f"Bearer {key}", "HTTP_X_ORGCODE": ORG}
    monkeypatch.setattr(wsgiref.handlers.BaseHandler, "os_environ", inherited)

    status, answer = raw_exchange(port, _post(b"/cdc/list", b""))

    assert status == 401
    assert answer["error"]["code"] == "unauthenticated"


def test_ipm_serve_ignores_a_header_name_with_an_underscore(
    server: tuple[ipm.Application, int],
) -> None:
    """x_orgcode is not x-orgcode: a proxy's rules cannot be passed that way."""
    served, port = server
    key = served.create_api_key("ops@acme.example", [ORG])
    headers = f"Authorization: Bearer {key}\r\nx_orgcode: {ORG}\r\n".encode()

    status, answer = raw_exchange(port, _post(b"/cdc/list", headers))

    assert status == 400
    assert answer["error"]["code"] == "orgcode_required"


# -- the standard library's own refusals -----------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /a b HTTP/1.1\r\n\r\n", 400, "invalid_request"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "payload_too_large"),
        (
            b"GET /stat HTTP/1.1\r\n" + b"X-A: b\r\n" * 120 + b"\r\n",
            431,
            "payload_too_large",
        ),
        (b"GET /stat HTTP/2.0\r\n\r\n", 505, "invalid_request"),
    ],
    ids=["bad-request-line", "long-target", "too-many-headers", "http-2"],
)
def test_ipm_serve_answers_its_own_refusals_in_the_envelope(
    server: tuple[ipm.Application, int], request_bytes: bytes, status: int, code: str
) -> None:
    """A request the HTTP server cannot take gets ipm's envelope, not HTML."""
    _, port = server
    answered, answer = raw_exchange(port, request_bytes)

    assert answered == status
    assert answer["success"] is False
    assert answer["error"]["code"] == code
    assert len(answer["error"]["details"]) == 1
    assert answer["stats"]["service"] == "ipm"


# -- an encoded ? or # in a path ---------------------------------------------------


def _wsgi(app: ipm.Application, path: str, query: str = "") -> int:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "CONTENT_LENGTH": "2",
        "wsgi.input": io.BytesIO(b"{}"),
    }
    answer: dict[str, int] = {}

    def start_response(status: str, headers: Iterable[tuple[str, str]]) -> None:
        answer["status"] = int(status.split()[0])

    b"".join(app.wsgi_app(environ, start_response))

    return answer["status"]


@pytest.mark.parametrize("path", ["/webhook/list?x", "/webhook/list#x"])
def test_a_decoded_question_mark_stays_in_the_path(
    memory_app: ipm.Application, path: str
) -> None:
    """/webhook/list%3Fx (decoded by the server) is no route, not /webhook/list."""
    assert _wsgi(memory_app, path) == 404


# -- signed links --------------------------------------------------------------------


@pytest.fixture
def download_link(memory_app: ipm.Application) -> tuple[str, dict[str, str]]:
    memory_app.publish(ORG, {"service": "sales", "action": "created"})
    job = memory_app.bulk.create_export(ORG)
    job = memory_app.bulk.run(ORG, job.job_id)
    url = memory_app.bulk.link("download", job, "http://localhost").url
    parts = urlsplit(url)

    return parts.path, dict(parse_qsl(parts.query))


def _get(app: ipm.Application, path: str, query: str) -> int:
    return app.handle("GET", f"{path}?{query}", {}, b"").status


def test_a_genuine_download_link_works(
    memory_app: ipm.Application, download_link: tuple[str, dict[str, str]]
) -> None:
    """The fixture's link itself is accepted (so the refusals below mean something)."""
    path, params = download_link

    assert _get(memory_app, path, urlencode(params)) == 200


@pytest.mark.parametrize("expires", [" {}", "+{}", "0{}", "{}\t"])
def test_a_link_s_expiry_must_be_written_as_signed(
    memory_app: ipm.Application,
    download_link: tuple[str, dict[str, str]],
    expires: str,
) -> None:
    """The same number in another spelling is not the signed text: 403."""
    path, params = download_link
    params["expires"] = expires.format(params["expires"])

    assert _get(memory_app, path, urlencode(params)) == 403


@pytest.mark.parametrize("digits", [21, 4_301, 10_000])
@pytest.mark.parametrize("kind", ["download", "report", "results", "upload"])
def test_an_expiry_of_thousands_of_digits_is_403_not_500(
    memory_app: ipm.Application,
    download_link: tuple[str, dict[str, str]],
    digits: int,
    kind: str,
) -> None:
    """int() refuses a number past 4,300 digits; the link is simply not genuine."""
    path, params = download_link
    params["expires"] = "9" * digits
    path = path.replace("/download/", f"/{kind}/")
    method = "PUT" if kind == "upload" else "GET"

    answer = memory_app.handle(method, f"{path}?{urlencode(params)}", {}, b"")

    assert answer.status == 403


def test_a_link_with_a_parameter_twice_is_refused(
    memory_app: ipm.Application, download_link: tuple[str, dict[str, str]]
) -> None:
    """sig=BAD&...&sig=<real> is not taken as the last one: 403."""
    path, params = download_link

    assert _get(memory_app, path, "sig=BAD&" + urlencode(params)) == 403


@pytest.mark.parametrize("suffix", ["/", "//"])
def test_a_link_s_path_must_be_exact(
    memory_app: ipm.Application,
    download_link: tuple[str, dict[str, str]],
    suffix: str,
) -> None:
    """A trailing slash names another job id: the link does not cover it."""
    path, params = download_link

    assert _get(memory_app, path + suffix, urlencode(params)) == 403


@pytest.mark.parametrize("field", ["org", "sig", "expires"])
def test_a_link_holding_a_lone_surrogate_is_refused(
    memory_app: ipm.Application,
    download_link: tuple[str, dict[str, str]],
    field: str,
) -> None:
    """A host passing text to handle() with a surrogate gets a 403, not a 500."""
    path, genuine = download_link
    params = {**genuine, field: "\ud800"}
    query = "&".join(f"{name}={value}" for name, value in params.items())

    assert _get(memory_app, path, query) == 403
    assert _get(memory_app, path + "\udc80", urlencode(genuine)) in (403, 404)


def test_a_link_route_s_call_name_never_holds_the_job(
    memory_app: ipm.Application, download_link: tuple[str, dict[str, str]]
) -> None:
    """stats.call is "POST /bulk/download" on a 405 too, not the job's path."""
    path, params = download_link

    response = memory_app.handle("POST", f"{path}?{urlencode(params)}", {}, b"")

    assert response.status == 405
    assert json.loads(response.body)["stats"]["call"] == "POST /bulk/download"


def test_handle_reads_header_names_and_values_given_as_bytes(
    memory_app: ipm.Application,
) -> None:
    """ASGI-style (bytes, bytes) pairs authenticate like text ones."""
    key = memory_app.create_api_key("ops@acme.example", [ORG])
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"x-orgcode", b"ACME01")]

    response = memory_app.handle("POST", "/cdc/list", headers, b"{}")

    assert response.status == 200


def test_an_empty_forwarded_proto_line_is_ignored(memory_app: ipm.Application) -> None:
    """An empty X-Forwarded-Proto line before "https" leaves https links."""
    key = memory_app.create_api_key("ops@acme.example", [ORG])
    headers = [
        ("authorization", f"Bearer {key}"),
        ("x-orgcode", ORG),
        ("host", "shop.example"),
        ("x-forwarded-proto", ""),
        ("x-forwarded-proto", "https"),
    ]

    response = memory_app.handle("POST", "/bulk/import/create", headers, b"{}")

    url = json.loads(response.body)["data"]["upload_url"]
    assert url.startswith("https://shop.example/")


def test_a_principal_refuses_one_string_for_its_orgs() -> None:
    """Regression: Principal("clerk", "ACME01") was taken, and the caller
    could act for every org whose code is part of that string ("ACME",
    "CME0", "1"). Any other collection of codes is kept as a frozenset."""
    from ipm.ports import Principal

    with pytest.raises(TypeError, match="collection of org codes"):
        Principal("clerk", "ACME01")  # a str is an Iterable[str] to mypy
    with pytest.raises(TypeError, match="collection of org codes"):
        Principal("clerk", [b"ACME01"])  # type: ignore[list-item]
    for odd in (None, [["ACME01"]]):
        with pytest.raises(TypeError, match="collection of org codes"):
            Principal("clerk", odd)  # type: ignore[arg-type]
    # "false" read from a host's configuration was true: every org.
    with pytest.raises(TypeError, match="all_orgs must be True or False"):
        Principal("host", ["ACME01"], all_orgs="false")  # type: ignore[arg-type]
    # A mapping would grant its keys, "BETA" too.
    with pytest.raises(TypeError, match="collection of org codes"):
        Principal("host", {"ACME01": True, "BETA": False})
    # An actor no audit may hold was the client's 400 at /audit/actor.
    for actor in (None, 123, "", "x" * 129, "ops\ud800", "a\nb", "\x00"):
        with pytest.raises(TypeError, match="actor must be a string"):
            Principal(actor, ["ACME01"])  # type: ignore[arg-type]

    listed = Principal("clerk", ["ACME01", "ACME01"])
    assert listed.orgs == frozenset({"ACME01"})
    assert Principal("clerk", iter(["A1"])).orgs == {"A1"}
    assert not listed.may_act_for("ACME")


def test_an_authenticator_returning_no_principal_is_named_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A host authenticator that returns something else than a Principal
    or None is the host's slip: a 500, whose log line says what it was."""

    class Sloppy:
        def authenticate(self, headers: object) -> object:
            return {"actor": "clerk", "orgs": [ORG]}

    with ipm.open_memory(authenticator=Sloppy()) as app:  # type: ignore[arg-type]
        answer = app.handle("POST", "/cdc/list", {"x-orgcode": ORG}, b"{}")

    assert answer.status == 500
    assert "must return a Principal or None, not dict" in caplog.text


def test_an_authenticator_can_answer_503_when_it_cannot_tell() -> None:
    """As library.md says: StorageUnavailable from authenticate (an
    identity provider that is down) answers 503, for the client to retry."""
    from ipm.domain.errors import StorageUnavailable

    class Down:
        def authenticate(self, headers: object) -> None:
            raise StorageUnavailable("the identity provider is down")

    with ipm.open_memory(authenticator=Down()) as app:
        answer = app.handle("POST", "/cdc/list", {"x-orgcode": ORG}, b"{}")

    assert answer.status == 503
    assert answer.json()["error"]["code"] == "storage_unavailable"


def test_a_host_authenticator_s_401_does_not_ask_for_an_api_key() -> None:
    """A host that authenticates its own way (a session, a JWT) answers 401
    without telling its clients to send an ipm API key."""

    class Nobody:
        def authenticate(self, headers: object) -> None:
            return None

    with ipm.open_memory(authenticator=Nobody()) as app:
        answer = app.handle("POST", "/cdc/list", {"x-orgcode": ORG}, b"{}")
    with ipm.open_memory() as app:
        built_in = app.handle("POST", "/cdc/list", {"x-orgcode": ORG}, b"{}")

    assert answer.status == built_in.status == 401
    assert answer.json()["error"]["message"] == (
        "the request's credentials were not accepted"
    )
    assert "api key" in built_in.json()["error"]["message"]
