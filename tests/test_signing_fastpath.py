"""The fast paths of ipm.signing give the verdicts of its general paths.

verify() reads a plain dict of plain str names with three lookups instead of
the general header scan, and sign() and verify() inline the HMAC of a single
``whsec_`` secret instead of going through the per-key helpers. These
properties hold each fast path to the general one: same signature, same
verdict, same reason.
"""

from __future__ import annotations

import base64
from types import MappingProxyType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipm.signing import (
    DEFAULT_TOLERANCE,
    sign,
    sign_headers,
)
from tests.test_signing import _any_case, reason_of

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
MSG_ID = "msg_2bV1cXg0eZk7QmTf"
TS = 1_767_225_600  # 2026-01-01T00:00:00Z
BODY = b'{"type":"order.updated","data":{"id":"ord_1"}}'
NAMES = ("webhook-id", "webhook-timestamp", "webhook-signature")


class _Impostor(str):
    """A name that claims to equal every webhook name whatever its text."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("webhook-id")


class _Plain(str):
    """A str subclass that changes nothing, as case-insensitive key types do."""


names = st.one_of(
    st.sampled_from(NAMES),
    st.sampled_from(NAMES).flatmap(_any_case),
    st.sampled_from(NAMES).map(_Plain),
    st.sampled_from(["webhoo\u212a-id", "webhook-\u0130d", "user-agent", "Host"]),
    st.text(max_size=20),
    st.just(_Impostor("x-not-a-webhook-name")),
)
values = st.one_of(
    st.sampled_from([MSG_ID, str(TS), str(TS + 1), ""]),
    st.text(max_size=30),
)
# Rarer, so that most examples get past the type checks.
odd_pairs = st.tuples(
    st.one_of(names, st.integers(), st.none(), st.binary(max_size=12)),
    st.one_of(values, st.integers(), st.none()),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=st.dictionaries(names, values, max_size=6),
    odd=st.lists(odd_pairs, max_size=1),
    keep=st.sets(st.integers(0, 2)),
)
def test_a_plain_dict_gets_the_verdict_of_the_general_scan(
    extra: dict[Any, Any], odd: list[tuple[Any, Any]], keep: set[int]
) -> None:
    """A dict, a read-only view of it and its pairs get the same verdict and reason."""
    genuine = sign_headers(SECRET, MSG_ID, TS, BODY)
    headers: dict[Any, Any] = {
        name: value
        for index, (name, value) in enumerate(genuine.items())
        if index in keep
    }
    headers.update(extra)
    headers.update(odd)

    as_dict = reason_of(SECRET, headers, BODY, now=TS)
    as_view = reason_of(SECRET, MappingProxyType(headers), BODY, now=TS)
    as_pairs = reason_of(SECRET, list(headers.items()), BODY, now=TS)

    assert as_dict == as_view == as_pairs


def test_an_impostor_name_is_not_taken_for_a_webhook_header() -> None:
    """A name whose equality lies is read as the text it holds, on every path."""
    genuine = sign_headers(SECRET, MSG_ID, TS, BODY)
    headers: dict[str, str] = {
        "webhook-timestamp": genuine["webhook-timestamp"],
        "webhook-signature": genuine["webhook-signature"],
    }
    headers[_Impostor("x-message-id")] = MSG_ID

    assert reason_of(SECRET, headers, BODY, now=TS) == "missing_header"


class _Tantrum:
    """A non-str name that hashes like webhook-id and fails when compared."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("compared")

    def __hash__(self) -> int:
        return hash("webhook-id")


def test_a_name_that_fails_when_compared_gets_the_general_verdict() -> None:
    """A lookup that runs a name's failing __eq__ leaves the verdict to the scan."""
    genuine = sign_headers(SECRET, MSG_ID, TS, BODY)
    headers: dict[Any, str] = {_Tantrum(): MSG_ID}
    headers["webhook-timestamp"] = genuine["webhook-timestamp"]
    headers["webhook-signature"] = genuine["webhook-signature"]

    as_dict = reason_of(SECRET, headers, BODY, now=TS)
    as_pairs = reason_of(SECRET, list(headers.items()), BODY, now=TS)

    assert as_dict == as_pairs == "bad_headers"


secrets = st.binary(min_size=24, max_size=64).map(
    lambda raw: "whsec_" + base64.b64encode(raw).decode()
)
msg_ids = st.from_regex(r"\A[!-~]{1,40}\Z")
timestamps = st.integers(0, 10**12 - 1)
bodies = st.binary(max_size=300)


@settings(max_examples=100, deadline=None)
@given(secret=secrets, msg_id=msg_ids, timestamp=timestamps, body=bodies)
def test_one_secret_signs_as_a_list_of_one_does(
    secret: str, msg_id: str, timestamp: int, body: bytes
) -> None:
    """The inlined HMAC of one whsec_ secret equals the per-key entry."""
    inlined = sign(secret, msg_id, timestamp, body)

    general = sign([secret], msg_id, timestamp, body)

    assert inlined == general


def _junk_entries(genuine: str) -> st.SearchStrategy[str]:
    entry = st.one_of(
        st.just(genuine),
        st.just(genuine[:-2] + "A="),
        st.just("v1a," + genuine[3:]),
        st.just(""),
        st.from_regex(r"\Av1,[A-Za-z0-9+/=]{0,46}\Z"),
        st.text(alphabet="v12a,=+/ ", max_size=8),
    )

    return st.lists(entry, max_size=20).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(secret=secrets, body=bodies, data=st.data())
def test_one_secret_verifies_as_a_list_of_one_does(
    secret: str, body: bytes, data: st.DataObject
) -> None:
    """The inlined single-secret check gives the general check's verdict and reason."""
    genuine = sign(secret, MSG_ID, TS, body)
    header = data.draw(_junk_entries(genuine))
    headers = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(TS),
        "webhook-signature": header,
    }

    inlined = reason_of(secret, headers, body, now=TS)
    general = reason_of([secret], headers, body, now=TS)

    assert inlined == general


@settings(max_examples=200, deadline=None)
@given(
    offset=st.integers(-302, 302),
    fraction=st.sampled_from([0.0, 0.25, 0.5, 0.999999, 1e-7]),
)
def test_the_window_is_exact_whatever_the_tolerance_object(
    offset: int, fraction: float
) -> None:
    """Default, int and float tolerances of 300 s agree with exact arithmetic."""
    clock = TS + offset + fraction
    headers = sign_headers(SECRET, MSG_ID, TS, BODY)
    inside = clock - DEFAULT_TOLERANCE <= TS <= clock + DEFAULT_TOLERANCE

    default = reason_of(SECRET, headers, BODY, now=clock)
    as_int = reason_of(SECRET, headers, BODY, now=clock, tolerance=int("300"))
    as_float = reason_of(SECRET, headers, BODY, now=clock, tolerance=300.0)

    assert default == as_int == as_float
    assert (default is None) == inside
