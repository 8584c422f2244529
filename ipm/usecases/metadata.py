"""The metadata integrators code against, as typed calls for hosts.

The same data the metadata routes serve (``/lifecycle/list``,
``/event/catalog/list``, ``/export/contract/list``, ``/pagination/get``,
``/specimen/get``), chosen by the same filters, without the wire format:
``app.metadata.lifecycles(service="webhooks")`` and so on. The routes
shape these for the wire and page them; nothing here does I/O.
"""

from __future__ import annotations

from typing import Any

import attrs

from ipm import schemas
from ipm.domain.errors import NotFound
from ipm.domain.lifecycle import LIFECYCLES, LIFECYCLES_VERSION, Lifecycle
from ipm.domain.pagination import DEFAULT_LIMIT, MAX_LIMIT, MIN_LIMIT
from ipm.schemas import check_arguments
from ipm.usecases.catalog import CatalogEntry, EventCatalog


@attrs.frozen
class Partition:
    """How an export of a contract's stream is split: by ``field``."""

    field: str
    granularity: str


@attrs.frozen
class ExportContract:
    """What an export of one service's events holds: its stream, format,
    partitioning and the event types (with their schemas) it may carry."""

    service: str
    entries: tuple[CatalogEntry, ...]
    stream: str = "events"
    format: str = "ndjson"
    partitioning: tuple[Partition, ...] = (
        Partition("orgcode", "value"),
        Partition("recorded_at", "day"),
    )


@attrs.frozen
class PaginationConventions:
    """How every list route pages (see ``/pagination/get``)."""

    default_limit: int = DEFAULT_LIMIT
    min_limit: int = MIN_LIMIT
    max_limit: int = MAX_LIMIT


class Metadata:
    """Lifecycles, the event catalog, export contracts, pagination and
    specimens, for hosts that skip the wire format."""

    def __init__(self, catalog: EventCatalog) -> None:
        self._catalog = catalog

    version = LIFECYCLES_VERSION
    """The lifecycles' version: it changes when a definition does."""

    def lifecycles(
        self, *, service: str | None = None, name: str | None = None
    ) -> list[Lifecycle]:
        """The lifecycles the use-cases enforce, by name, filtered."""
        check_arguments("LifecycleList", service=service, name=name)
        chosen = [
            lc
            for lc in LIFECYCLES
            if service in (None, lc.service) and name in (None, lc.name)
        ]

        return sorted(chosen, key=lambda lc: lc.name)

    def catalog(
        self,
        *,
        service: str | None = None,
        action: str | None = None,
        action_prefix: str | None = None,
    ) -> list[CatalogEntry]:
        """The event types ipm and the host publish, by service and action."""
        check_arguments(
            "EventCatalogList",
            service=service,
            action=action,
            action_prefix=action_prefix,
        )
        return [
            entry
            for entry in self._catalog.entries()
            if service in (None, entry.service)
            and action in (None, entry.action)
            and (action_prefix is None or entry.action.startswith(action_prefix))
        ]

    def export_contracts(self, *, service: str | None = None) -> list[ExportContract]:
        """One contract per service that has event types, by service."""
        check_arguments("ExportContractList", service=service)
        by_service: dict[str, list[CatalogEntry]] = {}
        for entry in self._catalog.entries():
            if service in (None, entry.service):
                by_service.setdefault(entry.service, []).append(entry)

        return [ExportContract(s, tuple(by_service[s])) for s in sorted(by_service)]

    def pagination(self) -> PaginationConventions:
        return PaginationConventions()

    def specimens(self) -> dict[str, Any]:
        """Every specimen by name (copies)."""
        return {name: schemas.specimen(name) for name in schemas.specimen_names()}

    def specimen(self, name: str) -> Any:
        """A copy of the named specimen; NotFound when there is none."""
        check_arguments("SpecimenGet", always={"name": name})
        if name not in schemas.specimen_names():
            raise NotFound()

        return schemas.specimen(name)
