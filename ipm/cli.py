"""The ``ipm`` command line: serve, keys, openapi (and the capability verbs).

Each verb is a small function over the library's public surface; the CLI
is a user of ipm like any host.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import ipm

log = logging.getLogger("ipm.cli")

Command = Callable[[argparse.Namespace], int]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


def serve(args: argparse.Namespace) -> int:
    app = ipm.open_sqlite(args.db, allow_networks=args.allow_network or ())
    server = make_server(
        args.host,
        args.port,
        app.wsgi_app,
        server_class=_ThreadingServer,
        handler_class=_QuietHandler,
    )

    def stop(signum: int, frame: Any) -> None:
        log.info("stopping on signal %s", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    host, port = server.server_address[:2]
    log.info("ipm listening on http://%s:%s (database %s)", host, port, args.db)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        app.close()

    return 0


def keys_create(args: argparse.Namespace) -> int:
    with ipm.open_sqlite(args.db) as app:
        key = app.create_api_key(args.actor, args.org)
    sys.stdout.write(key + "\n")

    return 0


def deliver(args: argparse.Namespace) -> int:
    """The webhook dispatcher loop; with --once, drain what is due and exit."""
    app = ipm.open_sqlite(args.db, allow_networks=args.allow_network or ())
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("stopping on signal %s after the current batch", signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    log.info("delivering webhooks from %s", args.db)
    sent = delivered = 0
    try:
        while not stop.is_set():
            report = app.deliver_pending()
            sent, delivered = sent + report.attempted, delivered + report.delivered
            if args.once:
                break
            if report.attempted == 0:
                stop.wait(args.interval)
    finally:
        app.close()

    log.info("sent %d attempt(s), %d delivered", sent, delivered)
    return 0


def openapi(args: argparse.Namespace) -> int:
    with ipm.open_memory() as app:
        document = app.openapi()
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")

    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipm", description="ipm: the integration plane of a retail platform."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser(
        "serve",
        help="run the HTTP API on the standard library server",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--db", default="ipm.sqlite", help="SQLite file (created if absent)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    _allow_network(p)
    p.set_defaults(run=serve)

    keys = verbs.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_verb", required=True
    )
    p = keys.add_parser("create", help="create an API key and print it")
    p.add_argument("--db", required=True, help="the SQLite file ipm serve uses")
    p.add_argument("--org", action="append", required=True, help="org code (repeat)")
    p.add_argument("--actor", required=True)
    p.set_defaults(run=keys_create)

    p = verbs.add_parser("deliver", help="send due webhook deliveries (a loop)")
    p.add_argument("--db", required=True, help="SQLite file")
    p.add_argument("--once", action="store_true", help="drain what is due, then exit")
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between idle polls"
    )
    _allow_network(p)
    p.set_defaults(run=deliver)

    p = verbs.add_parser("openapi", help="print the OpenAPI 3.1 document")
    p.set_defaults(run=openapi)

    return parser


def _allow_network(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-network",
        action="append",
        metavar="CIDR",
        help="a network webhook endpoints may use although it is private",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.run(args)
    except ipm.IpmError as error:
        log.error("%s: %s", error.code, error.message)
        for problem in error.details:
            log.error("  %s: %s", problem.pointer or "/", problem.message)
        return 2
    except (OSError, sqlite3.Error) as error:
        # A busy port, a missing folder, a file that is not a database:
        # the user needs the reason, not a traceback.
        log.error("%s", error)
        return 1

    return code
