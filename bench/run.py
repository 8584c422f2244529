"""Run every benchmark in this folder, one after the other.

Each benchmark prints its own figures and its ratios to a baseline that it
measures in the same run. A name is a benchmark module without its
``bench_`` prefix (``cdc``, ``kpi``, ...); without names, all of them run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Options only some benchmarks take, and which.
ROUNDS_TAKEN_BY = {"bulk"}


def benchmarks() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    known = benchmarks()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"one of: {', '.join(known)}"
    )
    parser.add_argument("--quick", action="store_true", help="a short run of each")
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help=f"rounds, for {', '.join(sorted(ROUNDS_TAKEN_BY))}",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)}")

    return args


def commands(args: argparse.Namespace) -> list[list[str]]:
    """The command line of each benchmark to run, in order."""
    chosen = []
    for name, script in benchmarks().items():
        if args.names and name not in args.names:
            continue
        command = [sys.executable, str(script)]
        if args.quick:
            command.append("--quick")
        if args.rounds is not None and name in ROUNDS_TAKEN_BY:
            command += ["--rounds", str(args.rounds)]
        chosen.append(command)

    return chosen


def main(argv: list[str] | None = None) -> int:
    failures = 0
    for command in commands(parse(argv)):
        name = Path(command[1]).stem.removeprefix("bench_")
        print(f"\n=== {name} ===", flush=True)
        failures += subprocess.run(command, check=False).returncode != 0

    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
