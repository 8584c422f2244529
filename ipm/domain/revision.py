"""Revisions: an opaque token that changes on every update of a record.

Callers compare revisions for equality only; the counter inside is an
implementation detail that makes a lost update impossible to miss.
"""

from __future__ import annotations

FIRST = "1"


def next_revision(current: str) -> str:
    return str(int(current) + 1)
