"""The OpenAPI 3.1 description of ipm, built from the schemas it validates with.

Each schema becomes a component; its ``urn:ipm:schema:<name>`` references
become ``#/components/schemas/<name>`` references, and the ``$schema`` and
``$id`` keywords are dropped (the document declares the dialect once).
Every route answers the envelope: its 200 response narrows ``data`` to the
route's response schema, every error status carries the error envelope.
The signed file links (upload, download, report, results) and the two
description documents are not in the route table; they are described
here by hand, from the same components.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol
from urllib.parse import urljoin

from ipm import schemas
from ipm.schemas._fragments import DIALECT, ORGCODE_PATTERN, URN, Schema
from ipm.schemas._validation import SCHEMA_LISTS, SCHEMA_MAPS, SCHEMA_VALUED

OPENAPI_VERSION = "3.1.0"
COMPONENTS = "#/components/schemas/"

ERROR_STATUSES = {
    "400": "The body is not valid JSON or breaks its schema, x-orgcode is "
    "missing or differs from the body, a page token is invalid, or the Host "
    "header is malformed (or, for ipm serve, missing from an HTTP/1.1 request).",
    "401": "The caller is not authenticated.",
    "403": "The caller may not change data of this org, or a signed link "
    "is not genuine or has expired.",
    "404": "No such record (or not visible to the caller), or no such route.",
    "405": "The path exists with another method (the Allow header lists them).",
    "409": "A stale expected_revision, an illegal transition, a reused event "
    "id, or a request the record's state refuses (conflict: a job of the other "
    "type, a replay of a webhook that is not active).",
    "411": "A body was sent without a Content-Length the server can read.",
    "413": "The body or upload is too large.",
    "414": "The request target is too long (ipm serve).",
    "416": "The Range starts past the end of the file (Content-Range gives its size).",
    "428": "An update needs expected_revision.",
    "431": "The header lines are too many or too long (ipm serve).",
    "500": "An unexpected failure; the body holds no detail.",
    "501": "The capability behind this route is not built yet.",
    "503": "The store stayed busy (storage_busy: try again after Retry-After "
    "seconds) or the application is closing (storage_closed).",
    "505": "The HTTP version is neither 1.0 nor 1.1 (ipm serve).",
}

# Statuses any request may meet before its route is known: a malformed
# Host, framing limits, a failure, a busy or closing store, an HTTP version
# ipm serve does not speak. 405 is left out of every operation: it answers
# a method the operation does not describe.
_ANY_REQUEST = ("400", "414", "431", "500", "503", "505")
_TENANT_ROUTE = ("400", "401", "403", "404", "409", "411", "413", "428", "501")
_LINK = ("400", "403", "404", "409")

HEADERS = {
    "XRequestId": {
        "description": "The id of this request, as written in the server's log.",
        "schema": {"type": "string"},
    },
    "WWWAuthenticate": {
        "description": "The scheme to authenticate with: Bearer.",
        "schema": {"type": "string"},
    },
    "RetryAfter": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "ContentRange": {
        "description": "The bytes sent and the file's size (bytes 0-99/1234), "
        "or the size alone on a 416 (bytes */1234).",
        "schema": {"type": "string"},
    },
    "AcceptRanges": {
        "description": "bytes: a broken download can be resumed with Range.",
        "schema": {"type": "string"},
    },
    "ETag": {
        "description": "The file's SHA-256 in quotes, for If-Range.",
        "schema": {"type": "string"},
    },
}
_STATUS_HEADERS = {
    "401": "WWWAuthenticate",
    "416": "ContentRange",
    "503": "RetryAfter",
}


class RouteDescription(Protocol):
    """What the builder reads from a route of the route table."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def summary(self) -> str: ...

    @property
    def tier(self) -> str: ...

    @property
    def ceilings(self) -> Mapping[str, int]: ...

    @property
    def request_schema(self) -> str | None: ...

    @property
    def response_schema(self) -> str: ...


def build_openapi(
    routes: Iterable[RouteDescription],
    *,
    version: str,
    title: str = "ipm",
    extra_schemas: Mapping[str, Schema] | None = None,
) -> dict[str, Any]:
    """An OpenAPI 3.1.0 document for the routes, with every schema in it:
    ipm's own, and ``extra_schemas`` (a host's event types) beside them."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = operation(route)
    for path, item in link_and_document_paths().items():
        paths.setdefault(path, {}).update(item)

    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": DIALECT,
        "info": {"title": title, "version": version},
        "security": [{"bearerAuth": []}],
        "paths": dict(sorted(paths.items())),
        "components": components(extra_schemas or {}),
    }


def component_ref(name: str) -> Schema:
    return {"$ref": COMPONENTS + name}


def operation(route: RouteDescription) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": operation_id(route),
        "summary": route.summary,
        "tags": [route.path.strip("/").split("/")[0]],
        "x-ipm-tier": route.tier,
        "x-ipm-latency-ms": dict(route.ceilings),
    }
    if needs_org(route):
        op["parameters"] = [{"$ref": "#/components/parameters/XOrgcode"}]
    else:
        # A route outside any org (the health check) needs no credentials.
        op["security"] = []
    if route.request_schema is not None:
        # An empty body is read as {} (every request schema allows that
        # shape or says what is missing), so the body may be left out.
        op["requestBody"] = {
            "required": False,
            "content": {
                "application/json": {"schema": component_ref(route.request_schema)}
            },
        }
    statuses = _TENANT_ROUTE if needs_org(route) else ()
    op["responses"] = {
        "200": success(component_ref(route.response_schema), route.response_schema),
        **error_refs(*statuses, *_ANY_REQUEST),
    }

    return op


def operation_id(route: RouteDescription) -> str:
    words = route.path.replace("_", "/").strip("/").split("/")

    return route.method.lower() + "".join(word.capitalize() for word in words)


def needs_org(route: RouteDescription) -> bool:
    """Whether the route takes x-orgcode: all but the health check."""
    tenant = getattr(route, "tenant", None)
    if isinstance(tenant, bool):
        return tenant

    return (route.method.upper(), route.path) != ("GET", "/stat")


def success(data: Schema, what: str) -> dict[str, Any]:
    narrowed = {
        "type": "object",
        "properties": {"success": {"const": True}, "data": data},
        "required": ["data"],
    }

    return {
        "description": "The envelope; data holds " + what + ".",
        "headers": header_refs("XRequestId"),
        "content": {
            "application/json": {
                "schema": {"allOf": [component_ref("Envelope"), narrowed]}
            }
        },
    }


def error_refs(*statuses: str) -> dict[str, Any]:
    return {
        status: {"$ref": f"#/components/responses/Error{status}"}
        for status in sorted(set(statuses))
    }


def header_refs(*names: str) -> dict[str, Any]:
    return {
        _HEADER_NAMES[name]: {"$ref": f"#/components/headers/{name}"} for name in names
    }


_HEADER_NAMES = {
    "XRequestId": "x-request-id",
    "WWWAuthenticate": "WWW-Authenticate",
    "RetryAfter": "Retry-After",
    "ContentRange": "Content-Range",
    "AcceptRanges": "Accept-Ranges",
    "ETag": "ETag",
}


def error_response(status: str, description: str) -> dict[str, Any]:
    failed = {
        "type": "object",
        "properties": {"success": {"const": False}, "error": component_ref("Error")},
        "required": ["error"],
    }
    headers = ["XRequestId"]
    if status in _STATUS_HEADERS:
        headers.append(_STATUS_HEADERS[status])

    return {
        "description": description,
        "headers": header_refs(*headers),
        "content": {
            "application/json": {
                "schema": {"allOf": [component_ref("Envelope"), failed]}
            }
        },
    }


def link_and_document_paths() -> dict[str, dict[str, Any]]:
    """The signed file links and the description documents, by path."""
    job_id = _parameter("path", "job_id", "The job the link was made for.")
    link_params = [job_id, *_LINK_QUERY]
    ndjson = {
        "description": "The file, streamed as NDJSON.",
        "headers": header_refs("XRequestId"),
        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
    }
    uploaded = {
        "type": "object",
        "properties": {"job": component_ref("Job")},
        "required": ["job"],
    }

    def link(operation_id: str, summary: str) -> dict[str, Any]:
        return {
            "operationId": operation_id,
            "summary": summary,
            "tags": ["bulk"],
            "security": [],
            "parameters": link_params,
            "responses": {"200": ndjson, **error_refs(*_LINK, *_ANY_REQUEST)},
        }

    upload = {
        "operationId": "putBulkUpload",
        "summary": "Upload an import's file: the upload_url of import/create.",
        "tags": ["bulk"],
        "security": [],
        "parameters": link_params,
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        },
        "responses": {
            "200": success(uploaded, "the uploaded job"),
            **error_refs(*_LINK, "411", "413", *_ANY_REQUEST),
        },
    }
    ranged = {
        "description": "The file, or the part of it Range asked for "
        "(206); answered whole (200) when Range asks for several parts, is "
        "malformed, or If-Range is not the file's ETag.",
        "headers": header_refs("XRequestId", "AcceptRanges", "ETag"),
        "content": ndjson["content"],
    }
    part = {
        "description": "The bytes Range asked for.",
        "headers": header_refs("XRequestId", "AcceptRanges", "ETag", "ContentRange"),
        "content": ndjson["content"],
    }
    range_headers = [
        _header("Range", "One byte range to send (bytes=1000-, bytes=-500)."),
        _header("If-Range", "The ETag of a first answer: Range counts only for it."),
    ]
    download = {
        **link("getBulkDownload", "Download a finished export's file."),
        "parameters": [*link_params, *range_headers],
        "responses": {
            "200": ranged,
            "206": part,
            **error_refs(*_LINK, "416", *_ANY_REQUEST),
        },
    }
    schema_name = _parameter("path", "name", "A schema name, as ipm.schemas names it.")
    document = {"type": "object"}

    return {
        "/bulk/upload/{job_id}": {"put": upload},
        "/bulk/download/{job_id}": {"get": download},
        "/bulk/report/{job_id}": {
            "get": link("getBulkReport", "Download a job's error report.")
        },
        "/bulk/results/{job_id}": {
            "get": link("getBulkResults", "Download an import's per-line results.")
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenapi",
                "summary": "This document.",
                "tags": ["documents"],
                "security": [],
                "responses": {
                    "200": _document("application/json", document),
                    **error_refs(*_ANY_REQUEST),
                },
            }
        },
        "/openapi.yaml": {
            "get": {
                "operationId": "getOpenapiYaml",
                "summary": "This document as YAML (the same JSON text: JSON is YAML).",
                "tags": ["documents"],
                "security": [],
                "responses": {
                    "200": _document("application/yaml", document),
                    **error_refs(*_ANY_REQUEST),
                },
            }
        },
        "/schemas/{name}.json": {
            "get": {
                "operationId": "getSchema",
                "summary": "One JSON Schema by name.",
                "tags": ["documents"],
                "security": [],
                "parameters": [schema_name],
                "responses": {
                    "200": _document("application/schema+json", document),
                    **error_refs("404", *_ANY_REQUEST),
                },
            }
        },
    }


def _parameter(place: str, name: str, description: str) -> dict[str, Any]:
    """A required string parameter in the path or the query."""
    return {
        "name": name,
        "in": place,
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _header(name: str, description: str) -> dict[str, Any]:
    """An optional string header parameter."""
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
    }


_LINK_QUERY = [
    _parameter("query", "org", "The org the link was made for."),
    _parameter("query", "expires", "When the link expires, in Unix seconds."),
    _parameter("query", "sig", "The link's signature."),
]


def _document(media_type: str, schema: Schema) -> dict[str, Any]:
    return {
        "description": "The document.",
        "headers": header_refs("XRequestId"),
        "content": {media_type: {"schema": schema}},
    }


def components(extra_schemas: Mapping[str, Schema]) -> dict[str, Any]:
    orgcode = {
        "name": "x-orgcode",
        "in": "header",
        "required": True,
        "description": "The org the call acts for.",
        "schema": {"type": "string", "pattern": ORGCODE_PATTERN},
    }
    bearer = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: Authorization: Bearer <key>.",
    }
    found = {name: schemas.get(name) for name in schemas.names()}
    for name, schema in extra_schemas.items():
        found.setdefault(name, schema)  # ipm's own event types are there

    return {
        "schemas": as_components(found),
        "parameters": {"XOrgcode": orgcode},
        "headers": HEADERS,
        "securitySchemes": {"bearerAuth": bearer},
        "responses": {
            f"Error{status}": error_response(status, text)
            for status, text in ERROR_STATUSES.items()
        },
    }


def as_components(found: Mapping[str, Schema]) -> dict[str, Schema]:
    """The schemas as they sit in components: no $schema/$id, and every
    reference between them a pointer into the document.

    Without its $id a schema is no resource of its own, so its anchors
    would belong to the whole document (and clash between schemas): a
    reference to an anchor, or through a schema's URN or own $id, becomes
    a pointer to the subschema instead. A subschema with an $id of its own
    is moved the same way, as a resource at its own place.
    """
    places = {name: _place(name, schema) for name, schema in found.items()}
    nested = {
        name: _nested(schema, places[name].home, places[name].base, top=True)
        for name, schema in found.items()
    }
    every = [*places.values(), *(each for inner in nested.values() for each in inner)]
    claims = Counter(uri for place in every for uri in place.names)
    # A URI that two schemas claim names neither from elsewhere: a schema's
    # own resources are looked up first (see _scope).
    shared = {uri: place for place in every for uri in place.names if claims[uri] == 1}

    return {
        name: relocated(
            {k: v for k, v in schema.items() if k not in ("$schema", "$id")},
            places[name],
            _scope(places[name], nested[name], shared),
            at=places[name].home,
        )
        for name, schema in found.items()
    }


def _scope(top: _Place, inner: list[_Place], shared: Mapping[str, _Place]) -> _Scope:
    """What the references of one schema may name: its own resources
    first, then those of the document that no two schemas share."""
    own = [top, *inner]
    index = {**shared, **{uri: place for place in own for uri in place.names}}

    return _Scope(index, {place.home: place for place in inner})


class _Scope(NamedTuple):
    uris: Mapping[str, _Place]
    # The schema's nested resources by their pointer.
    homes: Mapping[str, _Place]


def as_component(name: str, schema: Schema) -> Schema:
    """One schema as it sits in components (see :func:`as_components`)."""
    return as_components({name: schema})[name]


class _Place(NamedTuple):
    """Where a schema lands: its pointer in the document, the URIs that
    name it, and the pointer of each of its anchors."""

    home: str
    names: frozenset[str]
    anchors: Mapping[str, str]
    base: str = ""


def _place(name: str, schema: Schema) -> _Place:
    own = schema.get("$id")
    uris = {URN + name}
    base = URN + name
    if isinstance(own, str):
        base = own.removesuffix("#")  # an empty fragment names the same
        uris.add(base)
    body = {k: v for k, v in schema.items() if k != "$id"}

    return _Place(COMPONENTS + name, frozenset(uris), _anchors(body, ""), base)


def relocated(
    node: Any,
    place: _Place,
    scope: _Scope,
    *,
    at: str,
    schema: bool = True,
) -> Any:
    """Rewrite each $ref of a schema (at pointer ``at`` in the document)
    that names a schema of the document as a pointer. Only subschemas are
    walked: the values of other keywords are data, left as they are. A
    subschema with an $id of its own is a resource: its references are
    read against it."""
    if not schema or not isinstance(node, dict):
        return node
    own = node.get("$id")
    if isinstance(own, str) and at != place.home:
        place = scope.homes.get(at) or _nested_place(node, at, place.base)
        node = {k: v for k, v in node.items() if k != "$id"}

    moved: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$anchor" and isinstance(value, str):
            continue  # every reference to it is a pointer now
        moved[key] = _relocated_value(key, value, place, scope, f"{at}/{_token(key)}")
    target = node.get("$ref")
    pointer = _pointer_for(target, place, scope) if isinstance(target, str) else None
    if pointer is not None:
        moved["$ref"] = pointer

    return moved


def _relocated_value(
    key: str, value: Any, place: _Place, scope: _Scope, at: str
) -> Any:
    if key in _SCHEMA_MAPS and isinstance(value, dict):
        return {
            name: relocated(each, place, scope, at=f"{at}/{_token(name)}")
            for name, each in value.items()
        }
    if (key in SCHEMA_LISTS or key == "items") and isinstance(value, list):
        return [
            relocated(each, place, scope, at=f"{at}/{position}")
            for position, each in enumerate(value)
        ]

    return relocated(value, place, scope, at=at, schema=key in SCHEMA_VALUED)


def _pointer_for(ref: str, place: _Place, scope: _Scope) -> str | None:
    """The document pointer ``ref`` stands for; None to leave it as it is."""
    base, _, fragment = ref.partition("#")
    if base and base not in place.names:  # its own first: $ids may repeat
        target = scope.uris.get(base) or scope.uris.get(_joined(place.base, base))
        if target is None and base.startswith(URN):
            # A schema of the document that this call was not given.
            target = _Place(COMPONENTS + base.removeprefix(URN), frozenset(), {})
        if target is None:
            return None  # elsewhere: left for the reader to fetch
        place = target
    if not fragment or fragment.startswith("/"):
        return place.home + fragment
    anchor = place.anchors.get(fragment)

    return None if anchor is None else place.home + anchor


def _nested_place(node: dict[str, Any], at: str, base: str) -> _Place:
    """A subschema with an $id of its own, at pointer ``at``: a resource,
    its $id read against the enclosing resource's ``base``."""
    body = {k: v for k, v in node.items() if k != "$id"}
    uri = _joined(base, str(node["$id"])).removesuffix("#")

    return _Place(at, frozenset({uri}), _anchors(body, ""), uri)


def _joined(base: str, reference: str) -> str:
    """``reference`` read against ``base`` (a URN has no relative form)."""
    return urljoin(base, reference) if base and ":" not in reference else reference


def _nested(node: Any, at: str, base: str, *, top: bool = False) -> list[_Place]:
    """The places of the resources nested in a schema, however deep."""
    found: list[_Place] = []
    if not isinstance(node, dict):
        return found
    if isinstance(node.get("$id"), str) and not top:
        place = _nested_place(node, at, base)
        found.append(place)
        base = place.base
    for inner, each in _subschemas(node, at):
        found += _nested(each, inner, base)

    return found


def _anchors(node: Any, pointer: str) -> dict[str, str]:
    """Each plain-name anchor of a schema ($anchor, or a $dynamicAnchor,
    which a $ref may name too), and the pointer to its subschema; not
    those of a subschema with an $id of its own."""
    found: dict[str, str] = {}
    if not isinstance(node, dict) or isinstance(node.get("$id"), str):
        return found
    for keyword in ("$dynamicAnchor", "$anchor"):
        anchor = node.get(keyword)
        if isinstance(anchor, str):
            found[anchor] = pointer
    for inner, each in _subschemas(node, pointer):
        found.update(_anchors(each, inner))

    return found


def _subschemas(node: dict[str, Any], at: str) -> Iterator[tuple[str, Any]]:
    """Each subschema of a schema at pointer ``at``, with its pointer."""
    for key, value in node.items():
        here = f"{at}/{_token(key)}"
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for name, each in value.items():
                yield f"{here}/{_token(name)}", each
        elif (key in SCHEMA_LISTS or key == "items") and isinstance(value, list):
            for position, each in enumerate(value):
                yield f"{here}/{position}", each
        elif key in SCHEMA_VALUED:
            yield here, value


_SCHEMA_MAPS = SCHEMA_MAPS | {"definitions"}
"""The name maps of subschemas, with the older draft's name for $defs,
which the reference validator still reads as one."""


def _token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
