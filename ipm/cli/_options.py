"""The argument parser of ``ipm``: every verb, its options and their checks.

Option values are checked here, as argparse types, so a bad one is a usage
error (exit 2) before anything is opened.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
from collections.abc import Callable
from typing import Any

import ipm
from ipm.cli._admin import deliver, keys_create, keys_list, keys_revoke, openapi
from ipm.cli._common import DEFAULT_ACTOR
from ipm.cli._export import export_file
from ipm.cli._import import import_file
from ipm.cli._server import serve
from ipm.domain.events import ORGCODE_PATTERN, is_actor_name
from ipm.domain.jobs import MAX_SLICE_LINES
from ipm.domain.netguard import NetworkPolicy
from ipm.schemas._fragments import MAX_INT64

_VERBOSE_HELP = "debug logging (request lines, deliveries)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipm", description="ipm: the integration plane of a retail platform."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    parser.add_argument("--version", action="version", version=f"ipm {ipm.__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    p = verbs.add_parser(
        "serve",
        help="run the HTTP API on the standard library server",
        formatter_class=_DefaultsShown,
    )
    # This parser adds "(default: ...)" itself.
    _db_option(p, "SQLite file, created if absent")
    p.add_argument(
        "--host",
        type=_host,
        default="127.0.0.1",
        help="address to listen on (IPv4, or IPv6: ::1)",
    )
    p.add_argument("--port", type=_port, default=8080, help="port to listen on")
    _allow_network(p)
    _event_types_option(p)
    p.add_argument(
        "--synchronous",
        choices=("normal", "full"),
        default="normal",
        help="full: every commit survives a power cut (an fsync per commit)",
    )
    p.add_argument(
        "--idle-import-days",
        type=_days,
        default=7.0,
        help="days an import, or an unfinished export, may wait on its client "
        "before the sweep ends it, or 'never'",
    )
    p.add_argument(
        "--export-file-days",
        type=_days,
        default=7.0,
        help="days a completed export's file is kept before the sweep deletes it, "
        "or 'never'",
    )
    p.add_argument(
        "--link-key-file",
        type=_file_name,
        metavar="PATH",
        help="a file whose bytes (16 or more; a final line end is dropped) sign "
        "upload and download links, instead of the key kept in the database "
        "(default: that key)",
    )
    p.set_defaults(run=serve)

    keys = verbs.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_verb", required=True, metavar="COMMAND"
    )
    p = keys.add_parser("create", help="create an API key and print it")
    _db_option(p, "the SQLite file ipm serve uses (ipm.sqlite)")
    p.add_argument(
        "--org",
        action="append",
        required=True,
        type=_orgcode,
        help="org code (repeat)",
    )
    p.add_argument(
        "--actor", required=True, help="who the key acts as, in the audit trail"
    )
    p.set_defaults(run=keys_create)

    p = keys.add_parser(
        "list", help="print each key's id, actor and orgs (one JSON object a line)"
    )
    _db_option(p, "the SQLite file ipm serve uses (ipm.sqlite)")
    p.set_defaults(run=keys_list)

    p = keys.add_parser("revoke", help="delete an API key by its id")
    p.add_argument(
        "key_id",
        help="the key id from `ipm keys list` (ipm_<id> and a whole key also work)",
    )
    _db_option(p, "the SQLite file ipm serve uses (ipm.sqlite)")
    p.set_defaults(run=keys_revoke)

    p = verbs.add_parser("deliver", help="send due webhook deliveries (a loop)")
    _db_option(p)
    p.add_argument("--once", action="store_true", help="drain what is due, then exit")
    p.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        help="seconds between idle polls (1)",
    )
    _allow_network(p)
    p.set_defaults(run=deliver)

    _import_parser(verbs)
    _export_parser(verbs)

    p = verbs.add_parser("openapi", help="print the OpenAPI 3.1 document")
    p.set_defaults(run=openapi)

    # -v after the command too (ipm serve -v), as users type it; SUPPRESS
    # leaves the value given before the command when it is not repeated.
    for command in [*verbs.choices.values(), *keys.choices.values()]:
        command.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=argparse.SUPPRESS,
            help=_VERBOSE_HELP,
        )
        # Its own usage for an option it does not know (see cli.main).
        command.set_defaults(usage_of=command)

    return parser


def _import_parser(verbs: Any) -> None:
    p = verbs.add_parser("import", help="import an NDJSON file (events or kpis)")
    p.add_argument(
        "file",
        nargs="?",
        help="NDJSON file, plain or gzip; - for standard input "
        "(may be left out with --job)",
    )
    p.add_argument(
        "--job",
        metavar="JOB_ID",
        type=_job_id,
        help="go on with this import job instead of creating one",
    )
    _bulk_options(p)
    p.add_argument(
        "--mode",
        choices=("apply", "validate"),
        help="apply (default) or validate; with --job, apply promotes a validated job",
    )
    p.add_argument(
        "--max-failed-lines",
        type=_at_least(0, MAX_INT64),
        help="fail the job past this",
    )
    p.add_argument(
        "--report",
        type=_file_name,
        help="where the error report goes (FILE.errors.ndjson, else "
        "JOB_ID.errors.ndjson; - for standard output)",
    )
    _event_types_option(p)

    def check(args: argparse.Namespace) -> None:
        if args.file is None and args.job is None:
            p.error("FILE is required (it may be left out only with --job)")

    p.set_defaults(run=import_file, check=check)


EXPORT_FLAGS = {
    "/filters/service": "--service",
    "/filters/action_prefix": "--action-prefix",
    "/filters/kpi_code": "--kpi-code",
    "/filters/bucket": "--bucket",
    "/filters/from_utc": "--from",
    "/filters/to_utc": "--to",
}
"""The export filters' pointers, as the options that set them."""


def _export_parser(verbs: Any) -> None:
    p = verbs.add_parser("export", help="export events or kpis to an NDJSON file")
    _bulk_options(p)
    p.add_argument(
        "-o", "--output", required=True, help="the file to write (- for stdout)"
    )
    p.add_argument(
        "--job",
        metavar="JOB_ID",
        type=_job_id,
        help="go on with this export job (one a killed run left) instead of "
        "creating one; it keeps its target and filters",
    )
    p.add_argument("--service", help="events: only this service's events")
    p.add_argument("--action-prefix", help="events: only actions starting with this")
    p.add_argument("--kpi-code", help="kpis: only this KPI")
    p.add_argument("--bucket", help="kpis: only this bucket (hourly, daily, ...)")
    p.add_argument(
        "--from",
        dest="from_utc",
        help="occurred at (events) or bucket starting at (kpis) or after (RFC 3339)",
    )
    p.add_argument(
        "--to",
        dest="to_utc",
        help="occurred (events) or bucket starting (kpis) before (RFC 3339)",
    )

    def check(args: argparse.Namespace) -> None:
        if args.job is None:
            return
        given = [flag for flag, name in JOB_KEEPS if getattr(args, name) is not None]
        if given:
            p.error(
                f"{', '.join(given)} cannot be given with --job: the job keeps "
                "the target and filters it was created with"
            )

    # None until given: with --job, a --target typed is refused, not ignored.
    p.set_defaults(
        run=export_file, check=check, pointer_flags=EXPORT_FLAGS, target=None
    )


JOB_KEEPS = (
    ("--target", "target"),
    *((flag, pointer.rsplit("/", 1)[1]) for pointer, flag in EXPORT_FLAGS.items()),
)
"""The options an export job is created with, as (flag, attribute)."""


def _bulk_options(parser: argparse.ArgumentParser) -> None:
    _db_option(parser)
    parser.add_argument(
        "--org", required=True, type=_orgcode, action=_Once, help="org code"
    )
    parser.add_argument(
        "--target",
        choices=("events", "kpis"),
        default="events",
        help="what the lines are: events (default) or KPI snapshots",
    )
    parser.add_argument(
        "--actor", type=_actor, default=DEFAULT_ACTOR, help="who, for the audit trail"
    )
    parser.add_argument(
        "--slice-lines",
        type=_at_least(1, MAX_SLICE_LINES),
        default=10_000,
        help=f"lines per slice at most (1 to {MAX_SLICE_LINES:,})",
    )


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, but none for an option whose
    absence means "none" (``(default: None)`` read as a value)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _event_types_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--event-types",
        metavar="FILE",
        type=_file_name,
        help="JSON list of the host's event types ({service, action, schema, "
        "description?, op?}): payloads are checked against their schemas",
    )


def _db_option(
    parser: argparse.ArgumentParser, text: str = "SQLite file (ipm.sqlite)"
) -> None:
    # Every command works on ipm serve's default file unless told otherwise.
    parser.add_argument("--db", type=_db_name, default="ipm.sqlite", help=text)


def _at_least(least: int, most: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``least`` to ``most``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is less than {least}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"{value} is more than {most}")

        return value

    return parse


_port = _at_least(0, 65535)


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    # 0, a negative number or NaN would poll without pause; inf never again.
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")

    return value


def _days(text: str) -> float | None:
    """An argparse type: days above 0 up to 366, or ``never`` (None)."""
    if text == "never":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of days or 'never'"
        ) from None
    if not (math.isfinite(value) and 0 < value <= 366):
        raise argparse.ArgumentTypeError(f"{text!r} is not from 0 (excluded) to 366")

    return value


class _Once(argparse.Action):
    """Store an option that may be given once: ``--org A --org B`` kept B
    alone, and imported into it, where ``keys create`` binds both."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.dest, None) is not None:
            raise argparse.ArgumentError(self, "may be given once")
        setattr(namespace, self.dest, values)


def _not_empty(what: str) -> Callable[[str], str]:
    """An argparse type: any text but "" (an unset variable), which was
    taken for no value at all."""

    def parse(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"an empty {what}")

        return text

    return parse


_file_name = _not_empty("file name")
_job_id = _not_empty("job id")


def _db_name(text: str) -> str:
    """An argparse type: a database file name; ``-`` would make a file of
    that name where everywhere else it means a standard stream."""
    if text == "-":
        raise argparse.ArgumentTypeError("the database is a file, not - (a stream)")

    return _file_name(text)


def _host(text: str) -> str:
    """An argparse type: an address; "" (an unset variable) listened on
    every interface."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "an empty address (to listen on every interface, say 0.0.0.0)"
        )

    return text


def _actor(text: str) -> str:
    """An argparse type: an actor as ``keys create`` takes one (1-128
    printable characters): it is written into the audit trail."""
    if not is_actor_name(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not 1-128 printable characters")

    return text


def _orgcode(text: str) -> str:
    if not ORGCODE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an org code ({ORGCODE_PATTERN.pattern})"
        )

    return text


def _network(text: str) -> str:
    """An argparse type: CIDR text, read as the delivery guard will read it."""
    try:
        NetworkPolicy.from_strings([text])
    except ValueError as error:
        raise argparse.ArgumentTypeError(_network_problem(text, error)) from None

    return text


def _network_problem(text: str, error: ValueError) -> str:
    if "%" in text:
        return str(error)  # a zone id, not host bits
    try:
        # Read loosely, it is a network: only bits after the prefix are set.
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return str(error)

    return f"{text!r} has host bits set (did you mean {network}?)"


def _allow_network(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-network",
        action="extend",
        nargs="+",
        metavar="CIDR",
        type=_network,
        help="networks webhook endpoints may use although they are private "
        "(several after one option, or the option repeated)",
    )
