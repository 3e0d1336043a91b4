"""Errors the domains raise on purpose, each with a stable code. No HTTP here: the one
table in `shared.api` decides the status each kind of error answers with.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    code: ClassVar[str] = "error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(DomainError):
    """A request that cannot be read as asked (a cursor this API never gave out)."""

    code = "bad_request"


class Invalid(DomainError):
    """A well-formed request the record cannot take, named by field: shaped like a bad
    field so clients handle one form. `details` is a list of {field, reason, type}."""

    code = "validation_error"

    def __init__(self, field: str, reason: str, kind: str, message: str | None = None) -> None:
        super().__init__(
            message or f"invalid input: {field} ({reason})",
            [{"field": field, "reason": reason, "type": kind}],
        )


class Unauthorized(DomainError):
    code = "unauthorized"


class Forbidden(DomainError):
    code = "forbidden"


class NotFound(DomainError):
    code = "not_found"


class TooLarge(DomainError):
    """A part of the request beyond its bound (an attached file above its size limit)."""

    code = "payload_too_large"


class UnsupportedType(DomainError):
    """Content of a type the record does not take (a file told by its bytes)."""

    code = "unsupported_media_type"


class Conflict(DomainError):
    """Wrong state, stale version or duplicate."""

    code = "conflict"


class StillConflicting(Conflict):
    """Other writers kept changing the record while the command was decided again."""

    code = "conflict_retry_exhausted"
