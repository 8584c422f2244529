"""End to end over real HTTP: ``ipm serve`` and ``ipm keys create`` as processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ipm
from tests.conftest import HOURLY_KPI, free_port, wait_until_serving

pytestmark = pytest.mark.slow


def _ipm(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "ipm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kwargs,
    )
    assert result.returncode == 0, result.stderr[-2000:]

    return result


class Server:
    def __init__(self, base: str, db: Path, process: subprocess.Popen[str]) -> None:
        self.base, self.db, self.process = base, db, process

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        request = urllib.request.Request(
            self.base + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw, status, sent = response.read(), response.status, response.headers
        except urllib.error.HTTPError as error:
            raw, status, sent = error.read(), error.code, error.headers

        return status, json.loads(raw), {k.lower(): v for k, v in sent.items()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    db = tmp_path_factory.mktemp("serve") / "ipm.sqlite"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ipm", "serve", "--db", str(db), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_serving(base, process)

    yield Server(base, db, process)

    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def key(server: Server) -> str:
    result = _ipm(
        "keys",
        "create",
        "--db",
        str(server.db),
        "--org",
        "ACME01",
        "--actor",
        "ops@acme.example",
    )
    lines = result.stdout.splitlines()

    assert len(lines) == 1
    return lines[0]


def _auth(key: str, org: str | None = "ACME01") -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if org:
        headers["x-orgcode"] = org
    return headers


def test_stat_over_http(server: Server) -> None:
    """GET /stat answers the envelope over HTTP with a request id."""
    status, body, headers = server.request("GET", "/stat")

    assert status == 200
    assert body["data"]["status"] == "active"
    assert headers["x-request-id"]


def test_every_metadata_route_over_http(server: Server, key: str) -> None:
    """Each metadata route answers 200 with data for a bound key."""
    for path in (
        "/pagination/get",
        "/lifecycle/list",
        "/event/catalog/list",
        "/export/contract/list",
        "/specimen/get",
        "/cdc/list",
    ):
        status, body, _ = server.request("POST", path, b"{}", _auth(key))
        assert status == 200, (path, body)
        assert body["stats"]["call"] == f"POST {path}"


def test_gates_over_http(server: Server, key: str) -> None:
    """The error gates answer the documented status and code over HTTP."""
    no_org = server.request("POST", "/lifecycle/list", b"{}", _auth(key, None))
    not_json = server.request("POST", "/lifecycle/list", b"{oops", _auth(key))
    wrong_type = server.request("POST", "/cdc/list", b'{"limit": "many"}', _auth(key))
    no_key = server.request("POST", "/lifecycle/list", b"{}", {"x-orgcode": "ACME01"})

    assert (no_org[0], no_org[1]["error"]["code"]) == (400, "orgcode_required")
    assert (not_json[0], not_json[1]["error"]["code"]) == (400, "invalid_request")
    assert wrong_type[0] == 400
    assert wrong_type[1]["error"]["details"][0]["pointer"] == "/limit"
    assert (no_key[0], no_key[1]["error"]["code"]) == (401, "unauthenticated")


def test_tampered_token_over_http(server: Server, key: str) -> None:
    """A tampered next_token is a 400 invalid_token over HTTP."""
    _, first, _ = server.request("POST", "/lifecycle/list", b'{"limit": 1}', _auth(key))
    token = first["data"]["next_token"]
    token["s"] = token["s"][::-1]
    body = json.dumps({"limit": 1, "next_token": token}).encode()

    status, answer, _ = server.request("POST", "/lifecycle/list", body, _auth(key))

    assert (status, answer["error"]["code"]) == (400, "invalid_token")


def test_foreign_org_is_indistinguishable_from_missing(
    server: Server, key: str
) -> None:
    """A key of org A asking for org B gets the same 404 body as a missing record."""
    _, missing, _ = server.request(
        "POST", "/specimen/get", b'{"name": "NoSuch"}', _auth(key)
    )
    status, foreign, _ = server.request(
        "POST", "/lifecycle/list", b"{}", _auth(key, "OTHER02")
    )

    assert status == 404
    assert foreign["error"] == missing["error"]


def test_openapi_over_http_and_cli(server: Server) -> None:
    """The served OpenAPI document equals what `ipm openapi` prints."""
    with urllib.request.urlopen(server.base + "/openapi.json", timeout=10) as response:
        served = json.loads(response.read())

    printed = json.loads(_ipm("openapi").stdout)

    assert served == printed
    assert len([p for p in served["paths"]]) >= 22


def test_serve_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    """SIGINT stops the server with exit status 0 after its startup line,
    the one line it logs on a new database (issue: one startup line)."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ipm",
            "serve",
            "--db",
            str(tmp_path / "x.sqlite"),
            "--port",
            str(port),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stderr is not None
    try:
        line = process.stderr.readline()
        assert "listening" in line, line
        assert f"127.0.0.1:{port}" in line and "x.sqlite" in line

        process.send_signal(signal.SIGINT)

        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@contextlib.contextmanager
def _serving(
    db: Path, port: int, *flags: str, **popen: Any
) -> Iterator[subprocess.Popen[str]]:
    """``ipm serve`` in a child process, once it listens; killed at the end
    if the test left it running."""
    command = ["serve", "--db", str(db), "--port", str(port), *flags]
    process = subprocess.Popen(
        [sys.executable, "-m", "ipm", *command],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        **popen,
    )
    assert process.stderr is not None
    try:
        while "listening" not in process.stderr.readline():
            assert process.poll() is None, "the server exited before listening"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_request_under_way_is_answered_before_the_server_stops(
    tmp_path: Path,
) -> None:
    """SIGTERM while a write is under way: the client still gets its answer
    (its change may be committed already; a webhook's secret is shown only
    in it), and only then does the server exit. New connections are refused
    meanwhile."""
    db = tmp_path / "x.sqlite"
    key = _ipm(
        "keys", "create", "--db", str(db), "--org", "ACME01", "--actor", "t"
    ).stdout.strip()
    port = free_port()
    kpi = HOURLY_KPI
    body = json.dumps({"kpi": kpi}).encode()
    head = (
        f"POST /kpi/record HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nx-orgcode: ACME01\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with (
        _serving(db, port) as process,
        socket.create_connection(("127.0.0.1", port), timeout=20) as sock,
    ):
        sock.sendall(head + body[:10])
        time.sleep(0.3)  # the head is read: the request is under way
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        sock.sendall(body[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk

        assert process.wait(timeout=15) == 0

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"200", answer[:500]
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["success"] is True


@pytest.mark.parametrize("keep", ["default", "never"])
def test_serve_sweeps_old_export_files_unless_told_to_keep_them(
    tmp_path: Path, keep: str
) -> None:
    """ipm serve deletes export files past their time when it starts; a host
    whose library keeps them for ever (file_seconds=None) runs it on the
    same file with --export-file-days never."""
    from datetime import UTC, datetime, timedelta

    from ipm.testing import FixedClock

    db = tmp_path / "x.sqlite"
    clock = FixedClock(datetime.now(UTC) - timedelta(days=8))
    with ipm.open_sqlite(db, clock=clock) as app:
        app.publish("ACME01", {"service": "pos", "action": "sale.created"})
        job = app.bulk.run("ACME01", app.bulk.create_export("ACME01").job_id)
    file = tmp_path / "x.sqlite.blobs" / "jobs" / job.job_id / "export.ndjson"
    assert file.exists()

    flags = [] if keep == "default" else ["--export-file-days", "never"]
    with _serving(db, free_port(), *flags):
        # The sweep runs at start, in the background.
        deadline = time.monotonic() + (10 if keep == "default" else 1.5)
        while file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    assert file.exists() is (keep == "never")


@pytest.mark.parametrize("case", ["a request line alone", "a second signal"])
def test_what_cannot_hold_a_stopping_server(tmp_path: Path, case: str) -> None:
    """A client that sent a request line and nothing more is no request
    under way; and a second signal ends the wait for those that are."""
    port = free_port()
    head = b"POST /kpi/record HTTP/1.1\r\n"
    if case == "a second signal":
        head += b"Host: x\r\nContent-Length: 100\r\n\r\n{"
    with (
        _serving(tmp_path / "x.sqlite", port) as process,
        socket.create_connection(("127.0.0.1", port), timeout=20) as sock,
    ):
        sock.sendall(head)
        time.sleep(0.3)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        if case == "a second signal":
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        took = time.monotonic() - started

    assert took < 3.0


@pytest.mark.skipif(
    not os.path.exists("/proc/self/stat"), reason="reads CPU time from /proc"
)
def test_a_server_out_of_file_descriptors_waits_instead_of_spinning(
    tmp_path: Path,
) -> None:
    """With every descriptor in use, a pending connection cannot be taken:
    the accept loop waited for nothing and kept a core busy (3 s of CPU in
    3 s). It now pauses, says why once, and serves again when one is free."""
    import resource

    port = free_port()

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    idle: list[socket.socket] = []

    def cpu_seconds(pid: int) -> float:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    with _serving(tmp_path / "x.sqlite", port, preexec_fn=few_files) as process:
        try:
            for _ in range(60):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            time.sleep(0.5)
            before = cpu_seconds(process.pid)
            time.sleep(3)
            spent = cpu_seconds(process.pid) - before
        finally:
            for sock in idle:
                sock.close()
        status = urllib.request.urlopen(
            f"http://127.0.0.1:{port}/stat", timeout=30
        ).status
        process.terminate()
        _, errors = process.communicate(timeout=30)

    assert spent < 1.0
    assert status == 200
    assert errors.count("no file descriptor left") == 1


def test_chunked_body_is_refused_not_dropped(server: Server, key: str) -> None:
    """Regression: a chunked body was once read as empty and its filters dropped."""
    host, port = server.base.removeprefix("http://").split(":")
    body = b'{"service": "nope"}'
    request = (
        b"POST /cdc/list HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + f"Authorization: Bearer {key}\r\nx-orgcode: ACME01\r\n\r\n".encode()
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk

    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == b"411"
    assert b"\r\nx-request-id: req_" in head.lower()
    error = json.loads(payload)["error"]
    assert error["code"] == "length_required"
    assert error["details"][0]["pointer"] == "/headers/content-length"


def _raw_exchange(server: Server, request: bytes, half_close: bool = False) -> bytes:
    host, port = server.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk

    return answer


def _post_head(key: str, length: str | None) -> bytes:
    head = "POST /cdc/list HTTP/1.0\r\nHost: x\r\n"
    head += f"Authorization: Bearer {key}\r\nx-orgcode: ACME01\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"

    return (head + "\r\n").encode()


@pytest.mark.parametrize(
    ("length", "status", "code"),
    [
        (None, b"411", "length_required"),
        ("abc", b"400", "invalid_request"),
        ("-5", b"400", "invalid_request"),
        ("100", b"400", "invalid_request"),
    ],
)
def test_a_body_that_cannot_be_read_whole_is_refused(
    server: Server, key: str, length: str | None, status: bytes, code: str
) -> None:
    """No length, a malformed one or a short body is refused, never read as {}."""
    body = b'{"service": "nope"}'

    answer = _raw_exchange(server, _post_head(key, length) + body, half_close=True)

    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split()[1] == status
    assert json.loads(payload)["error"]["code"] == code


def test_keys_are_listed_and_revoked_from_the_cli(tmp_path: Path) -> None:
    """ipm keys list shows ids and orgs, never secrets; a revoked key is refused."""
    db = tmp_path / "keys.sqlite"
    key = _ipm("keys", "create", "--db", str(db), "--org", "ACME01", "--actor", "a")
    key_id = key.stdout.strip().split("_")[1]

    listed = _ipm("keys", "list", "--db", str(db)).stdout
    _ipm("keys", "revoke", key_id, "--db", str(db))
    full_key = key.stdout.strip()
    again = subprocess.run(
        [sys.executable, "-m", "ipm", "keys", "revoke", full_key, "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    (entry,) = [json.loads(line) for line in listed.splitlines()]
    assert (entry["key_id"], entry["orgs"], entry["actor"]) == (key_id, ["ACME01"], "a")
    assert key.stdout.strip().split("_", 2)[2] not in listed
    assert again.returncode == 1
    assert full_key.split("_", 2)[2] not in again.stderr
    with ipm.open_sqlite(db) as app:
        assert app.list_api_keys() == []
        answer = app.handle(
            "POST",
            "/cdc/list",
            {"authorization": f"Bearer {key.stdout.strip()}", "x-orgcode": "ACME01"},
            b"{}",
        )
    assert answer.status == 401


def test_ipm_serve_writes_the_status_line_and_headers_at_once() -> None:
    """Regression: wsgiref wrote the status line, Date and the headers in
    separate writes, so a server killed between them left a client a
    status line alone, read as a whole 200 with no body."""
    import io
    import wsgiref.util

    from ipm.cli._server import _RequestOnly

    class Recording(io.RawIOBase):
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            self.writes.append(bytes(data))
            return len(data)

    class Requests:
        def log_request(self, *args: Any) -> None:
            pass

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-length", "2")])
        return [b"{}"]

    environ: dict[str, Any] = {}
    wsgiref.util.setup_testing_defaults(environ)
    environ["SERVER_PROTOCOL"] = "HTTP/1.1"
    sent = Recording()
    handler = _RequestOnly(io.BytesIO(), sent, io.StringIO(), environ)
    handler.request_handler = Requests()  # type: ignore[attr-defined]

    handler.run(app)

    head, body = sent.writes
    assert head.startswith(b"HTTP/1.0 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert b"content-length: 2\r\n" in head and body == b"{}"
