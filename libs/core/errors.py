"""Domain errors: a machine reason, a message naming the field or state, and metadata.

Every service raises these from its domain and use-case code; the gRPC layer turns them
into ``google.rpc.Status`` with ``ErrorInfo`` (and ``BadRequest`` when a field is named),
and the gateway turns that into the Paygentic error body. Nothing here imports gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum


class ErrorCode(Enum):
    """The google.rpc.Code a domain error maps to (names as in google/rpc/code.proto)."""

    INVALID_ARGUMENT = 3
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    FAILED_PRECONDITION = 9
    ABORTED = 10
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class DomainError(Exception):
    """Base of every error a caller is meant to see.

    ``reason`` is UPPER_SNAKE and stable (clients may branch on it); ``message`` is for
    humans; ``field`` names the offending request field in the REST spelling
    (``properties.tiers[1].upTo``) when there is one.
    """

    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.field = field
        self.metadata: dict[str, str] = dict(metadata or {})
        if field is not None:
            self.metadata.setdefault("field", field)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r}, field={self.field!r})"


class InvalidArgument(DomainError):
    """Bad input: the request can never succeed as sent (HTTP 400)."""

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(
        self,
        field: str,
        message: str,
        *,
        reason: str = "INVALID_ARGUMENT",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(reason, message, field=field, metadata=metadata)


class NotFound(DomainError):
    """The addressed resource does not exist for this merchant (HTTP 404)."""

    code = ErrorCode.NOT_FOUND

    def __init__(self, resource: str, resource_id: str, *, field: str | None = None) -> None:
        super().__init__(
            f"{resource.upper()}_NOT_FOUND",
            f"{resource} {resource_id!r} was not found",
            field=field,
            metadata={"resource": resource, "id": resource_id},
        )


class AlreadyExists(DomainError):
    """A unique rule would be broken (HTTP 409)."""

    code = ErrorCode.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    """The resource is in a state that forbids the change, e.g. still referenced (HTTP 409)."""

    code = ErrorCode.FAILED_PRECONDITION


class Unprocessable(DomainError):
    """Well-formed, but nothing can act on it (e.g. a meter event no metric consumes).

    FAILED_PRECONDITION on gRPC; the gateway answers 422, as Paygentic's contract does.
    """

    code = ErrorCode.FAILED_PRECONDITION
    http_status = 422

    def __init__(self, reason: str, message: str, *, field: str | None = None) -> None:
        super().__init__(reason, message, field=field, metadata={"http_status": "422"})


class Aborted(DomainError):
    """A concurrent change won; retrying with fresh state may succeed (HTTP 409)."""

    code = ErrorCode.ABORTED
    retryable = True


class Unauthenticated(DomainError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = ErrorCode.PERMISSION_DENIED


class Unavailable(DomainError):
    code = ErrorCode.UNAVAILABLE
    retryable = True
