"""Errors a newcomer met, each now saying what is wrong and what to do."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import ipm
from ipm import cli
from ipm.domain.netguard import NetworkPolicy, UnsafeUrl, check_url
from tests.conftest import ORG, Caller


def test_a_missing_key_and_a_wrong_key_are_told_apart(app: ipm.Application) -> None:
    """No Authorization asks for one; a key that is not valid says so,
    without repeating it."""
    missing = Caller(app, None, ORG)("/cdc/list", {})
    wrong = Caller(app, "ipm_0123456789abcdef_notasecret", ORG)("/cdc/list", {})

    assert missing[0] == wrong[0] == 401
    assert missing[1]["error"]["message"] == "send Authorization: Bearer <api key>"
    said = wrong[1]["error"]["message"]
    assert "no valid API key" in said and "revoked" in said
    assert "notasecret" not in json.dumps(wrong[1])


@pytest.mark.parametrize("sent", ["Bearer", "Bearer  ", "bearer \t"])
def test_a_bearer_with_no_key_says_the_key_is_missing(
    app: ipm.Application, sent: str
) -> None:
    """A Bearer scheme with nothing after it (a shell variable empty where
    the request was made) is told as a missing key, not as a wrong one."""
    headers = {"authorization": sent, "x-orgcode": ORG}

    response = app.handle("POST", "/cdc/list", headers, b"{}")

    said = json.loads(response.body)["error"]["message"]
    assert response.status == 401
    assert said.startswith("the Authorization header has no key after Bearer")


def test_a_refused_localhost_says_how_to_allow_it() -> None:
    with pytest.raises(UnsafeUrl) as refused:
        check_url("http://localhost:8080/hook", NetworkPolicy(require_https=False))

    assert "--allow-network" in refused.value.reason


def test_an_upload_to_an_uploaded_job_says_it_is_uploaded_already(
    app: ipm.Application,
) -> None:
    job = app.bulk.create_import(ORG)
    app.bulk.upload(ORG, job.job_id, b"{}\n")

    with pytest.raises(ipm.IpmError) as refused:
        app.bulk.upload(ORG, job.job_id, b"{}\n")

    assert refused.value.code == "invalid_transition"
    assert "is 'uploaded' already" in refused.value.message
    assert "cannot move" not in refused.value.message


def test_a_webhook_set_to_its_own_status_says_so(
    app: ipm.Application, key: str
) -> None:
    call = Caller(app, key, ORG)
    status, made = call(
        "/webhook/create",
        {
            "endpoint_url": "https://hooks.example.com/ipm",
            "event_filters": [{"service": "pos"}],
        },
    )
    assert status == 200, made
    hook = made["data"]

    status, answer = call(
        "/webhook/status/set",
        {
            "webhook_id": hook["webhook_id"],
            "status": "active",
            "expected_revision": hook["revision"],
        },
    )

    assert status == 409
    assert "is 'active' already" in answer["error"]["message"]


def test_a_secret_for_an_ed25519_webhook_says_why_it_is_refused(
    app: ipm.Application, key: str
) -> None:
    status, answer = Caller(app, key, ORG)(
        "/webhook/create",
        {
            "endpoint_url": "https://hooks.example.com/ipm",
            "event_filters": [{"service": "pos"}],
            "signing_algorithm": "ed25519",
            "secret": "whsec_" + "A" * 32,
        },
    )

    assert status == 400
    (problem,) = answer["error"]["details"]
    assert problem["pointer"] == "/secret"
    assert "hmac-sha256 only" in problem["message"]


def test_one_shot_commands_keep_the_library_s_notes_for_verbose(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A new database's migrations are not announced by ipm keys create,
    unless -v; ipm serve and ipm deliver keep them (their log is their output)."""
    caplog.set_level(logging.DEBUG)
    db = str(tmp_path / "new.sqlite")
    argv = ["keys", "create", "--db", db, "--org", ORG, "--actor", "a@b.example"]

    assert cli.main(argv) == 0
    quiet = [r for r in caplog.records if r.name.startswith("ipm.adapters")]
    caplog.clear()
    assert (
        cli.main(["-v", *argv[:2], "--db", str(tmp_path / "two.sqlite"), *argv[4:]])
        == 0
    )
    loud = [r for r in caplog.records if r.name.startswith("ipm.adapters")]

    assert quiet == [] and any("migration" in r.getMessage() for r in loud)
    assert logging.getLogger("ipm").getEffectiveLevel() == logging.DEBUG


def test_keys_create_says_when_it_made_a_new_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key made in a new file (a second terminal in another folder) is
    refused by a server reading another one: the command says where the
    file is, on stderr, so stdout still holds the key alone."""
    db = tmp_path / "new.sqlite"
    argv = ["keys", "create", "--db", str(db), "--org", ORG, "--actor", "a@b.example"]

    assert cli.main(argv) == 0
    first = capsys.readouterr()
    assert cli.main(argv) == 0
    second = capsys.readouterr()

    assert first.out.startswith("ipm_") and first.out.count("\n") == 1
    assert f"created a new database {db.resolve()}" in first.err
    assert second.out.startswith("ipm_") and second.err == ""


def test_a_pointer_to_a_huge_key_is_cut_in_the_answer() -> None:
    """Regression: an unknown field's name came back whole in its pointer,
    so a body with a key of a megabyte got an answer of a megabyte. A
    pointer is cut at 256 characters, ending in an ellipsis."""
    from ipm.api.envelope import POINTER_CHARS

    with ipm.open_memory() as app:
        key = app.create_api_key("ops", ["ACME01"])
        headers = {"authorization": f"Bearer {key}", "x-orgcode": "ACME01"}
        body = json.dumps({"x" * 1_000_000: 1, "colour": 1}).encode()
        answer = app.handle("POST", "/cdc/list", headers, body)

    pointers = [d["pointer"] for d in answer.json()["error"]["details"]]
    assert answer.status == 400
    assert len(answer.body) < 2_000
    assert pointers == ["/colour", "/" + "x" * (POINTER_CHARS - 2) + "\u2026"]


def test_ipm_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`ipm --version` answers as other command-line tools do."""
    with pytest.raises(SystemExit) as ended:
        cli.main(["--version"])

    assert ended.value.code == 0
    assert capsys.readouterr().out == f"ipm {ipm.__version__}\n"


@pytest.mark.parametrize(
    ("host", "warned"),
    [("0.0.0.0", True), ("::", True), ("127.0.0.1", False), ("::1", False)],
)
def test_serve_warns_when_it_listens_on_every_interface(
    caplog: pytest.LogCaptureFixture, host: str, warned: bool
) -> None:
    """A newcomer's --host 0.0.0.0 was taken silently: keys then cross the
    network over plain http."""
    from ipm.cli._server import _warn_if_everywhere

    caplog.set_level(logging.WARNING)
    _warn_if_everywhere(host)

    assert ("every interface" in caplog.text) is warned
