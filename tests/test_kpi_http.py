"""KPIs end to end: ``ipm serve`` as a process whose local zone has DST."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import free_port, wait_until_serving

pytestmark = pytest.mark.slow

ZONE = "America/New_York"
ORG = "ACME01"


class Server:
    def __init__(self, base: str, key: str) -> None:
        self.base, self.key = base, key

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {self.key}",
                "x-orgcode": ORG,
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    db = tmp_path_factory.mktemp("kpi-serve") / "ipm.sqlite"
    env = {**os.environ, "TZ": ZONE}
    ipm = [sys.executable, "-m", "ipm"]
    created = subprocess.run(
        [*ipm, "keys", "create", "--db", str(db), "--org", ORG, "--actor", "bi@acme"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    port = free_port()
    process = subprocess.Popen(
        [*ipm, "serve", "--db", str(db), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_serving(base, process)

    yield Server(base, created.stdout.strip())

    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)


def test_a_day_across_a_dst_change_has_24_utc_hours(server: Server) -> None:
    """Hours sent in New York time land on the UTC grid of a server in New York."""
    zone = ZoneInfo(ZONE)
    day = datetime(2026, 3, 8, tzinfo=UTC)  # New York springs forward this day
    for h in range(24):
        start = day + timedelta(hours=h)
        kpi = {
            "kpi_code": "NET_SALES",
            "bucket": "hourly",
            "bucket_start": start.astimezone(zone).isoformat(),
            "bucket_end": (start + timedelta(hours=1)).astimezone(zone).isoformat(),
            "value": 10,
        }
        status, body = server.post("/kpi/record", {"kpi": kpi})
        assert status == 200, body

    status, body = server.post(
        "/kpi/query",
        {
            "kpi_code": "NET_SALES",
            "bucket": "daily",
            "from_utc": "2026-03-08T00:00:00Z",
            "to_utc": "2026-03-09T00:00:00Z",
            "rollup": {"function": "sum", "from_bucket": "hourly"},
        },
    )

    assert status == 200, body
    (row,) = body["data"]["series"]
    assert (row["bucket_start"], row["bucket_end"], row["value"]) == (
        "2026-03-08T00:00:00Z",
        "2026-03-09T00:00:00Z",
        240,
    )


def test_revisions_and_alerts_over_http(server: Server) -> None:
    """An update needs its revision, and an alert asked twice is one alert."""
    kpi = {
        "kpi_code": "UNITS",
        "bucket": "weekly",
        "bucket_start": "2026-03-09T00:00:00Z",
        "bucket_end": "2026-03-16T00:00:00Z",
        "value": 5,
    }
    _, created = server.post("/kpi/record", {"kpi": kpi})
    missing, _ = server.post("/kpi/record", {"kpi": {**kpi, "value": 6}})
    revision = created["data"]["kpi"]["revision"]
    updated, _ = server.post(
        "/kpi/record", {"kpi": {**kpi, "value": 6}, "expected_revision": revision}
    )
    alert = {
        "kpi_code": "UNITS",
        "value": 6,
        "threshold": {"comparator": "gte", "value": 6},
        "bucket": "weekly",
        "bucket_start": "2026-03-09T00:00:00Z",
        "bucket_end": "2026-03-16T00:00:00Z",
    }
    _, first = server.post("/kpi/alert", {"alert": alert, "notify": True})
    _, second = server.post("/kpi/alert", {"alert": alert, "notify": True})
    _, inbox = server.post("/cdc/list", {"service": "inbox"})

    assert (missing, updated) == (428, 200)
    assert first["data"]["alert"] == second["data"]["alert"]
    assert first["data"]["alert"]["notification"] == {"status": "sent", "attempts": 1}
    assert len(inbox["data"]["items"]) == 1
