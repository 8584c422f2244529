"""Sample events for tests; imports without pytest."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ipm.domain.events import Audit, NewEvent, SourceRef
from ipm.testing.clock import T0

__all__ = ["new_event"]


def new_event(n: int, **overrides: Any) -> NewEvent:
    """A plausible retail event numbered ``n``."""
    fields: dict[str, Any] = {
        "event_id": f"evt-{n}",
        "service": "pos",
        "action": "sale.created",
        "payload": {"sale_id": n, "total_minor": 100 * n, "currency": "EUR"},
        "occurred_at": T0 + timedelta(seconds=n),
        "logical_guid": f"sale-{n}",
        "channel_code": "pos_generic",
        "audit": Audit(actor="till-7", source_refs=(SourceRef("till", "7"),)),
    }
    fields.update(overrides)

    return NewEvent(**fields)
