"""Standard Webhooks signatures: sign on the sending side, verify on the receiving one.

Theory of operation
-------------------
A delivery carries three headers. ``webhook-id`` names the message (receivers
dedupe on it), ``webhook-timestamp`` is the send time in Unix seconds, and
``webhook-signature`` holds one or more space-separated entries, each a version
and a base64 signature: ``v1,<HMAC-SHA256>`` for a shared ``whsec_`` secret,
``v1a,<Ed25519>`` for a ``whsk_`` private key whose ``whpk_`` public key the
receiver holds. Every entry signs the same bytes::

    f"{webhook_id}.{webhook_timestamp}.".encode() + body

``verify()`` is total: whatever the headers, body and secrets are, it returns
``None`` or raises :class:`VerificationError` with a machine-readable
``reason``; a malformed secret is a :class:`SecretError`, a subclass with the
reason ``invalid_secret`` that is also a ``ValueError``. A bad clock or
tolerance (the receiver's own code) raises ``TypeError`` or ``ValueError``.
The checks run cheapest first: header shape, then timestamp window, then
signatures. Every usable entry is
compared with every key, so the verdict never depends on the order of the
entries; HMAC digests are compared in constant time.

Parsing a secret is strict (canonical, padded base64 of the right length) and
cached, and an HMAC key keeps its two pre-keyed SHA-256 states so each
signature costs two hash copies instead of a full HMAC set-up. This module
imports nothing else from ipm, so a receiver can use it without a database.

Speed: ``sign()`` and ``verify()`` run once per delivery, and in CPython a
function call costs as much as one of their checks, so their common case is
written out in their bodies: one ``whsec_`` secret, inlined HMAC; a plain
``dict`` of plain ``str`` names, three lookups instead of the general header
scan. Each fast path is taken only where the general path would give the same
answer, and tests/test_signing_fastpath.py holds the two equal.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import math
import secrets as _random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

__all__ = [
    "REASONS",
    "SecretError",
    "VerificationError",
    "generate_ed25519_keypair",
    "generate_secret",
    "public_key_of",
    "secret_last4",
    "sign",
    "sign_headers",
    "verify",
]

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"

DEFAULT_TOLERANCE = 300

Body: TypeAlias = bytes | bytearray | memoryview
"""What is signed and verified byte for byte: any bytes-like body."""
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64

# Bounds that keep a hostile request from costing more than a normal one.
MAX_HEADERS = 512
MAX_ID_LENGTH = 256
MAX_TIMESTAMP_DIGITS = 12
MAX_SIGNATURE_HEADER_LENGTH = 4096
MAX_SIGNATURES = 16

REASONS = frozenset(
    {
        "bad_headers",
        "missing_header",
        "conflicting_headers",
        "bad_id",
        "bad_timestamp",
        "timestamp_too_old",
        "timestamp_too_new",
        "bad_signature_header",
        "no_matching_signature",
        "bad_body",
        "malformed_input",
        "invalid_secret",
    }
)

_HMAC_PREFIX = "whsec_"
_PRIVATE_PREFIX = "whsk_"
_PUBLIC_PREFIX = "whpk_"
_ED25519_KEY_BYTES = 32
_HMAC_BYTES = 32
_ED25519_SIGNATURE_BYTES = 64
_SHA256_BLOCK = 64
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))
_HEADER_SLOTS = {ID_HEADER: 0, TIMESTAMP_HEADER: 1, SIGNATURE_HEADER: 2}
_ID_LENGTH = len(ID_HEADER)
_LONG_NAME_LENGTH = len(TIMESTAMP_HEADER)  # and of SIGNATURE_HEADER
_NAME_LENGTHS = (_ID_LENGTH, _LONG_NAME_LENGTH)
_TIMESTAMP_LIMIT = 10**MAX_TIMESTAMP_DIGITS

# Module-level names for the functions the hot paths call on every message.
_b2a_base64 = binascii.b2a_base64
_compare_digest = hmac.compare_digest
_time = time.time


class VerificationError(Exception):
    """A webhook that must not be trusted; ``reason`` says why (see REASONS)."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the reason when the error crosses a process boundary.
        return type(self), (self.reason, self.message)


class SecretError(VerificationError, ValueError):
    """A secret or key that is not in the strict ``whsec_``/``whsk_``/``whpk_`` form.

    Its reason is ``invalid_secret``. It is a :class:`VerificationError`, so
    ``verify()`` raises nothing else whatever it is given, and a
    ``ValueError``, which is what it is: the receiver's own configuration
    is wrong, and no request can be verified until it is fixed. The
    message never contains the secret itself.
    """

    def __init__(self, message: str) -> None:
        super().__init__("invalid_secret", message)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.message,)


# --- keys -------------------------------------------------------------------


class _HmacKey:
    """A ``whsec_`` key with its inner and outer SHA-256 states already keyed."""

    __slots__ = ("inner", "outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _SHA256_BLOCK:
            key = hashlib.sha256(key).digest()
        block = key.ljust(_SHA256_BLOCK, b"\0")

        self.inner = hashlib.sha256(block.translate(_IPAD))
        self.outer = hashlib.sha256(block.translate(_OPAD))

    def entry(self, prefix: bytes, body: bytes) -> bytes:
        """The ``v1,<base64>`` entry: HMAC-SHA256 of ``prefix + body``."""
        # Copying the keyed states skips the key set-up a fresh HMAC would do,
        # and two updates avoid copying the body into the signed content.
        inner = self.inner.copy()
        inner.update(prefix)
        inner.update(body)

        outer = self.outer.copy()
        outer.update(inner.digest())

        return b"v1," + _b2a_base64(outer.digest(), newline=False)


class _Ed25519Key:
    """A ``whpk_`` public key, or a ``whsk_`` private key with its public half."""

    __slots__ = ("private", "public")

    def __init__(
        self, public: Ed25519PublicKey, private: Ed25519PrivateKey | None = None
    ) -> None:
        self.public = public
        self.private = private

    def entry(self, prefix: bytes, body: bytes) -> bytes:
        """The ``v1a,<base64>`` entry: an Ed25519 signature of ``prefix + body``."""
        if self.private is None:
            raise SecretError("a whpk_ public key can verify but cannot sign")
        signature = self.private.sign(prefix + body)

        return b"v1a," + binascii.b2a_base64(signature, newline=False)

    def accepts(self, content: bytes, signature: bytes) -> bool:
        try:
            self.public.verify(signature, content)
        except InvalidSignature:
            return False

        return True


_Key = _HmacKey | _Ed25519Key


def _b64(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


def _strict_b64decode(text: str, prefix: str) -> bytes:
    """Decode canonical, padded, standard-alphabet base64 or raise SecretError."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise SecretError(f"a {prefix} key must be padded standard base64") from None

    # validate=True still lets stray low bits through in the last character;
    # refusing them keeps one spelling per key, so last4 and equality are honest.
    if _b64(raw) != text:
        raise SecretError(f"a {prefix} key must be canonical base64") from None

    return raw


@functools.lru_cache(maxsize=256)
def _load_secret(secret: str) -> _Key:
    """Parse one secret; cached because receivers check the same few keys."""
    if secret.startswith(_HMAC_PREFIX):
        return _load_hmac(secret[len(_HMAC_PREFIX) :])
    if secret.startswith(_PRIVATE_PREFIX):
        return _load_private(secret[len(_PRIVATE_PREFIX) :])
    if secret.startswith(_PUBLIC_PREFIX):
        return _load_public(secret[len(_PUBLIC_PREFIX) :])

    raise SecretError("a secret must start with whsec_, whsk_ or whpk_")


def _load_hmac(text: str) -> _HmacKey:
    key = _strict_b64decode(text, _HMAC_PREFIX)
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise SecretError(
            f"a whsec_ secret must hold {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES}"
            f" bytes, not {len(key)}"
        )

    return _HmacKey(key)


def _load_private(text: str) -> _Ed25519Key:
    raw = _ed25519_bytes(text, _PRIVATE_PREFIX)
    private = Ed25519PrivateKey.from_private_bytes(raw)

    return _Ed25519Key(private.public_key(), private)


def _load_public(text: str) -> _Ed25519Key:
    raw = _ed25519_bytes(text, _PUBLIC_PREFIX)
    try:
        public = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise SecretError("a whpk_ key is not a valid Ed25519 public key") from None
    if _small_order(raw):
        # Such a key accepts forged signatures that hold for any message.
        raise SecretError("a whpk_ key of small order is refused (it proves nothing)")

    return _Ed25519Key(public)


_P25519 = 2**255 - 19
_SMALL_ORDER_Y = frozenset(
    {
        0,  # order 4
        1,  # the neutral point
        _P25519 - 1,  # order 2
        # The y of the points of order 8, and its negation.
        2707385501144840649318225287225658788936804267575313519463743609750303402022,
        _P25519
        - 2707385501144840649318225287225658788936804267575313519463743609750303402022,
    }
)
"""The y coordinates (mod p) of Ed25519's eight points of small order."""


def _small_order(raw: bytes) -> bool:
    """Whether a public key's point has order 1, 2, 4 or 8, in any encoding.

    Its y coordinate decides: the sign bit only picks x, and a y written at
    or above p (a non-canonical encoding) means y - p.
    """
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)

    return y % _P25519 in _SMALL_ORDER_Y


def _ed25519_bytes(text: str, prefix: str) -> bytes:
    raw = _strict_b64decode(text, prefix)
    if len(raw) != _ED25519_KEY_BYTES:
        raise SecretError(
            f"a {prefix} key must hold {_ED25519_KEY_BYTES} bytes, not {len(raw)}"
        )

    return raw


def _key(secret: object) -> _Key:
    if type(secret) is not str:
        raise SecretError(f"a secret must be a str, not {type(secret).__name__}")

    return _load_secret(secret)


def _keys(secrets: object) -> tuple[_Key, ...]:
    """One secret or several (rotation), each parsed strictly."""
    if type(secrets) is str:
        return (_load_secret(secrets),)
    if isinstance(secrets, str | bytes | bytearray | memoryview) or not isinstance(
        secrets, Iterable
    ):
        raise SecretError("secrets must be a str or a sequence of str")

    keys = tuple(_key(secret) for secret in secrets)
    if not keys:
        raise SecretError("at least one secret is needed")

    return keys


# --- key helpers ------------------------------------------------------------


def generate_secret(nbytes: int = 32) -> str:
    """A fresh random ``whsec_`` secret of ``nbytes`` bytes (24-64)."""
    if type(nbytes) is not int or not MIN_SECRET_BYTES <= nbytes <= MAX_SECRET_BYTES:
        raise SecretError(
            f"nbytes must be an int from {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES}"
        )

    return _HMAC_PREFIX + _b64(_random.token_bytes(nbytes))


def generate_ed25519_keypair() -> tuple[str, str]:
    """A fresh ``(whsk_…, whpk_…)`` pair: the sender keeps the first."""
    private = Ed25519PrivateKey.generate()
    raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    whsk = _PRIVATE_PREFIX + _b64(raw)

    return whsk, public_key_of(whsk)


def public_key_of(whsk: str) -> str:
    """The ``whpk_`` public key that verifies what ``whsk`` signs."""
    key = _key(whsk)
    if not isinstance(key, _Ed25519Key) or key.private is None:
        raise SecretError("only a whsk_ private key has a public key to derive")

    return _PUBLIC_PREFIX + _b64(
        key.public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def secret_last4(secret: str) -> str:
    """The last four characters of a valid secret, safe to show after creation."""
    _key(secret)

    return secret[-4:]


# --- sending ----------------------------------------------------------------


def sign(
    secret: str | Iterable[str],
    msg_id: str,
    timestamp: int | datetime,
    body: Body,
) -> str:
    """The ``webhook-signature`` value for ``body`` sent as ``msg_id`` at ``timestamp``.

    ``secret`` is a ``whsec_`` secret (a ``v1`` entry) or a ``whsk_`` private key
    (a ``v1a`` entry); several secrets, as during a rotation, give one entry
    each, in order. ``body`` is signed byte for byte and must be bytes-like.
    """
    key = _load_secret(secret) if type(secret) is str else _keys(secret)
    if type(timestamp) is not int or not 0 <= timestamp < _TIMESTAMP_LIMIT:
        timestamp = _seconds(timestamp)
    # The id rule (see _bad_msg_id) is written out: a call would cost more.
    if not (
        type(msg_id) is str
        and 0 < len(msg_id) <= MAX_ID_LENGTH
        and msg_id.isascii()
        and msg_id.isprintable()
        and " " not in msg_id
    ):
        raise _bad_msg_id(msg_id)
    if type(body) is not bytes:
        body = _signing_body(body)

    # An ASCII id and a decimal timestamp: the default UTF-8 encodes as ASCII.
    prefix = f"{msg_id}.{timestamp}.".encode()
    if type(key) is not _HmacKey:
        keys = key if isinstance(key, tuple) else (key,)
        if len(keys) > MAX_SIGNATURES:
            # verify() refuses a header with more entries than that.
            raise ValueError(f"at most {MAX_SIGNATURES} secrets sign one message")
        return b" ".join([each.entry(prefix, body) for each in keys]).decode()

    # One whsec_ secret, by far the common case: _HmacKey.entry() inlined.
    inner = key.inner.copy()
    inner.update(prefix)
    inner.update(body)
    outer = key.outer.copy()
    outer.update(inner.digest())

    return "v1," + _b2a_base64(outer.digest(), newline=False).decode()


def sign_headers(
    secret: str | Iterable[str],
    msg_id: str,
    timestamp: int | datetime,
    body: Body,
) -> dict[str, str]:
    """The three Standard Webhooks headers for one delivery attempt."""
    seconds = _seconds(timestamp)

    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(seconds),
        SIGNATURE_HEADER: sign(secret, msg_id, seconds, body),
    }


def _bad_msg_id(msg_id: object) -> Exception:
    if type(msg_id) is not str:
        return TypeError(f"msg_id must be a str, not {type(msg_id).__name__}")

    return ValueError(
        f"msg_id must be 1-{MAX_ID_LENGTH} visible ASCII characters, no spaces"
    )


def _seconds(timestamp: int | datetime) -> int:
    if isinstance(timestamp, datetime):
        seconds = math.floor(_aware_seconds(timestamp))
    elif type(timestamp) is int:
        seconds = timestamp
    else:
        raise TypeError("timestamp must be an int of Unix seconds or a datetime")
    if not 0 <= seconds < _TIMESTAMP_LIMIT:
        raise ValueError("timestamp is out of range")

    return seconds


def _aware_seconds(moment: datetime) -> float:
    # A naive datetime means different instants on different machines.
    if moment.utcoffset() is None:
        raise ValueError("a datetime must carry a timezone (UTC preferred)")

    return moment.timestamp()


def _signing_body(body: object) -> bytes:
    payload = _as_bytes(body)
    if payload is None:
        raise TypeError("body must be bytes, bytearray or memoryview: the exact bytes")

    return payload


def _as_bytes(body: object) -> bytes | None:
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    if isinstance(body, memoryview) and body.itemsize == 1:
        return body.tobytes()

    return None


# --- receiving --------------------------------------------------------------


def verify(
    secrets: str | Iterable[str],
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: Body,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | datetime | Callable[[], float | datetime] | None = None,
) -> None:
    """Return if ``body`` and ``headers`` carry a valid signature by one of ``secrets``.

    Raises :class:`VerificationError` for any fault in ``headers`` or ``body``,
    and nothing else for them. ``secrets`` may mix ``whsec_``, ``whpk_`` and
    ``whsk_`` keys; a bad secret raises :class:`SecretError`. The timestamp
    must lie within ``tolerance`` seconds of ``now`` (default: the system
    clock) in either direction.
    """
    key = _load_secret(secrets) if type(secrets) is str else _keys(secrets)
    window: float = tolerance
    # The default tolerance is known to be valid; anything else is checked.
    if tolerance is not DEFAULT_TOLERANCE and (
        type(tolerance) is not int or not 0 <= tolerance < _TIMESTAMP_LIMIT
    ):
        window = _tolerance(tolerance)
    clock = _time() if now is None else _now_seconds(now)

    # The hot path of every receiver: its steps are written out here, not
    # spread over helpers, because a call costs about as much as a step.
    try:
        payload = body if type(body) is bytes else _as_bytes(body)
        if payload is None:
            raise VerificationError(
                "bad_body", "the body must be bytes, bytearray or memoryview"
            )

        msg_id = stamp = signature = None
        if type(headers) is dict and len(headers) <= MAX_HEADERS:
            # A plain dict with the lower-case names, as ASGI gives: when its
            # names are plain str and none but the three lower-case ones folds
            # onto a webhook name, the general scan would find just what three
            # lookups find. Looking the id up first sends a dict spelled
            # otherwise (Webhook-Id) straight to the general scan.
            try:
                msg_id = headers.get(ID_HEADER)
            except Exception:
                msg_id = None  # a name's own __eq__ failed; the scan decides
            if msg_id is not None:
                for name in headers:
                    if type(name) is not str or (
                        name not in _HEADER_SLOTS
                        and len(name) in _NAME_LENGTHS
                        and name.isascii()
                        and name.lower() in _HEADER_SLOTS
                    ):
                        msg_id = None
                        break
                else:
                    stamp = headers.get(TIMESTAMP_HEADER)
                    signature = headers.get(SIGNATURE_HEADER)
        if not (
            type(msg_id) is str
            and type(stamp) is str
            and type(signature) is str
            and msg_id
            and stamp
            and signature
        ):
            msg_id, stamp, signature = _webhook_headers(headers)

        # The id rule of sign(), minus the emptiness already refused.
        if not (
            len(msg_id) <= MAX_ID_LENGTH
            and msg_id.isascii()
            and msg_id.isprintable()
            and " " not in msg_id
        ):
            raise VerificationError("bad_id", f"{ID_HEADER} is malformed")

        # int() takes " 1", "+1", "1_0" and non-ASCII digits; the wire may not.
        if not (
            len(stamp) <= MAX_TIMESTAMP_DIGITS
            and stamp.isascii()
            and stamp.isdigit()
            and (stamp[0] != "0" or stamp == "0")
        ):
            raise VerificationError(
                "bad_timestamp", f"{TIMESTAMP_HEADER} must be Unix seconds in digits"
            )
        # Twelve digits are exact in a float, and floats compare faster with
        # the float clock than an int does; the verdict is the same.
        timestamp = float(int(stamp))
        if not clock - window <= timestamp <= clock + window:
            raise _stale(int(timestamp), clock, window)

        if len(signature) > MAX_SIGNATURE_HEADER_LENGTH or not signature.isascii():
            raise VerificationError(
                "bad_signature_header", f"{SIGNATURE_HEADER} is malformed"
            )
        encoded = signature.encode()
        entries = None  # a single entry, the common case, needs no list
        if " " in signature:
            entries = encoded.split(b" ")
            if len(entries) > MAX_SIGNATURES:
                entries = _bounded(entries)

        # Both parts are checked ASCII, so the default UTF-8 encodes as ASCII.
        prefix = f"{msg_id}.{stamp}.".encode()
        if type(key) is not _HmacKey:
            keys = key if isinstance(key, tuple) else (key,)
            matched = _any_match(
                keys, prefix, payload, [encoded] if entries is None else entries
            )
        else:
            # One whsec_ secret, by far the common case: _any_match() inlined.
            inner = key.inner.copy()
            inner.update(prefix)
            inner.update(payload)
            outer = key.outer.copy()
            outer.update(inner.digest())
            expected = b"v1," + _b2a_base64(outer.digest(), newline=False)

            if entries is None:
                matched = _compare_digest(encoded, expected)
            else:
                # Every entry is compared, whatever its position.
                matched = False
                for entry in entries:
                    matched |= _compare_digest(entry, expected)
        if not matched:
            raise VerificationError(
                "no_matching_signature", "no signature matches any of the secrets"
            )
    except VerificationError:
        raise
    except Exception as exc:
        # Totality: a hostile mapping or buffer must not leak its own error.
        raise VerificationError(
            "malformed_input", "the headers or body could not be read"
        ) from exc


def _webhook_headers(headers: object) -> tuple[str, str, str]:
    """The id, timestamp and signature values, matched case-insensitively."""
    if type(headers) is dict and len(headers) <= MAX_HEADERS:
        pairs: Iterable[tuple[object, object]] = headers.items()
    else:
        pairs = _header_pairs(headers)

    found: list[object] = [None, None, None]
    slots = _HEADER_SLOTS
    for name, value in pairs:
        if type(name) is not str:
            name = _plain_name(name)
        size = len(name)
        if size != _ID_LENGTH and size != _LONG_NAME_LENGTH:
            continue
        slot = slots.get(name)
        # Only ASCII names may fold: "webhoo\u212a-id".lower() is "webhook-id".
        if slot is None and name.isascii():
            slot = slots.get(name.lower())
        if slot is None:
            continue

        seen = found[slot]
        if seen is None:
            found[slot] = value
        elif seen != value:
            raise VerificationError(
                "conflicting_headers", f"{name.lower()} appears with different values"
            )

    msg_id, stamp, signature = found
    if (
        type(msg_id) is str
        and type(stamp) is str
        and type(signature) is str
        and msg_id
        and stamp
        and signature
    ):
        return msg_id, stamp, signature

    return _plain_values(found)


def _plain_name(name: object) -> str:
    # A str subclass (such as a case-insensitive key type) is read as the
    # plain string it holds; str.__str__ ignores any override of __str__.
    if not isinstance(name, str):
        raise VerificationError("bad_headers", "header names must be str")

    return str.__str__(name)


def _plain_values(found: list[object]) -> tuple[str, str, str]:
    """The slow path: str subclasses made plain, or the fault reported."""
    for name, value in zip(_HEADER_SLOTS, found, strict=True):
        if value is not None and not isinstance(value, str):
            raise VerificationError("bad_headers", f"{name} must be a str")
    absent = [
        name for name, value in zip(_HEADER_SLOTS, found, strict=True) if not value
    ]
    if absent:
        raise VerificationError(
            "missing_header", f"{', '.join(absent)} missing or empty"
        )

    msg_id, stamp, signature = (str.__str__(value) for value in found)

    return msg_id, stamp, signature


def _header_pairs(headers: object) -> Iterable[tuple[object, object]]:
    if isinstance(headers, Mapping):
        if len(headers) > MAX_HEADERS:
            raise VerificationError("bad_headers", "too many headers")
        return headers.items()

    items = getattr(headers, "items", None)
    if callable(items) and not isinstance(headers, str | bytes):
        # A message object, such as the standard library server's
        # self.headers (email.message.Message): iterating it gives names
        # only, items() every (name, value), repeated names included.
        return _checked_pairs(items())

    if isinstance(headers, str | bytes | bytearray | memoryview) or not isinstance(
        headers, Iterable
    ):
        raise VerificationError(
            "bad_headers", "headers must be a mapping or an iterable of pairs"
        )

    return _checked_pairs(headers)


def _checked_pairs(pairs: Iterable[object]) -> Iterator[tuple[object, object]]:
    for count, pair in enumerate(pairs):
        if count >= MAX_HEADERS:
            raise VerificationError("bad_headers", "too many headers")
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise VerificationError(
                "bad_headers", "each header must be a (name, value)"
            )

        yield pair[0], pair[1]


def _stale(timestamp: int, now: float, tolerance: float) -> VerificationError:
    if timestamp < now:
        return VerificationError(
            "timestamp_too_old",
            f"the message is {now - timestamp:.0f} s old; tolerance is {tolerance} s",
        )

    return VerificationError(
        "timestamp_too_new",
        f"the message is {timestamp - now:.0f} s ahead; tolerance is {tolerance} s",
    )


def _bounded(entries: list[bytes]) -> list[bytes]:
    # Repeated spaces make empty entries; only real ones count towards the bound.
    entries = [entry for entry in entries if entry]
    if len(entries) > MAX_SIGNATURES:
        raise VerificationError(
            "bad_signature_header", f"more than {MAX_SIGNATURES} signatures"
        )

    return entries


def _any_match(
    keys: tuple[_Key, ...], prefix: bytes, payload: bytes, entries: list[bytes]
) -> bool:
    """Whether any entry is a valid signature by any key, in no particular order."""
    matched = False

    for key in keys:
        if isinstance(key, _HmacKey):
            expected = key.entry(prefix, payload)
            # Every entry is compared, in constant time, whatever its position;
            # a malformed or unknown entry simply never equals the expected one.
            for entry in entries:
                matched |= _compare_digest(entry, expected)
        elif not matched:
            matched = _ed25519_match(key, prefix + payload, entries)

    return matched


def _ed25519_match(key: _Ed25519Key, content: bytes, entries: list[bytes]) -> bool:
    for entry in entries:
        version, _, encoded = entry.partition(b",")
        if version != b"v1a":
            continue
        try:
            signature = binascii.a2b_base64(encoded, strict_mode=True)
        except binascii.Error:
            continue

        if len(signature) == _ED25519_SIGNATURE_BYTES and key.accepts(
            content, signature
        ):
            return True

    return False


def _tolerance(tolerance: object) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float):
        raise TypeError("tolerance must be a number of seconds")
    # Written so that NaN fails too.
    if not 0 <= tolerance < _TIMESTAMP_LIMIT:
        raise ValueError(
            "tolerance must be a non-negative number of seconds under 10**12"
        )

    return float(tolerance)


def _now_seconds(now: object) -> float:
    if callable(now):
        now = now()

    if isinstance(now, datetime):
        seconds = _aware_seconds(now)
    elif isinstance(now, int | float) and not isinstance(now, bool):
        seconds = now
    else:
        raise TypeError("now must be Unix seconds, an aware datetime or a callable")
    if not -_TIMESTAMP_LIMIT < seconds < _TIMESTAMP_LIMIT:
        raise ValueError("now must be Unix seconds strictly between -10**12 and 10**12")

    return float(seconds)
