"""ipm mounted under a path prefix and behind TLS, through WSGI and ASGI.

A host's server often puts ipm below a prefix (``/ipm``) and terminates
TLS in front of it. The links ipm hands out (upload, download, schema)
must then carry the scheme, host and prefix the caller used, and lead
back through the mount; ``public_base_url``, when set, wins over all of it.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.util import setup_testing_defaults

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ipm
from tests.conftest import ORG

Environ = dict[str, Any]
WsgiApp = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]
LINES = b'{"event_id": "e1", "service": "pos", "action": "sale.created", ' + (
    b'"occurred_at": "2026-01-01T00:00:00Z", "payload": {}}\n'
)


@pytest.fixture
def app() -> Iterator[ipm.Application]:
    with ipm.open_memory() as app:
        yield app


@pytest.fixture
def auth(app: ipm.Application) -> dict[str, str]:
    key = app.create_api_key("ops@acme.example", [ORG])

    return {"authorization": f"Bearer {key}", "x-orgcode": ORG}


# -- WSGI --------------------------------------------------------------------


def mounted(prefix: str, inner: WsgiApp) -> WsgiApp:
    """A tiny dispatcher, as a host's framework would be: ``inner`` at ``prefix``."""

    def dispatch(environ: Environ, start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path != prefix and not path.startswith(prefix + "/"):
            start_response("404 Not Found", [("content-type", "text/plain")])
            return [b"not mounted here"]
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
        environ["PATH_INFO"] = path[len(prefix) :]

        return inner(environ, start_response)

    return dispatch


def environ(
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    scheme: str = "https",
    host: str = "shop.example",
) -> Environ:
    """A request as a WSGI server would hand it over, before any mount."""
    parts = urlsplit(path)
    env: Environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": unquote(parts.path, "latin-1"),
        "QUERY_STRING": parts.query,
        "SCRIPT_NAME": "",
        "HTTP_HOST": host,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(body),
    }
    for name, value in (headers or {}).items():
        env[f"HTTP_{name.upper().replace('-', '_')}"] = value
    setup_testing_defaults(env)

    return env


def wsgi(inner: WsgiApp, env: Environ) -> tuple[int, dict[str, Any]]:
    """Run one WSGI request; the status and the parsed JSON answer."""
    started: list[str] = []
    chunks = inner(env, lambda status, headers: started.append(status))
    body = b"".join(chunks)

    return int(started[0].split()[0]), json.loads(body) if body[:1] == b"{" else {}


def _create(inner: WsgiApp, auth: dict[str, str], **kwargs: Any) -> dict[str, Any]:
    env = environ("POST", "/ipm/bulk/import/create", headers=auth, body=b"{}", **kwargs)
    status, answer = wsgi(inner, env)
    assert status == 200, answer

    return dict(answer["data"])


def test_wsgi_links_carry_scheme_host_and_prefix(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """Mounted at /ipm over https, the upload link is https://host/ipm/..."""
    shop = mounted("/ipm", app.wsgi_app)

    data = _create(shop, auth, host="shop.example:8443")

    assert data["upload_url"].startswith("https://shop.example:8443/ipm/bulk/upload/")


def test_wsgi_forwarded_proto_wins_over_the_server_scheme(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """Behind a TLS proxy, X-Forwarded-Proto says https to a plain-http server."""
    shop = mounted("/ipm", app.wsgi_app)
    proxied = {**auth, "x-forwarded-proto": "https"}

    data = _create(shop, proxied, scheme="http")

    assert data["upload_url"].startswith("https://shop.example/ipm/")


def test_wsgi_an_invalid_forwarded_proto_leaves_the_server_scheme(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """An X-Forwarded-Proto that is neither http nor https is not used."""
    shop = mounted("/ipm", app.wsgi_app)

    data = _create(shop, {**auth, "x-forwarded-proto": "gopher"}, scheme="https")

    assert data["upload_url"].startswith("https://shop.example/ipm/")


@pytest.mark.parametrize("given", ["HTTPS", "https, http", " https ,http"])
def test_wsgi_forwarded_proto_is_read_as_proxies_write_it(
    app: ipm.Application, auth: dict[str, str], given: str
) -> None:
    """Any case, and the first of a chain of proxies, is the client's scheme."""
    shop = mounted("/ipm", app.wsgi_app)

    data = _create(shop, {**auth, "x-forwarded-proto": given}, scheme="http")

    assert data["upload_url"].startswith("https://shop.example/ipm/")


def test_wsgi_upload_link_works_through_the_mount(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """PUT on the upload link, sent through the mount, uploads the job."""
    shop = mounted("/ipm", app.wsgi_app)
    url = urlsplit(_create(shop, auth)["upload_url"])

    status, answer = wsgi(shop, environ("PUT", f"{url.path}?{url.query}", body=LINES))

    assert status == 200, answer
    assert answer["data"]["job"]["status"] == "uploaded"


def test_wsgi_route_under_the_prefix_answers(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """POST /ipm/cdc/list reaches /cdc/list and names it so in stats.call."""
    shop = mounted("/ipm", app.wsgi_app)
    env = environ("POST", "/ipm/cdc/list", headers=auth, body=b"{}")

    status, answer = wsgi(shop, env)

    assert status == 200, answer
    assert answer["stats"]["call"] == "POST /cdc/list"


@pytest.mark.parametrize("raw", ["RAW_URI", "REQUEST_URI"])
def test_wsgi_a_path_sent_with_an_encoded_slash_reaches_no_route(
    app: ipm.Application, auth: dict[str, str], raw: str
) -> None:
    """gunicorn (RAW_URI) and uWSGI (REQUEST_URI) pass the target as sent:
    /ipm/cdc%2Flist is routed so (a 404), not as the /cdc/list it decodes to.
    A plain target passed the same way still answers."""
    shop = mounted("/ipm", app.wsgi_app)
    encoded = environ("POST", "/ipm/cdc%2Flist", headers=auth, body=b"{}")
    encoded[raw] = "/ipm/cdc%2Flist?x=1"
    plain = environ("POST", "/ipm/cdc/list", headers=auth, body=b"{}")
    plain[raw] = "/ipm/cdc/list"

    garbled = environ("GET", "/stat")
    garbled[raw] = "http://[::1/stat"  # regression: urlsplit raised, a 500

    refused = wsgi(shop, encoded)

    assert refused[0] == 404
    # The mount is left out of its name, as it is of every other route's
    # (regression: "POST /ipm/cdc%2Flist").
    assert refused[1]["stats"]["call"] == "POST /cdc%2Flist"
    assert wsgi(shop, plain)[0] == 200
    assert wsgi(app.wsgi_app, garbled)[0] == 404


def test_wsgi_malformed_host_is_still_refused_under_a_mount(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """A Host that is not host[:port] is a 400, mounted or not."""
    shop = mounted("/ipm", app.wsgi_app)
    env = environ(
        "POST", "/ipm/bulk/import/create", headers=auth, body=b"{}", host="x@evil"
    )

    status, answer = wsgi(shop, env)

    assert status == 400
    assert answer["error"]["details"][0]["pointer"] == "/headers/host"


def test_wsgi_prefix_is_percent_encoded_in_links(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """A prefix with a space and UTF-8 (Latin-1 in the environ) is %-encoded."""
    script_name = "/sh op/é".encode().decode("latin-1")
    shop = mounted(script_name, app.wsgi_app)
    env = environ("POST", "/bulk/import/create", headers=auth, body=b"{}")
    env["PATH_INFO"] = script_name + env["PATH_INFO"]

    status, answer = wsgi(shop, env)

    assert status == 200, answer
    url = answer["data"]["upload_url"]
    assert url.startswith("https://shop.example/sh%20op/%C3%A9/bulk/upload/")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Request lines would only clutter the test output."""


@pytest.fixture
def served(app: ipm.Application) -> Iterator[tuple[str, int]]:
    """ipm at /ipm on a real wsgiref server on 127.0.0.1; (host, port)."""
    server = make_server(
        "127.0.0.1",
        0,
        mounted("/ipm", app.wsgi_app),
        server_class=WSGIServer,
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    yield "127.0.0.1", server.server_port

    server.shutdown()
    thread.join(5)
    server.server_close()


def _send(
    where: tuple[str, int],
    method: str,
    target: str,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection(*where, timeout=10)
    try:
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()

    return response.status, json.loads(raw) if raw[:1] == b"{" else {}


def test_real_wsgi_server_mounted_at_a_prefix(
    app: ipm.Application, auth: dict[str, str], served: tuple[str, int]
) -> None:
    """Over real HTTP: create under /ipm, follow the upload link, see it uploaded."""
    host, port = served

    status, created = _send(served, "POST", "/ipm/bulk/import/create", b"{}", auth)
    url = urlsplit(created["data"]["upload_url"])
    put, uploaded = _send(served, "PUT", f"{url.path}?{url.query}", LINES)
    outside, _ = _send(served, "POST", "/cdc/list", b"{}", auth)

    assert status == 200
    assert (url.scheme, url.netloc) == ("http", f"{host}:{port}")
    assert url.path.startswith("/ipm/bulk/upload/")
    assert put == 200, uploaded
    assert uploaded["data"]["job"]["status"] == "uploaded"
    assert outside == 404


# -- ASGI --------------------------------------------------------------------


def asgi(
    app: ipm.Application,
    method: str,
    path: str,
    *,
    root_path: str = "/ipm",
    scheme: str = "https",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, Any]]:
    """Drive the ASGI app once; ``path`` is %-encoded, as on the wire."""
    sent: list[dict[str, Any]] = []
    parts = urlsplit(path)
    sent_headers = {"host": "shop.example", **(headers or {})}
    if body:
        sent_headers["content-length"] = str(len(body))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "scheme": scheme,
        "root_path": root_path,
        # What uvicorn passes of an absolute-form target too: all of it.
        "path": unquote(path.partition("?")[0] if parts.scheme else parts.path),
        "raw_path": (path.partition("?")[0] if parts.scheme else parts.path).encode(),
        "query_string": parts.query.encode(),
        "headers": [(k.encode(), v.encode()) for k, v in sent_headers.items()],
    }
    asyncio.run(app.asgi_app(scope, receive, send))
    raw = b"".join(m.get("body", b"") for m in sent[1:])

    return sent[0]["status"], json.loads(raw) if raw[:1] == b"{" else {}


def test_asgi_route_under_root_path_answers(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """path=/ipm/cdc/list with root_path=/ipm is /cdc/list (regression: 404)."""
    status, answer = asgi(app, "POST", "/ipm/cdc/list", headers=auth, body=b"{}")

    assert status == 200, answer
    assert answer["stats"]["call"] == "POST /cdc/list"


def test_asgi_absolute_form_target_is_served_as_its_path(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """uvicorn passes an absolute-form target (GET http://host/stat) whole,
    in path and raw_path (regression: 404 "no route http://...")."""
    status, answer = asgi(
        app,
        "POST",
        "http://shop.example/cdc/list",
        root_path="",
        headers=auth,
        body=b"{}",
    )

    assert status == 200, answer
    assert answer["stats"]["call"] == "POST /cdc/list"


@pytest.mark.parametrize("escaped", ["%3Fx", "%23x", "%3F", "%23"])
def test_asgi_absolute_form_keeps_an_escaped_question_mark_in_the_path(
    app: ipm.Application, auth: dict[str, str], escaped: str
) -> None:
    """Regression: POST http://host/webhook/list%3Fx was served as
    /webhook/list under uvicorn (its decoded path was parsed as a URL, the
    ? starting a query), though a proxy saw another path; as under ipm
    serve and in origin form, it is no route."""
    status, answer = asgi(
        app,
        "POST",
        f"http://shop.example/webhook/list{escaped}",
        root_path="",
        headers=auth,
        body=b"{}",
    )

    assert status == 404, answer


def test_asgi_absolute_form_authority_stands_for_the_host_header(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """The links of an absolute-form request are built from its authority
    (RFC 9112, 3.2.2), not from the Host header, as under ipm serve; user
    info in it is no route."""
    status, answer = asgi(
        app,
        "POST",
        "http://other.example:99/event/catalog/list",
        root_path="",
        headers=auth,
        body=b"{}",
    )
    with_user, _ = asgi(
        app,
        "POST",
        "http://u:p@shop.example/cdc/list",
        root_path="",
        headers=auth,
        body=b"{}",
    )

    assert status == 200, answer
    urls = [i["schema_url"] for i in answer["data"]["items"] if i["schema_url"]]
    assert urls and all(u.startswith("https://other.example:99/") for u in urls)
    assert with_user == 404


def test_asgi_path_without_root_path_is_taken_as_is(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """A server that leaves root_path out of path is served as well."""
    status, answer = asgi(app, "POST", "/cdc/list", headers=auth, body=b"{}")

    assert status == 200, answer


def test_asgi_root_path_is_cut_only_at_a_segment(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """/ipmx/cdc/list is not below /ipm, so it is no route."""
    status, answer = asgi(app, "POST", "/ipmx/cdc/list", headers=auth, body=b"{}")

    assert status == 404
    assert answer["error"]["code"] == "route_not_found"


def test_asgi_links_carry_scheme_host_and_root_path(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """The upload link is https://host/ipm/... and PUT through it uploads."""
    _, created = asgi(app, "POST", "/ipm/bulk/import/create", headers=auth, body=b"{}")
    url = urlsplit(created["data"]["upload_url"])

    status, answer = asgi(app, "PUT", f"{url.path}?{url.query}", body=LINES)

    assert (url.scheme, url.netloc) == ("https", "shop.example")
    assert url.path.startswith("/ipm/bulk/upload/")
    assert status == 200, answer
    assert answer["data"]["job"]["status"] == "uploaded"


def test_asgi_schema_url_is_served_through_the_mount(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """A catalog schema_url under the root path serves its schema."""
    app.register_event_type("pos", "sale.created", {"type": "object"})
    _, listed = asgi(app, "POST", "/ipm/event/catalog/list", headers=auth, body=b"{}")
    url = urlsplit(listed["data"]["items"][0]["schema_url"])

    status, schema = asgi(app, "GET", url.path)

    assert url.path.startswith("/ipm/schemas/")
    assert status == 200
    assert schema["type"] == "object"


_SEGMENT = st.text(
    st.characters(codec="utf-8", exclude_characters="/", exclude_categories=["Cs"]),
    min_size=1,
    max_size=8,
).filter(lambda s: s not in (".", ".."))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(segments=st.lists(_SEGMENT, min_size=1, max_size=3))
def test_asgi_upload_link_leads_back_through_any_root_path(
    app: ipm.Application, auth: dict[str, str], segments: list[str]
) -> None:
    """Whatever the root path, the link's decoded path is below it and uploads."""
    root_path = "/" + "/".join(segments)
    _, created = asgi(
        app,
        "POST",
        f"{quote(root_path)}/bulk/import/create",
        root_path=root_path,
        headers=auth,
        body=b"{}",
    )
    url = urlsplit(created["data"]["upload_url"])

    status, answer = asgi(
        app, "PUT", f"{url.path}?{url.query}", root_path=root_path, body=LINES
    )

    assert url.path.isascii() and url.path.isprintable()
    assert unquote(url.path).startswith(root_path + "/bulk/upload/")
    assert status == 200, answer


# -- public_base_url -----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "not a url",
        "shop.example/ipm",
        "//shop.example/ipm",
        "ftp://shop.example",
        "https://",
        "https:shop.example",
        "https://shop.example/ipm?x=1",
        "https://shop.example/ipm#top",
        "https://shop.example/?",
        "https://user:pw@shop.example",
        "https://shop.example:0",
        "https://shop.example:99999",
        "https://[::1",
        "https://sh op.example",
        "https://shop.example/a b",
        "https://shop.example/a\nb",
        "https://münchen.example",
        "https://shop.example/ipm/..",
        "https://shop.example/../x",
        "https://shop.example/./ipm",
        "https://shop.example/a<b>",
        "https://shop.example/a\\b",
        "https://shop.example/%",
        "https://shop.example/a%zz",
        "https://shop.example/{x}",
        # Links on these would route nowhere: ipm routes paths as sent.
        "https://shop.example//ipm",
        "https://shop.example/a//b",
        "https://shop.example/a%2Fb",
        "https://shop.example/%2e%2e/ipm",
        "https://shop.example/a/%2E/ipm",
    ],
)
def test_public_base_url_refuses_what_is_not_a_base(value: str) -> None:
    """A value that cannot prefix a link is refused with a ValueError at once."""
    with pytest.raises(ValueError, match="public_base_url must be an absolute"):
        ipm.open_memory(public_base_url=value)


@pytest.mark.parametrize("value", [5, b"https://shop.example", ["https://x"]])
def test_public_base_url_refuses_what_is_not_text(value: object) -> None:
    """A public_base_url that is not a str is a TypeError naming the type."""
    with pytest.raises(TypeError, match="public_base_url must be a str"):
        ipm.open_memory(public_base_url=value)


def test_public_base_url_is_refused_before_the_file_opens(tmp_path: Path) -> None:
    """open_sqlite refuses a bad public_base_url without creating the file."""
    path = tmp_path / "ipm.sqlite"

    with pytest.raises(ValueError, match="public_base_url"):
        ipm.open_sqlite(path, public_base_url="not a url")

    assert not path.exists()


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("https://shop.example/ipm/", "https://shop.example/ipm"),
        ("HTTPS://Shop.Example:8443", "https://Shop.Example:8443"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
        ("https://shop.example/", "https://shop.example"),
        ("https://shop.example/a%20b/ipm", "https://shop.example/a%20b/ipm"),
    ],
)
def test_public_base_url_is_normalised(value: str, kept: str) -> None:
    """The scheme is lower-cased and a trailing slash dropped."""
    with ipm.open_memory(public_base_url=value) as app:
        assert app.public_base_url == kept


def test_public_base_url_wins_over_the_mount() -> None:
    """Set, public_base_url is the links' base whatever the server says."""
    with ipm.open_memory(public_base_url="https://api.shop.example/v/") as app:
        key = app.create_api_key("ops@acme.example", [ORG])
        headers = {
            "authorization": f"Bearer {key}",
            "x-orgcode": ORG,
            "x-forwarded-proto": "http",
        }
        shop = mounted("/ipm", app.wsgi_app)

        data = _create(shop, headers, scheme="http", host="inner:8000")

    assert data["upload_url"].startswith("https://api.shop.example/v/bulk/upload/")


def test_direct_handle_keeps_its_positional_signature(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """handle(method, path, headers, body) still makes http://localhost links."""
    response = app.handle("POST", "/bulk/import/create", auth, b"{}")

    assert response.json()["data"]["upload_url"].startswith(
        "http://localhost/bulk/upload/"
    )


def test_direct_handle_takes_scheme_and_prefix(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """An embedding host may say how the caller reached it, as adapters do."""
    headers = {**auth, "host": "shop.example"}

    response = app.handle(
        "POST", "/bulk/import/create", headers, b"{}", scheme="https", prefix="/ipm/"
    )

    assert response.json()["data"]["upload_url"].startswith(
        "https://shop.example/ipm/bulk/upload/"
    )


def test_openapi_servers_lead_through_the_mount(app: ipm.Application) -> None:
    """A client generated from the document calls the routes where they are."""
    unmounted = app.handle("GET", "/openapi.json", {}, b"").json()
    mounted_here = app.handle(
        "GET", "/openapi.json", {}, b"", prefix="/shop ipm/"
    ).json()
    _, through_asgi = asgi(app, "GET", "/ipm/openapi.json")

    assert "servers" not in unmounted
    assert mounted_here["servers"] == [{"url": "/shop%20ipm"}]
    assert through_asgi["servers"] == [{"url": "/ipm"}]


def test_openapi_servers_are_the_public_base_url_when_set() -> None:
    with ipm.open_memory(public_base_url="https://api.shop.example/v/") as app:
        document = app.handle("GET", "/openapi.json", {}, b"", prefix="/ipm").json()

    assert document["servers"] == [{"url": "https://api.shop.example/v"}]


def test_direct_handle_decodes_no_escape_again(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """handle() takes the path as servers decode it; decoding it again would
    serve /%256Bpi/query (sent) as /kpi/query past a proxy's path rule."""
    answer = app.handle("POST", "/%6Bpi/query", auth, b"{}")

    assert answer.status == 404
    assert answer.json()["error"]["code"] == "route_not_found"


def test_wsgi_a_declared_body_with_no_input_is_not_read_as_empty(
    app: ipm.Application, auth: dict[str, str]
) -> None:
    """An environ without wsgi.input but with a Content-Length of 2 was
    answered as if {} had no body; it is a body cut short, as any other."""
    env = environ("POST", "/cdc/list", headers=auth, body=b"{}")
    del env["wsgi.input"]

    status, answer = wsgi(app.wsgi_app, env)
    del env["CONTENT_LENGTH"]
    env["HTTP_TRANSFER_ENCODING"] = "chunked"
    chunked, _ = wsgi(app.wsgi_app, env)

    assert status == 400
    assert "ended after 0 of 2 bytes" in answer["error"]["message"]
    assert chunked == 400


def test_handle_refuses_a_method_that_is_not_text(app: ipm.Application) -> None:
    """b"POST" answered 405 where a bytes path is a TypeError: the same slip."""
    with pytest.raises(TypeError, match="method must be text"):
        app.handle(b"POST", "/cdc/list", {}, b"{}")  # type: ignore[arg-type]
