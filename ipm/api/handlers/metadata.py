"""Handlers of the metadata routes: health, conventions, lifecycles,
the event catalog, export contracts and specimens."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ipm import schemas
from ipm.api.call import Call
from ipm.domain.errors import NotFound, StorageClosed
from ipm.domain.lifecycle import LIFECYCLES, LIFECYCLES_VERSION
from ipm.domain.pagination import DEFAULT_LIMIT, MAX_LIMIT, MIN_LIMIT
from ipm.domain.timeutil import format_utc
from ipm.usecases.catalog import CatalogEntry

if TYPE_CHECKING:
    from ipm.api.core import Api

T = TypeVar("T")


def stat(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    app = call.app
    if getattr(app.storage, "closed", False):
        # A health check must not call a closed instance healthy: a load
        # balancer would keep sending it requests that all fail with 503.
        raise StorageClosed("the application was closed")

    return {
        "service": "ipm",
        "status": "active",
        "version": app.version,
        "build_id": app.build_id,
        "time_utc": format_utc(app.clock()),
    }


def pagination(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    paged = [r.path for r in call.app.api.routes if "limit" in _properties(r)]
    return {
        "default_limit": DEFAULT_LIMIT,
        "min_limit": MIN_LIMIT,
        "max_limit": MAX_LIMIT,
        "limit_out_of_range": "clamped",
        "token": {
            "field": "next_token",
            "kind": "keyset",
            "opaque": True,
            "last_page": "null",
            "bound_to": ["orgcode", "route", "filters"],
            "tamper": "invalid_token",
        },
        "order": "stable: each route documents its sort key; rows inserted "
        "while paging are never skipped or repeated",
        "routes": sorted(paged),
    }


def lifecycles(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    chosen = [
        lc
        for lc in LIFECYCLES
        if body.get("service") in (None, lc.service)
        and body.get("name") in (None, lc.name)
    ]
    filters = {"service": body.get("service"), "name": body.get("name")}
    page, token = call.page(
        body,
        filters,
        _after(sorted(chosen, key=lambda lc: lc.name), lambda lc: [lc.name]),
        lambda lc: [lc.name],
    )

    return {
        "items": [lc.to_wire() for lc in page],
        "version": LIFECYCLES_VERSION,
        "next_token": token,
    }


def catalog(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    service, action, prefix = (
        body.get("service"),
        body.get("action"),
        body.get("action_prefix"),
    )
    chosen = [
        e
        for e in call.app.catalog.entries()
        if service in (None, e.service)
        and action in (None, e.action)
        and (prefix is None or e.action.startswith(prefix))
    ]
    filters = {"service": service, "action": action, "action_prefix": prefix}
    page, token = call.page(body, filters, _after(chosen, _entry_key), _entry_key)

    return {"items": [_entry(call, e) for e in page], "next_token": token}


def contracts(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    by_service: dict[str, list[CatalogEntry]] = {}
    for entry in call.app.catalog.entries():
        if body.get("service") in (None, entry.service):
            by_service.setdefault(entry.service, []).append(entry)

    services = sorted(by_service)
    page, token = call.page(
        body,
        {"service": body.get("service")},
        _after(services, lambda s: [s]),
        lambda s: [s],
    )

    return {
        "contracts": [_contract(call, s, by_service[s]) for s in page],
        "next_token": token,
    }


def specimen(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    """The reference's shape either way: ``name``, ``specimen``, ``specimens``.

    With a name, ``specimens`` holds that one; without, every specimen, and
    ``name`` and ``specimen`` are null.
    """
    name = body.get("name")
    if name is None:
        every = {n: schemas.specimen(n) for n in schemas.specimen_names()}
        return {"name": None, "specimen": None, "specimens": every}
    if name not in schemas.specimen_names():
        raise NotFound()

    one = schemas.specimen(name)
    return {"name": name, "specimen": one, "specimens": {name: one}}


def _entry_key(entry: CatalogEntry) -> list[str]:
    return [entry.service, entry.action]


def _entry(call: Call, entry: CatalogEntry) -> dict[str, Any]:
    return {
        "service": entry.service,
        "action": entry.action,
        "op": entry.op,
        "description": entry.description,
        "schema_url": schema_url(call, entry.schema_name),
        "version": call.app.catalog.version_of(entry),
    }


def _contract(call: Call, service: str, entries: list[CatalogEntry]) -> dict[str, Any]:
    return {
        "service": service,
        "stream": "events",
        "format": "ndjson",
        "partitioning": [
            {"field": "orgcode", "granularity": "value"},
            {"field": "recorded_at", "granularity": "day"},
        ],
        "actions": [
            {"action": e.action, "schema_url": schema_url(call, e.schema_name)}
            for e in entries
        ],
    }


def schema_url(call: Call, name: str) -> str:
    return call.url(f"/schemas/{name}.json")


def _after(
    rows: Sequence[T], key: Callable[[T], Sequence[Any]]
) -> Callable[[tuple[Any, ...] | None, int], list[T]]:
    """A keyset fetch over a sorted in-memory list."""

    def fetch(after: tuple[Any, ...] | None, n: int) -> list[T]:
        start = 0
        if after is not None:
            start = next(
                (i for i, row in enumerate(rows) if tuple(key(row)) > after), len(rows)
            )
        return list(rows[start : start + n])

    return fetch


def _properties(route: Any) -> dict[str, Any]:
    if route.request_schema is None:
        return {}
    return dict(schemas.get(route.request_schema).get("properties", {}))


def attach(api: Api) -> None:
    api.attach("GET /stat", stat)
    api.attach("POST /pagination/get", pagination)
    api.attach("POST /lifecycle/list", lifecycles)
    api.attach("POST /event/catalog/list", catalog)
    api.attach("POST /export/contract/list", contracts)
    api.attach("POST /specimen/get", specimen)
