"""The error tree of ipm.

Every error that can reach a caller is an :class:`IpmError`. Each subclass
fixes the HTTP status and the wire ``code`` from the status table in
DESIGN.md, so the API layer maps an error to a response without knowing
which capability raised it. ``details`` holds one :class:`Problem` per
fault, each with a JSON pointer into the request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs


@attrs.frozen
class Problem:
    """One fault in a request, located by a JSON pointer (RFC 6901)."""

    pointer: str
    message: str

    def to_wire(self) -> dict[str, str]:
        return {"pointer": self.pointer, "message": self.message}


def type_name(value: object) -> str:
    """The name of ``value``'s class, fit for a log line or a message.

    A host's class may be named anything: one whose name is not a plain
    identifier (a newline in it would start a forged log line) is quoted
    with escapes, and one whose name cannot be read as text is called
    ``Exception`` (an exception) or ``object``.
    """
    try:
        name = str.__str__(type(value).__name__)
    except Exception:
        return "Exception" if isinstance(value, BaseException) else "object"

    return name if name.isidentifier() else ascii(name)


def pointer_token(key: object) -> str:
    """A key as one token of a JSON pointer: ``~`` is ``~0``, ``/`` is ``~1``."""
    return str(key).replace("~", "~0").replace("/", "~1")


MAX_PROBLEMS = 1000
"""Problems listed for one check at most. Past it, checking stops and one
more item says so: a body of tens of thousands of faults took seconds to
check and made an answer many times its size."""


def capped(problems: Sequence[Problem], pointer: str = "") -> list[Problem]:
    """``problems`` as they are listed: past :data:`MAX_PROBLEMS`, the first
    of them and one more item, at ``pointer`` (the value checked), saying
    that more were left out."""
    if len(problems) <= MAX_PROBLEMS:
        return list(problems)
    more = f"more problems not listed (at most {MAX_PROBLEMS:,} are)"

    return [*problems[:MAX_PROBLEMS], Problem(pointer, more)]


def document_order(problem: Problem) -> tuple[tuple[int, int, str], ...]:
    """Sort key: problems by pointer, array items by index (``/2`` before ``/10``).

    A number is compared by its length, then its digits, never through
    ``int()``: a key of 5,000 digits is a pointer token too, and Python
    refuses to convert it.
    """
    tokens = problem.pointer.split("/")[1:]

    return tuple(
        (0, len(t.lstrip("0")), t.lstrip("0"))
        if t.isascii() and t.isdigit()
        else (1, 0, t)
        for t in tokens
    )


class IpmError(Exception):
    """Root of every error ipm reports to a caller."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, details: Iterable[Problem] = ()) -> None:
        super().__init__(message)
        self.message = message
        # Sorted once here, whichever check found them in whichever order.
        self.details: tuple[Problem, ...] = tuple(sorted(details, key=document_order))


class InvalidRequest(IpmError):
    status, code = 400, "invalid_request"


class OrgcodeRequired(IpmError):
    status, code = 400, "orgcode_required"


class OrgcodeMismatch(IpmError):
    status, code = 400, "orgcode_mismatch"


class InvalidToken(IpmError):
    status, code = 400, "invalid_token"


class Unauthenticated(IpmError):
    status, code = 401, "unauthenticated"


class Forbidden(IpmError):
    status, code = 403, "forbidden"


class NotFound(IpmError):
    """A record that is absent or belongs to an org the caller cannot see.

    Both cases carry the same message so a caller cannot tell them apart.
    """

    status, code = 404, "not_found"

    def __init__(self, kind: str = "record") -> None:
        super().__init__(f"{kind} not found")


class RouteNotFound(IpmError):
    status, code = 404, "route_not_found"


class MethodNotAllowed(IpmError):
    status, code = 405, "method_not_allowed"

    def __init__(self, message: str, allow: str = "") -> None:
        super().__init__(message)
        self.allow = allow


class EventIdConflict(IpmError):
    status, code = 409, "event_id_conflict"


class InvalidTransition(IpmError):
    status, code = 409, "invalid_transition"


class RevisionMismatch(IpmError):
    status, code = 409, "revision_mismatch"


class Conflict(IpmError):
    """A request that contradicts the current state in another way."""

    status, code = 409, "conflict"


class LengthRequired(IpmError):
    """A body sent without a length the server can read (chunked, here)."""

    status, code = 411, "length_required"


class PayloadTooLarge(IpmError):
    """A body (or, from ``ipm serve``, a request line or headers) too large.

    Unless told otherwise, the problem is the body as a whole: pointer ``""``.
    """

    status, code = 413, "payload_too_large"

    def __init__(self, message: str, details: Iterable[Problem] = ()) -> None:
        super().__init__(message, tuple(details) or (Problem("", "too large"),))


class RangeNotSatisfiable(IpmError):
    """A download's Range that no byte of the file answers (it starts past
    the end); ``size`` is the file's, which the answer's Content-Range says."""

    status, code = 416, "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        rule = (
            f"must name at least one of the file's {size:,} bytes"
            if size
            else "cannot be served: the file is empty"
        )
        super().__init__(
            f"the range asks for no byte of the file, which holds {size:,}",
            [Problem("/headers/range", rule)],
        )
        self.size = size


class RevisionRequired(IpmError):
    status, code = 428, "revision_required"


class NotImplementedYet(IpmError):
    status, code = 501, "not_implemented"


class StorageBusy(IpmError):
    """The store stayed locked by other writers for longer than the timeout."""

    status, code = 503, "storage_busy"


class StorageUnavailable(IpmError):
    """The store cannot keep anything: its disk is full or failing, its files
    are read-only, or the process ran out of file descriptors."""

    status, code = 503, "storage_unavailable"


class HostTransactionLost(StorageUnavailable):
    """A call on the host's connection met a machine fault that made SQLite
    roll back the host's whole transaction, the host's own rows included."""


class StorageClosed(IpmError, RuntimeError):
    """The application was closed: a request still arriving is answered 503."""

    status, code = 503, "storage_closed"


class Internal(IpmError):
    status, code = 500, "internal"


def check_revision(current: str, expected: str | None, kind: str) -> None:
    """Refuse an update whose ``expected_revision`` is absent or stale."""
    if expected is None:
        raise RevisionRequired(
            f"updating a {kind} needs expected_revision",
            [Problem("/expected_revision", "required for an update")],
        )
    if expected != current:
        raise RevisionMismatch(
            f"{kind} has changed: expected_revision is stale",
            [Problem("/expected_revision", f"current revision is {current}")],
        )
