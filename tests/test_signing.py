"""Standard Webhooks signing and verification (ipm.signing)."""

from __future__ import annotations

import base64
import hmac
import http.client
import io
import itertools
import pickle
import random
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ipm import signing
from ipm.signing import (
    REASONS,
    SecretError,
    VerificationError,
    generate_ed25519_keypair,
    generate_secret,
    public_key_of,
    secret_last4,
    sign,
    sign_headers,
    verify,
)

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(100, 124))).decode()
MSG_ID = "msg_2bV1cXg0eZk7QmTf"
TS = 1_767_225_600  # 2026-01-01T00:00:00Z
BODY = b'{"type":"order.updated","data":{"id":"ord_1"}}'
ED_PRIVATE, ED_PUBLIC = generate_ed25519_keypair()

BODIES = {
    "ascii json": BODY,
    "non-ascii text": '{"city":"Zürich","note":"café ☕ — 日本語 🎉"}'.encode(),
    "escaped characters": rb'{"q":"say \"hi\"\n\tend","u":"\u00e9\ud83c\udf89"}',
    "crlf line endings": b'{"a":1}\r\n{"b":2}\r\n',
    "non-utf8 bytes": b"\xff\xfe\x00\x80 latin-1 caf\xe9 \xc3\x28",
    "empty": b"",
}


def headers_for(
    signature: str, msg_id: str = MSG_ID, timestamp: int = TS
) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def reason_of(secrets: Any, headers: Any, body: Any, **options: Any) -> str | None:
    """The VerificationError reason, or None when verify() accepts."""
    try:
        verify(secrets, headers, body, **options)
    except VerificationError as error:
        assert error.reason in REASONS
        return error.reason

    return None


# --- interoperability with the standardwebhooks reference -------------------


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_signature_equals_the_reference_for_every_kind_of_body(body: bytes) -> None:
    """Same secret, id, timestamp and body give the reference's signature."""
    moment = datetime.fromtimestamp(TS, tz=UTC)

    ours = sign(SECRET, MSG_ID, TS, body)

    assert ours == Webhook(SECRET).sign(MSG_ID, moment, body)


def test_published_standard_webhooks_vector() -> None:
    """The specification's published example signs to its published value."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

    signature = sign(
        secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )

    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_reference_verifies_what_ipm_signs(body: bytes) -> None:
    """The reference library accepts headers that ipm produced."""
    headers = sign_headers(SECRET, MSG_ID, int(time.time()), body)

    Webhook(SECRET).verify(body, headers, json_parse=False)


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_ipm_verifies_what_the_reference_signs(body: bytes) -> None:
    """ipm accepts a signature that the reference library produced."""
    moment = datetime.now(tz=UTC)
    signature = Webhook(SECRET).sign(MSG_ID, moment, body)
    headers = headers_for(signature, timestamp=int(moment.timestamp()))

    verify(SECRET, headers, body)


def test_reference_verifies_a_rotation_header_from_ipm() -> None:
    """During a rotation either secret alone verifies ipm's two-entry header."""
    headers = sign_headers([OTHER_SECRET, SECRET], MSG_ID, int(time.time()), BODY)

    Webhook(SECRET).verify(BODY, headers, json_parse=False)
    Webhook(OTHER_SECRET).verify(BODY, headers, json_parse=False)


def test_reference_refuses_a_tampered_body_signed_by_ipm() -> None:
    """Interop is not vacuous: the reference rejects a body ipm did not sign."""
    headers = sign_headers(SECRET, MSG_ID, int(time.time()), BODY)

    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY + b" ", headers, json_parse=False)


# --- signing ----------------------------------------------------------------


def test_sign_headers_carry_id_timestamp_and_signature() -> None:
    """sign_headers() gives the three headers, the signature over that timestamp."""
    moment = datetime(2026, 1, 1, 1, 0, 0, 900_000, tzinfo=timezone(timedelta(hours=1)))

    headers = sign_headers(SECRET, MSG_ID, moment, BODY)

    assert headers == headers_for(sign(SECRET, MSG_ID, TS, BODY))


def test_an_aware_datetime_signs_as_its_whole_unix_seconds() -> None:
    """A datetime signs like its floor in Unix seconds, whatever its zone."""
    moment = datetime.fromtimestamp(TS + 0.999, tz=timezone(timedelta(hours=-5)))

    assert sign(SECRET, MSG_ID, moment, BODY) == sign(SECRET, MSG_ID, TS, BODY)


def test_body_may_be_any_bytes_like_buffer() -> None:
    """bytes, bytearray and a byte memoryview sign the same bytes."""
    expected = sign(SECRET, MSG_ID, TS, BODY)

    assert sign(SECRET, MSG_ID, TS, bytearray(BODY)) == expected
    assert sign(SECRET, MSG_ID, TS, memoryview(BODY)) == expected
    assert sign(SECRET, MSG_ID, TS, memoryview(b"--" + BODY)[2:]) == expected


@pytest.mark.parametrize(
    ("msg_id", "timestamp", "body", "error"),
    [
        (MSG_ID, TS, BODY.decode(), TypeError),
        (MSG_ID, TS, 42, TypeError),
        (MSG_ID, float(TS), BODY, TypeError),
        (MSG_ID, True, BODY, TypeError),
        (MSG_ID, -1, BODY, ValueError),
        (MSG_ID, 10**12, BODY, ValueError),
        (MSG_ID, datetime(2026, 1, 1), BODY, ValueError),
        ("", TS, BODY, ValueError),
        ("msg 1", TS, BODY, ValueError),
        ("msg_\n", TS, BODY, ValueError),
        ("msg_é", TS, BODY, ValueError),
        ("m" * 257, TS, BODY, ValueError),
        (b"msg_1", TS, BODY, TypeError),
    ],
)
def test_sign_refuses_bad_arguments(
    msg_id: Any, timestamp: Any, body: Any, error: type[Exception]
) -> None:
    """sign() refuses what verify() would refuse, and guesses at nothing."""
    with pytest.raises(error):
        sign(SECRET, msg_id, timestamp, body)


# --- headers ----------------------------------------------------------------


def test_header_names_are_case_insensitive() -> None:
    """Any ASCII spelling of the three names is accepted."""
    signature = sign(SECRET, MSG_ID, TS, BODY)
    headers = {
        "Webhook-Id": MSG_ID,
        "WEBHOOK-TIMESTAMP": str(TS),
        "wEbHoOk-SiGnAtUrE": signature,
        "Content-Type": "application/json",
    }

    verify(SECRET, headers, BODY, now=TS)


def test_headers_may_be_pairs_with_consistent_duplicates() -> None:
    """A name repeated with the same value, in pairs, is harmless."""
    signature = sign(SECRET, MSG_ID, TS, BODY)
    pairs = [*headers_for(signature).items(), ("Webhook-Id", MSG_ID)]

    verify(SECRET, pairs, BODY, now=TS)


def test_headers_may_be_the_standard_library_server_s_message() -> None:
    """Regression: http.server's self.headers (an email Message: iterating
    it gives names only) was refused as bad_headers; its items() are read,
    repeated names included."""
    signature = sign(SECRET, MSG_ID, TS, BODY)
    raw = "".join(f"{k}: {v}\r\n" for k, v in headers_for(signature).items())
    message = http.client.parse_headers(io.BytesIO(raw.encode() + b"\r\n"))
    forged = http.client.parse_headers(
        io.BytesIO(raw.encode() + b"webhook-id: other\r\n\r\n")
    )

    verify(SECRET, message, BODY, now=TS)
    with pytest.raises(VerificationError):
        verify(SECRET, forged, BODY, now=TS)


def test_headers_may_be_a_read_only_mapping() -> None:
    """Any Mapping works, not only a dict."""
    signature = sign(SECRET, MSG_ID, TS, BODY)

    class Headers(Mapping[str, str]):
        def __init__(self, data: dict[str, str]) -> None:
            self._data = data

        def __getitem__(self, key: str) -> str:
            return self._data[key]

        def __iter__(self) -> Iterator[str]:
            return iter(self._data)

        def __len__(self) -> int:
            return len(self._data)

    verify(SECRET, Headers(headers_for(signature)), BODY, now=TS)


def test_str_subclass_names_and_values_are_read_as_plain_strings() -> None:
    """A str subclass, such as a case-insensitive key type, works like str."""

    class Shouty(str):
        def __str__(self) -> str:
            return "overridden"

        def lower(self) -> str:
            return "overridden"

    signature = sign(SECRET, MSG_ID, TS, BODY)
    headers = {Shouty(k.title()): Shouty(v) for k, v in headers_for(signature).items()}

    assert reason_of(SECRET, headers, BODY, now=TS) is None


@pytest.mark.parametrize(
    "duplicate",
    [("webhook-id", "msg_other"), ("Webhook-Timestamp", str(TS - 1))],
)
def test_conflicting_duplicate_headers_are_refused(duplicate: tuple[str, str]) -> None:
    """The same header with two different values is refused, as pairs or as a dict."""
    signature = sign(SECRET, MSG_ID, TS, BODY)
    pairs = [*headers_for(signature).items(), duplicate]
    mapping = {**headers_for(signature), duplicate[0].upper(): duplicate[1]}

    assert reason_of(SECRET, pairs, BODY, now=TS) == "conflicting_headers"
    assert reason_of(SECRET, mapping, BODY, now=TS) == "conflicting_headers"


def test_a_non_ascii_name_never_folds_onto_a_webhook_header() -> None:
    """The Kelvin sign lowercases to k, but "webhooK-id" is not webhook-id."""
    signature = sign(SECRET, MSG_ID, TS, BODY)
    headers = headers_for(signature)
    headers["webhoo\u212a-id"] = headers.pop("webhook-id")
    assert "webhoo\u212a-id".lower() == "webhook-id"

    assert reason_of(SECRET, headers, BODY, now=TS) == "missing_header"


@pytest.mark.parametrize(
    "name", ["webhook-id", "webhook-timestamp", "webhook-signature"]
)
def test_a_missing_or_empty_header_is_refused(name: str) -> None:
    """Each of the three headers is required and must not be empty."""
    headers = headers_for(sign(SECRET, MSG_ID, TS, BODY))
    empty = {**headers, name: ""}
    del headers[name]

    assert reason_of(SECRET, headers, BODY, now=TS) == "missing_header"
    assert reason_of(SECRET, empty, BODY, now=TS) == "missing_header"


@pytest.mark.parametrize(
    "headers",
    [
        "webhook-id: msg_1",
        b"webhook-id",
        None,
        42,
        [("webhook-id",)],
        [("webhook-id", MSG_ID, "extra")],
        ["ab"],
        {b"webhook-id": MSG_ID.encode()},
        {"webhook-id": 7, "webhook-timestamp": str(TS), "webhook-signature": "v1,x"},
        [("webhook-id", MSG_ID)] * (signing.MAX_HEADERS + 1),
    ],
    ids=repr,
)
def test_malformed_header_collections_are_refused(headers: Any) -> None:
    """Anything but a mapping or pairs of str is a bad_headers error."""
    assert reason_of(SECRET, headers, BODY, now=TS) == "bad_headers"


def test_a_mapping_that_fails_when_read_is_a_verification_error() -> None:
    """An exception raised by the caller's own mapping surfaces as malformed_input."""

    class Exploding(Mapping[str, str]):
        def __getitem__(self, key: str) -> str:
            raise RuntimeError("boom")

        def __iter__(self) -> Iterator[str]:
            return iter(["webhook-id"])

        def __len__(self) -> int:
            return 1

    assert reason_of(SECRET, Exploding(), BODY, now=TS) == "malformed_input"


@pytest.mark.parametrize(
    "msg_id", ["msg 1", "msg\t1", "msg_é", "m" * 257, "\x00"], ids=repr
)
def test_a_malformed_message_id_is_refused(msg_id: str) -> None:
    """webhook-id must be 1-256 visible ASCII characters."""
    headers = {**headers_for("v1,AAAA"), "webhook-id": msg_id}

    assert reason_of(SECRET, headers, BODY, now=TS) == "bad_id"


@pytest.mark.parametrize(
    "stamp",
    [
        "+1767225600",
        "-1767225600",
        " 1767225600",
        "1767225600 ",
        "1767225600.0",
        "1_767_225_600",
        "01767225600",
        "1.7e9",
        "١٧٦٧٢٢٥٦٠٠",  # Arabic-Indic digits: int() takes them
        "\uff11\uff17\uff16\uff17\uff12\uff12\uff15\uff16\uff10\uff10",  # fullwidth
        "9" * 13,
        "0x69558A00",
        "nan",
    ],
    ids=repr,
)
def test_a_timestamp_that_is_not_plain_digits_is_refused(stamp: str) -> None:
    """Only canonical ASCII digits are a timestamp: no sign, space, dot or zero pad."""
    headers = {**headers_for("v1,AAAA"), "webhook-timestamp": stamp}

    assert reason_of(SECRET, headers, BODY, now=TS) == "bad_timestamp"


# --- timestamp tolerance ----------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (0, None),
        (300, None),
        (301, "timestamp_too_old"),
        (-300, None),
        (-301, "timestamp_too_new"),
    ],
)
def test_the_tolerance_applies_in_both_directions(offset: int, reason: str) -> None:
    """By the injected clock, a message older or newer than the tolerance fails."""
    headers = headers_for(sign(SECRET, MSG_ID, TS, BODY))

    assert reason_of(SECRET, headers, BODY, now=TS + offset) == reason


def test_the_tolerance_is_configurable() -> None:
    """A tighter tolerance refuses what the default accepts."""
    headers = headers_for(sign(SECRET, MSG_ID, TS, BODY))

    assert reason_of(SECRET, headers, BODY, now=TS + 10) is None
    assert reason_of(SECRET, headers, BODY, now=TS + 10, tolerance=5) == (
        "timestamp_too_old"
    )
    assert reason_of(SECRET, headers, BODY, now=TS - 10, tolerance=9.5) == (
        "timestamp_too_new"
    )


def test_the_clock_may_be_a_number_a_datetime_or_a_callable() -> None:
    """now= accepts Unix seconds, an aware datetime and a zero-argument callable."""
    headers = headers_for(sign(SECRET, MSG_ID, TS, BODY))
    late = TS + 3600

    assert reason_of(SECRET, headers, BODY, now=float(TS)) is None
    assert reason_of(SECRET, headers, BODY, now=datetime.fromtimestamp(TS, UTC)) is None
    assert reason_of(SECRET, headers, BODY, now=lambda: late) == "timestamp_too_old"


def test_the_default_clock_is_the_system_clock() -> None:
    """Without now=, a message stamped an hour ago is too old."""
    stamp = int(time.time()) - 3600
    headers = headers_for(sign(SECRET, MSG_ID, stamp, BODY), timestamp=stamp)

    assert reason_of(SECRET, headers, BODY) == "timestamp_too_old"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"now": datetime(2026, 1, 1)}, ValueError),
        ({"now": float("nan")}, ValueError),
        ({"now": "1767225600"}, TypeError),
        ({"tolerance": -1}, ValueError),
        ({"tolerance": float("nan")}, ValueError),
        ({"tolerance": True}, TypeError),
        ({"tolerance": "300"}, TypeError),
    ],
    ids=repr,
)
def test_a_misconfigured_clock_or_tolerance_is_a_programming_error(
    options: dict[str, Any], error: type[Exception]
) -> None:
    """The receiver's own configuration errors are not verification failures."""
    headers = headers_for(sign(SECRET, MSG_ID, TS, BODY))

    with pytest.raises(error):
        verify(SECRET, headers, BODY, **options)


@pytest.mark.parametrize("options", [{"now": 10**12}, {"now": 1e12, "tolerance": 1}])
def test_a_clock_or_tolerance_past_the_range_says_the_range(
    options: dict[str, Any],
) -> None:
    """A finite value past 10**12 s was refused as "not finite"."""
    options = {"tolerance": 10**12, "now": 1767225600} | options
    headers = headers_for(sign(SECRET, MSG_ID, TS, BODY))

    with pytest.raises(ValueError, match=r"10\*\*12") as refused:
        verify(SECRET, headers, BODY, **options)
    assert "finite" not in str(refused.value)


# --- signature header -------------------------------------------------------


def test_unknown_versions_and_malformed_entries_are_skipped() -> None:
    """Entries ipm cannot use do not prevent a valid one from matching."""
    good = sign(SECRET, MSG_ID, TS, BODY)
    noise = ["v2,QUJD", "v1,not base64!", "v1,QUJD", "v1", ",", "v1,", "v1a,QUJD"]
    header = " ".join([*noise, good, "v0,QUJD"])

    assert reason_of(SECRET, headers_for(header), BODY, now=TS) is None
    assert reason_of(SECRET, headers_for(" ".join(noise)), BODY, now=TS) == (
        "no_matching_signature"
    )


def test_extra_spaces_between_entries_are_tolerated() -> None:
    """Repeated spaces make empty entries, which are ignored."""
    header = "  v1,QUJD   " + sign(SECRET, MSG_ID, TS, BODY) + " "

    assert reason_of(SECRET, headers_for(header), BODY, now=TS) is None


@pytest.mark.parametrize(
    "header",
    [
        " ".join(["v1,QUJD"] * (signing.MAX_SIGNATURES + 1)),
        "v1," + "A" * signing.MAX_SIGNATURE_HEADER_LENGTH,
        "v1,ÄÖÜ=",
    ],
    ids=["too many entries", "too long", "non-ascii"],
)
def test_an_oversized_or_non_ascii_signature_header_is_refused(header: str) -> None:
    """The signature header is bounded: a hostile one costs no more than a real one."""
    assert reason_of(SECRET, headers_for(header), BODY, now=TS) == (
        "bad_signature_header"
    )


def test_a_tampered_message_is_refused() -> None:
    """Changing the body, the id or the timestamp breaks the signature."""
    signature = sign(SECRET, MSG_ID, TS, BODY)

    assert reason_of(SECRET, headers_for(signature), BODY + b" ", now=TS) == (
        "no_matching_signature"
    )
    assert reason_of(SECRET, headers_for(signature, "msg_x"), BODY, now=TS) == (
        "no_matching_signature"
    )
    assert reason_of(
        SECRET, headers_for(signature, timestamp=TS + 1), BODY, now=TS
    ) == ("no_matching_signature")


def test_a_signature_by_another_secret_is_refused() -> None:
    """A v1 entry made with another whsec_ secret does not match."""
    headers = headers_for(sign(OTHER_SECRET, MSG_ID, TS, BODY))

    assert reason_of(SECRET, headers, BODY, now=TS) == "no_matching_signature"


# --- body -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [BODY.decode(), None, 42, [1, 2], memoryview(bytes(8)).cast("Q")],
    ids=["str", "None", "int", "list", "wide memoryview"],
)
def test_a_body_that_is_not_bytes_is_refused(body: Any) -> None:
    """Only the exact received bytes can be verified; a str is refused, not encoded."""
    headers = headers_for(sign(SECRET, MSG_ID, TS, BODY))

    assert reason_of(SECRET, headers, body, now=TS) == "bad_body"


def test_bytearray_and_memoryview_bodies_verify() -> None:
    """A bytearray or byte memoryview body verifies like bytes."""
    headers = headers_for(sign(SECRET, MSG_ID, TS, BODY))

    assert reason_of(SECRET, headers, bytearray(BODY), now=TS) is None
    assert reason_of(SECRET, headers, memoryview(BODY), now=TS) is None


# --- rotation ---------------------------------------------------------------


def test_signing_with_several_secrets_gives_one_entry_each_in_order() -> None:
    """A rotating sender puts one entry per secret in the header, in order."""
    header = sign([SECRET, OTHER_SECRET], MSG_ID, TS, BODY)

    assert header.split(" ") == [
        sign(SECRET, MSG_ID, TS, BODY),
        sign(OTHER_SECRET, MSG_ID, TS, BODY),
    ]


@pytest.mark.parametrize(
    "secrets", list(itertools.permutations([SECRET, OTHER_SECRET]))
)
@pytest.mark.parametrize("signer", [SECRET, OTHER_SECRET])
def test_a_receiver_with_several_secrets_accepts_any_of_them(
    secrets: tuple[str, ...], signer: str
) -> None:
    """During a rotation the receiver accepts the old or the new secret's signature."""
    headers = headers_for(sign(signer, MSG_ID, TS, BODY))

    assert reason_of(list(secrets), headers, BODY, now=TS) is None


@pytest.mark.parametrize(
    "entries",
    list(itertools.permutations(["old", "new", "junk", "foreign"])),
    ids=lambda order: "-".join(order),
)
def test_the_verdict_does_not_depend_on_the_order_of_entries(
    entries: tuple[str, ...],
) -> None:
    """Every ordering of the same entries verifies the same way."""
    third = generate_secret()
    by_name = {
        "old": sign(OTHER_SECRET, MSG_ID, TS, BODY),
        "new": sign(SECRET, MSG_ID, TS, BODY),
        "junk": "v1,@@@@",
        "foreign": sign(third, MSG_ID, TS, BODY),
    }
    header = " ".join(by_name[name] for name in entries)

    assert reason_of([SECRET], headers_for(header), BODY, now=TS) is None
    assert reason_of([OTHER_SECRET], headers_for(header), BODY, now=TS) is None
    assert reason_of(generate_secret(), headers_for(header), BODY, now=TS) == (
        "no_matching_signature"
    )


# --- Ed25519 ----------------------------------------------------------------


def test_ed25519_signs_v1a_and_verifies_with_either_key_form() -> None:
    """A whsk_ key signs v1a; its whpk_ public key and the whsk_ itself verify."""
    whsk, whpk = generate_ed25519_keypair()

    signature = sign(whsk, MSG_ID, TS, BODY)

    assert signature.startswith("v1a,")
    assert len(base64.b64decode(signature[4:], validate=True)) == 64
    assert reason_of(whpk, headers_for(signature), BODY, now=TS) is None
    assert reason_of(whsk, headers_for(signature), BODY, now=TS) is None


def test_ed25519_refuses_another_key_and_a_tampered_body() -> None:
    """A v1a entry verifies only with its own public key, over the signed bytes."""
    whsk, whpk = generate_ed25519_keypair()
    _, stranger = generate_ed25519_keypair()
    headers = headers_for(sign(whsk, MSG_ID, TS, BODY))

    assert reason_of(stranger, headers, BODY, now=TS) == "no_matching_signature"
    assert reason_of(whpk, headers, BODY + b"!", now=TS) == "no_matching_signature"
    assert reason_of(SECRET, headers, BODY, now=TS) == "no_matching_signature"


def test_an_ed25519_signature_counts_only_under_v1a() -> None:
    """A genuine Ed25519 signature relabelled with another version is ignored."""
    signature = sign(ED_PRIVATE, MSG_ID, TS, BODY)
    encoded = signature.removeprefix("v1a,")

    for label in ("v1", "v2", "v1A", ""):
        header = f"{label},{encoded}"

        assert reason_of(ED_PUBLIC, headers_for(header), BODY, now=TS) == (
            "no_matching_signature"
        )


def test_hmac_and_ed25519_entries_mix_in_one_header() -> None:
    """A sender migrating algorithms sends both; each receiver finds its own entry."""
    whsk, whpk = generate_ed25519_keypair()
    header = sign([SECRET, whsk], MSG_ID, TS, BODY)

    assert [entry.split(",")[0] for entry in header.split(" ")] == ["v1", "v1a"]
    assert reason_of(whpk, headers_for(header), BODY, now=TS) is None
    assert reason_of(SECRET, headers_for(header), BODY, now=TS) is None
    assert reason_of([OTHER_SECRET, whpk], headers_for(header), BODY, now=TS) is None


P25519 = 2**255 - 19
ORDER_8_Y = 2707385501144840649318225287225658788936804267575313519463743609750303402022


def _small_order_encodings() -> list[bytes]:
    """Every 32-byte encoding of a point of order 1, 2, 4 or 8, canonical or not."""
    found = []
    for y in (0, 1, P25519 - 1, ORDER_8_Y, P25519 - ORDER_8_Y):
        for written in (y, y + P25519):
            if written < 2**255:
                for sign in (0, 1 << 255):
                    found.append((written | sign).to_bytes(32, "little"))

    return found


@pytest.mark.parametrize("raw", _small_order_encodings())
def test_a_public_key_of_small_order_is_refused(raw: bytes) -> None:
    """Such a key would accept a forged v1a signature for any body: SecretError."""
    whpk = "whpk_" + base64.b64encode(raw).decode()
    forged = "v1a," + base64.b64encode(raw + bytes(32)).decode()

    with pytest.raises(SecretError):
        verify(whpk, headers_for(forged), b"any body at all", now=TS)


def test_public_key_of_derives_the_matching_public_key() -> None:
    """public_key_of() gives the whpk_ that generate_ed25519_keypair() paired."""
    whsk, whpk = generate_ed25519_keypair()

    assert public_key_of(whsk) == whpk


def test_a_public_key_cannot_sign_and_has_no_public_key_to_derive() -> None:
    """Signing with whpk_ or deriving from whsec_/whpk_ is a SecretError."""
    _, whpk = generate_ed25519_keypair()

    with pytest.raises(SecretError):
        sign(whpk, MSG_ID, TS, BODY)
    with pytest.raises(SecretError):
        public_key_of(whpk)
    with pytest.raises(SecretError):
        public_key_of(SECRET)


# --- secrets ----------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


MALFORMED_SECRETS = {
    "empty": "",
    "prefix only": "whsec_",
    "no prefix": _b64(bytes(32)),
    "wrong prefix": "whsecret_" + _b64(bytes(32)),
    "upper-case prefix": "WHSEC_" + _b64(bytes(32)),
    "unpadded": "whsec_" + _b64(bytes(32)).rstrip("="),
    "url-safe alphabet": "whsec_" + base64.urlsafe_b64encode(b"\xfb" * 33).decode(),
    "inner space": "whsec_" + _b64(bytes(32))[:10] + " " + _b64(bytes(32))[10:],
    "trailing newline": "whsec_" + _b64(bytes(32)) + "\n",
    "leading space": " whsec_" + _b64(bytes(32)),
    "too short (23 bytes)": "whsec_" + _b64(bytes(23)),
    "too long (65 bytes)": "whsec_" + _b64(bytes(65)),
    "non-canonical last character": "whsec_" + _b64(bytes(32))[:-2] + "B=",
    "extra padding": "whsec_" + _b64(bytes(32)) + "=",
    "non-ascii": "whsec_" + _b64(bytes(32))[:-2] + "é=",
    "whsk_ of 31 bytes": "whsk_" + _b64(bytes(31)),
    "whsk_ of 64 bytes": "whsk_" + _b64(bytes(64)),
    "whpk_ of 33 bytes": "whpk_" + _b64(bytes(33)),
    "whpk_ unpadded": "whpk_" + _b64(bytes(32)).rstrip("="),
}


@pytest.mark.parametrize(
    "secret", MALFORMED_SECRETS.values(), ids=MALFORMED_SECRETS.keys()
)
def test_every_malformed_secret_is_refused_everywhere(secret: str) -> None:
    """sign(), verify() and secret_last4() all refuse a malformed secret."""
    headers = headers_for(sign(SECRET, MSG_ID, TS, BODY))

    with pytest.raises(SecretError):
        sign(secret, MSG_ID, TS, BODY)
    with pytest.raises(SecretError):
        verify(secret, headers, BODY, now=TS)
    with pytest.raises(SecretError):
        verify([SECRET, secret], headers, BODY, now=TS)
    with pytest.raises(SecretError):
        secret_last4(secret)


@pytest.mark.parametrize(
    "secrets", [[], (), None, 42, b"whsec_AAAA", [SECRET.encode()], [None]], ids=repr
)
def test_secrets_that_are_not_strings_are_refused(secrets: Any) -> None:
    """verify() needs one str secret or a non-empty sequence of them."""
    with pytest.raises(SecretError):
        verify(secrets, headers_for("v1,AAAA"), BODY, now=TS)


def test_a_secret_error_never_shows_the_secret() -> None:
    """The message of a SecretError names the fault, not the key material."""
    material = _b64(bytes(range(40, 62)))  # 22 bytes: too short

    with pytest.raises(SecretError) as caught:
        sign("whsec_" + material, MSG_ID, TS, BODY)

    assert material not in str(caught.value)
    assert material[-8:] not in str(caught.value)


def test_secrets_at_the_size_bounds_are_accepted() -> None:
    """24 and 64 bytes are the inclusive bounds of a whsec_ secret."""
    for size in (24, 64):
        secret = "whsec_" + _b64(bytes(range(size)))

        assert (
            reason_of(secret, headers_for(sign(secret, MSG_ID, TS, BODY)), BODY, now=TS)
            is None
        )


def test_generated_secrets_are_valid_random_and_sized() -> None:
    """generate_secret() makes distinct, valid whsec_ secrets of the asked size."""
    first, second = generate_secret(), generate_secret(24)

    assert first != generate_secret()
    assert len(base64.b64decode(first[6:], validate=True)) == 32
    assert len(base64.b64decode(second[6:], validate=True)) == 24
    assert secret_last4(first) == first[-4:]
    with pytest.raises(SecretError):
        generate_secret(23)
    with pytest.raises(SecretError):
        generate_secret(65)


def test_a_verification_error_keeps_its_reason_through_pickling() -> None:
    """The reason survives a trip to another process."""
    error = VerificationError("bad_timestamp", "webhook-timestamp is malformed")

    copy = pickle.loads(pickle.dumps(error))

    assert (copy.reason, copy.message, str(copy)) == (
        "bad_timestamp",
        "webhook-timestamp is malformed",
        "webhook-timestamp is malformed",
    )


# --- properties -------------------------------------------------------------

WEBHOOK_NAMES = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _any_case(name: str) -> st.SearchStrategy[str]:
    flags = st.lists(st.booleans(), min_size=len(name), max_size=len(name))

    return flags.map(
        lambda upper: "".join(
            char.upper() if up else char for char, up in zip(name, upper, strict=True)
        )
    )


header_names = st.one_of(
    st.sampled_from(WEBHOOK_NAMES).flatmap(_any_case),
    st.text(max_size=20),
    st.sampled_from(["webhoo\u212a-id", "webhook-\u0130d", "webhook-id\x00"]),
    st.integers(),
    st.none(),
    st.binary(max_size=20),
)
huge_strings = st.builds(
    lambda char, count: char * count,
    st.characters(),
    st.integers(min_value=1_000, max_value=200_000),
)
header_values = st.one_of(
    st.text(max_size=60),
    st.from_regex(r"\A[0-9+\-. ]{0,14}\Z"),
    st.from_regex(r"\A(v1a?,[A-Za-z0-9+/=]{0,90} ?){0,4}\Z"),
    huge_strings,
    st.integers(),
    st.floats(),
    st.none(),
    st.binary(max_size=40),
    st.lists(st.text(max_size=5), max_size=3),
)
pairs = st.tuples(header_names, header_values)
header_collections = st.one_of(
    st.dictionaries(header_names, header_values, max_size=8),
    st.lists(pairs, max_size=8),
    st.lists(
        st.one_of(pairs, st.tuples(header_values), st.text(max_size=3)), max_size=5
    ),
    st.text(max_size=30),
    st.none(),
    st.integers(),
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(bytearray),
    st.binary(max_size=300).map(memoryview),
    st.text(max_size=50),
    st.none(),
    st.integers(),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=header_collections, body=bodies, now=st.integers(0, 10**11))
def test_verify_raises_only_verification_errors_on_hostile_input(
    headers: Any, body: Any, now: int
) -> None:
    """Whatever the headers and body, verify() returns or raises VerificationError."""
    try:
        verify([SECRET, ED_PUBLIC], headers, body, now=now)
    except VerificationError as error:
        assert error.reason in REASONS


@settings(max_examples=150, deadline=None)
@given(
    extra=st.lists(pairs, max_size=6),
    body=st.binary(max_size=500),
    timestamp=st.integers(0, 10**11),
    skew=st.integers(-400, 400),
)
def test_genuine_headers_among_hostile_ones_verify_or_fail_cleanly(
    extra: list[tuple[Any, Any]], body: bytes, timestamp: int, skew: int
) -> None:
    """A genuine signature among junk headers passes unless the junk contradicts it."""
    genuine = sign_headers(SECRET, MSG_ID, timestamp, body)
    headers = list(genuine.items()) + extra
    contradicted = any(
        type(name) is not str
        or (name.isascii() and genuine.get(name.lower(), value) != value)
        for name, value in extra
    )

    reason = reason_of(SECRET, headers, body, now=timestamp + skew)

    if contradicted:
        assert reason in {"bad_headers", "conflicting_headers"}
    elif abs(skew) <= 300:
        assert reason is None
    else:
        assert reason in {"timestamp_too_old", "timestamp_too_new"}


msg_ids = st.from_regex(r"\A[!-~]{1,256}\Z")


@settings(max_examples=100, deadline=None)
@given(
    msg_id=msg_ids, timestamp=st.integers(0, 10**12 - 1), body=st.binary(max_size=2000)
)
def test_whatever_ipm_signs_it_verifies(
    msg_id: str, timestamp: int, body: bytes
) -> None:
    """sign() and verify() round-trip for every valid id, timestamp and body."""
    headers = sign_headers(SECRET, msg_id, timestamp, body)

    assert reason_of(SECRET, headers, body, now=timestamp) is None


@settings(max_examples=100, deadline=None)
@given(
    key=st.binary(max_size=200),
    prefix=st.binary(max_size=40),
    body=st.binary(max_size=400),
)
def test_the_precomputed_hmac_equals_the_standard_library(
    key: bytes, prefix: bytes, body: bytes
) -> None:
    """The pre-keyed SHA-256 states give exactly hmac.digest(), for any key length."""
    assume(key)
    expected = hmac.digest(key, prefix + body, "sha256")

    entry = signing._HmacKey(key).entry(prefix, body)

    assert entry == b"v1," + base64.b64encode(expected)


@settings(max_examples=60, deadline=None)
@given(
    chosen=st.lists(st.sampled_from(range(6)), min_size=1, max_size=6),
    seed=st.randoms(use_true_random=False),
)
def test_the_verdict_is_invariant_under_any_shuffle(
    chosen: list[int], seed: random.Random
) -> None:
    """Shuffling the signature entries never changes the answer."""
    pool = [
        sign(SECRET, MSG_ID, TS, BODY),
        sign(OTHER_SECRET, MSG_ID, TS, BODY),
        "v1,@@",
        "v2," + _b64(bytes(32)),
        "v1a," + _b64(bytes(64)),
        "v1," + _b64(bytes(32)),
    ]
    entries = [pool[index] for index in chosen]
    shuffled = entries[:]
    seed.shuffle(shuffled)

    before = reason_of(SECRET, headers_for(" ".join(entries)), BODY, now=TS)
    after = reason_of(SECRET, headers_for(" ".join(shuffled)), BODY, now=TS)

    assert before == after
    assert (before is None) == (0 in chosen)


@pytest.mark.parametrize("secret", ["nope", "whsec_!!!", 42, [], ["whsec_"]])
def test_a_malformed_secret_is_a_verification_error_too(secret: Any) -> None:
    """verify() raises only VerificationError: a bad secret's is invalid_secret."""
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1",
        "webhook-signature": "v1,x",
    }

    with pytest.raises(VerificationError) as caught:
        verify(secret, headers, b"{}", now=1)

    assert isinstance(caught.value, SecretError) and isinstance(
        caught.value, ValueError
    )
    assert caught.value.reason == "invalid_secret"
    assert caught.value.reason in REASONS
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is SecretError and again.message == caught.value.message


def test_sign_refuses_more_secrets_than_verify_reads() -> None:
    """Regression: sign() with 17 secrets made a header verify() refused
    (bad_signature_header): it is a ValueError at the sender."""
    secrets = [signing.generate_secret() for _ in range(signing.MAX_SIGNATURES + 1)]

    with pytest.raises(ValueError, match="at most 16"):
        signing.sign(secrets, "msg_1", 1_700_000_000, b"{}")

    header = signing.sign(secrets[:-1], "msg_1", 1_700_000_000, b"{}")
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": header,
    }
    signing.verify(secrets[-2], headers, b"{}", now=1_700_000_000)
