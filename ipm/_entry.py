"""The ``ipm`` command's entry point, kept apart from the CLI it loads.

Loading the CLI (the library, sqlite3, the HTTP server) takes a moment; a
Ctrl-C in that moment would otherwise end in a traceback of the imports
under way instead of the one line the CLI gives an interrupted command.
"""

from __future__ import annotations

import sys

INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells use."""


def main() -> int:
    try:
        from ipm.cli import main as run

        return run(exiting=True)
    except KeyboardInterrupt:
        sys.stderr.write("ipm: interrupted\n")
        return INTERRUPTED
