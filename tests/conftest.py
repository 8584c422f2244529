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


def open_app(storage: str, tmp_path: Path, **options: Any) -> ipm.Application:
    """An application on ``storage`` ("memory" or "sqlite", in ``tmp_path``)."""
    if storage == "memory":
        return ipm.open_memory(**options)

    return ipm.open_sqlite(tmp_path / "ipm.sqlite", **options)


@pytest.fixture(params=["memory", "sqlite"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ipm.Application]:
    with open_app(request.param, tmp_path, allow_networks=["127.0.0.0/8"]) as app:
        yield app


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
