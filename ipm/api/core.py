"""``handle()``: the whole wire contract, transport-neutral.

Theory of operation. A request goes through fixed gates, each of which
may answer with an error envelope: route and method; body size;
authentication; ``x-orgcode`` and the caller's binding to it (404 for a
read, 403 for a write, so an outsider learns nothing about other orgs);
JSON parsing; the route's request schema; ``request_context.orgcode``
against the header. Only then does a handler run. Every answer, success
or error, is the same envelope; an unexpected exception is logged once
with the request id and answered as a bare 500.

Links in answers are absolute. Their base is ``public_base_url`` when the
host configured one; otherwise it is put together from what the request
and the server say: the scheme (``X-Forwarded-Proto``, else the one the
adapter was reached by), the ``Host`` header, and the path prefix the
adapter was mounted at (``SCRIPT_NAME``, ASGI's ``root_path``). Adapters
pass the last two to ``handle()`` as ``scheme=`` and ``prefix=``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit

from ipm import schemas
from ipm.adapters.faults import unavailable, unreachable
from ipm.api.call import Call, Handler
from ipm.api.envelope import Response, envelope, json_response
from ipm.api.routes import ROUTES, Route
from ipm.api.wsgi import StreamedBody
from ipm.domain.errors import (
    Forbidden,
    Internal,
    InvalidRequest,
    IpmError,
    MethodNotAllowed,
    NotFound,
    NotImplementedYet,
    OrgcodeMismatch,
    OrgcodeRequired,
    PayloadTooLarge,
    Problem,
    RangeNotSatisfiable,
    RouteNotFound,
    StorageBusy,
    StorageClosed,
    StorageUnavailable,
    Unauthenticated,
    type_name,
)
from ipm.domain.events import ORGCODE_PATTERN, Audit, SourceRef
from ipm.domain.ndjson import LineError, parse_record
from ipm.ports import Principal, close_chunks
from ipm.usecases.telling import Sometimes, held_back

if TYPE_CHECKING:
    from ipm.app import Application

log = logging.getLogger(__name__)

Headers = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]
RawHandler = Callable[
    ["Application", str, str, dict[str, str], bytes, str, str], Response
]
"""Handles a non-JSON route (uploads, downloads, schema documents): given the
application, method, path, headers, body, query string and the mount prefix
as links carry it (percent-encoded, no trailing ``/``; empty unmounted)."""

MAX_DEPTH = 64


class Api:
    def __init__(self, app: Application) -> None:
        self._app = app
        self._routes: dict[str, dict[str, Route]] = {}
        for route in ROUTES:
            self._routes.setdefault(route.path, {})[route.method] = route
        self._handlers: dict[str, Handler] = {}
        self._raw: list[tuple[str, str, RawHandler]] = []
        self._machine_faults = Sometimes(60.0)

    @property
    def routes(self) -> tuple[Route, ...]:
        return ROUTES

    def attach(self, call: str, handler: Handler) -> None:
        """Give a route (``"POST /kpi/record"``) its handler."""
        method, path = call.split(" ", 1)
        if method not in self._routes.get(path, {}):
            raise KeyError(call)
        self._handlers[call] = handler

    def attach_raw(self, method: str, prefix: str, handler: RawHandler) -> None:
        """Serve every ``method`` request under ``prefix`` with ``handler``."""
        self._raw.append((method, prefix, handler))

    def handle(
        self,
        method: str,
        path: str,
        headers: Headers | None,
        body: bytes | str | None,
        *,
        scheme: str = "http",
        prefix: str = "",
        stream: bool = False,
    ) -> Response:
        """Answer one request; ``path`` is relative to the mount ``prefix``.

        ``scheme`` and ``prefix`` say how the caller reached this server
        (``https``, ``/ipm``): they go into the absolute links of answers.
        The body is whole bytes; with ``stream`` a file (a download, an
        error report, results) comes as a :class:`StreamedBody` instead,
        read as it is sent, as the HTTP adapters ask for it.
        """
        if not isinstance(scheme, str) or not isinstance(prefix, str):
            raise TypeError("scheme and prefix must be text, such as 'https', '/ipm'")
        if not isinstance(path, str):
            # The host's slip, as a body of the wrong type is: said at once.
            raise TypeError(
                f"path must be text, such as '/cdc/list', not {type(path).__name__}"
            )
        if not isinstance(method, str):
            # b"POST" is the same slip (it answered 405, as a method no
            # route has would).
            raise TypeError(
                f"method must be text, such as 'POST', not {type(method).__name__}"
            )
        request_id = self._app.ids("req")
        # Bytes are the contract; text (as UTF-8) and "no body" are forgiven,
        # so a caller's slip is answered in the envelope, never a 500.
        if body is None:
            body = b""
        elif isinstance(body, str):
            body = body.encode("utf-8", "surrogatepass")
        elif isinstance(body, bytearray | memoryview):
            body = bytes(body)
        elif not isinstance(body, bytes):
            # A dict or a list is the host's slip, not a client's request:
            # say so at once rather than answer it as ipm's own 500.
            raise TypeError(
                f"body must be bytes (or text, or None), not {type(body).__name__}"
            )
        # Methods are case-sensitive (RFC 9110, 9.1): "post" is not POST, and
        # a proxy's rule on POST does not see it, so it is no route's method.
        method = _method_word(method)
        # HEAD is GET without the body (RFC 9110): same checks, same headers.
        head = method == "HEAD"
        if head:
            method = "GET"
        headers, repeated = _lower(headers or {})
        if head:
            # Ranges are for GET only (RFC 9110, 14.2): a HEAD answer says
            # what the whole file's GET would.
            headers.pop("range", None)
        # A request target is a path and a query, never a URL: urlsplit would
        # read "//evil.example/stat" as a host and serve it as /stat.
        path, _, query = path.partition("?")
        path = _plain_path(path)
        call = self._call(method, path)  # both already checked
        try:
            if repeated:
                raise repeated_header(repeated)
            _check_host(headers)
            raw = self._raw_handler(method, path)
            if raw is not None:
                # One call name per link route, whatever the job in its path.
                raw_handler, call = raw
                response = raw_handler(
                    self._app, method, path, headers, body, query, _link_path(prefix)
                )
                if head:
                    response = _measured(response)
                elif stream:
                    response = _held_to_length(response, path)
                else:
                    response = _whole(response)
            else:
                route, handler = self._route(method, path)
                call = route.call
                base = _Base(scheme, prefix)
                data = self._run(route, handler, headers, body, request_id, base)
                response = self._answer(200, call, data=data)
        except IpmError as error:
            response = self._refuse(call, error, request_id)
        except Exception as exc:
            fault = unavailable(exc) or unreachable(exc)
            if getattr(self._app.storage, "closed", False):
                # Closed while this request ran (a shutdown): not a bug here.
                closing = StorageClosed("the application was closed")
                response = self._refuse(call, closing, request_id)
            elif fault is not None:
                # A full disk or the like under a port the host plugged in
                # (its blob store, its keyring): a 503 as under ipm's own.
                log.warning("%s: %s (%s)", call, fault.message, type_name(exc))
                response = self._refuse(call, fault, request_id)
            else:
                log.exception(
                    "unexpected error answering %s (request %s)", call, request_id
                )
                response = self._answer(500, call, error=Internal("internal error"))

        extra: tuple[tuple[str, str], ...] = (("x-request-id", request_id),)
        streamed = isinstance(response.body, StreamedBody)
        if not streamed and response.header("content-length") is None:
            # Every whole body says its length (a server would otherwise
            # send it chunked or close-delimited); a HEAD answer the length
            # GET would send (RFC 9110), not that of no body.
            extra += (("content-length", str(len(response.body))),)

        if head and streamed:
            # Its bytes are not sent: the stream (an open file) ends here.
            _close_stream(response.body)

        return Response(
            response.status,
            (*response.headers, *extra),
            b"" if head else response.body,
        )

    def route_error(self, method: str, path: str) -> IpmError | None:
        """Why ``method path`` reaches no route (404 or 405), or None.

        For adapters that refuse a request before ``handle`` (a body they
        cannot read): a request that would not be routed anyway gets the
        routing answer, as ``handle`` gives it, not the framing one.
        """
        method = _method_word(method)
        method = "GET" if method == "HEAD" else method
        path = _plain_path(path.partition("?")[0])
        try:
            if self._raw_handler(method, path) is None:
                self._route(method, path)
        except (RouteNotFound, MethodNotAllowed) as error:
            return error

        return None

    def _route(self, method: str, path: str) -> tuple[Route, Handler | None]:
        by_method = self._routes.get(path)
        if by_method is None:
            raise RouteNotFound(f"no route {path}")
        route = by_method.get(method)
        if route is None:
            raise MethodNotAllowed(
                f"{path} does not accept this method", _allowed(by_method)
            )

        return route, self._handlers.get(route.call)

    def _link_call(self, method: str, path: str) -> str | None:
        """A link route's call name (``PUT /bulk/upload``), whatever the job
        in its path and whether or not the method is the route's."""
        for _, prefix, _ in self._raw:
            if path.startswith(prefix):
                return f"{method} {prefix.rstrip('/')}"

        return None

    def _raw_handler(self, method: str, path: str) -> tuple[RawHandler, str] | None:
        """The handler of a link route and its call name, such as ``PUT /x``."""
        allowed = set()
        for raw_method, prefix, handler in self._raw:
            if path.startswith(prefix):
                if method == raw_method:
                    return handler, f"{method} {prefix.rstrip('/')}"
                allowed.add(raw_method)
        if allowed and path not in self._routes:
            raise MethodNotAllowed(
                f"{path} does not accept this method", _allowed(allowed)
            )

        return None

    def _run(
        self,
        route: Route,
        handler: Handler | None,
        headers: dict[str, str],
        body: bytes,
        request_id: str,
        base: _Base,
    ) -> dict[str, Any]:
        app = self._app
        if len(body) > app.max_body_bytes:
            raise PayloadTooLarge(
                f"request body is larger than {app.max_body_bytes} bytes"
            )

        principal = None
        orgcode = ""
        if route.tenant:
            principal = app.authenticator.authenticate(headers)
            if principal is None:
                keys = app.authenticator is app.api_keys
                raise Unauthenticated(_unauthenticated_message(headers, keys))
            if not isinstance(principal, Principal):
                # The host's slip (a 500), said plainly in its log.
                raise TypeError(
                    "the authenticator must return a Principal or None, not "
                    f"{type_name(principal)}"
                )
            orgcode = _orgcode(headers)
            _check_binding(principal, orgcode, route)

        payload = _parse_json(body) if route.request_schema else {}
        if route.request_schema:
            schemas.check_parsed(route.request_schema, payload)
        _check_context(payload, orgcode)

        if handler is None:
            raise NotImplementedYet(f"{route.call} is not built yet")

        call = Call(
            app=app,
            route=route,
            request_id=request_id,
            base_url=app.public_base_url or _base_url(headers, base),
            principal=principal,
            orgcode=orgcode,
            audit=_audit(payload, principal),
        )

        return handler(call, payload)

    def _refuse(self, call: str, error: IpmError, request_id: str) -> Response:
        if isinstance(error, StorageUnavailable):
            # The operator must hear of a full disk, but not once a request.
            held = self._machine_faults.due()
            if held is not None:
                log.error(
                    "%s refused with 503: %s%s", call, error.message, held_back(held)
                )
        try:
            return self._answer(
                error.status, call, error=error, extra=_error_headers(error)
            )
        except Exception:
            # An error that cannot be written (a bug: details must be
            # encodable) still gets an envelope, never an exception.
            log.exception("could not answer %s (request %s)", call, request_id)
            return self._answer(500, call, error=Internal("internal error"))

    def call_name(self, method: str, path: str) -> str:
        """``stats.call`` of a request: a link route's name whatever the job
        in its path (``PUT /bulk/upload``), else the method and path. A HEAD
        is named as its GET, whose answer (and length) it has."""
        word = _method_word(method)
        word = "GET" if word == "HEAD" else word

        return self._call(word, _plain_path(path.partition("?")[0]))

    def _call(self, method: str, path: str) -> str:
        return self._link_call(method, path) or f"{method} {path}"

    def refusal(self, method: str, path: str, error: IpmError) -> Response:
        """The error envelope for ``error``, for adapters answering ``method
        path`` early: a HEAD answer's headers alone (its length included)."""
        request_id = self._app.ids("req")
        response = self._refuse(self.call_name(method, path), error, request_id)

        return Response(
            response.status,
            (*response.headers, ("x-request-id", request_id)),
            b"" if method == "HEAD" else response.body,
        )

    def _answer(
        self,
        status: int,
        call: str,
        *,
        data: Any = None,
        error: IpmError | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> Response:
        body = envelope(call, self._app.build_id, self._now(), data=data, error=error)

        return json_response(status, body, extra)

    def _now(self) -> datetime:
        # The envelope's timestamp. A host clock that fails makes its request
        # a 500, which must still be answered in the envelope.
        try:
            return self._app.clock()
        except Exception:
            return datetime.now(UTC)


_BOM = b"\xef\xbb\xbf"
_METHOD = re.compile(r"[A-Za-z]{1,16}")


def _method_word(method: str) -> str:
    """The method as sent when it is a plain word, else ``INVALID`` (never
    repeated in a call name or a log line)."""
    word = isinstance(method, str) and _METHOD.fullmatch(method)

    return method if word else "INVALID"


def _allowed(methods: Iterable[str]) -> str:
    """The Allow header: a GET route also answers HEAD (RFC 9110)."""
    named = set(methods)
    if "GET" in named:
        named.add("HEAD")

    return ", ".join(sorted(named))


def _measured(response: Response) -> Response:
    """A HEAD answer's stream read through for the Content-Length a GET
    would have (RFC 9110), where the stream did not know it: without it, a
    server writes 0, and the file reads as empty."""
    body = response.body
    if not isinstance(body, StreamedBody) or response.header("content-length"):
        return response
    size = 0
    try:
        for chunk in body.chunks:
            size += len(chunk)
    finally:
        _close_stream(body)

    return Response(
        response.status, (*response.headers, ("content-length", str(size))), b""
    )


def _whole(response: Response) -> Response:
    """A streamed answer read into bytes, for a caller that asked for
    bytes; its Content-Length is the length read, which must be the
    length the file declared: a file cut short is a failure, not a 200
    (over HTTP the client would see the connection end early)."""
    body = response.body
    if not isinstance(body, StreamedBody):
        return response
    try:
        data = b"".join(body.chunks)
    finally:
        _close_stream(body)
    declared = body.length
    if declared is not None and len(data) != declared:
        raise RuntimeError(
            f"the file read {len(data):,} bytes where it declared {declared:,}"
        )
    headers = tuple(
        (name, value)
        for name, value in response.headers
        if name.lower() != "content-length"
    )

    return Response(
        response.status, (*headers, ("content-length", str(len(data)))), data
    )


def _held_to_length(response: Response, path: str) -> Response:
    """A streamed answer whose chunks keep to the length it declares."""
    body = response.body
    if not isinstance(body, StreamedBody) or body.length is None:
        return response
    if isinstance(body.chunks, Sized):
        return response  # held already (a range): once is enough to log

    sized = StreamedBody(Sized(body.chunks, body.length, path), body.length)
    return Response(response.status, response.headers, sized)


class Sized:
    """A file's chunks held to the size its answer declared, saying so in
    the log when the file does not have that size (a damaged copy); with
    ``part``, a part of the file (a range), which ends before the file does.

    Short, the client sees the connection end early, and the operator would
    otherwise see nothing (or a server's own error). Longer, it is cut at
    the declared size: bytes past the Content-Length would break the
    connection's framing. ``close()`` closes the file, read or not."""

    def __init__(
        self, chunks: Iterable[bytes], size: int, name: str, *, part: bool = False
    ) -> None:
        self._chunks = iter(chunks)
        self._size, self._name, self._part = size, name, part
        self._read = 0
        self._ended = False

    def __iter__(self) -> Sized:
        return self

    def __next__(self) -> bytes:
        if self._ended:
            raise StopIteration
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._ended = True
            if self._read < self._size:
                self._damaged("the client got it cut short")
            raise
        self._read += len(chunk)
        if self._read > self._size:
            self._ended = True
            if not self._part:
                self._damaged("the client got the declared bytes only")
            return chunk[: len(chunk) - (self._read - self._size)]

        return chunk

    def _damaged(self, outcome: str) -> None:
        more = " or more" if self._read > self._size else ""
        log.warning(
            "the file of %s read %d bytes%s where it declared %d: %s (is the "
            "blob store's copy damaged?)",
            self._name,
            self._read,
            more,
            self._size,
            outcome,
        )

    def close(self) -> None:
        close_chunks(self._chunks)


def _close_stream(body: object) -> None:
    """Close a streamed body's chunks, if they can be closed."""
    close_chunks(getattr(body, "chunks", None))


def _plain_path(path: str) -> str:
    """The path a request names, without its fragment; ``/invalid-path`` for
    one holding what no log line or answer should repeat."""
    path = path.partition("#")[0] or "/"

    return path if _printable(path) else "/invalid-path"


def _printable(path: str) -> bool:
    return path.isprintable() and path.isascii() and len(path) <= MAX_NAMED_PATH


MAX_NAMED_PATH = 239
"""The longest path repeated in ``stats.call`` (at most 256 characters in
the Envelope schema: a method of up to 16 letters, a space, the path); no
route is nearly that long, so a longer one is ``/invalid-path``."""


def _lower(headers: Headers) -> tuple[dict[str, str], str | None]:
    """The headers by lower-case name, and the first one sent twice that
    must come once (None when there is none)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    lowered: dict[str, str] = {}
    repeated = None
    for raw_name, raw_value in pairs:
        # Bytes as ASGI carries them (Latin-1, as HTTP/1.1 allows) or text.
        key = _text(raw_name).lower()
        value = _text(raw_value)
        if key not in lowered:
            lowered[key] = value
        elif key in SINGLE_HEADERS:
            repeated = repeated or key
        else:
            # Lines of a list header mean their values joined (RFC 9110
            # 5.3): a second proxy may add X-Forwarded-Proto as a new line.
            lowered[key] = f"{lowered[key]}, {value}"

    return lowered, repeated


def _text(raw: object) -> str:
    if type(raw) is str:
        return raw
    if isinstance(raw, str):
        return str.__str__(raw)
    if isinstance(raw, bytes | bytearray):
        return bytes(raw).decode("latin-1")
    # None or 5 as a header value is the host's slip (an x-orgcode read from
    # a header it never got): turned into text it would name an org "None".
    raise TypeError(
        f"header names and values must be text or bytes, not {type(raw).__name__}"
    )


SINGLE_HEADERS = frozenset({"authorization", "x-orgcode", "host"})
"""Headers a request may send once (RFC 9112 requires it of Host). Taking
one of two (servers and proxies differ on which) would let a gateway in
front check one key or org while ipm acts on the other."""


def _unauthenticated_message(headers: dict[str, str], api_keys: bool) -> str:
    """Why no principal: no credential, or one that is not a valid key.

    The credential itself is never repeated; a host's own authenticator
    is not said to want an API key.
    """
    if not api_keys:
        return "the request's credentials were not accepted"
    credential = headers.get("authorization", "").strip(" \t")
    if not credential:
        return "send Authorization: Bearer <api key>"
    scheme, _, key = credential.partition(" ")
    if scheme.lower() == "bearer" and not key.strip(" \t"):
        # Typically a shell variable that is empty where the request is made.
        return (
            "the Authorization header has no key after Bearer; send "
            "Authorization: Bearer <api key>"
        )

    return (
        "the Authorization header holds no valid API key (unknown, revoked "
        "or mistyped); send Authorization: Bearer <api key>"
    )


def repeated_header(name: str) -> IpmError:
    return InvalidRequest(
        f"the {name} header was sent more than once",
        [Problem(f"/headers/{name}", "must be sent once")],
    )


def _error_headers(error: IpmError) -> tuple[tuple[str, str], ...]:
    """Headers HTTP requires or advises with some refusals (RFC 9110 15.5.2,
    15.5.6, 15.6.4)."""
    if isinstance(error, MethodNotAllowed) and error.allow:
        return (("allow", error.allow),)
    if isinstance(error, Unauthenticated):
        return (("www-authenticate", 'Bearer realm="ipm"'),)
    if isinstance(error, RangeNotSatisfiable):
        return (("content-range", f"bytes */{error.size}"),)
    if isinstance(error, StorageBusy):
        # Other writers held the store past the busy timeout: a second later
        # they have usually finished.
        return (("retry-after", "1"),)

    return ()


def _orgcode(headers: dict[str, str]) -> str:
    orgcode = headers.get("x-orgcode", "").strip(" \t")
    if not orgcode:
        raise OrgcodeRequired(
            "this route needs the x-orgcode header",
            [Problem("/headers/x-orgcode", "required")],
        )
    if not ORGCODE_PATTERN.fullmatch(orgcode):
        raise InvalidRequest(
            "x-orgcode is malformed",
            [Problem("/headers/x-orgcode", f"must match {ORGCODE_PATTERN.pattern}")],
        )

    return orgcode


def _check_binding(principal: Principal, orgcode: str, route: Route) -> None:
    if principal.may_act_for(orgcode):
        return
    if route.mutating:
        raise Forbidden("the caller may not write to this org")

    raise NotFound(route.record)


def _parse_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    # Request bodies are read exactly as NDJSON lines are: orjson when it
    # provably agrees, else the strict reference parser that names the fault
    # (duplicate keys, NaN, lone surrogates, inexact or huge numbers...).
    if body.startswith(_BOM):
        raise InvalidRequest(
            "request body must not start with a byte order mark",
            [Problem("", "byte order mark")],
        )
    record = parse_record(body)
    if isinstance(record, LineError):
        message = record.message
        lead = "request body is not strict JSON"
        if record.code == "not_an_object":
            # Strict JSON all right, but not the object every route takes.
            message = message.replace("the line is", "the body is")
            lead = "request body must be a JSON object"
        raise InvalidRequest(f"{lead}: {message}", [Problem(record.pointer, message)])

    return record


def _check_context(payload: dict[str, Any], orgcode: str) -> None:
    context = payload.get("request_context")
    if not isinstance(context, dict) or not orgcode:
        return
    if context.get("orgcode") != orgcode:
        raise OrgcodeMismatch(
            "request_context.orgcode differs from the x-orgcode header",
            [Problem("/request_context/orgcode", f"must equal {orgcode!r}")],
        )


def _audit(payload: dict[str, Any], principal: Principal | None) -> Audit:
    context = payload.get("request_context") or {}
    refs = payload.get("source_refs") or []

    return Audit(
        actor=context.get("actor") or (principal.actor if principal else None),
        context_source=context.get("context_source"),
        reason=payload.get("reason"),
        source_refs=tuple(SourceRef(r["kind"], r["id"]) for r in refs),
    )


_HOST = re.compile(
    r"^(?P<name>[^\[\]:]+|\[[0-9A-Fa-f:.]+\])(:(?P<port>[1-9][0-9]{0,4}))?$"
)
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def _plain_host(host: str) -> bool:
    """A DNS-style name (underscores allowed, as container names have) or
    an IP literal, with a port from 1 to 65535 written without leading 0."""
    match = _HOST.fullmatch(host)
    if match is None or int(match.group("port") or 80) > 65535:
        return False

    name = match.group("name")
    if name.startswith("["):
        return _ipv6(name[1:-1])
    labels = name.removesuffix(".").split(".")

    return len(".".join(labels)) <= 253 and all(map(_LABEL.fullmatch, labels))


def _ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False

    return True


class _Base(NamedTuple):
    """How the server says the caller reached it: scheme and mount prefix."""

    scheme: str
    prefix: str


def _check_host(headers: dict[str, str]) -> None:
    """Refuse a Host that is not a plain host[:port], on every route, as
    HTTP/1.1 asks (RFC 9112, 3.2), rather than echo it into the links we
    hand out. None, or an empty one, is not refused (see _base_url)."""
    host = headers.get("host")
    if host and not _plain_host(host):
        raise InvalidRequest(
            "the Host header is malformed",
            [Problem("/headers/host", "must be host or host:port")],
        )


def _base_url(headers: dict[str, str], base: _Base) -> str:
    """The URL prefix the caller reached us by, for absolute links.

    No Host header (an embedding host calling ``handle()``), or an empty
    one, means ``localhost``; any other was checked (_check_host). A valid
    ``X-Forwarded-Proto`` wins over the server's own scheme: the proxy in
    front of it knows how the caller came in.
    """
    # Absent, or empty as RFC 9112 allows for a URI without authority.
    host = headers.get("host") or "localhost"
    # Proxies in a chain append theirs: the first is what the client used.
    # Empty list elements are ignored (RFC 9110 5.6.1): ", https" is https.
    forwarded = (
        part.strip(" \t") for part in headers.get("x-forwarded-proto", "").split(",")
    )
    scheme = next((part for part in forwarded if part), "").lower()
    if scheme not in _SCHEMES:
        scheme = base.scheme.lower()
    if scheme not in _SCHEMES:
        scheme = "http"

    return f"{scheme}://{host}{_link_path(base.prefix)}"


_SCHEMES = ("http", "https")
# RFC 3986 pchar, less what quote() keeps anyway (letters, digits, "_.-~").
_PATH_SAFE = "/:@!$&'()*+,;="


def _link_path(prefix: str) -> str:
    """A mount prefix as links carry it: percent-encoded, no trailing ``/``.

    Servers hand the prefix over decoded (WSGI's as Latin-1 text, which the
    adapter turns back into its bytes with ``surrogateescape``), so it is
    encoded again here; nothing in it can end the path of a link.
    """
    prefix = prefix.rstrip("/")
    if not prefix:
        return ""
    try:
        raw = prefix.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = prefix.encode("utf-8", "replace")

    return quote(raw if raw.startswith(b"/") else b"/" + raw, safe=_PATH_SAFE)


def check_public_base_url(value: object) -> str | None:
    """``public_base_url`` as links will use it, or a clear refusal.

    Checked once, when the application is built, so a typo is found at
    start-up rather than as a 500 on the first answer that holds a link.
    An absolute ``http``/``https`` URL with a plain host[:port] and an
    optional path; the scheme is lower-cased and a trailing ``/`` dropped
    (links add their own). Query, fragment and user info would end up in
    the middle of every link, so they are refused.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"public_base_url must be a str, not {type(value).__name__}")

    fault = _base_url_fault(value)
    if fault:
        raise ValueError(
            "public_base_url must be an absolute http(s) URL such as "
            f"https://shop.example/ipm; {value!r} {fault}"
        )

    split = urlsplit(value)

    return f"{split.scheme.lower()}://{split.netloc}{split.path.rstrip('/')}"


def _base_url_fault(text: str) -> str:
    """What is wrong with a base URL, or ``""`` when nothing is."""
    # urlsplit() drops tabs and newlines silently; refuse them first.
    if not text.lower().startswith(("http://", "https://")):
        return "does not start with http:// or https://"
    if not (text.isascii() and text.isprintable()) or " " in text:
        return "holds spaces, controls or non-ASCII (use punycode, %-encoding)"
    try:
        split = urlsplit(text)
    except ValueError:
        return "cannot be parsed"
    if "?" in text or "#" in text:
        return "has a query or a fragment"
    if "@" in split.netloc:
        return "has user info"
    if not _plain_host(split.netloc):
        return "has no plain host[:port]"
    if not _URI_PATH.fullmatch(split.path):
        return "has a path with characters a URI does not allow (%-encode them)"
    if {".", ".."} & {unquote(segment) for segment in split.path.split("/")}:
        # A client resolves them (browsers %2e%2e too), so links would
        # lead outside the base.
        return "has a path with . or .. segments"
    if "//" in split.path.rstrip("/") or "%2f" in split.path.lower():
        # ipm routes such a path as sent, where a proxy would read it so
        # too: every link would lead nowhere (docs/foundation.md, Requests).
        return "has a path with an empty segment or an encoded /"

    return ""


# RFC 3986 path characters: unreserved, sub-delims, ":", "@", "/" and %HH.
_URI_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")
