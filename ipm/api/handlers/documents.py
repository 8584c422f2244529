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
_OPENAPI = {"/openapi.json": "application/json", "/openapi.yaml": "application/yaml"}
"""Where the OpenAPI description is served. The API reference names
``openapi.yaml``; JSON is YAML 1.2, so that path serves the same bytes
under YAML's media type: any YAML reader takes them."""


def openapi(
    app: Application,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    query: str,
    prefix: str,
) -> Response:
    media = _OPENAPI.get(path)
    if media is None:
        raise NotFound()

    document = app.openapi()
    # Where the routes are, as the links in answers say: the public base
    # when one is set, else the mount as a relative URL (resolved against
    # where this document was fetched). Unmounted, the default "/" holds.
    server = app.public_base_url or prefix
    if server:
        document["servers"] = [{"url": server}]

    return Response(200, (("content-type", media),), dumps(document))


def schema(
    app: Application,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    query: str,
    prefix: str,
) -> Response:
    name = path.removeprefix(_PREFIX).removesuffix(".json")
    document = app.catalog.document(name)
    if document is None or not path.endswith(".json"):
        raise NotFound()

    return Response(
        200, (("content-type", "application/schema+json"),), dumps(dict(document))
    )


def attach(api: Api) -> None:
    for path in _OPENAPI:
        api.attach_raw("GET", path, openapi)
    api.attach_raw("GET", _PREFIX, schema)
