"""Handlers of the ``/webhook/*`` routes: subscriptions and replay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ipm.api.call import Call
from ipm.api.convert import structure
from ipm.domain.webhooks import Webhook
from ipm.usecases.webhooks import CreateWebhook

if TYPE_CHECKING:
    from ipm.api.core import Api

_ENVELOPE = ("request_context", "reason", "source_refs")


def webhook_create(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    command = structure(body, CreateWebhook, drop=_ENVELOPE)
    created = call.app.webhooks.create(call.orgcode, command, call.audit)

    # The secret is shown here and never again.
    return {**created.webhook.to_wire(), "secret": created.secret}


def webhook_get(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    webhook = call.app.webhooks.get(call.orgcode, body["webhook_id"])

    return {"webhook": webhook.to_wire()}


def webhook_list(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    status = body.get("status")

    def fetch(after: tuple[Any, ...] | None, n: int) -> list[Webhook]:
        start = None if after is None else str(after[0])
        return call.app.webhooks.list(call.orgcode, status=status, after=start, limit=n)

    page, token = call.page(
        body, {"status": status}, fetch, lambda webhook: [webhook.webhook_id]
    )

    return {"items": [webhook.to_wire() for webhook in page], "next_token": token}


def webhook_status_set(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    webhook = call.app.webhooks.set_status(
        call.orgcode,
        body["webhook_id"],
        body["status"],
        body.get("expected_revision"),
        call.audit,
    )

    return {"webhook": webhook.to_wire()}


def webhook_replay(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    # The use case reads the window (bounds rounded up to the microsecond)
    # and refuses an inverted one (a 400, not zero events).
    outcome = call.app.dispatcher.replay(
        call.orgcode,
        body["webhook_id"],
        since=body.get("since"),
        until=body.get("until"),
        max_events=body.get("max_events", 100),
        audit=call.audit,
    )

    return outcome.to_wire()


def attach(api: Api) -> None:
    api.attach("POST /webhook/create", webhook_create)
    api.attach("POST /webhook/get", webhook_get)
    api.attach("POST /webhook/list", webhook_list)
    api.attach("POST /webhook/status/set", webhook_status_set)
    api.attach("POST /webhook/replay", webhook_replay)
