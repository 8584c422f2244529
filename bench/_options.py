"""The command line every benchmark shares: ``--help`` and ``--quick``."""

from __future__ import annotations

import argparse


def parser(description: str | None, quick: str) -> argparse.ArgumentParser:
    """A parser whose ``--help`` prints ``description`` (the module's text)."""
    made = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    made.add_argument("--quick", action="store_true", help=quick)

    return made
