"""Shared fixtures: applications on each storage, keys, and a caller."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ipm
from ipm.testing import FixedClock

ORG = "ACME01"
OTHER = "OTHER02"


@pytest.fixture(params=["memory", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ipm.Application]:
    options: dict[str, Any] = {"allow_networks": ["127.0.0.0/8"]}
    if request.param == "memory":
        application = ipm.open_memory(**options)
    else:
        application = ipm.open_sqlite(tmp_path / "ipm.sqlite", **options)
    yield application
    application.close()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def key(app: ipm.Application) -> str:
    return app.create_api_key("ops@acme.example", [ORG])


@pytest.fixture
def other_key(app: ipm.Application) -> str:
    return app.create_api_key("ops@other.example", [OTHER])


class Caller:
    """Sends JSON requests through ``handle()`` as one key and org."""

    def __init__(self, app: ipm.Application, key: str | None, org: str | None) -> None:
        self.app, self.key, self.org = app, key, org

    def __call__(
        self,
        path: str,
        body: Any = None,
        *,
        method: str = "POST",
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        sent = dict(headers or {})
        if self.key:
            sent["authorization"] = f"Bearer {self.key}"
        if self.org:
            sent["x-orgcode"] = self.org
        payload = raw if raw is not None else json.dumps(body or {}).encode()
        response = self.app.handle(method, path, sent, payload)

        return response.status, json.loads(response.body)


@pytest.fixture
def call(app: ipm.Application, key: str) -> Caller:
    return Caller(app, key, ORG)
