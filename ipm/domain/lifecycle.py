"""Lifecycles: the state machines of jobs and webhooks, kept as data.

A :class:`Lifecycle` is checked when it is built (one initial state, every
target declared, every state reachable from the initial one, nothing
leaving a terminal state), so a bad definition fails at import rather than
at the first illegal move. The same objects are served by
``/lifecycle/list`` and enforced by the use-cases, so what integrators read
is what ipm does. :data:`LIFECYCLES_VERSION` is a digest of all
definitions: it changes exactly when one of them changes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import attrs

from ipm.domain.errors import InvalidTransition, Problem


class LifecycleDefinitionError(ValueError):
    """A lifecycle definition that breaks one of the structural rules."""


@attrs.frozen
class Lifecycle:
    name: str
    service: str
    initial: str
    transitions: Mapping[str, tuple[str, ...]]
    terminal: frozenset[str] = frozenset()

    def __attrs_post_init__(self) -> None:
        _check_definition(self)

    @property
    def states(self) -> tuple[str, ...]:
        return tuple(self.transitions)

    @property
    def version(self) -> str:
        return _digest(self.to_wire(with_version=False))

    def allowed(self, state: str) -> tuple[str, ...]:
        return self.transitions.get(state, ())

    def check(self, current: str, target: str, *, pointer: str = "/status") -> None:
        """Raise :class:`InvalidTransition` unless ``current → target`` is legal."""
        allowed = self.allowed(current)
        if target in allowed:
            return

        shown = ", ".join(allowed) or "none: it is terminal"
        what = (
            f"is {current!r} already"
            if current == target
            else f"cannot move from {current!r} to {target!r}"
        )
        raise InvalidTransition(
            f"{self.name}: {what}; allowed from {current!r}: {shown}",
            [Problem(pointer, f"{current} -> {target} is not allowed")],
        )

    def to_wire(self, *, with_version: bool = True) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "name": self.name,
            "service": self.service,
            "initial": self.initial,
            "states": [
                {
                    "name": state,
                    "terminal": state in self.terminal,
                    "transitions": list(targets),
                }
                for state, targets in self.transitions.items()
            ],
        }
        if with_version:
            wire["version"] = self.version

        return wire


def _check_definition(lc: Lifecycle) -> None:
    declared = set(lc.transitions)
    if lc.initial not in declared:
        raise LifecycleDefinitionError(f"{lc.name}: initial state is not declared")

    for state, targets in lc.transitions.items():
        undeclared = set(targets) - declared
        if undeclared:
            raise LifecycleDefinitionError(
                f"{lc.name}: {state} moves to undeclared {sorted(undeclared)}"
            )
        if state in lc.terminal and targets:
            raise LifecycleDefinitionError(f"{lc.name}: terminal {state} has moves")

    unknown_terminal = lc.terminal - declared
    if unknown_terminal:
        raise LifecycleDefinitionError(
            f"{lc.name}: undeclared terminal states {sorted(unknown_terminal)}"
        )

    unreachable = declared - _reachable(lc)
    if unreachable:
        raise LifecycleDefinitionError(
            f"{lc.name}: unreachable states {sorted(unreachable)}"
        )


def _reachable(lc: Lifecycle) -> set[str]:
    seen = {lc.initial}
    frontier = [lc.initial]
    while frontier:
        for target in lc.transitions[frontier.pop()]:
            if target not in seen:
                seen.add(target)
                frontier.append(target)

    return seen


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


IMPORT_JOB = Lifecycle(
    name="bulk_import_job",
    service="ipm",
    initial="awaiting_upload",
    transitions={
        "awaiting_upload": ("uploaded", "failed"),
        "uploaded": ("processing", "failed"),
        "processing": ("validated", "completed", "completed_with_errors", "failed"),
        "validated": ("processing", "failed"),
        "completed": (),
        "completed_with_errors": (),
        "failed": (),
    },
    terminal=frozenset({"completed", "completed_with_errors", "failed"}),
)

EXPORT_JOB = Lifecycle(
    name="bulk_export_job",
    service="ipm",
    initial="pending",
    transitions={
        "pending": ("processing", "failed"),
        "processing": ("completed", "failed"),
        "completed": (),
        "failed": (),
    },
    terminal=frozenset({"completed", "failed"}),
)

WEBHOOK = Lifecycle(
    name="webhook",
    service="ipm",
    initial="active",
    transitions={
        "active": ("paused", "disabled"),
        "paused": ("active", "disabled"),
        "disabled": ("active",),
    },
)

LIFECYCLES: tuple[Lifecycle, ...] = (IMPORT_JOB, EXPORT_JOB, WEBHOOK)
LIFECYCLES_VERSION = _digest([lc.to_wire() for lc in LIFECYCLES])
