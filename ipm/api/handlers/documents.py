"""Plain JSON documents: the OpenAPI description and each schema by name.

These are public, like ``GET /stat``: they describe the API, they hold no
tenant data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipm.api.envelope import Response
from ipm.domain.errors import NotFound
from ipm.domain.jsoncodec import dumps

if TYPE_CHECKING:
    from ipm.api.core import Api
    from ipm.app import Application

_PREFIX = "/schemas/"


def openapi(
    app: Application,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    query: str,
) -> Response:
    if path != "/openapi.json":
        raise NotFound()

    return Response(200, (("content-type", "application/json"),), dumps(app.openapi()))


def schema(
    app: Application,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    query: str,
) -> Response:
    name = path.removeprefix(_PREFIX).removesuffix(".json")
    document = app.catalog.schema(name)
    if document is None or not path.endswith(".json"):
        raise NotFound()

    return Response(
        200, (("content-type", "application/schema+json"),), dumps(dict(document))
    )


def attach(api: Api) -> None:
    api.attach_raw("GET", "/openapi.json", openapi)
    api.attach_raw("GET", _PREFIX, schema)
