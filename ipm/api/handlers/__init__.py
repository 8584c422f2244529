"""Route handlers, one module per capability; each offers ``attach(api)``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ipm.api.handlers import bulk, cdc, documents, kpis, metadata, webhooks

if TYPE_CHECKING:
    from ipm.api.core import Api


def attach_all(api: Api) -> None:
    for module in (metadata, documents, cdc, kpis, webhooks, bulk):
        module.attach(api)
