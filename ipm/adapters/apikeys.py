"""The built-in authenticator: API keys stored only as hashes.

A key reads ``ipm_<key_id>_<secret>``. The id finds the record; the secret
is checked against its stored SHA-256 with a constant-time compare. The
secret carries 256 random bits, so a fast hash is enough: nothing about it
can be guessed offline the way a password could.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping

from ipm.domain.errors import InvalidRequest, Problem
from ipm.domain.events import ORGCODE_PATTERN as ORGCODE
from ipm.domain.events import is_actor_name
from ipm.ports import ApiKeyRecord, Clock, Principal, Storage

_KEY = re.compile(r"^ipm_([0-9a-z]{16})_([A-Za-z0-9_-]{43})$")


class ApiKeyAuthenticator:
    """Checks bearer keys against their stored hashes.

    A key that checked out is remembered for ``cache_seconds`` (by the hash
    of the whole key, never the key itself), which saves a database read
    per request on a busy server.
    """

    def __init__(
        self, storage: Storage, clock: Clock, *, cache_seconds: float = 30.0
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def create_key(self, actor: str, orgs: Iterable[str]) -> str:
        """Store a new key bound to ``orgs`` and return it; it is shown once.

        ``orgs`` is a list of org codes; one code given alone (a ``str``)
        means that org, never its letters.
        """
        if isinstance(orgs, str):
            orgs = [orgs]
        if isinstance(orgs, bytes | Mapping):
            # {"ACME01": False} would grant its keys, as Principal says.
            raise TypeError(
                f"orgs must be a list of org codes, not {type(orgs).__name__}"
            )
        orgs = tuple(dict.fromkeys(orgs))
        _check_binding(actor, orgs)

        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            key_id=key_id,
            secret_hash=_hash(secret),
            actor=actor,
            orgs=orgs,
            created_at=self._clock(),
        )
        with self._storage.unit_of_work() as uow:
            uow.keys.add(record)
            uow.commit()

        return f"ipm_{key_id}_{secret}"

    def list_keys(self) -> list[ApiKeyRecord]:
        """Every key (its id, actor, orgs and creation time), oldest first."""
        with self._storage.unit_of_work(write=False) as uow:
            return uow.keys.list()

    def revoke_key(self, key_id: str) -> bool:
        """Delete a key; whether it existed.

        This process stops accepting it at once. Another process (a running
        ``ipm serve``) may accept it from its cache for up to
        ``cache_seconds`` more. A whole key pasted in place of its id names
        that id.
        """
        if not isinstance(key_id, str) or not key_id.isascii():
            return False  # ids are ASCII: no key has this one
        whole = _KEY.fullmatch(key_id)
        if whole is not None:
            key_id = whole.group(1)
        with self._storage.unit_of_work() as uow:
            removed = uow.keys.remove(key_id)
            uow.commit()
        with self._lock:
            self._cache.clear()

        return removed

    def authenticate(self, headers: Mapping[str, str]) -> Principal | None:
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        match = _KEY.fullmatch(credential.strip(" \t"))
        if scheme.lower() != "bearer" or match is None:
            return None

        cache_key = _hash(credential.strip(" \t"))
        cached = self._cache.get(cache_key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]

        principal = self._look_up(*match.groups())
        if principal is not None:
            self._remember(cache_key, principal)

        return principal

    def _look_up(self, key_id: str, secret: str) -> Principal | None:
        with self._storage.unit_of_work(write=False) as uow:
            record = uow.keys.get(key_id)
        if record is None or not hmac.compare_digest(record.secret_hash, _hash(secret)):
            return None

        return Principal(actor=record.actor, orgs=frozenset(record.orgs))

    def _remember(self, cache_key: str, principal: Principal) -> None:
        expires = time.monotonic() + self._cache_seconds
        with self._lock:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[cache_key] = (principal, expires)


_CACHE_SIZE = 4096


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


MAX_KEY_ORGS = 1000
"""The most orgs one key may be bound to (a key for more is a mistake)."""


def _check_binding(actor: str, orgs: tuple[str, ...]) -> None:
    problems = [
        Problem(f"/orgs/{i}", f"must match {ORGCODE.pattern}")
        for i, org in enumerate(orgs)
        if not isinstance(org, str) or not ORGCODE.fullmatch(org)
    ]
    if not orgs:
        problems.append(Problem("/orgs", "at least one org is needed"))
    if len(orgs) > MAX_KEY_ORGS:
        problems.append(Problem("/orgs", f"at most {MAX_KEY_ORGS} orgs"))
    if not is_actor_name(actor):
        problems.append(Problem("/actor", "must be 1-128 printable characters"))
    if problems:
        raise InvalidRequest("the key cannot be created", problems)
