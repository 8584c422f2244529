"""The ``ipm`` command line: serve, keys, deliver, import, export, openapi.

Each verb is a small function over the library's public surface; the CLI
is a user of ipm like any host. :func:`main` parses the arguments (the
parser is in ``_options``), runs the verb and turns what stops it into an
exit status and one line on stderr: 2 when a command cannot run, 1 when
an import ran and lines failed, 130 on Ctrl-C (143 on SIGTERM, which
stops a one-shot command the same way), 141 when the reader of its output
went away.

The verbs live by capability: ``_server`` (``ipm serve`` and its HTTP
server), ``_admin`` (keys, the dispatcher loop, the OpenAPI document),
``_import`` and ``_export`` (bulk jobs, sharing ``_jobs``) and ``_files``
(their inputs, outputs and progress bar).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Sequence

import ipm
from ipm._entry import ClosedStream
from ipm.adapters.sqlite import SchemaTooNew
from ipm.cli._common import (
    BROKEN_PIPE,
    INTERRUPTED,
    STOPPING,
    CannotRun,
    error_lines,
    os_error_text,
)
from ipm.cli._options import build_parser
from ipm.cli._server import make_http_server

__all__ = [
    "BROKEN_PIPE",
    "INTERRUPTED",
    "TERMINATED",
    "CannotRun",
    "build_parser",
    "main",
    "make_http_server",
]


_LOGGING_COMMANDS = frozenset({"serve", "deliver"})
"""Commands that run until stopped, whose log lines are what they show."""


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run one ``ipm`` command; ``exiting`` when the process ends with it.

    Only then does a one-shot command leave SIGTERM and SIGINT ignored
    once its work is said (the interpreter's shutdown is all that is
    left); a host calling it in-process gets its own handlers back.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # Said by the command's own parser, with its usage: the top-level
        # one would show "ipm [-h] [-v] COMMAND ..." for a typo in serve's.
        usage_of = getattr(args, "usage_of", parser)
        usage_of.error(f"unrecognized arguments: {' '.join(unknown)}")
    check = getattr(args, "check", None)
    if check is not None:
        check(args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # A one-shot command says what it did in its own lines; the library's
    # notes (a migration applied, a job cancelled) are for -v. The two
    # long-running commands keep them: their log is their output.
    quiet = not args.verbose and args.verb not in _LOGGING_COMMANDS
    logging.getLogger("ipm").setLevel(logging.WARNING if quiet else logging.NOTSET)
    logging.getLogger("ipm.cli").setLevel(logging.INFO if quiet else logging.NOTSET)
    # Why a command could not run goes to stderr as plain lines, in the
    # style of argparse's own errors; the log keeps its own format.
    name = " ".join(["ipm", args.verb, getattr(args, "keys_verb", "")]).strip()
    wanted = args.verb not in _LOGGING_COMMANDS
    unwritable = _unwritable_stdout() if wanted else None
    if unwritable is not None:
        # Its result (a key, a summary, a file) would be written there only
        # once the work was done: exit 2 must mean that nothing was.
        sys.stderr.write(f"{name}: standard output is {unwritable}\n")
        return 2
    with _sigterm_as_interrupt(wanted, name, exiting=exiting) as stopping:
        code = _run(args, name)
        stopping.ended = True  # its last line is out: a repeat says nothing

    # Stopped by SIGTERM (a supervisor, timeout): said and left as Ctrl-C
    # leaves it, with the status a shell gives a SIGTERM.
    return TERMINATED if stopping.terminated and code == INTERRUPTED else code


def _unwritable_stdout() -> str | None:
    """Why nothing can be written to standard output (closed, or opened
    for reading only, as ``1</dev/null`` does), or None.

    A stream that is no file of this process (a host's or a test's
    capture) is taken as writable: only writing would tell.
    """
    if isinstance(sys.stdout, ClosedStream):
        return "closed"
    try:
        flags = fcntl.fcntl(sys.stdout.fileno(), fcntl.F_GETFL)
    except (AttributeError, ValueError, io.UnsupportedOperation, OSError):
        return None

    return "open for reading only" if flags & os.O_ACCMODE == os.O_RDONLY else None


def _run(args: argparse.Namespace, name: str) -> int:
    try:
        code: int = args.run(args)
    except BrokenPipeError:
        # The reader left (`ipm keys list | head`): nothing to say to it.
        # Output still buffered would fail again at exit; drop it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return BROKEN_PIPE
    except ipm.IpmError as error:
        # The options the user typed, where the error names wire fields.
        flags = getattr(args, "pointer_flags", None)
        sys.stderr.write("\n".join(error_lines(name, error, flags)) + "\n")
        return 2
    except OSError as error:
        # A missing file or folder, a folder given as a file: the user
        # needs the reason, not a traceback. 2 says the command could not
        # run (1 is "it ran, and lines failed").
        sys.stderr.write(f"{name}: {os_error_text(error)}\n")
        return 2
    except (sqlite3.Error, SchemaTooNew, CannotRun) as error:
        sys.stderr.write(f"{name}: {error}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{name}: interrupted\n")
        return INTERRUPTED

    return code


TERMINATED = 143
"""The exit status of a command stopped by SIGTERM (128 + 15)."""


class _Stopping:
    """SIGTERM and SIGINT while a one-shot command runs: the first stops it
    as Ctrl-C does; any later one, of either kind, is ignored."""

    def __init__(self, name: str = "ipm") -> None:
        self.by: int | None = None
        self.name = name
        self.ended = False
        self._told = False
        self._at = 0.0

    @property
    def seen(self) -> bool:
        return self.by is not None

    @property
    def terminated(self) -> bool:
        """Whether SIGTERM stopped the command (exit 143 rather than 130)."""
        return self.by == signal.SIGTERM

    def __call__(self, signum: int, frame: object) -> None:
        if self.ended:
            return  # its work is done and said: only closing is left
        if self.by is not None:
            # Sent again (a group kill then the process, Ctrl-C on top of a
            # supervisor's stop): the command is already stopping; breaking
            # into its clean-up would leave the job neither cancelled nor
            # named. Said once, so a user pressing Ctrl-C again while the
            # clean-up waits (on a database lock, say) knows why nothing
            # happens; not to a quick repeat (a group kill, a double tap),
            # nor below the command's last line; written straight to the
            # descriptor, not through sys.stderr, which the command may be
            # writing to just now.
            waited = time.monotonic() - self._at >= TELL_AFTER
            if waited and not self._told:
                self._told = True
                with contextlib.suppress(OSError):
                    os.write(2, f"\n{self.name}: stopping, please wait\n".encode())
            return
        self.by = signum
        self._at = time.monotonic()
        raise KeyboardInterrupt


_STOPS = (signal.SIGTERM, signal.SIGINT)

TELL_AFTER = 1.0
"""Seconds after the first stop before a repeat says "stopping, please wait"."""


@contextlib.contextmanager
def _sigterm_as_interrupt(
    wanted: bool, name: str = "ipm", *, exiting: bool = False
) -> Iterator[_Stopping]:
    """SIGTERM stops the command as Ctrl-C does while it runs; once either
    has stopped it, further SIGTERMs and SIGINTs are ignored until exit.
    When the process ends with the command (``exiting``), so are those
    after it has done its work and said so.

    An import then says where its job stands and the command to go on, an
    export cancels its job, instead of the process ending without a word.
    Not for ``ipm serve`` and ``ipm deliver`` (not ``wanted``): they stop
    on SIGTERM their own way, exit 0, and one sent while they start must
    not end them as interrupted. Only the main thread may set a handler:
    elsewhere (a host calling main from a thread) nothing changes.
    """
    handler = _Stopping(name)
    if not wanted or threading.current_thread() is not threading.main_thread():
        yield handler
        return

    before = {stop: signal.signal(stop, handler) for stop in _STOPS}
    STOPPING.append(handler)
    try:
        yield handler
    finally:
        STOPPING.remove(handler)
        # Once stopped, the process is on its way out (143 or 130): later
        # signals stay ignored, also while the interpreter shuts down
        # (which drops Python-level handlers). So once the work is said,
        # when nothing but that shutdown follows: the default handler
        # back would end a finished command by the signal (143, 130).
        ignored = handler.seen or (exiting and handler.ended)
        for stop in _STOPS:
            signal.signal(stop, signal.SIG_IGN if ignored else before[stop])
