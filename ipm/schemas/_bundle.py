"""One schema as a document that needs no other: what ``/schemas/<name>.json``
serves.

ipm's schemas refer to each other by URN (``urn:ipm:schema:Job``), and a
host's event types may refer to each other by their own ``$id`` too. No
URL serves a URN, so an integrator's validator could resolve none of those
references. The bundle embeds every schema the served one refers to,
directly or not, under ``$defs``, each as the resource it is (its own
``$id``), which is how Draft 2020-12 bundles a compound document: resource
boundaries, anchors and dynamic scopes stay as they were, so any 2020-12
validator gives ipm's verdict without fetching anything.

A host type that has an ``$id`` of its own is embedded under that id, so a
reference to it by its URN (a pointer or an anchor after it included) is
written with that id instead; nothing else is rewritten. Only subschemas
are walked: the values of other keywords (``const``, ``examples``...) are
data and are left as they are.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

from ipm.schemas._fragments import URN, Schema
from ipm.schemas._validation import SCHEMA_LISTS, SCHEMA_MAPS, SCHEMA_VALUED

_REFERENCES = ("$ref", "$dynamicRef")
_MAPS = SCHEMA_MAPS | {"definitions"}
_DATA = frozenset({"const", "enum", "examples", "default"})
"""Keywords whose values are data, never schemas: not walked."""
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def bundled(found: Mapping[str, Schema], name: str) -> Schema:
    """Schema ``name`` of ``found`` with every schema of ``found`` it refers
    to embedded under ``$defs`` (keyed by its URN)."""
    ids = {each: _id_of(schema, each) for each, schema in found.items()}
    nested = {each: resource_ids(found[each], ids[each], loose=True) for each in found}
    # Every resource by its id, nested ones too, to the type that holds it.
    names = {uri: each for each in found for uri in nested[each]}
    names.update({uri: each for each, uri in ids.items()})
    names.update({URN + each: each for each in found})

    needed: list[str] = []
    waiting = [name]
    while waiting:
        each = waiting.pop()
        own = {ids[each], URN + each, *nested[each]}  # its own found first
        for uri in _targets(found[each], ids[each]):
            other = each if uri in own else names.get(uri)
            if other is not None and other != name and other not in needed:
                needed.append(other)
                waiting.append(other)

    def spelt(uri: str) -> str:
        """A reference by URN to a schema known by an id of its own."""
        base, hash_, fragment = uri.partition("#")
        other = names.get(base)
        if other is None or base != URN + other or ids[other] == base:
            return uri
        return ids[other] + hash_ + fragment

    document = _rewritten(found[name], ids[name], spelt)
    document["$id"] = ids[name]
    if needed:
        defs = document.setdefault("$defs", {})
        for other in sorted(needed):
            key = URN + other
            while key in defs:
                key += "#"  # a key the schema itself uses: not ours to take
            resource = _rewritten(found[other], ids[other], spelt)
            defs[key] = {**resource, "$id": ids[other]}

    return document


def resource_ids(schema: Schema, base: str, *, loose: bool = False) -> list[str]:
    """The id of every resource nested in ``schema`` (whose own id is
    ``base``), each read against the one around it; with ``loose``, those
    inside unknown keywords too (see :func:`_schemas`)."""
    return [
        at
        for node, at in _schemas(schema, base, loose=loose)
        if node is not schema and isinstance(node.get("$id"), str) and node["$id"]
    ]


def is_absolute(uri: str) -> bool:
    """Whether ``uri`` has a scheme (so reads the same from anywhere)."""
    return bool(_SCHEME.match(uri))


def normal_form(uri: str) -> str:
    """``uri`` as the compiled validator reads it: scheme (and an http(s)
    host) in lower case, no ``.`` or ``..`` segments, unreserved characters
    unescaped. The reference validator compares ids as written, so an id or
    reference written otherwise is read apart by the two."""
    if not is_absolute(uri):
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        return scheme + uri[len(parts.scheme) :]
    path = _UNRESERVED_ESCAPE.sub(_unescaped, parts.path)
    if path:
        path = urlsplit(urljoin(f"{scheme}://x/", path)).path
    netloc = parts.netloc.lower() if "@" not in parts.netloc else parts.netloc

    return urlunsplit((scheme, netloc, path, parts.query, parts.fragment))


_UNRESERVED_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")


def _unescaped(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    if char.isascii() and (char.isalnum() or char in "-._~"):
        return char
    return "%" + match.group(1).upper()


def _id_of(schema: Schema, name: str) -> str:
    own = schema.get("$id")

    return own.removesuffix("#") if isinstance(own, str) and own else URN + name


def references(schema: Schema, base: str) -> Iterator[str]:
    """Each reference of ``schema`` as written ($ref and $dynamicRef), in
    its subschemas (not in unknown keywords' data)."""
    for node, _ in _schemas(schema, base, loose=False):
        for keyword in _REFERENCES:
            target = node.get(keyword)
            if isinstance(target, str):
                yield target


def _targets(schema: Schema, base: str) -> Iterator[str]:
    """The absolute URI (fragment left out) of each reference in ``schema``."""
    for node, at in _schemas(schema, base):
        for keyword in _REFERENCES:
            target = node.get(keyword)
            if isinstance(target, str):
                yield _joined(at, target).partition("#")[0]


def _rewritten(schema: Schema, base: str, spelt: Callable[[str], str]) -> Schema:
    """A copy of ``schema`` whose references are written by ``spelt``
    (given each reference as an absolute URI)."""
    copied = copy.deepcopy(dict(schema))
    for node, at in _schemas(copied, base):
        for keyword in _REFERENCES:
            target = node.get(keyword)
            if isinstance(target, str):
                absolute = _joined(at, target)
                written = spelt(absolute)
                if written != absolute:
                    node[keyword] = written

    return copied


def _schemas(
    node: Any, base: str, *, loose: bool = True
) -> Iterator[tuple[dict[str, Any], str]]:
    """Each subschema of ``node`` that is an object, with the base URI its
    references are read against (an ``$id`` of its own starts a new one).

    ``loose`` walks unknown keywords' objects and arrays too: no validator
    reads them as schemas, but a pointer may reach into one (a library's
    "x-defs"), so what the bundle embeds and spells counts them. What ipm
    refuses in a schema (a shared id, a misread reference) does not: there
    they are the host's data.
    """
    if not isinstance(node, dict):
        return
    own = node.get("$id")
    if isinstance(own, str) and own:
        base = _joined(base, own).partition("#")[0]
    yield node, base
    for key, value in node.items():
        if key in _DATA:
            continue
        known = key in _MAPS or key in SCHEMA_LISTS or key in SCHEMA_VALUED
        if not (known or loose) or key in _REFERENCES:
            continue
        if key in _MAPS and isinstance(value, dict):
            for each in value.values():
                yield from _schemas(each, base, loose=loose)
        elif isinstance(value, list):
            for each in value:
                yield from _schemas(each, base, loose=loose)
        elif isinstance(value, dict):
            yield from _schemas(value, base, loose=loose)


def _joined(base: str, reference: str) -> str:
    """``reference`` read against ``base``: a URN has no relative form, so
    a fragment alone is appended and anything with a scheme stands alone."""
    if reference.startswith("#"):
        return base + reference
    if _SCHEME.match(reference) or not base or base.startswith("urn:"):
        return reference

    return urljoin(base, reference)
