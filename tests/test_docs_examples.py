"""The Python examples of the library guide run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "library.md"
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)

# A plain install has no pytest: an example that is not a test file must
# run without it, as a reader who followed the README runs it.
WITHOUT_PYTEST = """\
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('pytest', '_pytest'):
            raise ImportError(name)
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_each_example_of_the_library_guide_runs(number: int, tmp_path: Path) -> None:
    """Each block runs in a folder of its own; a test file runs under pytest,
    any other without pytest importable, as after the README's plain install."""
    code = BLOCKS[number]
    if code.startswith("# test_"):
        name = code.split()[1].rstrip(":")
        (tmp_path / name).write_text(code)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name]
    else:
        command = [sys.executable, "-c", WITHOUT_PYTEST + code]

    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_guide_has_examples() -> None:
    """The guide is found and holds its examples (the test above is not empty)."""
    assert len(BLOCKS) >= 10
