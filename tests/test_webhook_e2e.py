"""End to end: ``ipm serve`` and two ``ipm deliver`` processes, a real receiver.

The receiver listens on 127.0.0.1 and checks every request with the
reference ``standardwebhooks`` package. Subscriptions are made over HTTP,
events are published by a host process on the same database, and two
dispatcher processes share the work.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks

import ipm
from ipm.testing import LocalReceiver
from ipm.testing.webhooks import Received
from tests.conftest import free_port

pytestmark = pytest.mark.slow

ORG = "ACME01"
ALLOW = ["--allow-network", "127.0.0.0/8"]


class VerifyingReceiver:
    """Answers by path (/ok, /flaky, /gone) and verifies every request."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.verified: list[tuple[str, str, bytes]] = []
        self.unverified: list[str] = []
        self._tried: set[str] = set()
        self._lock = threading.Lock()
        self.server = LocalReceiver(self.reply)

    def reply(self, received: Received) -> int:
        try:
            verifier = standardwebhooks.Webhook(self.secrets[received.path])
            verifier.verify(received.body, received.headers)
        except Exception as exc:
            with self._lock:
                self.unverified.append(f"{received.path}: {exc!r}")
            return 400

        msg_id = received.headers["webhook-id"]
        with self._lock:
            self.verified.append((received.path, msg_id, received.body))
            first_try = msg_id not in self._tried
            self._tried.add(msg_id)
        if received.path == "/gone":
            return 410
        if received.path == "/flaky" and first_try:
            return 500

        return 204

    def at(self, path: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(i, b) for p, i, b in self.verified if p == path]


def _ipm(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ipm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _post(base: str, key: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {key}",
            "x-orgcode": ORG,
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read())["data"])


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)

    pytest.fail(f"timed out waiting for {what}")


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()

    return stderr


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    db = tmp_path_factory.mktemp("e2e") / "ipm.sqlite"
    port = free_port()
    process = _ipm("serve", "--db", str(db), "--port", str(port), *ALLOW)
    base = f"http://127.0.0.1:{port}"
    _wait(lambda: _answers(base), 20, "ipm serve")

    yield base, db

    _stop(process)


def _answers(base: str) -> bool:
    try:
        urllib.request.urlopen(base + "/stat", timeout=1).read()
    except OSError:
        return False

    return True


def test_deliveries_arrive_verified_once_retried_and_gone(
    served: tuple[str, Path],
) -> None:
    """Every event arrives verified once per id; 500 then 200 repeats the same
    id and body; a 410 disables its subscription."""
    base, db = served
    with ipm.open_sqlite(db) as host:
        key = host.create_api_key("ops@acme.example", [ORG])
    receiver = VerifyingReceiver()
    subscriptions = {
        "/ok": [{"service": "pos", "action_prefix": "sale."}],
        "/flaky": [{"service": "pos", "action": "sale.voided"}],
        "/gone": [{"service": "pos", "action": "refund.created"}],
    }
    created = {}
    for path, filters in subscriptions.items():
        body = {"endpoint_url": receiver.server.url(path), "event_filters": filters}
        created[path] = _post(base, key, "/webhook/create", body)
        receiver.secrets[path] = created[path]["secret"]

    with ipm.open_sqlite(db) as host:
        for n in range(5):
            host.publish(
                ORG, {"service": "pos", "action": "sale.created", "payload": {"n": n}}
            )
        host.publish(
            ORG, {"service": "pos", "action": "sale.voided", "payload": {"n": 5}}
        )
        host.publish(ORG, {"service": "pos", "action": "refund.created"})
    dispatchers = [
        _ipm("deliver", "--db", str(db), "--interval", "0.1", *ALLOW) for _ in range(2)
    ]
    try:
        _wait(lambda: len(receiver.at("/flaky")) == 2, 30, "the retried delivery")
        _wait(lambda: len(receiver.at("/ok")) >= 6, 10, "the sale deliveries")
        _wait(lambda: len(receiver.at("/gone")) >= 1, 10, "the gone delivery")
        time.sleep(0.5)  # room for a double send to show up, if there were one
    finally:
        logs = [_stop(process) for process in dispatchers]
        receiver.server.close()

    assert receiver.unverified == [], logs
    ok_ids = [msg_id for msg_id, _ in receiver.at("/ok")]
    assert len(ok_ids) == len(set(ok_ids)) == 6
    sale_numbers = sorted(
        json.loads(b)["data"]["payload"]["n"] for _, b in receiver.at("/ok")
    )
    assert sale_numbers == [0, 1, 2, 3, 4, 5]
    (first, second) = receiver.at("/flaky")
    assert first == second
    assert len(receiver.at("/gone")) == 1
    gone = _post(
        base, key, "/webhook/get", {"webhook_id": created["/gone"]["webhook_id"]}
    )
    assert gone["webhook"]["status"] == "disabled"
    assert gone["webhook"]["disabled_reason"] == "gone_410"


def test_deliver_once_drains_and_exits(served: tuple[str, Path]) -> None:
    """``ipm deliver --once`` sends what is due and exits with 0."""
    base, db = served
    with ipm.open_sqlite(db) as host:
        key = host.create_api_key("ops@acme.example", [ORG])
    with LocalReceiver() as receiver:
        body = {"endpoint_url": receiver.url(), "event_filters": [{"service": "pos"}]}
        _post(base, key, "/webhook/create", body)
        with ipm.open_sqlite(db) as host:
            host.publish_many(ORG, [{"service": "pos", "action": "a.b"}] * 3)

        done = subprocess.run(
            [sys.executable, "-m", "ipm", "deliver", "--db", str(db), "--once", *ALLOW],
            capture_output=True,
            text=True,
            timeout=60,
        )

        assert done.returncode == 0, done.stderr
        assert len(receiver.received) == 3
