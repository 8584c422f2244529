"""Webhook rules without storage: filters, endpoints, retries, sealing, keys."""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import stat
import threading
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ipm
from ipm.adapters.keyring import FileKeyring, MemoryKeyring, default_keyring
from ipm.domain.errors import InvalidRequest, InvalidTransition, StorageUnavailable
from ipm.domain.netguard import NetworkPolicy, UnsafeUrl
from ipm.domain.retry import RetryPolicy
from ipm.domain.webhooks import (
    Delivery,
    Routes,
    SubscriptionFilter,
    Webhook,
    check_endpoint,
    check_filters,
    delivery_body,
    sealing_key_id,
)
from ipm.testing.storage import T0
from ipm.testing.webhooks import make_webhook, stored_event
from ipm.usecases.webhooks import (
    CreatedWebhook,
    CreateWebhook,
    KeyringFailed,
    SecretBox,
    SecretUnavailable,
    secret_context,
)

STRICT = NetworkPolicy()
LOOPBACK = NetworkPolicy.from_strings(["127.0.0.0/8", "::1"])

# Every notation of an address the guard must refuse, by default.
REFUSED = [
    "https://127.0.0.1/hook",
    "https://127.1/hook",
    "https://2130706433/hook",
    "https://0x7f000001/hook",
    "https://0177.0.0.1/hook",
    "https://127.0.0.1./hook",
    "https://[::1]/hook",
    "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:7f00:1]/hook",
    "https://[::127.0.0.1]/hook",
    "https://[64:ff9b::a00:1]/hook",
    "https://localhost/hook",
    "https://api.localhost/hook",
    "https://10.0.0.1/hook",
    "https://172.16.5.4/hook",
    "https://192.168.1.10/hook",
    "https://0xa000001/hook",
    "https://169.254.1.1/hook",
    "https://[fe80::1]/hook",
    "https://100.64.0.1/hook",
    "https://[fc00::1]/hook",
    "https://[fd12:3456::1]/hook",
    "https://224.0.0.1/hook",
    "https://[ff02::1]/hook",
    "https://0.0.0.0/hook",
    "https://0/hook",
    "https://[::]/hook",
    "https://169.254.169.254/latest/meta-data",
    "https://[fd00:ec2::254]/",
    "https://100.100.100.200/",
    "https://[::ffff:169.254.169.254]/",
]


# -- endpoints ---------------------------------------------------------------


@pytest.mark.parametrize("url", REFUSED)
def test_every_private_address_form_is_refused(url: str) -> None:
    """Loopback, private, link-local, CGNAT, ULA, multicast, unspecified and
    metadata addresses are refused in every notation."""
    with pytest.raises(UnsafeUrl):
        check_endpoint(url, STRICT)


def test_metadata_stays_refused_when_its_range_is_allowed() -> None:
    """Allowing 169.254.0.0/16 does not open the metadata address."""
    lab = NetworkPolicy.from_strings(["169.254.0.0/16"])

    with pytest.raises(UnsafeUrl):
        check_endpoint("https://169.254.169.254/", lab)


def test_https_to_a_public_name_is_accepted() -> None:
    """An https URL to a public host name passes (names resolve at send time)."""
    parsed = check_endpoint("https://hooks.example.com/ipm?t=1", STRICT)

    assert parsed.host == "hooks.example.com"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/hook", "http://[::1]/hook", "http://localhost:9000/"],
)
def test_http_reaches_an_allowed_address(url: str) -> None:
    """Plain http is accepted for an address inside an allowed network."""
    assert check_endpoint(url, LOOPBACK).scheme == "http"


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/ipm",  # a name could resolve anywhere later
        "http://10.0.0.1/hook",  # private and not allowed
        "http://[::ffff:10.0.0.1]/hook",
    ],
)
def test_http_elsewhere_is_refused(url: str) -> None:
    """Plain http to a name or to an address outside the allowed networks fails."""
    with pytest.raises(UnsafeUrl):
        check_endpoint(url, LOOPBACK)


def test_a_host_may_turn_the_https_rule_off() -> None:
    """A policy with require_https off accepts http to a public name."""
    relaxed = NetworkPolicy(require_https=False)

    assert check_endpoint("http://hooks.example.com/", relaxed).scheme == "http"


# -- filters -----------------------------------------------------------------


def test_an_empty_filter_list_is_refused() -> None:
    """A webhook needs at least one event filter."""
    with pytest.raises(InvalidRequest) as error:
        check_filters([])

    assert error.value.details[0].pointer == "/event_filters"


def test_bad_filters_are_all_reported() -> None:
    """Every malformed filter is reported with its own pointer."""
    filters = [
        SubscriptionFilter("POS"),
        SubscriptionFilter("pos", action="sale.created", action_prefix="sale."),
        SubscriptionFilter("pos", action_prefix="Sale"),
    ]

    with pytest.raises(InvalidRequest) as error:
        check_filters(filters)

    pointers = {problem.pointer for problem in error.value.details}
    assert pointers == {
        "/event_filters/0/service",
        "/event_filters/1",
        "/event_filters/2/action_prefix",
    }


def test_filters_match_service_action_and_prefix() -> None:
    """A filter matches its service, and then its action or prefix if given."""
    sale = stored_event(1, action="sale.created")

    assert SubscriptionFilter("pos").matches(sale)
    assert SubscriptionFilter("pos", action="sale.created").matches(sale)
    assert SubscriptionFilter("pos", action_prefix="sale.").matches(sale)
    assert not SubscriptionFilter("pos", action="sale.voided").matches(sale)
    assert not SubscriptionFilter("orders").matches(sale)


def test_a_disabled_or_foreign_webhook_matches_nothing() -> None:
    """Only a webhook of the event's org that is not disabled matches it."""
    webhook = make_webhook(1)
    sale = stored_event(1, action="sale.created")

    assert webhook.matches(sale)
    assert not webhook.move_to("disabled", T0).matches(sale)
    assert not make_webhook(1, orgcode="OTHER").matches(sale)


# -- status ------------------------------------------------------------------


def test_moves_follow_the_lifecycle_and_bump_the_revision() -> None:
    """A legal move changes status and revision; an illegal one raises."""
    webhook = make_webhook(1, failing_since=T0)

    paused = webhook.move_to("paused", T0 + timedelta(seconds=1))
    disabled = paused.move_to("disabled", T0)
    active = disabled.move_to("active", T0)

    assert [w.revision for w in (webhook, paused, disabled, active)] == list("1234")
    assert disabled.disabled_reason == "manual"
    assert active.disabled_reason is None and active.failing_since is None
    with pytest.raises(InvalidTransition):
        active.move_to("active", T0)


# -- retry policy ------------------------------------------------------------


@settings(max_examples=200)
@given(
    attempts=st.integers(min_value=1, max_value=7),
    rand=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_jitter_stays_within_its_band(attempts: int, rand: float) -> None:
    """A scheduled delay lands within ±jitter of its step, never outside."""
    policy = RetryPolicy()
    step = policy.schedule[attempts - 1]

    delay = policy.next_delay(attempts, None, rand)

    assert delay is not None
    assert step * 0.8 - 1e-9 <= delay <= step * 1.2 + 1e-9


@given(
    hint=st.floats(min_value=0, max_value=1e9),
    attempts=st.integers(min_value=1, max_value=7),
    rand=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_retry_after_is_honoured_within_bounds(
    hint: float, attempts: int, rand: float
) -> None:
    """A Retry-After hint, clamped to [min_retry_after, max_retry_after],
    lengthens the scheduled delay and never shortens it."""
    policy = RetryPolicy(min_retry_after=2, max_retry_after=600)
    scheduled = policy.next_delay(attempts, None, rand)
    assert scheduled is not None

    delay = policy.next_delay(attempts, hint, rand)

    assert delay == max(min(max(hint, 2), 600), scheduled)


def test_a_short_retry_after_does_not_use_up_the_tries_in_seconds() -> None:
    """Regression: an endpoint answering 503 with Retry-After: 1 got all
    eight tries of the default policy within eight seconds, then the
    delivery failed for good; the schedule spreads them over a day."""
    policy = RetryPolicy()

    delays = [policy.next_delay(n, 1.0, 0.5) for n in range(1, policy.max_attempts)]

    assert all(delay is not None for delay in delays)
    assert sum(d for d in delays if d is not None) > 24 * 3600


def test_tries_end_at_max_attempts() -> None:
    """After max_attempts tries there is no next delay; the last step repeats."""
    policy = RetryPolicy(schedule=(1, 2), max_attempts=5, jitter=0)

    delays = [policy.next_delay(n, None, 0.0) for n in range(1, 6)]

    assert delays == [1, 2, 2, 2, None]


@pytest.mark.parametrize(
    "options",
    [
        {"schedule": ()},
        {"schedule": (-1,)},
        {"max_attempts": 0},
        {"jitter": 1.0},
        # Regression: these were taken, and an infinite, NaN or huge step
        # broke the dispatcher when it recorded a send (the delivery went
        # out again and again, never recorded); a negative bound on
        # Retry-After ran every try back to back.
        {"schedule": (math.inf,)},
        {"schedule": (math.nan,)},
        {"schedule": (1e12,)},
        {"schedule": (True,)},
        {"min_retry_after": -1},
        {"min_retry_after": math.nan},
        {"max_retry_after": math.inf},
        {"min_retry_after": 10, "max_retry_after": 5},
        {"disable_after": timedelta(seconds=-1)},
        {"disable_after": 5},
        {"max_attempts": 2.5},
        {"max_attempts": True},
        {"jitter": math.nan},
        # Numbers of other types failed only when a delivery was recorded.
        {"jitter": Decimal("0.1")},
        {"unanswered_hold": Decimal(30)},
        {"unanswered_hold": True},
        {"schedule": (Decimal(5),)},
    ],
)
def test_nonsense_policies_are_refused(options: dict[str, object]) -> None:
    """A policy that could never work fails when it is built."""
    with pytest.raises(ValueError):
        RetryPolicy(**options)  # type: ignore[arg-type]


# -- deliveries --------------------------------------------------------------


def _tried(status: int | None, attempts: int = 0) -> tuple[Delivery, str]:
    delivery = attrs.evolve(
        Delivery.queue("msg_1", make_webhook(1), stored_event(1)), attempts=attempts
    )
    attempt = delivery.attempt(
        attempts + 1,
        "dispatch",
        T0,
        duration_ms=1,
        status=status,
        error=None if status else "connection refused",
    )
    policy = RetryPolicy(schedule=(10,), max_attempts=3, jitter=0)

    return delivery.after_attempt(attempt, T0, policy)


@pytest.mark.parametrize(
    ("status", "attempts", "verdict", "final_status"),
    [
        (200, 0, "delivered", "delivered"),
        (204, 2, "delivered", "delivered"),
        (410, 0, "gone", "failed"),
        (500, 0, "retry", "pending"),
        (302, 0, "retry", "pending"),
        (None, 1, "retry", "pending"),
        (503, 2, "failed", "failed"),
    ],
)
def test_an_answer_decides_the_next_step(
    status: int | None, attempts: int, verdict: str, final_status: str
) -> None:
    """2xx delivers, 410 is gone, others retry until the last try fails."""
    delivery, got = _tried(status, attempts)

    assert got == verdict
    assert delivery.status == final_status
    assert delivery.attempts == attempts + 1
    assert delivery.lease_owner is None


def test_a_retry_waits_for_the_scheduled_delay() -> None:
    """A failed try is due again after the policy's delay."""
    delivery, _ = _tried(500)

    assert delivery.next_attempt_at == T0 + timedelta(seconds=10)


def test_the_body_is_the_event_in_a_standard_envelope() -> None:
    """The body names the event type and carries the event as the feed shows it."""
    event = stored_event(3, payload={"text": "café", "n": 1})

    body = json.loads(delivery_body(event))

    assert body["type"] == "pos.sale.created"
    assert body["data"] == event.to_wire()
    assert body["timestamp"] == "2026-01-01T00:00:00Z"


# -- secrets -----------------------------------------------------------------


@settings(max_examples=50)
@given(secret=st.text(max_size=200), context=st.text(max_size=50))
def test_sealing_round_trips(secret: str, context: str) -> None:
    """What is sealed opens to the same text under the same context."""
    box = SecretBox(MemoryKeyring())

    sealed = box.seal(secret, context)

    assert box.open(sealed, context) == secret
    assert len(secret) < 8 or secret.encode() not in sealed


def test_a_sealed_secret_opens_only_where_it_belongs() -> None:
    """Another context, a flipped bit or another keyring does not open it."""
    box = SecretBox(MemoryKeyring())
    sealed = box.seal("whsec_abc", "ipm/webhook/ACME/wh_1")
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])

    for attempt in (
        lambda: box.open(sealed, "ipm/webhook/ACME/wh_2"),
        lambda: box.open(flipped, "ipm/webhook/ACME/wh_1"),
        lambda: SecretBox(MemoryKeyring()).open(sealed, "ipm/webhook/ACME/wh_1"),
        lambda: box.open(b"", "ipm/webhook/ACME/wh_1"),
    ):
        with pytest.raises(SecretUnavailable):
            attempt()


def test_no_repr_shows_a_secret() -> None:
    """Commands, results and webhooks keep secrets out of their repr."""
    secret = "whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"
    command = CreateWebhook(
        "https://h.example/", (SubscriptionFilter("pos"),), secret=secret
    )
    created = CreatedWebhook(make_webhook(1), secret)

    for value in (command, created, make_webhook(1)):
        assert secret not in repr(value)
        assert "sealed" not in repr(value)


# -- keyrings ----------------------------------------------------------------


def test_the_key_file_is_private_and_shared(tmp_path: Path) -> None:
    """The key file is made once with mode 0600 and read by every instance."""
    path = tmp_path / "ipm.sqlite.key"

    first = FileKeyring(path).current()
    second = FileKeyring(path).current()

    assert first == second
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["ipm.sqlite.key"]


def test_rotation_keeps_old_keys_readable(tmp_path: Path) -> None:
    """After a rotation new secrets use the new key and old ones still open,
    in a process that read the file before the rotation too."""
    path = tmp_path / "ipm.sqlite.key"
    box = SecretBox(FileKeyring(path))
    old = box.seal("whsec_old", "ctx")

    rotated = FileKeyring(path).rotate()
    reopened = SecretBox(FileKeyring(path))

    assert reopened.open(old, "ctx") == "whsec_old"
    assert reopened.keyring.current()[0] == box.keyring.current()[0] == rotated
    assert sealing_key_id(old) != rotated


def _disk_full_while_writing_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from ipm.adapters import keyring as keyring_module

    def full(document: object, handle: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keyring_module.json, "dump", full)


def test_a_rotation_the_disk_refuses_keeps_the_old_key_current(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the new key became current before it was on disk, so
    secrets sealed afterwards were lost at the next start."""
    path = tmp_path / "ipm.sqlite.key"
    keyring = FileKeyring(path)
    before = keyring.current()

    with monkeypatch.context() as patch:
        _disk_full_while_writing_keys(patch)
        with pytest.raises(StorageUnavailable, match="disk is full"):
            keyring.rotate()

    assert keyring.current() == before
    assert FileKeyring(path).current() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ipm.sqlite.key",
        "ipm.sqlite.key.lock",
    ]


def test_a_key_file_the_disk_refuses_to_create_leaves_no_key_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ipm.sqlite.key"
    keyring = FileKeyring(path)

    with monkeypatch.context() as patch:
        _disk_full_while_writing_keys(patch)
        with pytest.raises(StorageUnavailable):
            keyring.current()

    assert list(tmp_path.iterdir()) == []
    assert keyring.current() == FileKeyring(path).current()


def test_a_lost_key_file_is_not_made_anew_by_a_read(tmp_path: Path) -> None:
    """Opening a secret whose key file is gone finds no key and creates none.

    Regression: the read made a fresh key file, which opened nothing sealed
    before and hid that the old key was lost.
    """
    path = tmp_path / "ipm.sqlite.key"
    sealed = SecretBox(FileKeyring(path)).seal("whsec_old", "ctx")
    path.unlink()

    with pytest.raises(SecretUnavailable):
        SecretBox(FileKeyring(path)).open(sealed, "ctx")

    assert not path.exists()


@pytest.mark.parametrize(
    ("failure", "reason"),
    [(KeyError("k0"), "is missing"), (ConnectionRefusedError(), "keyring failed")],
)
def test_a_keyring_raising_key_error_has_lost_the_key_and_others_failed(
    failure: Exception, reason: str
) -> None:
    """A KeyError says "no such key", as None does (the deliveries spend
    attempts and end); anything else is the keyring failing just now (they
    wait untried)."""
    sealed = SecretBox(MemoryKeyring()).seal("whsec_old", "ctx")

    class Failing(MemoryKeyring):
        def get(self, key_id: str) -> bytes | None:
            raise failure

    with pytest.raises(SecretUnavailable, match=reason) as refused:
        SecretBox(Failing()).open(sealed, "ctx")

    assert isinstance(refused.value, KeyringFailed) is (reason == "keyring failed")


def test_a_key_file_deleted_while_running_is_written_back(tmp_path: Path) -> None:
    """Sealing after the file went away writes the keys back first.

    Regression: the key held in memory kept sealing new secrets, and with no
    file they were lost at the next start.
    """
    path = tmp_path / "ipm.sqlite.key"
    box = SecretBox(FileKeyring(path))
    box.seal("whsec_before", "ctx")
    path.unlink()

    sealed = box.seal("whsec_after", "ctx")

    assert SecretBox(FileKeyring(path)).open(sealed, "ctx") == "whsec_after"


def _rotate_often(path: str) -> list[str]:
    keyring = FileKeyring(Path(path))
    return [keyring.rotate() for _ in range(10)]


def test_processes_rotating_at_once_keep_every_key(tmp_path: Path) -> None:
    """Keys rotated by several processes at the same time all stay readable."""
    import multiprocessing

    path = tmp_path / "ipm.sqlite.key"
    FileKeyring(path).current()

    # Spawned, not forked: a child forked from this threaded process (the
    # suite leaves idle threads behind) can inherit a held lock and wait on
    # it for ever, as one did once in a full run. Bounded all the same.
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        rotated = pool.map_async(_rotate_often, [str(path)] * 4).get(timeout=120)

    keyring = FileKeyring(path)
    assert all(keyring.get(key_id) is not None for ids in rotated for key_id in ids)


def _hook(app: ipm.Application) -> str:
    command = CreateWebhook("http://127.0.0.1:9/hook", (SubscriptionFilter("pos"),))

    return app.webhooks.create("ACME01", command).webhook.webhook_id


def _disabled_hook(app: ipm.Application) -> tuple[Webhook, Webhook]:
    """A new webhook of ACME01 as created, and as disabled right after."""
    webhook = app.webhooks.get("ACME01", _hook(app))
    off = app.webhooks.set_status(
        "ACME01", webhook.webhook_id, "disabled", webhook.revision
    )

    return webhook, off


def _local(db: Path) -> ipm.Application:
    """ipm on ``db``, its webhooks allowed to reach 127.0.0.1."""
    return ipm.open_sqlite(db, allow_networks=["127.0.0.1/32"])


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_key_file_lost_or_swapped_is_not_replaced_by_a_new_key(
    tmp_path: Path, how: str
) -> None:
    """Regression: a process that had not read the key file yet minted a
    new one when the file was gone (or used another deployment's put in its
    place), so the webhooks sealed before could never sign again, and once
    the right file was back, the ones sealed meanwhile could not. Creating a
    webhook is now refused until the key is restored, and nothing is made."""
    db = tmp_path / "ipm.sqlite"
    key_file = tmp_path / "ipm.sqlite.key"
    with _local(db) as app:
        first = _hook(app)
    right = key_file.read_bytes()
    key_file.unlink()
    if how == "replaced":
        FileKeyring(key_file).current()  # another deployment's key file
    left = None if how == "removed" else key_file.read_bytes()

    with _local(db) as app:
        with pytest.raises(StorageUnavailable, match="lacks the key"):
            _hook(app)
        listed = [w.webhook_id for w in app.webhooks.list("ACME01")]
    kept = key_file.read_bytes() if key_file.exists() else None
    key_file.write_bytes(right)
    with _local(db) as app:
        second = _hook(app)
        both = [
            app.webhooks.secrets.open(
                app.webhooks.get("ACME01", w).sealed_secret,
                secret_context("ACME01", w),
            )
            for w in (first, second)
        ]

    assert listed == [first]
    assert kept == left
    assert all(both)


_KEY_FILE = (
    b'{"format": 1, "current": "k", "keys": {"k": "'
    + base64.b64encode(bytes(32))
    + b'"}}'
)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "not JSON"),
        (b'{"format": 1, "keys": {}}', "no current key"),
        (b'{"format": 2, "current": "k", "keys": {"k": ""}}', "format 1"),
        (b'{"format": 1, "current": "k", "keys": {"k": "%%"}}', "not base64"),
        (b'{"format": 1, "current": "k", "keys": {"k": "AAAA"}}', "not 32 bytes"),
        (b'{"format": true, "current": "k", "keys": {"k": ""}}', "format 1"),
        (b"[" * 100_000, "not JSON"),
        (_KEY_FILE.replace(b'"k"', '"k\u00e9"'.encode()), "key id"),
        (_KEY_FILE.replace(b'"k"', b'"' + b"k" * 256 + b'"'), "key id"),
    ],
)
def test_a_damaged_key_file_is_said_as_such_and_left_as_it_is(
    tmp_path: Path, content: bytes, why: str
) -> None:
    """Regression: an empty or damaged key file was told as "the keyring
    failed (JSONDecodeError) ... try again later", though it stays damaged;
    it now says the file cannot be read and is to be restored."""
    key_file = tmp_path / "ipm.sqlite.key"
    key_file.write_bytes(content)
    key_file.chmod(0o600)

    db = tmp_path / "ipm.sqlite"
    with (
        _local(db) as app,
        pytest.raises(StorageUnavailable) as refused,
    ):
        _hook(app)

    assert why in refused.value.message
    assert "restore it from its backup" in refused.value.message
    assert key_file.read_bytes() == content


def test_a_key_file_swapped_under_a_running_process_is_not_sealed_past(
    tmp_path: Path,
) -> None:
    """Regression: a process that had read the key file went on sealing with
    the key it held after the file was replaced by another deployment's, so
    what it sealed could not be opened after a restart. It now reads the
    file again before sealing and refuses; a rotation by another process
    (a key added) is taken up instead."""
    db = tmp_path / "ipm.sqlite"
    key_file = tmp_path / "ipm.sqlite.key"
    other = tmp_path / "other.key"
    FileKeyring(other).current()
    with _local(db) as app:
        _hook(app)
        rotated = FileKeyring(key_file).rotate()
        after_rotation = app.webhooks.get("ACME01", _hook(app)).sealed_secret
        right = key_file.read_bytes()
        key_file.write_bytes(other.read_bytes())
        with pytest.raises(StorageUnavailable, match="replaced"):
            _hook(app)
        key_file.write_bytes(right)
        _hook(app)

    assert sealing_key_id(after_rotation) == rotated


def test_a_host_keyring_is_never_written_whole_into_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: the refusal's log line held the keyring's repr, which a
    host's own class may fill with its keys."""

    @attrs.define
    class Plain:
        keys: dict[str, bytes]
        now: str

        def current(self) -> tuple[str, bytes]:
            return self.now, self.keys[self.now]

        def get(self, key_id: str) -> bytes | None:
            return self.keys.get(key_id)

    keyring = Plain({"k1": b"S" * 32}, "k1")
    app = ipm.open_memory(keyring=keyring, allow_networks=["127.0.0.1/32"])
    _hook(app)
    keyring.keys, keyring.now = {"k2": b"T" * 32}, "k2"

    with caplog.at_level(logging.ERROR), pytest.raises(StorageUnavailable):
        _hook(app)

    said = " ".join(r.getMessage() for r in caplog.records)
    assert "lacks the key(s) k1" in said
    assert "TTTT" not in said and "SSSS" not in said


@pytest.mark.parametrize("lost", [None, b"", b"short"])
def test_a_webhook_whose_key_is_lost_stays_disabled(
    tmp_path: Path, lost: bytes | None
) -> None:
    """Regression: set active again, a webhook whose key was lost stopped
    every org's webhooks from being created; it now stays disabled (503)
    until its key is back. A keyring answering an empty or short key for
    it has lost it too."""
    keyring = MemoryKeyring()
    app = ipm.open_memory(keyring=keyring, allow_networks=["127.0.0.1/32"])
    webhook, off = _disabled_hook(app)
    key_id = sealing_key_id(webhook.sealed_secret)
    assert key_id is not None
    kept = keyring._keys[key_id]
    if lost is None:
        del keyring._keys[key_id]
    else:
        keyring._keys[key_id] = lost
    keyring.rotate()

    with pytest.raises(StorageUnavailable, match="stays disabled"):
        app.webhooks.set_status("ACME01", webhook.webhook_id, "active", off.revision)
    still = app.webhooks.get("ACME01", webhook.webhook_id)
    created = _hook(app)
    keyring._keys[key_id] = kept
    back = app.webhooks.set_status("ACME01", webhook.webhook_id, "active", off.revision)

    assert still.status == "disabled" and still.revision == off.revision
    assert created != webhook.webhook_id
    assert back.status == "active"


def test_a_host_storage_without_sealing_key_ids_still_creates_webhooks(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A storage written before the port asked for sealing_key_ids() is not
    checked (a warning says so once), rather than failing every create."""
    from ipm.adapters.memory.webhooks import MemoryWebhookStore

    monkeypatch.delattr(MemoryWebhookStore, "sealing_key_ids")
    app = ipm.open_memory(allow_networks=["127.0.0.1/32"])

    with caplog.at_level(logging.WARNING):
        made = [_hook(app), _hook(app)]

    said = [r for r in caplog.records if "sealing_key_ids" in r.getMessage()]
    assert len(set(made)) == 2
    assert len(said) == 1


def _other_key_file(tmp_path: Path) -> bytes:
    other = tmp_path / "elsewhere" / "ipm.sqlite.key"
    other.parent.mkdir()
    FileKeyring(other).current()

    return other.read_bytes()


def test_a_file_that_lands_while_the_keys_are_written_back_is_not_merged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a process writing its keys back over a gone file took in
    another deployment's file that landed first, and sealed with its key."""
    from ipm.adapters import keyring as keyring_module

    path = tmp_path / "ipm.sqlite.key"
    keyring = FileKeyring(path)
    held, _ = keyring.current()
    path.unlink()
    foreign = _other_key_file(tmp_path)
    real_link = os.link

    def landed_first(source: str | Path, target: str | Path) -> None:
        Path(target).write_bytes(foreign)
        real_link(source, target)  # FileExistsError, as in the race

    monkeypatch.setattr(keyring_module.os, "link", landed_first)

    with pytest.raises(StorageUnavailable, match="replaced"):
        keyring.current()
    monkeypatch.undo()

    assert keyring.get(held) is not None
    assert path.read_bytes() == foreign


def test_rotate_keeps_the_keys_held_and_refuses_a_replaced_file(
    tmp_path: Path,
) -> None:
    """Regression: rotate() over a gone file made a new file without the
    keys the process held (dropping them from memory too), and over another
    deployment's file added a key to it without a word."""
    path = tmp_path / "ipm.sqlite.key"
    keyring = FileKeyring(path)
    first, _ = keyring.current()
    path.unlink()

    second = keyring.rotate()
    written = FileKeyring(path)
    kept = written.get(first) is not None and written.current()[0] == second
    foreign = _other_key_file(tmp_path)
    path.write_bytes(foreign)
    with pytest.raises(StorageUnavailable, match="replaced"):
        keyring.rotate()
    with pytest.raises(StorageUnavailable, match="replaced"):
        keyring.get("k-never-seen")

    assert kept
    assert keyring.get(first) is not None
    assert path.read_bytes() == foreign


def test_a_webhook_cannot_leave_disabled_on_a_key_held_only_in_memory(
    tmp_path: Path,
) -> None:
    """Regression: a process still holding a lost key in memory let its
    webhook be set active although the key file in place lacked the key."""
    db = tmp_path / "ipm.sqlite"
    key_file = tmp_path / "ipm.sqlite.key"
    with _local(db) as app:
        webhook, off = _disabled_hook(app)
        key_file.write_bytes(_other_key_file(tmp_path))

        with pytest.raises(StorageUnavailable):
            app.webhooks.set_status(
                "ACME01", webhook.webhook_id, "active", off.revision
            )
        still = app.webhooks.get("ACME01", webhook.webhook_id)

    assert still.status == "disabled"


@pytest.mark.parametrize("what", ["folder", "dangling link", "huge"])
def test_a_key_path_that_is_no_readable_file_is_said_as_such(
    tmp_path: Path, what: str
) -> None:
    """Regression: a folder or a link to nothing at the key path was "the
    keyring failed (IsADirectoryError) ... try again later", and a huge file
    was read whole (gigabytes) before every seal."""
    key_file = tmp_path / "ipm.sqlite.key"
    if what == "folder":
        key_file.mkdir()
    elif what == "dangling link":
        key_file.symlink_to(tmp_path / "nowhere")
    else:
        with key_file.open("wb") as handle:
            handle.truncate(1 << 30)  # sparse: no gigabyte written
    db = tmp_path / "ipm.sqlite"

    with (
        _local(db) as app,
        pytest.raises(StorageUnavailable, match="cannot be read"),
    ):
        _hook(app)

    assert key_file.is_dir() == (what == "folder")
    assert key_file.is_symlink() == (what == "dangling link")


def test_a_process_that_met_a_wrong_key_file_takes_the_right_one_back(
    tmp_path: Path,
) -> None:
    """Regression: a process started while a wrong key file was in place
    took its keys up and then refused the right file once it was restored,
    until a restart; only keys a process sealed with must stay on disk."""
    db = tmp_path / "ipm.sqlite"
    key_file = tmp_path / "ipm.sqlite.key"
    with _local(db) as first:
        _hook(first)
    right = key_file.read_bytes()
    key_file.write_bytes(_other_key_file(tmp_path))

    with _local(db) as app:
        with pytest.raises(StorageUnavailable, match="lacks the key"):
            _hook(app)
        key_file.write_bytes(right)
        made = _hook(app)

    assert made.startswith("wh_")


@pytest.mark.parametrize("target", ["nowhere", "/dev/urandom"])
def test_a_key_path_linked_to_nothing_or_a_device_is_unreadable_in_a_new_process(
    tmp_path: Path, target: str
) -> None:
    """Regression: in a process that had not read the key file, a link to
    nothing read as a lost key (the dispatcher spent attempts), and a link
    to /dev/urandom was read without end."""
    db = tmp_path / "ipm.sqlite"
    key_file = tmp_path / "ipm.sqlite.key"
    with _local(db) as app:
        _hook(app)
    key_file.unlink()
    key_file.symlink_to(tmp_path / target if target == "nowhere" else target)

    with _local(db) as app:
        with pytest.raises(StorageUnavailable, match="cannot be read"):
            _hook(app)
        app.publish("ACME01", {"service": "pos", "action": "sale.created"})
        report = app.deliver_pending()

    assert report.attempted == 0 and report.untried_here == 1


def test_a_child_forked_while_the_keyring_is_held_can_use_it(tmp_path: Path) -> None:
    """Regression: a fork while another thread held the keyring's lock (a
    rotation waiting on another process's file lock) left the child waiting
    on it for ever."""
    keyring = FileKeyring(tmp_path / "ipm.sqlite.key")
    key_id, _ = keyring.current()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with keyring._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os._exit(0 if keyring.get(key_id) is not None else 1)
    release.set()
    holder.join()
    for _ in range(100):
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        os.waitpid(child, 0)
        pytest.fail("the child waited on the keyring's lock")

    assert os.waitstatus_to_exitcode(status) == 0


def test_a_process_that_only_opened_secrets_does_not_seal_past_a_swapped_file(
    tmp_path: Path,
) -> None:
    """Regression: a process that had only opened a secret (a dispatcher
    signing) sealed its next create with the key of a file swapped in
    since, and set a webhook active on it; a key that opened a secret must
    stay on disk too."""
    db = tmp_path / "ipm.sqlite"
    key_file = tmp_path / "ipm.sqlite.key"
    with _local(db) as first:
        webhook, off = _disabled_hook(first)
    right = key_file.read_bytes()

    with _local(db) as app:
        context = secret_context("ACME01", webhook.webhook_id)
        app.webhooks.secrets.open(webhook.sealed_secret, context)
        key_file.write_bytes(_other_key_file(tmp_path))
        with pytest.raises(StorageUnavailable):
            _hook(app)
        with pytest.raises(StorageUnavailable):
            app.webhooks.set_status(
                "ACME01", webhook.webhook_id, "active", off.revision
            )
        key_file.write_bytes(right)
        made = _hook(app)

    assert made.startswith("wh_")


def test_a_fifo_at_the_key_path_is_unreadable_at_once(tmp_path: Path) -> None:
    """Regression: a FIFO at the key path made create wait for a writer,
    holding the keyring's lock."""
    os.mkfifo(tmp_path / "ipm.sqlite.key")
    db = tmp_path / "ipm.sqlite"

    with (
        _local(db) as app,
        pytest.raises(StorageUnavailable, match="not a regular file"),
    ):
        _hook(app)


def test_a_child_forked_during_a_rotation_lets_the_file_lock_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a child forked while a thread rotated kept a copy of the
    rotation's file lock, so every process's rotate() waited on it for as
    long as the child lived."""
    path = tmp_path / "ipm.sqlite.key"
    keyring = FileKeyring(path)
    keyring.current()
    inside, go_on = threading.Event(), threading.Event()
    real_write = FileKeyring._write_temporary

    def pausing(self: FileKeyring, current: str, keys: dict[str, bytes]) -> Path:
        inside.set()
        go_on.wait(10)
        return real_write(self, current, keys)

    monkeypatch.setattr(FileKeyring, "_write_temporary", pausing)
    rotating = threading.Thread(target=keyring.rotate)
    rotating.start()
    inside.wait(5)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child lingers, holding nothing
        time.sleep(3)
        os._exit(0)
    go_on.set()
    rotating.join()
    monkeypatch.undo()
    started = time.monotonic()
    FileKeyring(path).rotate()  # another rotation, while the child lives
    waited = time.monotonic() - started
    os.waitpid(child, 0)

    assert waited < 1.5


def test_a_rotation_over_a_gone_file_leaves_a_file_written_back_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: rotate() over a gone file replaced whatever another
    process had written back meanwhile (without rotate()'s lock), so a key
    that process had just sealed with was on no disk any more."""
    path = tmp_path / "ipm.sqlite.key"
    keyring = FileKeyring(path)
    keyring.current()
    path.unlink()
    meanwhile = _other_key_file(tmp_path)
    real_write = FileKeyring._write_temporary

    def written_back_first(
        self: FileKeyring, current: str, keys: dict[str, bytes]
    ) -> Path:
        temporary = real_write(self, current, keys)
        path.write_bytes(meanwhile)  # another process's write-back lands
        return temporary

    monkeypatch.setattr(FileKeyring, "_write_temporary", written_back_first)

    with pytest.raises(StorageUnavailable, match="rotate again"):
        keyring.rotate()

    assert path.read_bytes() == meanwhile
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "elsewhere",
        "ipm.sqlite.key",
        "ipm.sqlite.key.lock",
    ]


def test_a_key_lost_for_good_stops_refusing_once_its_webhooks_are_disabled(
    tmp_path: Path,
) -> None:
    """The way on when no backup of the key file exists: disable the
    webhooks it sealed (they can never sign), and a new key is made."""
    db = tmp_path / "ipm.sqlite"
    with _local(db) as app:
        lost = app.webhooks.get("ACME01", _hook(app))
    (tmp_path / "ipm.sqlite.key").unlink()

    with _local(db) as app:
        app.webhooks.set_status("ACME01", lost.webhook_id, "disabled", lost.revision)
        made = _hook(app)

    assert made != lost.webhook_id
    assert (tmp_path / "ipm.sqlite.key").exists()


def test_the_default_keyring_lives_beside_the_database(tmp_path: Path) -> None:
    """A database file gets <db>.key; an in-memory one a memory keyring."""
    keyring = default_keyring(str(tmp_path / "a.sqlite"))

    assert isinstance(keyring, FileKeyring)
    assert keyring.path == tmp_path / "a.sqlite.key"
    assert isinstance(default_keyring(None), MemoryKeyring)


_NAMES = st.sampled_from(["pos", "orders", "sale", "sale.created", "sale.c", "s"])
_FILTERS = st.builds(
    lambda service, action, kind: SubscriptionFilter(
        service,
        action=action if kind == "action" else None,
        action_prefix=action if kind == "prefix" else None,
    ),
    service=st.sampled_from(["pos", "orders"]),
    action=_NAMES,
    kind=st.sampled_from(["service", "action", "prefix"]),
)


@settings(max_examples=300)
@given(
    hooks=st.lists(
        st.tuples(
            st.lists(_FILTERS, min_size=1, max_size=4),
            st.sampled_from(["active", "paused", "disabled"]),
            st.sampled_from(["ACME", "OTHER"]),
        ),
        max_size=8,
    ),
    service=st.sampled_from(["pos", "orders", "kpi"]),
    action=_NAMES,
)
def test_routes_reach_exactly_the_webhooks_whose_filters_match(
    hooks: list[tuple[list[SubscriptionFilter], str, str]], service: str, action: str
) -> None:
    """The index answers what checking every filter of every webhook would,
    in the webhooks' own order."""
    webhooks = [
        make_webhook(n, orgcode, event_filters=tuple(rules), status=status)
        for n, (rules, status, orgcode) in enumerate(hooks)
    ]
    event = stored_event(1, service=service, action=action)

    routes = Routes(webhooks)

    assert list(routes.reached_by(event)) == [w for w in webhooks if w.matches(event)]
    assert routes.naming(service, action) == routes.naming(service, action)


def test_queuing_indexes_a_list_changed_in_place_afresh() -> None:
    """A store may hand out the same list object changed in place: the index
    is kept only while the list holds the very same webhooks. A list met
    once is matched webhook by webhook; met again, it is indexed."""
    event = stored_event(1)
    with ipm.open_memory() as app:
        hooks = app.webhooks
        known = [make_webhook(1)]
        once = hooks._reached(known, event)
        assert hooks._last_routes is None
        twice = hooks._reached(list(known), event)
        first = hooks._last_routes
        hooks._reached(list(known), event)
        again = hooks._last_routes
        known.append(make_webhook(2))
        grown = hooks._reached(known, event)
        grown_again = hooks._reached(known, event)

    assert first is not None and again is first
    assert [w.webhook_id for w in once] == [w.webhook_id for w in twice] == ["wh_0001"]
    assert [w.webhook_id for w in grown] == ["wh_0001", "wh_0002"]
    assert list(grown_again) == list(grown)


def test_routes_remember_a_bounded_number_of_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An index kept for a long-lived memory store would otherwise remember
    every event name a host ever made up."""
    monkeypatch.setattr("ipm.domain.webhooks._KNOWN_NAMES", 8)
    routes = Routes([make_webhook(1)])

    for n in range(100):
        assert len(routes.naming("pos", f"sale.n{n}")) == 1

    assert len(routes._found) <= 8
