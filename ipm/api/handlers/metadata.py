"""Handlers of the metadata routes: health, conventions, lifecycles,
the event catalog, export contracts and specimens."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ipm import schemas
from ipm.api.call import Call
from ipm.domain.errors import StorageClosed
from ipm.domain.timeutil import format_utc
from ipm.usecases.catalog import CatalogEntry
from ipm.usecases.metadata import ExportContract

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
    conventions = call.app.metadata.pagination()
    return {
        "default_limit": conventions.default_limit,
        "min_limit": conventions.min_limit,
        "max_limit": conventions.max_limit,
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
    filters = {"service": body.get("service"), "name": body.get("name")}
    chosen = call.app.metadata.lifecycles(**filters)
    page, token = call.page(
        body, filters, _after(chosen, lambda lc: [lc.name]), lambda lc: [lc.name]
    )

    return {
        "items": [lc.to_wire() for lc in page],
        "version": call.app.metadata.version,
        "next_token": token,
    }


def catalog(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    filters = {key: body.get(key) for key in ("service", "action", "action_prefix")}
    chosen = call.app.metadata.catalog(**filters)
    page, token = call.page(body, filters, _after(chosen, _entry_key), _entry_key)

    return {"items": [_entry(call, e) for e in page], "next_token": token}


def contracts(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    chosen = call.app.metadata.export_contracts(service=body.get("service"))
    page, token = call.page(
        body,
        {"service": body.get("service")},
        _after(chosen, lambda c: [c.service]),
        lambda c: [c.service],
    )

    return {"contracts": [_contract(call, c) for c in page], "next_token": token}


def specimen(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    """The reference's shape either way: ``name``, ``specimen``, ``specimens``.

    With a name, ``specimens`` holds that one; without, every specimen, and
    ``name`` and ``specimen`` are null.
    """
    name = body.get("name")
    if name is None:
        every = call.app.metadata.specimens()
        return {"name": None, "specimen": None, "specimens": every}

    one = call.app.metadata.specimen(name)
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


def _contract(call: Call, contract: ExportContract) -> dict[str, Any]:
    return {
        "service": contract.service,
        "stream": contract.stream,
        "format": contract.format,
        "partitioning": [
            {"field": p.field, "granularity": p.granularity}
            for p in contract.partitioning
        ],
        "actions": [
            {"action": e.action, "schema_url": schema_url(call, e.schema_name)}
            for e in contract.entries
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
