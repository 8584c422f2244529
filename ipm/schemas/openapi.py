"""The OpenAPI 3.1 description of ipm, built from the schemas it validates with.

Each schema becomes a component; its ``urn:ipm:schema:<name>`` references
become ``#/components/schemas/<name>`` references, and the ``$schema`` and
``$id`` keywords are dropped (the document declares the dialect once).
Every route answers the envelope: its 200 response narrows ``data`` to the
route's response schema, every error status carries the error envelope.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from ipm import schemas
from ipm.schemas._fragments import DIALECT, ORGCODE_PATTERN, URN, Schema

OPENAPI_VERSION = "3.1.0"
COMPONENTS = "#/components/schemas/"

ERROR_STATUSES = {
    "400": "The body is not valid JSON or breaks its schema, x-orgcode is "
    "missing or differs from the body, or a page token is invalid.",
    "401": "The caller is not authenticated.",
    "403": "The caller may not change data of this org.",
    "404": "No such record (or not visible to the caller), or no such route.",
    "405": "The path exists with another method.",
    "409": "A stale expected_revision, an illegal transition, or a reused event id.",
    "413": "The body or upload is too large.",
    "428": "An update needs expected_revision.",
    "500": "An unexpected failure; the body holds no detail.",
    "501": "The capability behind this route is not built yet.",
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
    def request_schema(self) -> str | None: ...

    @property
    def response_schema(self) -> str: ...


def build_openapi(
    routes: Iterable[RouteDescription], *, version: str, title: str = "ipm"
) -> dict[str, Any]:
    """An OpenAPI 3.1.0 document for the routes, with every schema in it."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = operation(route)

    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": DIALECT,
        "info": {"title": title, "version": version},
        "security": [{"bearerAuth": []}],
        "paths": dict(sorted(paths.items())),
        "components": components(),
    }


def component_ref(name: str) -> Schema:
    return {"$ref": COMPONENTS + name}


def operation(route: RouteDescription) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": operation_id(route),
        "summary": route.summary,
        "tags": [route.path.strip("/").split("/")[0]],
        "x-ipm-tier": route.tier,
    }
    if needs_org(route):
        op["parameters"] = [{"$ref": "#/components/parameters/XOrgcode"}]
    else:
        # A route outside any org (the health check) needs no credentials.
        op["security"] = []
    if route.request_schema is not None:
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": component_ref(route.request_schema)}
            },
        }
    op["responses"] = {"200": success(route.response_schema), **error_refs()}

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


def success(response_schema: str) -> dict[str, Any]:
    narrowed = {
        "type": "object",
        "properties": {
            "success": {"const": True},
            "data": component_ref(response_schema),
        },
        "required": ["data"],
    }

    return {
        "description": "The envelope; data holds " + response_schema + ".",
        "content": {
            "application/json": {
                "schema": {"allOf": [component_ref("Envelope"), narrowed]}
            }
        },
    }


def error_refs() -> dict[str, Any]:
    return {
        status: {"$ref": f"#/components/responses/Error{status}"}
        for status in ERROR_STATUSES
    }


def error_response(description: str) -> dict[str, Any]:
    failed = {
        "type": "object",
        "properties": {"success": {"const": False}, "error": component_ref("Error")},
        "required": ["error"],
    }

    return {
        "description": description,
        "content": {
            "application/json": {
                "schema": {"allOf": [component_ref("Envelope"), failed]}
            }
        },
    }


def components() -> dict[str, Any]:
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

    return {
        "schemas": {
            name: as_component(name, schemas.get(name)) for name in schemas.names()
        },
        "parameters": {"XOrgcode": orgcode},
        "securitySchemes": {"bearerAuth": bearer},
        "responses": {
            f"Error{status}": error_response(text)
            for status, text in ERROR_STATUSES.items()
        },
    }


def as_component(name: str, schema: Schema) -> Schema:
    """The schema as it sits in components: no $schema/$id, local refs."""
    body = {k: v for k, v in schema.items() if k not in ("$schema", "$id")}
    component: Schema = relocated(body, COMPONENTS + name)

    return component


def relocated(node: Any, home: str) -> Any:
    """Rewrite each $ref: URNs to components, '#...' to the component's home."""
    if isinstance(node, list):
        return [relocated(item, home) for item in node]
    if not isinstance(node, dict):
        return node

    moved = {key: relocated(value, home) for key, value in node.items()}
    target = node.get("$ref")
    if isinstance(target, str) and target.startswith(URN):
        moved["$ref"] = COMPONENTS + target.removeprefix(URN)
    elif isinstance(target, str) and target.startswith("#"):
        moved["$ref"] = home + target[1:]

    return moved
