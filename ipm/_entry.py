"""The ``ipm`` command's entry point, kept apart from the CLI it loads.

Loading the CLI (the library, sqlite3, the HTTP server) takes a moment; a
Ctrl-C in that moment would otherwise end in a traceback of the imports
under way instead of the one line the CLI gives an interrupted command.
"""

from __future__ import annotations

import io
import os
import sys

INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells use."""


class ClosedStream(io.TextIOBase):
    """Standard output for a process started with it closed (Python then
    has no ``sys.stdout``): writing to it is an OSError, which a command
    reports and exits 2 for, as for a full disk, where ``None`` gave a
    traceback and exit 1 (the status of an import whose lines failed).
    Binary writes (``.buffer``) are refused alike. A one-shot command,
    whose output goes there, is refused before it starts (ipm.cli)."""

    def writable(self) -> bool:
        return True

    def write(self, text: object) -> int:
        raise OSError("standard output is closed")

    @property
    def buffer(self) -> ClosedStream:
        return self


def _standard_streams() -> None:
    """Stand-ins for standard streams the process was started without."""
    if sys.stdout is None:
        sys.stdout = ClosedStream()
    if sys.stderr is None:
        # Nowhere to say anything: the exit status still tells.
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - kept to the end


def main() -> int:
    _standard_streams()
    try:
        from ipm.cli import main as run

        return run(exiting=True)
    except KeyboardInterrupt:
        sys.stderr.write("ipm: interrupted\n")
        return INTERRUPTED
