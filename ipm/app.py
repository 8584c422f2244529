"""The composition root: one application object per database.

:func:`open_sqlite` and :func:`open_memory` resolve every port from keyword
arguments with sane defaults; nothing is built at import time and nothing
is global, so several applications can live in one process (as the tests
do).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self, TypedDict, Unpack

import attrs

from ipm import __version__
from ipm.adapters.apikeys import ApiKeyAuthenticator
from ipm.adapters.blobs import FileBlobStore, MemoryBlobStore
from ipm.adapters.memory import MemoryStorage
from ipm.adapters.notifier import EventNotifier
from ipm.adapters.system import SortableIds, UtcClock, system_clock
from ipm.api import handlers
from ipm.api.core import Api, Headers, check_public_base_url
from ipm.api.envelope import Response
from ipm.domain.errors import InvalidRequest, Problem, type_name
from ipm.domain.events import Event, NewEvent, check_orgcode
from ipm.domain.jsoncodec import is_unicode
from ipm.domain.netguard import NetworkPolicy
from ipm.domain.pagination import PageTokens
from ipm.domain.settings import check_seconds, check_whole
from ipm.domain.timeutil import check_instant, format_utc
from ipm.ports import Authenticator, Clock, Ids, Storage
from ipm.schemas import check_arguments
from ipm.usecases.bulk import Bulk
from ipm.usecases.catalog import EventCatalog
from ipm.usecases.cdc import Cdc, Recorder
from ipm.usecases.delivery import MAX_TIMEOUT, MAX_WORKERS, DeliveryReport, Dispatcher
from ipm.usecases.kpis import NOTIFY_ATTEMPTS, Kpis
from ipm.usecases.metadata import Metadata
from ipm.usecases.webhooks import SecretBox, Webhooks

if TYPE_CHECKING:
    from ipm.api.asgi import AsgiApp
    from ipm.api.wsgi import WsgiApp
    from ipm.domain.retry import RetryPolicy
    from ipm.ports import BlobStore, Keyring, Notifier, Transport
    from ipm.usecases.bulk import BulkOptions


class PortOptions(TypedDict, total=False):
    """The options ``Application`` takes besides its named arguments.
    ``None`` is the default, as if the option were left out."""

    keyring: Keyring | None
    webhook_transport: Transport | Callable[[], Transport] | None
    retry_policy: RetryPolicy | None
    delivery_timeout: float
    delivery_workers: int
    bulk: BulkOptions | None
    blobs: BlobStore | None
    notifier: Notifier | None
    notify_attempts: int
    database_path: str | Path | None


class Options(PortOptions, total=False):
    """The options ``open_memory`` takes (and ``Application``, which types
    the first eight as its own arguments), for a type checker: a misspelt
    name or a port of the wrong type is caught before the run (where the
    check at open would say it). The table in docs/library.md, Options,
    says what each does."""

    clock: Clock
    ids: Ids | None
    authenticator: Authenticator | None
    build_id: str | None
    max_body_bytes: int
    token_key: bytes | None
    link_key: bytes | None
    public_base_url: str | None
    allow_networks: Iterable[str]


class SqliteOptions(Options, total=False):
    """:class:`Options` and the two ``open_sqlite`` adds for its file."""

    busy_timeout: float
    synchronous: Literal["normal", "full"]


log = logging.getLogger(__name__)

MAX_EVENTS_READ = 100_000
"""The most events one ``Application.events`` call returns."""

DEFAULT_MAX_BODY = 1 << 20
_TOKEN_KEY = "page_token_key"
_LINK_KEY = "bulk_link_key"


class Application:
    """ipm for one host: the wire contract and one typed method per use-case."""

    def __init__(
        self,
        *,
        storage: Storage,
        clock: Clock = system_clock,
        ids: Ids | None = None,
        authenticator: Authenticator | None = None,
        build_id: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        token_key: bytes | None = None,
        link_key: bytes | None = None,
        public_base_url: str | None = None,
        allow_networks: Iterable[str] = (),
        **given: Unpack[PortOptions],
    ) -> None:
        # Every option is checked before anything is built or written: a
        # mistake is a TypeError/ValueError here, not an AttributeError at
        # the first upload or delivery.
        options: dict[str, Any] = dict(given)
        allow_networks = _listed(allow_networks)
        named = {
            "clock": clock,
            "ids": ids,
            "authenticator": authenticator,
            "build_id": build_id,
            "max_body_bytes": max_body_bytes,
            "token_key": token_key,
            "link_key": link_key,
            "allow_networks": allow_networks,
        }
        _check_options(named)
        _check_port_options(options)
        self.storage = storage
        # A host's clock in another zone is told in UTC, as the wire is.
        clock = clock if clock is system_clock else UtcClock(clock)
        self.clock = clock
        self.ids = ids or SortableIds()
        self.version = __version__
        self.build_id = build_id or f"ipm-{__version__}"
        self.max_body_bytes = max_body_bytes
        self.public_base_url = check_public_base_url(public_base_url)
        self.allow_networks = tuple(allow_networks)
        database_path = options.pop("database_path", None)
        self.database_path = None if database_path is None else str(database_path)
        self.options = options

        self.api_keys = ApiKeyAuthenticator(storage, clock)
        self.authenticator: Authenticator = authenticator or self.api_keys
        self.tokens = PageTokens(token_key or self._deployment_key(_TOKEN_KEY))
        # TODO: the default link key is kept in the database in clear, so a
        # copy of the file (a backup) can sign upload and download links;
        # sealing it with the keyring would make bulk depend on the key file.
        self._link_key = link_key
        self.catalog = EventCatalog()
        self.metadata = Metadata(self.catalog)
        self.recorder = Recorder(clock, self.ids, self.catalog)
        self.cdc = Cdc(storage, self.recorder, self.ids, clock)
        self.kpis = Kpis(
            storage,
            self.recorder,
            clock,
            self.ids,
            options.pop("notifier", None) or EventNotifier(storage, self.recorder),
            notify_attempts=options.pop("notify_attempts", NOTIFY_ATTEMPTS),
        )
        _warn_of_memory_ports(self, options)
        self.bulk = _bulk(self, options)
        self.webhooks, self.dispatcher = _webhooks(self, options)

        self.api = Api(self)
        handlers.attach_all(self.api)

    # The wire contract -------------------------------------------------

    def handle(
        self,
        method: str,
        path: str,
        headers: Headers | None,
        body: bytes | str | None,
        *,
        scheme: str = "http",
        prefix: str = "",
        stream: bool = False,
    ) -> Response:
        """Answer one request: bytes in, the envelope out (text is taken as UTF-8).

        ``path`` is relative to ``prefix``, the path the server mounted ipm
        at; ``scheme`` and ``prefix`` go into the absolute links of answers
        unless ``public_base_url`` is set. A file (a download, an error
        report, results) comes whole in ``body``; with ``stream`` it comes
        as an :class:`ipm.api.wsgi.StreamedBody`, read as it is sent.
        """
        return self.api.handle(
            method, path, headers, body, scheme=scheme, prefix=prefix, stream=stream
        )

    @functools.cached_property
    def wsgi_app(self) -> WsgiApp:
        from ipm.api.wsgi import WsgiApp

        return WsgiApp(self)

    @functools.cached_property
    def asgi_app(self) -> AsgiApp:
        # Built once: it owns the thread pools that bound its requests and
        # uploads, which a new adapter per request would not bound at all.
        from ipm.api.asgi import AsgiApp

        return AsgiApp(self)

    def openapi(self) -> dict[str, Any]:
        from ipm.schemas.openapi import build_openapi

        # The host's event types too: the catalog's schema_url points at them.
        hosts = {
            entry.schema_name: dict(self.catalog.schema(entry.schema_name) or {})
            for entry in self.catalog.entries()
        }
        return build_openapi(self.api.routes, version=self.version, extra_schemas=hosts)

    # Typed use-cases ----------------------------------------------------

    def publish(
        self,
        orgcode: str,
        event: Mapping[str, Any] | NewEvent,
        *,
        connection: sqlite3.Connection | None = None,
    ) -> dict[str, Any]:
        """Append one host event; returns it as ``/cdc/list`` shows it."""
        return self.cdc.publish(orgcode, event, connection=connection).to_wire()

    def publish_many(
        self,
        orgcode: str,
        events: Iterable[Mapping[str, Any] | NewEvent],
        *,
        connection: sqlite3.Connection | None = None,
    ) -> list[dict[str, Any]]:
        """Append several host events in one transaction: all or none."""
        stored = self.cdc.publish_many(orgcode, events, connection=connection)
        return [event.to_wire() for event in stored]

    def events(self, orgcode: str, *, limit: int = 1000, **filters: Any) -> list[Event]:
        """The org's events in sequence order, filtered as ``EventFilter`` says."""
        from ipm.domain.events import EventFilter

        check_orgcode(orgcode)
        if type(limit) is not int or not 1 <= limit <= MAX_EVENTS_READ:
            raise InvalidRequest(
                f"limit must be an integer from 1 to {MAX_EVENTS_READ:,}",
                [Problem("/limit", f"1-{MAX_EVENTS_READ}")],
            )
        unknown = sorted(set(filters) - set(attrs.fields_dict(EventFilter)))
        if unknown:
            raise InvalidRequest(
                f"unknown filter {unknown[0]!r}", [Problem(f"/{unknown[0]}", "unknown")]
            )
        # The filters /cdc/list takes, checked as it checks them; the others
        # are a sequence bound and a recorded window.
        wire = ("service", "logical_guid", "channel_code", "action_prefix")
        check_arguments(
            "CdcList", **{name: filters.get(name) for name in (*wire, "after_sequence")}
        )
        until = filters.get("until_sequence")
        if until is not None and (type(until) is not int or not 0 <= until < 2**63):
            raise InvalidRequest(
                "until_sequence must be a sequence (an integer, at least 0)",
                [Problem("/until_sequence", "integer, at least 0")],
            )
        for name in ("recorded_from", "recorded_before"):
            moment = filters.get(name)
            if moment is not None:
                filters[name] = check_instant(moment, f"/{name}")

        return self.cdc.list(orgcode, EventFilter(**filters), limit)

    def register_event_type(
        self,
        service: str,
        action: str,
        schema: Mapping[str, Any],
        *,
        description: str = "",
        op: str | None = None,
    ) -> None:
        """Add a host event type to the catalog; its payloads are then checked."""
        self.catalog.register(service, action, schema, description=description, op=op)

    def create_api_key(self, actor: str, orgs: Iterable[str]) -> str:
        """A new API key bound to ``orgs``; returned once, stored hashed."""
        return self.api_keys.create_key(actor, orgs)

    def list_api_keys(self) -> list[dict[str, Any]]:
        """Every API key's id, actor, orgs and creation time (never a secret)."""
        return [
            {
                "key_id": record.key_id,
                "actor": record.actor,
                "orgs": list(record.orgs),
                "created_at": format_utc(record.created_at),
            }
            for record in self.api_keys.list_keys()
        ]

    def revoke_api_key(self, key_id: str) -> bool:
        """Delete an API key; whether it existed (see ``revoke_key``)."""
        return self.api_keys.revoke_key(key_id)

    # Lifetime -----------------------------------------------------------

    def deliver_pending(
        self,
        *,
        max_batches: int | None = None,
        stop: threading.Event | None = None,
        progress: Callable[[DeliveryReport], object] | None = None,
    ) -> DeliveryReport:
        """Send every webhook delivery that is due now (the dispatcher's step).

        Setting ``stop`` (say, from a signal handler) ends the call within
        the sends under way; ``progress`` hears of each group of sends as
        it is recorded: see :meth:`Dispatcher.deliver_pending`.
        """
        return self.dispatcher.deliver_pending(
            max_batches=max_batches, stop=stop, progress=progress
        )

    def close(self) -> None:
        adapter = self.__dict__.get("asgi_app")  # only if one was built
        try:
            if adapter is not None:
                adapter.close()
            self.dispatcher.close()
        finally:
            # A host's transport failing to close must not leave the store
            # open (and writable) behind a close that raised.
            self.storage.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _deployment_key(self, name: str) -> bytes:
        """A random key made once per deployment and kept in the database."""
        # Read first: every open asks, and only the first one may write.
        with self.storage.unit_of_work(write=False) as uow:
            known = uow.settings.get(name)
        if known is not None:
            return known

        with self.storage.unit_of_work() as uow:
            key = uow.settings.get(name)
            if key is None:
                key = secrets.token_bytes(32)
                uow.settings.put(name, key)
                uow.commit()

        return key


def _warn_of_memory_ports(app: Application, options: dict[str, Any]) -> None:
    """A storage of the host's own that keeps its data, with no keyring or
    blob store given and no file to put them beside, gets memory ones: its
    webhook secrets would not open after a restart, and its bulk files
    would be gone. Said once, when the application opens."""
    path = app.database_path or getattr(app.storage, "path", None)
    if isinstance(app.storage, MemoryStorage) or path:
        return
    missing = [name for name in ("keyring", "blobs") if options.get(name) is None]
    if missing:
        log.warning(
            "%s given no %s: kept in memory only, so lost when the process "
            "ends (pass %s, or database_path=, for a storage that persists)",
            type_name(app.storage),
            " or ".join(missing),
            " and ".join(f"{name}=" for name in missing),
        )


def _webhooks(app: Application, options: dict[str, Any]) -> tuple[Webhooks, Dispatcher]:
    """Subscriptions, their delivery sink on the recorder, and the dispatcher."""
    from ipm.adapters.keyring import default_keyring
    from ipm.adapters.transport import HttpTransport

    policy = NetworkPolicy.from_strings(app.allow_networks)
    path = app.database_path or getattr(app.storage, "path", None)
    secrets = SecretBox(options.pop("keyring", None) or default_keyring(path))
    webhooks = Webhooks(app.storage, app.recorder, app.clock, app.ids, secrets, policy)
    app.recorder.sinks.append(webhooks.queue_deliveries)

    # The https rule is the dispatcher's (check_endpoint); the transport
    # re-checks addresses at connect time.
    plain = attrs.evolve(policy, require_https=False)
    workers = options.pop("delivery_workers", _DELIVERY_WORKERS)
    dispatcher = Dispatcher(
        storage=app.storage,
        recorder=app.recorder,
        clock=app.clock,
        ids=app.ids,
        secrets=secrets,
        transport=options.pop("webhook_transport", None)
        # As many idle connections kept per endpoint as there are workers:
        # with fewer, each batch to one endpoint opened new ones.
        or (lambda: HttpTransport(policy=plain, max_idle_per_endpoint=workers)),
        policy=policy,
        retry=options.pop("retry_policy", None),
        timeout=options.pop("delivery_timeout", _DELIVERY_TIMEOUT),
        workers=workers,
    )

    return webhooks, dispatcher


def _sweep(blobs: FileBlobStore) -> None:
    try:
        blobs.sweep()
    except OSError as error:
        log.warning("could not sweep unfinished blob writes: %s", error)


def _bulk(app: Application, options: dict[str, Any]) -> Bulk:
    """Bulk jobs; blobs beside the database file unless the host brings some."""
    blobs = options.pop("blobs", None)
    path = app.database_path or getattr(app.storage, "path", None)
    if blobs is None and path and path != ":memory:":
        blobs = FileBlobStore(f"{path}.blobs")
        # In the background: opening stays fast however many jobs there are.
        threading.Thread(
            target=_sweep, args=(blobs,), name="ipm-blob-sweep", daemon=True
        ).start()

    return Bulk(
        storage=app.storage,
        recorder=app.recorder,
        clock=app.clock,
        ids=app.ids,
        blobs=blobs or MemoryBlobStore(),
        link_key=app._link_key or (lambda: app._deployment_key(_LINK_KEY)),
        options=options.pop("bulk", None),
        kpis=lambda: getattr(app, "kpis", None),
    )


def open_sqlite(
    path: str | Path = "ipm.sqlite", **options: Unpack[SqliteOptions]
) -> Application:
    """ipm on one SQLite file (created and migrated as needed)."""
    from ipm.adapters.sqlite import open_storage

    if not isinstance(path, str | os.PathLike):
        # None would become a database file named "None".
        raise TypeError(f"path must be a str or a Path, not {type(path).__name__}")
    rest: dict[str, Any] = dict(options)
    busy_timeout = rest.pop("busy_timeout", 30.0)
    synchronous = rest.pop("synchronous", "normal")
    # Refused before the file is opened, so a typo leaves nothing running.
    check_public_base_url(rest.get("public_base_url"))
    check_seconds("busy_timeout", busy_timeout, zero=True, most=_MOST_BUSY_TIMEOUT)
    if "allow_networks" in rest:
        rest["allow_networks"] = _listed(rest["allow_networks"])
    _check_options({k: v for k, v in rest.items() if k in _ARGUMENTS})
    _check_port_options({k: v for k, v in rest.items() if k not in _ARGUMENTS})
    storage = open_storage(path, busy_timeout=busy_timeout, synchronous=synchronous)
    rest.setdefault("database_path", storage.path)  # absolute, see there
    sampled = _SAMPLED.set(rest.get("ids"))
    try:
        return Application(storage=storage, **rest)
    except BaseException:
        # Nothing half-built keeps the file open or a checkpoint thread alive.
        storage.close()
        raise
    finally:
        _SAMPLED.reset(sampled)


def open_memory(**options: Unpack[Options]) -> Application:
    """ipm in memory: real behaviour, nothing kept after ``close()``."""
    return Application(storage=MemoryStorage(), **options)


_ARGUMENTS = frozenset(
    {
        "clock",
        "ids",
        "authenticator",
        "build_id",
        "max_body_bytes",
        "token_key",
        "link_key",
        "public_base_url",
        "allow_networks",
    }
)
"""Application's named keyword arguments (the rest are port options)."""

_SQLITE_OPTIONS = frozenset({"busy_timeout", "synchronous"})
"""Options open_sqlite takes for its file; open_memory has none."""

_LEAST_KEY_BYTES = 16
_MOST_BUSY_TIMEOUT = 3600.0
_DELIVERY_TIMEOUT = 10.0
_DELIVERY_WORKERS = 8

_PORT_OPTIONS: dict[str, tuple[str, ...]] = {
    "database_path": (),
    "notifier": ("notify",),
    "notify_attempts": (),
    "bulk": (),
    "blobs": ("write", "read", "exists", "delete"),
    "keyring": ("current", "get"),
    "webhook_transport": (),
    "retry_policy": (),
    "delivery_timeout": (),
    "delivery_workers": (),
}
"""Every option besides the named arguments, with the methods a port needs."""


_CLOCK_RANGE = (
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(9000, 1, 1, tzinfo=UTC),
)
"""The times a clock may tell at open (from, before)."""


def _check_options(named: Mapping[str, Any]) -> None:
    """Application's named arguments (those given), checked."""
    clock = named.get("clock", system_clock)
    if not callable(clock):
        raise TypeError("clock must be a callable returning an aware datetime")
    now = clock()
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise TypeError("clock must return an aware datetime")
    if not _CLOCK_RANGE[0] <= now < _CLOCK_RANGE[1]:
        # Signing needs Unix seconds >= 0, and links, leases and retention
        # add days to the time: datetime's ends would overflow (a 500).
        raise ValueError(
            f"clock must return a time from {_CLOCK_RANGE[0].year} to "
            f"{_CLOCK_RANGE[1].year - 1} in UTC, not {now.isoformat()}"
        )
    ids = named.get("ids")
    if ids is not None and not callable(ids):
        raise TypeError("ids must be a callable taking a prefix")
    if ids is not None:
        _check_ids(ids)
    authenticator = named.get("authenticator")
    if authenticator is not None and not hasattr(authenticator, "authenticate"):
        raise TypeError("authenticator must have an authenticate(headers) method")
    _refuse_class("authenticator", authenticator, ["authenticate"])
    build_id = named.get("build_id")
    if build_id is not None and (type(build_id) is not str or not build_id):
        raise TypeError("build_id must be a non-empty str")
    if build_id is not None and not is_unicode(build_id):
        # Every answer carries it: one UTF-8 cannot hold would fail them all.
        raise ValueError("build_id must be valid Unicode (no lone surrogate)")
    check_whole("max_body_bytes", named.get("max_body_bytes", DEFAULT_MAX_BODY), 1)
    for name in ("token_key", "link_key"):
        key = named.get(name)
        if key is not None and type(key) is not bytes:
            raise TypeError(f"{name} must be bytes")
        if key is not None and len(key) < _LEAST_KEY_BYTES:
            raise ValueError(f"{name} must be at least {_LEAST_KEY_BYTES} bytes")
    networks = named.get("allow_networks", ())
    if networks is None:
        raise TypeError("allow_networks must be a list of CIDR strings (or ())")
    if isinstance(networks, str | bytes):
        # A lone "10.0.0.0/8" would be read as ten one-letter networks.
        raise TypeError("allow_networks must be a list of CIDR strings, not one")
    if not all(isinstance(network, str) for network in networks):
        raise TypeError("allow_networks must hold CIDR strings")
    NetworkPolicy.from_strings(networks)  # a malformed one raises ValueError


def _listed(networks: Any) -> Any:
    """``allow_networks`` as a tuple when it is some other iterable: a
    generator checked first would be empty when kept."""
    if isinstance(networks, str | bytes) or not isinstance(networks, Iterable):
        return networks  # refused by _check_options, as it is

    return tuple(networks)


def _check_port_options(options: Mapping[str, Any]) -> None:
    """Refuse unknown options and ports that lack what ipm will call."""
    from ipm.domain.retry import RetryPolicy
    from ipm.usecases.bulk import BulkOptions

    unknown = sorted(set(options) - set(_PORT_OPTIONS))
    if unknown:
        sqlite_only = [name for name in unknown if name in _SQLITE_OPTIONS]
        others = [name for name in unknown if name not in _SQLITE_OPTIONS]
        said = [f"unknown option(s) for ipm: {', '.join(others)}"] if others else []
        if sqlite_only:
            said.append(f"{', '.join(sqlite_only)}: an option of open_sqlite only")
        raise TypeError("; ".join(said))

    for name, value in options.items():
        needs = _PORT_OPTIONS[name]
        missing = [
            method for method in needs if not callable(getattr(value, method, None))
        ]
        if value is not None and missing:
            lacking = ", ".join(f"{method}()" for method in missing)
            raise TypeError(f"{name} lacks {lacking}")
        if needs:
            _refuse_class(name, value, needs)

    database_path = options.get("database_path")
    if database_path is not None and not isinstance(database_path, str | os.PathLike):
        # 123 would put the key file 123.key in the working folder.
        raise TypeError("database_path must be a str or a Path")
    check_whole("notify_attempts", options.get("notify_attempts", NOTIFY_ATTEMPTS), 1)
    # Named as the host wrote them, not as the dispatcher calls them.
    workers = options.get("delivery_workers", _DELIVERY_WORKERS)
    check_whole("delivery_workers", workers, 1, MAX_WORKERS)
    timeout = options.get("delivery_timeout", _DELIVERY_TIMEOUT)
    check_seconds("delivery_timeout", timeout, most=MAX_TIMEOUT)

    kinds = {"bulk": BulkOptions, "retry_policy": RetryPolicy}
    for name, kind in kinds.items():
        value = options.get(name)
        if value is not None and not isinstance(value, kind):
            raise TypeError(
                f"{name} must be a {kind.__name__}, not {type(value).__name__}"
            )
    transport = options.get("webhook_transport")
    if transport is not None and not (
        callable(getattr(transport, "send", None)) or callable(transport)
    ):
        raise TypeError("webhook_transport must have send(request) or make one")
    if isinstance(transport, type) and not callable(getattr(transport, "send", None)):
        # Built, it could send nothing: every delivery would wait on it.
        raise TypeError(
            f"webhook_transport {transport.__name__} has no send(request) method"
        )
    if transport is not None and not _callable_bare(transport):
        # A class or factory that needs arguments would fail at the first
        # send, as a failed attempt of every delivery, until the webhooks
        # were disabled: said now instead.
        raise TypeError(
            "webhook_transport is built with no arguments when the first "
            f"delivery goes out, and {getattr(transport, '__name__', transport)!r} "
            "needs some: pass an instance, or a factory such as "
            "lambda: MyTransport(policy=...)"
        )


# At most 128 characters, as every id field of ipm's schemas; a letter or
# digit somewhere, so no id is "." or "..", a path segment in a blob key.
_ID = re.compile(r"(?=[^A-Za-z0-9]*[A-Za-z0-9])[A-Za-z0-9_.:~-]{1,128}")


_SAMPLED: contextvars.ContextVar[object] = contextvars.ContextVar("ipm_ids_sampled")
"""The ids generator open_sqlite has sampled, while it builds the
Application that would otherwise sample it again: one sample per open."""


def _check_ids(ids: Callable[[str], object]) -> None:
    """One id made now (documented: a host's first id is its second): a
    wrong kind would otherwise surface as 500s or as 400s blaming clients."""
    if _SAMPLED.get(None) is ids:
        return
    sample = ids("evt")
    if not isinstance(sample, str) or not _ID.fullmatch(sample):
        # Ids travel in links, blob keys and page tokens.
        raise TypeError(
            "ids must return a str of 1 to 128 letters, digits and _ . : ~ - "
            f"(with a letter or digit), not {_shown(sample)}"
        )


def _shown(value: object) -> str:
    return repr(value)[:40] if isinstance(value, str) else type(value).__name__


def _refuse_class(name: str, value: object, methods: Iterable[str]) -> None:
    """A port given as its class has the methods unbound: every call fails.
    A class whose methods need no instance (static or class methods) is a
    port as it stands."""
    if not isinstance(value, type):
        return
    unbound = [
        method
        for method in methods
        if not isinstance(
            inspect.getattr_static(value, method, None), staticmethod | classmethod
        )
    ]
    if unbound:
        raise TypeError(
            f"{name} must be an instance, not the class {value.__name__}: "
            f"pass {value.__name__}(...)"
        )


def _callable_bare(transport: object) -> bool:
    """Whether a webhook_transport that ipm builds could be built with no
    arguments (an instance with send() is used as it is)."""
    if callable(getattr(transport, "send", None)) and not isinstance(transport, type):
        return True
    try:
        inspect.signature(transport).bind()  # type: ignore[arg-type]
    except TypeError:
        return False
    except ValueError:
        return True  # no signature to read (a builtin): let the first send say

    return True
