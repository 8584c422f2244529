"""Run every benchmark in this folder, one after the other.

Usage: ``python bench/run.py [--quick] [name ...]`` where a name is a
benchmark module without its ``bench_`` prefix (``cdc``, ``kpi``, ...).
Each benchmark prints its own figures and its ratios to a baseline that it
measures in the same run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    wanted = {a for a in sys.argv[1:] if not a.startswith("--")}
    failures = 0
    for script in sorted(HERE.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if wanted and name not in wanted:
            continue
        print(f"\n=== {name} ===", flush=True)
        result = subprocess.run([sys.executable, str(script), *flags], check=False)
        failures += result.returncode != 0

    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
