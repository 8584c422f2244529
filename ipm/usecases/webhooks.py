"""Webhook subscriptions: create, read, list, change status, queue deliveries.

Every change is written with the CDC event that records it, in one unit
of work. :meth:`Webhooks.queue_deliveries` is a :class:`Recorder` sink: it
runs inside the transaction of every event recorded, so an event and the
deliveries it queues commit together or not at all (the outbox).

Secrets are sealed with AES-GCM under a key from the :class:`Keyring`
before they reach storage, bound to the org and webhook id they belong to
(a sealed secret copied onto another row does not open). The only
plaintext copy a caller ever sees is the one in :class:`CreatedWebhook`.

Hosts may call these methods directly, skipping the wire. Each checks its
arguments first, with the route's own request schema where there is a
route, so a direct call is refused (an :class:`InvalidRequest` naming the
argument) wherever the wire would refuse the request, and before anything
is written.
"""

from __future__ import annotations

import builtins
import logging
import operator
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ipm import signing
from ipm.domain.errors import (
    InvalidRequest,
    NotFound,
    Problem,
    StorageUnavailable,
    check_revision,
    type_name,
)
from ipm.domain.events import NO_AUDIT, AuditLike, Event, EventFilter, check_orgcode
from ipm.domain.jsoncodec import is_unicode
from ipm.domain.netguard import NetworkPolicy
from ipm.domain.settings import check_command
from ipm.domain.webhooks import (
    DELIVERY_STATUSES,
    MAX_DESCRIPTION,
    SEAL_VERSION,
    Delivery,
    DeliveryAttempt,
    Routes,
    SubscriptionFilter,
    Webhook,
    check_endpoint,
    check_filters,
    check_options,
    is_key_id,
    sealing_key_id,
)
from ipm.ports import Clock, Ids, Keyring, Storage, UnitOfWork
from ipm.schemas import check_arguments
from ipm.usecases.cdc import Recorder, checked_audit

log = logging.getLogger(__name__)

_NONCE_BYTES = 12

MAX_LIST_LIMIT = 10_000
"""The most webhooks or deliveries one direct list call returns."""


class SecretUnavailable(Exception):
    """A sealed secret that cannot be opened (wrong key, key lost, tampering).

    Deliberately not an :class:`~ipm.domain.errors.IpmError`: it is a
    deployment fault, never a caller's, and it carries no secret.
    """


class KeyringFailed(SecretUnavailable):
    """The keyring raised instead of answering (a key service down): likely
    to pass, and nothing to do with the webhook or its endpoint."""


@attrs.frozen
class SecretBox:
    """Seals secrets with AES-GCM; the key id travels with each sealed secret."""

    keyring: Keyring

    def seal(self, secret: str, context: str) -> bytes:
        try:
            current = self.keyring.current()
        except StorageUnavailable:
            raise
        except Exception as error:
            # The host's key service is down (say): the webhook cannot be
            # stored with its secret just now, as with a full disk.
            raise _cannot_seal(_failed(error)) from None
        key_id, key = current  # another shape is the host's bug, not an outage
        if not is_key_id(key_id):
            raise TypeError(
                "the keyring's current key id must be 1-255 printable ASCII characters"
            )
        if not _aes_256(key):
            # The host's keyring is wrong: a deployment fault, said plainly.
            raise TypeError("the keyring's current key must be 32 bytes (AES-256)")
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(key).encrypt(nonce, secret.encode(), context.encode())
        label = key_id.encode("ascii")

        return bytes([SEAL_VERSION, len(label)]) + label + nonce + sealed

    def lacking(self, key_ids: builtins.set[str]) -> builtins.list[str]:
        """The ids in ``key_ids`` the keyring has no usable key for (lost, or
        a key file from elsewhere put in place of the one that sealed them);
        a KeyringFailed when it fails."""
        return [key_id for key_id in sorted(key_ids) if not _aes_256(self._key(key_id))]

    def _key(self, key_id: str) -> bytes | None:
        """The keyring's key by id, None when it has none (lost); a
        KeyringFailed when it fails (a key service down)."""
        try:
            return self.keyring.get(key_id)
        except StorageUnavailable:
            raise  # the machine's shortage, not a lost key: said as such
        except KeyError:
            return None  # a keyring kept as a mapping: no such key, as None says
        except Exception as error:
            raise KeyringFailed(_failed(error)) from None

    def open(self, sealed: bytes, context: str) -> str:
        key_id = sealing_key_id(sealed)
        if key_id is None:
            raise SecretUnavailable("unknown sealed-secret format")

        end = 2 + sealed[1]
        key = self._key(key_id)  # KeyringFailed: the others' deliveries go on
        if key is None:
            raise SecretUnavailable("the key that sealed this secret is missing")
        if not _aes_256(key):
            raise SecretUnavailable("the keyring's key is not 32 bytes (AES-256)")

        nonce, body = sealed[end : end + _NONCE_BYTES], sealed[end + _NONCE_BYTES :]
        try:
            return AESGCM(key).decrypt(nonce, body, context.encode()).decode()
        except (InvalidTag, ValueError):
            raise SecretUnavailable("the sealed secret does not open") from None


def _named(keyring: Keyring) -> str:
    """A keyring as a log line may name it: its type, and a key file's
    path; never its repr, which a host's class may fill with its keys."""
    path = getattr(keyring, "path", None)
    kind = type_name(keyring)

    return f"{kind} {path}" if isinstance(path, str | os.PathLike) else kind


def _cannot_seal(reason: str) -> StorageUnavailable:
    return StorageUnavailable(
        f"webhook secrets cannot be sealed just now: {reason}; nothing was "
        "stored, try again later"
    )


def _failed(error: Exception) -> str:
    return f"the keyring failed ({type_name(error)})"


def sealing_key_ids(uow: UnitOfWork) -> builtins.set[str] | None:
    """The ids of the keys that sealed the secrets of every org's webhooks
    that are not disabled; None from a host's storage that cannot tell."""
    listing = getattr(uow.webhooks, "sealing_key_ids", None)
    if listing is None:
        return None  # a storage written before the port asked for it

    return cast(builtins.set[str], listing())


def _aes_256(key: object) -> bool:
    return isinstance(key, bytes) and len(key) == 32


def secret_context(orgcode: str, webhook_id: str) -> str:
    """What a sealed secret is bound to: opening it elsewhere fails."""
    return f"ipm/webhook/{orgcode}/{webhook_id}"


@attrs.frozen
class CreateWebhook:
    """What a caller asks for when subscribing."""

    endpoint_url: str
    event_filters: Sequence[SubscriptionFilter]  # a list or a tuple
    signing_algorithm: str = "hmac-sha256"
    secret: str | None = attrs.field(default=None, repr=False)
    ordering_key: str | None = None
    description: str | None = None


@attrs.frozen
class CreatedWebhook:
    """A new webhook and its secret, shown this once.

    ``secret`` is the ``whsec_`` secret for ``hmac-sha256``, or the
    ``whpk_`` public key that verifies an ``ed25519`` webhook.
    """

    webhook: Webhook
    secret: str = attrs.field(repr=False)


@attrs.define
class Webhooks:
    storage: Storage
    recorder: Recorder
    clock: Clock
    ids: Ids
    secrets: SecretBox
    policy: NetworkPolicy
    _last_routes: Routes | None = attrs.field(default=None, init=False, repr=False)
    _unrouted: tuple[Webhook, ...] | None = attrs.field(
        default=None, init=False, repr=False
    )
    _unchecked_said: bool = attrs.field(default=False, init=False, repr=False)

    def create(
        self, orgcode: str, command: CreateWebhook, audit: AuditLike | None = None
    ) -> CreatedWebhook:
        """Store a new active webhook; its secret is returned only here."""
        check_orgcode(orgcode)
        check_command(command, CreateWebhook)
        check_arguments("WebhookCreate", **_create_fields(command))
        filters = check_filters(command.event_filters)
        check_options(command.signing_algorithm, command.ordering_key)
        check_endpoint(command.endpoint_url, self.policy)
        _check_description(command.description)
        stored_secret, shown, last4 = _secrets_for(command)
        self._check_keyring()

        now = self.clock()
        webhook_id = self.ids("wh")
        context = secret_context(orgcode, webhook_id)
        webhook = Webhook(
            webhook_id=webhook_id,
            orgcode=orgcode,
            endpoint_url=command.endpoint_url,
            event_filters=filters,
            signing_algorithm=command.signing_algorithm,
            sealed_secret=self.secrets.seal(stored_secret, context),
            secret_last4=last4,
            created_at=now,
            updated_at=now,
            ordering_key=command.ordering_key,
            description=command.description,
        )
        with self.storage.unit_of_work() as uow:
            uow.webhooks.add(webhook)
            self.recorder.record_own(
                uow,
                orgcode,
                "webhook.created",
                webhook.to_wire(),
                op="c",
                logical_guid=webhook_id,
                audit=audit,
            )
            uow.commit()

        log.info("webhook %s created for %s", webhook_id, orgcode)
        return CreatedWebhook(webhook, shown)

    def _check_keyring(self) -> None:
        """Refuse to seal while the keyring lacks a key that sealed the
        secret of a webhook that is not disabled.

        A key file lost or swapped would otherwise be replaced by a new key
        without a word: the webhooks sealed before could never sign again,
        and once the right file is restored, those sealed meanwhile could
        not. Restoring the key ends the refusal; so does disabling the
        webhooks it sealed, when it is lost for good.
        """
        with self.storage.unit_of_work(write=False) as uow:
            known = sealing_key_ids(uow)
        if known is None and not self._unchecked_said:
            # Sealing goes on unchecked, as it did before the check: said once.
            log.warning(
                "the storage's webhooks cannot list sealing_key_ids(): a lost "
                "key file is not caught before a secret is sealed"
            )
            self._unchecked_said = True
        try:
            lacking = self.secrets.lacking(known or set())
        except KeyringFailed as failed:
            raise _cannot_seal(str(failed)) from None
        if not lacking:
            return

        log.error(
            "the keyring (%s) lacks the key(s) %s that sealed secrets of webhooks "
            "that are not disabled: no secret is sealed until they are restored "
            "(or those webhooks disabled)",
            _named(self.secrets.keyring),
            ", ".join(lacking),
        )
        raise StorageUnavailable(
            "webhook secrets cannot be sealed: the keyring lacks the key that "
            "sealed the secrets of webhooks that are not disabled (the key file "
            "beside the database lost or replaced?); nothing was stored. "
            "Restore the key, or disable those webhooks if it is lost for good"
        )

    def _check_key_of(self, webhook: Webhook) -> None:
        """A disabled webhook whose key is lost stays disabled: active, it
        would stop every org's webhooks from being created (see
        :meth:`_check_keyring`), and it could not sign anyway."""
        key_id = sealing_key_id(webhook.sealed_secret)
        try:
            lacking = self.secrets.lacking({key_id} if key_id else set())
            if not lacking:
                # A key held in memory may be on no disk any more (a key file
                # replaced): the keyring's current() says so, as before a seal.
                self.secrets.keyring.current()
        except StorageUnavailable:
            raise
        except Exception as error:
            # The host's key service failing (KeyringFailed says so already).
            failed = str(error) if isinstance(error, KeyringFailed) else _failed(error)
            raise StorageUnavailable(
                f"the webhook cannot leave disabled just now: {failed}; try again later"
            ) from None
        if lacking or key_id is None:
            raise StorageUnavailable(
                "the webhook's secret cannot be opened on this deployment (the "
                "key that sealed it is missing from the keyring): it stays "
                "disabled until the key file is restored"
            )

    def get(self, orgcode: str, webhook_id: str) -> Webhook:
        check_orgcode(orgcode)
        check_arguments("WebhookGet", webhook_id=webhook_id)

        with self.storage.unit_of_work(write=False) as uow:
            return _load(uow, orgcode, webhook_id)

    def list(
        self,
        orgcode: str,
        *,
        status: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Webhook]:
        """The org's webhooks in id order (creation order), after ``after``.

        ``limit`` is clamped to 1..:data:`MAX_LIST_LIMIT`, as the wire
        clamps its page size.
        """
        check_orgcode(orgcode)
        check_arguments("WebhookList", status=status)
        if after is not None and not (isinstance(after, str) and is_unicode(after)):
            raise InvalidRequest(
                "after must be a webhook id", [Problem("/after", "must be a string")]
            )
        count = clamp_list_limit(limit)

        with self.storage.unit_of_work(write=False) as uow:
            return uow.webhooks.list(orgcode, status, after, count)

    def set_status(
        self,
        orgcode: str,
        webhook_id: str,
        status: str,
        expected_revision: str | None,
        audit: AuditLike | None = None,
    ) -> Webhook:
        """Move a webhook along its lifecycle; needs the current revision."""
        check_orgcode(orgcode)
        check_arguments(
            "WebhookStatusSet",
            webhook_id=webhook_id,
            status=status,
            expected_revision=expected_revision,
        )
        audit = NO_AUDIT if audit is None else checked_audit(audit)
        with self.storage.unit_of_work() as uow:
            webhook = _load(uow, orgcode, webhook_id)
            check_revision(webhook.revision, expected_revision, "webhook")
            changed = webhook.move_to(status, self.clock())
            if webhook.status == "disabled" and changed.status != "disabled":
                self._check_key_of(webhook)
            uow.webhooks.save(changed)
            self.recorder.record_own(
                uow,
                orgcode,
                "webhook.status_changed",
                {
                    "webhook_id": webhook_id,
                    "from": webhook.status,
                    "to": changed.status,
                    "reason": audit.reason,
                    "revision": changed.revision,
                },
                logical_guid=webhook_id,
                audit=audit,
            )
            uow.commit()

        log.info("webhook %s: %s -> %s", webhook_id, webhook.status, changed.status)
        return changed

    def queue_deliveries(self, uow: UnitOfWork, event: Event) -> None:
        """The :class:`Recorder` sink: queue ``event`` for every webhook it matches."""
        for webhook in self._reached(uow.webhooks.queuing(event.orgcode), event):
            uow.deliveries.add(Delivery.queue(self.ids("msg"), webhook, event))

    def _reached(
        self, webhooks: builtins.list[Webhook], event: Event
    ) -> Sequence[Webhook]:
        """The webhooks ``event`` queues a delivery for, in their order.

        Routes are built once for a run of events that meet the same
        webhooks (a slice's lines, a host's batch), not once per event; the
        first event to meet a list is matched webhook by webhook instead,
        since building routes costs several times that, and a change of a
        webhook (which records an event) meets a new list every time. The
        webhooks are compared item by item, not by the list's identity: a
        store may hand out one list changed in place.
        """
        routes = self._last_routes
        if routes is not None and _same_items(routes.webhooks, webhooks):
            return routes.reached_by(event)
        unrouted = self._unrouted
        if unrouted is not None and _same_items(unrouted, webhooks):
            self._unrouted = None
            self._last_routes = routes = Routes(webhooks)
            return routes.reached_by(event)

        self._unrouted = tuple(webhooks)
        return [webhook for webhook in webhooks if webhook.matches(event)]

    def deliveries(
        self,
        orgcode: str,
        webhook_id: str,
        *,
        status: str | None = None,
        limit: int = 1000,
        after_seq: int = 0,
    ) -> builtins.list[Delivery]:
        """A webhook's deliveries in queue order (for hosts and operators).

        ``limit`` is clamped to 1..:data:`MAX_LIST_LIMIT`. To read on, pass
        the ``seq`` of the last delivery of a page as ``after_seq``.
        """
        check_orgcode(orgcode)
        check_arguments("WebhookGet", webhook_id=webhook_id)
        if status is not None and status not in DELIVERY_STATUSES:
            raise InvalidRequest(
                "status is not a delivery status",
                [Problem("/status", _one_of(DELIVERY_STATUSES))],
            )
        count = clamp_list_limit(limit)
        if type(after_seq) is not int or not 0 <= after_seq < 2**63:
            raise InvalidRequest(
                "after_seq must be the seq of a delivery (an integer, at least 0)",
                [Problem("/after_seq", "integer, at least 0")],
            )

        with self.storage.unit_of_work(write=False) as uow:
            _load(uow, orgcode, webhook_id)
            return uow.deliveries.list(webhook_id, status, count, after_seq)

    def attempts(
        self, orgcode: str, delivery_id: str
    ) -> builtins.list[DeliveryAttempt]:
        """Every recorded try of one delivery, oldest first."""
        check_orgcode(orgcode)
        if not (
            isinstance(delivery_id, str)
            and 1 <= len(delivery_id) <= 128
            and is_unicode(delivery_id)
        ):
            raise InvalidRequest(
                "delivery_id is malformed",
                [Problem("/delivery_id", "must be a string of 1 to 128 characters")],
            )

        with self.storage.unit_of_work(write=False) as uow:
            delivery = uow.deliveries.get(delivery_id)
            if delivery is None or delivery.orgcode != orgcode:
                raise NotFound("delivery")
            return uow.deliveries.attempts(delivery_id)


def clamp_list_limit(limit: object) -> int:
    """A direct call's ``limit``, clamped to 1..MAX_LIST_LIMIT like a wire page.

    What JSON Schema calls an integer is accepted (``5`` or ``5.0``, never
    ``True``); the clamp keeps a huge value from overflowing SQLite and
    makes 0 and negatives mean 1 on every storage.
    """
    if isinstance(limit, bool) or not isinstance(limit, (int, float)):
        raise _not_an_integer("limit")
    if isinstance(limit, float) and not limit.is_integer():
        raise _not_an_integer("limit")

    return max(1, min(MAX_LIST_LIMIT, int(limit)))


def _not_an_integer(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"{name} must be an integer", [Problem(f"/{name}", "must be an integer")]
    )


def _create_fields(command: CreateWebhook) -> dict[str, Any]:
    """A create command as the wire carries it, for the request schema."""
    filters: Any = command.event_filters
    if isinstance(filters, (list, tuple)):
        filters = [
            rule.to_wire() if isinstance(rule, SubscriptionFilter) else rule
            for rule in filters
        ]

    return {
        "endpoint_url": command.endpoint_url,
        "event_filters": filters,
        "signing_algorithm": command.signing_algorithm,
        "secret": command.secret,
        "ordering_key": command.ordering_key,
        "description": command.description,
    }


def _one_of(choices: tuple[str, ...]) -> str:
    return "must be one of " + ", ".join(f'"{choice}"' for choice in choices)


def _load(uow: UnitOfWork, orgcode: str, webhook_id: str) -> Webhook:
    webhook = uow.webhooks.get(orgcode, webhook_id)
    if webhook is None:
        raise NotFound("webhook")

    return webhook


def _same_items(known: Sequence[Webhook], webhooks: Sequence[Webhook]) -> bool:
    """Whether two sequences hold the very same webhook objects, in order."""
    return len(known) == len(webhooks) and all(map(operator.is_, known, webhooks))


def _check_description(description: str | None) -> None:
    if description is not None and len(description) > MAX_DESCRIPTION:
        raise InvalidRequest(
            "description is too long",
            [Problem("/description", f"at most {MAX_DESCRIPTION} characters")],
        )


def _secrets_for(command: CreateWebhook) -> tuple[str, str, str]:
    """(what is sealed and stored, what the caller is shown once, last4)."""
    if command.signing_algorithm == "ed25519":
        if command.secret is not None:
            raise InvalidRequest(
                "an ed25519 webhook gets a generated key pair",
                [Problem("/secret", "not allowed with ed25519")],
            )
        private, public = signing.generate_ed25519_keypair()
        return private, public, public[-4:]

    # Only an absent secret is generated: "" is a mistake, not a request.
    secret = signing.generate_secret() if command.secret is None else command.secret
    _check_hmac_secret(secret)

    return secret, secret, secret[-4:]


def _check_hmac_secret(secret: str) -> None:
    # The message names the rule, never the value: it may be echoed or logged.
    rule = (
        f"must be whsec_ and strict base64 of {signing.MIN_SECRET_BYTES}-"
        f"{signing.MAX_SECRET_BYTES} bytes"
    )
    if not secret.startswith("whsec_"):
        raise InvalidRequest("secret is invalid", [Problem("/secret", rule)])
    try:
        signing.secret_last4(secret)
    except signing.SecretError:
        raise InvalidRequest("secret is invalid", [Problem("/secret", rule)]) from None


_REPLAY_PAGE = 500


def replay_events(
    uow: UnitOfWork,
    webhook: Webhook,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[Event]:
    """Up to ``limit`` events ``webhook`` matches, recorded in the window,
    in sequence order: what ``/webhook/replay`` sends again."""
    services = {rule.service for rule in webhook.event_filters}
    service = next(iter(services)) if len(services) == 1 else None
    prefix = None
    if len(webhook.event_filters) == 1:
        # The storage checks the one filter's action (as a prefix: webhook
        # .matches() then tells an exact action), so only the events it
        # names are read whole: decoding every event of a large org to
        # match it here took seconds for a filter that matched nothing.
        (rule,) = webhook.event_filters
        prefix = rule.action if rule.action is not None else rule.action_prefix

    found: list[Event] = []
    after = 0
    # The window is on recorded_at, checked per event by the storage (not
    # "stop at until": clocks of several writers may record a later
    # sequence a little earlier).
    # TODO: without an index on recorded_at the storage still reads the
    # org's events before ``since`` (in SQLite, not Python); an index would
    # cost every write a page.
    while len(found) < limit:
        where = EventFilter(
            service=service,
            action_prefix=prefix,
            after_sequence=after,
            recorded_from=since,
            recorded_before=until,
        )
        page = uow.events.list(webhook.orgcode, where, _REPLAY_PAGE)
        if not page:
            break
        for event in page:
            if webhook.matches(event):
                found.append(event)
                if len(found) == limit:
                    break
        after = page[-1].sequence

    return found
