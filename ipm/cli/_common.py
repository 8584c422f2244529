"""What every ``ipm`` verb shares: exit statuses, refusals, the catalog file."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipm
from ipm.domain.errors import InvalidRequest, Problem
from ipm.domain.ndjson import LineError, parse_record
from ipm.usecases.catalog import EventCatalog

log = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace], int]

INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells use."""
BROKEN_PIPE = 141
"""The exit status when the reader of stdout went away (128 + SIGPIPE)."""


class CannotRun(Exception):
    """Why a command refuses to run, said as one line; it exits 2."""


def existing_db(db: str) -> str:
    """``db`` if the file is there: reading or sending from a database that
    does not exist yet is a mistyped path or folder, not a new deployment."""
    if not Path(db).is_file():
        raise FileNotFoundError(f"no database at {db} (give --db)")

    return db


def file_label(name: str) -> str:
    """A file name as text for the job: bytes that are not UTF-8 replaced."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def read_event_types(path: str | None) -> Any:
    """The --event-types file, read strictly and checked before anything opens."""
    if path is None:
        return None

    # ipm's strict parser (duplicate keys, NaN, lone surrogates, depth), which
    # takes an object: the list is wrapped in one and its pointers unwrapped.
    parsed = parse_record(b'{"types":' + Path(path).read_bytes() + b"\n}")
    if isinstance(parsed, LineError):
        pointer = parsed.pointer.removeprefix("/types")
        raise InvalidRequest(
            f"--event-types {path} is not strict JSON: {parsed.message}",
            [Problem(pointer, parsed.message)],
        )
    types = parsed["types"]
    # Registered into a scratch catalog first: a bad schema stops the
    # command before it opens (or creates) the database.
    EventCatalog().register_all(types)

    return types


def register_event_types(app: ipm.Application, types: Any, path: str | None) -> None:
    """The process's catalog: it is not stored, so each command loads it."""
    if types is None:
        return
    entries = app.catalog.register_all(types)
    log.info("%d event type(s) from %s", len(entries), path)
