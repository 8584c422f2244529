"""Named example payloads, one JSON file each, shipped with the package.

A file ``<Schema>.json`` is the primary specimen of that schema; a file
``<Schema>.<variant>.json`` is another one (the variant holds no dot).
Every specimen is valid against its schema; the test suite proves it.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
from typing import Any

from ipm.schemas._catalog import builtin

_SUFFIX = ".json"


@functools.cache
def _loaded() -> dict[str, Any]:
    folder = importlib.resources.files("ipm") / "specimens"
    found: dict[str, Any] = {}
    for entry in folder.iterdir():
        if entry.is_file() and entry.name.endswith(_SUFFIX):
            found[entry.name.removesuffix(_SUFFIX)] = json.loads(
                entry.read_text(encoding="utf-8")
            )

    return dict(sorted(found.items()))


@functools.cache
def _schema_names() -> frozenset[str]:
    return frozenset(builtin())


def specimen_names() -> tuple[str, ...]:
    """The name of every specimen, sorted."""
    return tuple(_loaded())


def specimen(name: str) -> Any:
    """A fresh copy of the named specimen; KeyError when there is none."""
    return copy.deepcopy(_loaded()[name])


def schema_of_specimen(name: str) -> str:
    """The name of the schema the specimen is an instance of."""
    if name not in _loaded():
        raise KeyError(name)
    if name in _schema_names():
        return name

    schema = name.rpartition(".")[0]
    if schema not in _schema_names():
        raise KeyError(f"specimen {name} names no known schema")

    return schema
