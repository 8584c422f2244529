"""ipm: the integration plane of a retail platform, as an embeddable library.

Start with :func:`open_sqlite` (or :func:`open_memory` in tests); the
returned application offers ``handle()`` (the whole wire contract),
``wsgi_app``/``asgi_app``, ``publish()`` and one typed method per use-case.

The names below are loaded on first use, so ``import ipm.signing`` (for a
webhook receiver) does not pull in storage or the API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ipm.api.envelope import Response
    from ipm.app import Application, open_memory, open_sqlite
    from ipm.domain.errors import IpmError

_LAZY = {
    "Application": "ipm.app",
    "open_memory": "ipm.app",
    "open_sqlite": "ipm.app",
    "Response": "ipm.api.envelope",
    "IpmError": "ipm.domain.errors",
}

__all__ = [
    "Application",
    "IpmError",
    "Response",
    "__version__",
    "open_memory",
    "open_sqlite",
]


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBMODULES:
        # ``import ipm`` then ``ipm.signing``, as DESIGN's public surface
        # names it, works without importing the submodule first.
        return importlib.import_module(f"ipm.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ipm' has no attribute {name!r}")

    return getattr(importlib.import_module(module), name)


_SUBMODULES = frozenset({"signing", "schemas", "testing"})


def __dir__() -> list[str]:
    # The lazy names are part of the module, for dir(), completion and docs.
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
