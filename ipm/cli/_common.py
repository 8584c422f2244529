"""What every ``ipm`` verb shares: exit statuses, refusals, the catalog file."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sqlite3
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ipm

# INTERRUPTED is said in ipm._entry, which needs it before the CLI loads.
from ipm._entry import INTERRUPTED as INTERRUPTED
from ipm.domain.errors import InvalidRequest, Problem
from ipm.domain.jsoncodec import is_unicode
from ipm.domain.ndjson import LineError, parse_record
from ipm.usecases.bulk_options import DEFAULT_MAX_SLICE_LINES, BulkOptions
from ipm.usecases.catalog import EventCatalog

log = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace], int]

BROKEN_PIPE = 141
"""The exit status when the reader of stdout went away (128 + SIGPIPE)."""
DEFAULT_ACTOR = "cli"
"""Who ``ipm import`` and ``ipm export`` name in the audit trail without --actor."""


STOPPING: list[Any] = []
"""The signal handler of the one-shot command under way (see ipm.cli)."""


def work_done() -> None:
    """The command has done its work and said so: a SIGTERM or Ctrl-C from
    here on (while the database closes) no longer makes it "interrupted"."""
    for handler in STOPPING:
        handler.ended = True


class CannotRun(Exception):
    """Why a command refuses to run, said as one line; it exits 2."""


def lines_text(count: int) -> str:
    """``1 line``, ``12,000 lines``."""
    return f"{count:,} line" if count == 1 else f"{count:,} lines"


def existing_db(db: str) -> str:
    """``db`` if the file is there: reading or sending from a database that
    does not exist yet is a mistyped path or folder, not a new deployment."""
    if not Path(db).is_file():
        raise FileNotFoundError(f"no database at {shown(db)} (give --db)")
    if _is_other_database(db):
        # Opened, it would have been given ipm's tables: a mistyped path to
        # another application's file, or an empty file, is no deployment.
        raise CannotRun(
            f"{shown(db)} is not an ipm database (it has no ipm tables; give "
            "--db the file ipm serve uses)"
        )

    return db


def _is_other_database(db: str) -> bool:
    """Whether ``db`` reads as an SQLite file without ipm's tables. Any
    trouble reading it (not SQLite, locked, unreadable) is left to the
    opening, which names it."""
    try:
        # Bytes as the file system has them: a name that is not UTF-8 too.
        path = urllib.parse.quote(os.fsencode(Path(db).absolute()))
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            found = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'ipm_migrations'"
            ).fetchall()
        finally:
            connection.close()
    except (sqlite3.Error, UnicodeError):
        return False

    return not found


def slices_of(args: argparse.Namespace) -> BulkOptions:
    """The bulk options of ``ipm import``/``ipm export``: the operator's
    ``--slice-lines`` is taken as asked, past the bound a server keeps."""
    most = max(args.slice_lines, DEFAULT_MAX_SLICE_LINES)

    return BulkOptions(slice_lines=args.slice_lines, max_slice_lines=most)


def file_label(name: str) -> str:
    """A file name as text for the job: bytes that are not UTF-8 replaced."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def read_event_types(path: str | None) -> Any:
    """The --event-types file, read strictly and checked before anything opens."""
    if path is None:
        return None

    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"no file {shown(path)} (--event-types)") from None
    # ipm's strict parser (duplicate keys, NaN, lone surrogates, depth), which
    # takes an object: the list is wrapped in one and its pointers unwrapped.
    if not text.strip():
        raise InvalidRequest(
            f"--event-types {shown(path)} is empty: it holds a JSON list of "
            "event types",
            [Problem("", "is empty")],
        )
    parsed = parse_record(b'{"types":' + text + b"\n}")
    if isinstance(parsed, LineError):
        pointer = parsed.pointer.removeprefix("/types")
        message = _where_in_file(text) or parsed.message
        raise InvalidRequest(
            f"--event-types {shown(path)} is not strict JSON: {message}",
            [Problem(pointer, message)],
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
    log.info("%d event type(s) from %s", len(entries), shown(path or ""))


def error_lines(
    name: str, error: ipm.IpmError, flags: Mapping[str, str] | None = None
) -> list[str]:
    """Why ``name`` stopped: the error's message, then a line per problem.

    ``flags`` maps the pointers of the wire to the options the user typed
    (``/filters/from_utc`` to ``--from``). A problem with the whole input
    (pointer ``""``) is shown without one, and not at all when the message
    already says it.
    """
    flags = flags or {}
    words = _field_words(flags)
    headline = _named(error.message, words)
    lines = [f"{name}: {headline} ({error.code})"]
    for problem in error.details:
        message = _named(problem.message, words)
        where = flags.get(problem.pointer, problem.pointer)
        if where:
            lines.append(f"  {where}: {message}")
        elif message not in headline:
            lines.append(f"  {message}")

    return lines


def _field_words(flags: Mapping[str, str]) -> dict[str, str]:
    """The fields a message may name, as their options: only names with an
    underscore (``from_utc``), which cannot be ordinary words."""
    fields = {pointer.rsplit("/", 1)[-1]: flag for pointer, flag in flags.items()}

    return {field: flag for field, flag in fields.items() if "_" in field}


def _named(text: str, words: Mapping[str, str]) -> str:
    if not words:
        return text

    pattern = r"\b(" + "|".join(map(re.escape, words)) + r")\b"
    return re.sub(pattern, lambda match: words[match[1]], text)


def os_error_text(error: OSError) -> str:
    """An operating system's refusal as a line: the file, then why."""
    if error.filename is None or not error.strerror:
        # Raised by ipm with its own sentence ("no database at ...").
        return str(error)

    return f"{error.filename}: {error.strerror.lower()}"


def _where_in_file(text: bytes) -> str | None:
    """A grammar error placed by line and column of the file itself.

    The strict parser read the file wrapped in an object, so its column is
    off by the wrapper on the first line, and it gives no line at all.
    """
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    except ValueError:
        return None  # not UTF-8: the strict parser's message says so

    return None


def shell_word(word: str) -> str:
    """``word`` quoted for a POSIX shell; a name that is not UTF-8 (its
    bytes held as lone surrogates) or holds control characters as
    ``$'...'`` with ``\\xNN`` escapes, which bash, zsh and ksh read back as
    those bytes. Printed plainly, such a name became escapes that named
    another file, or control sequences for the terminal."""
    if is_unicode(word) and word.isprintable():
        return shlex.quote(word)
    escaped = []
    for char in word:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            escaped.append(f"\\x{code - 0xDC00:02x}")
        elif char in "\\'" or not char.isprintable():
            raw = char.encode("utf-8", "surrogatepass")
            escaped.append("".join(f"\\x{byte:02x}" for byte in raw))
        else:
            escaped.append(char)

    return "$'" + "".join(escaped) + "'"


def shown(name: str | Path) -> str:
    """A file name for a message: as it is when it reads as itself, else
    as :func:`shell_word` writes it (never raw bytes or terminal controls)."""
    text = str(name)
    if is_unicode(text) and text.isprintable():
        return text

    return shell_word(text)
