"""SIGKILL at random moments: every line of an import still applied exactly once."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow

HARNESS = Path(__file__).resolve().parent.parent / "bench" / "crash_bulk.py"


def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crash_bulk", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    return module


def test_killed_workers_leave_the_same_result_as_a_clean_run(tmp_path: Path) -> None:
    """20 workers killed mid-import; resumed, the store equals a clean run's."""
    result = harness().run(tmp_path, lines=200_000, kills=20, seed=11)
    crashed, clean = result["crashed"], result["clean"]

    assert crashed["status"] == clean["status"] == "completed_with_errors"
    assert crashed["counters"] == clean["counters"]
    assert len(crashed["events"]) == len(set(crashed["events"]))
    assert crashed["events"] == clean["events"]
    assert crashed["report"] == clean["report"]
    assert clean["counters"]["lines_read"] == 200_000
