"""Domain errors: a machine reason, a message naming the field or state, and metadata.

Every service raises these from its domain and use-case code; the gRPC layer turns them
into ``google.rpc.Status`` with ``ErrorInfo`` (and ``BadRequest`` when a field is named),
and the gateway turns that into the Paygentic error body. Nothing here imports gRPC.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum


class ErrorCode(Enum):
    """The google.rpc.Code of an error (names and numbers as in google/rpc/code.proto).

    Domain errors use a few of them; the rest are what a remote call can end with
    (a deadline, a cancelled or refused call) when it is decoded (libs/infra/grpc_errors.py).
    """

    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# The one table of HTTP statuses: by code, and by (code, reason) where a reason answers
# otherwise. FAILED_PRECONDITION is 409, not Google's 400: Paygentic answers "still in use"
# conflicts with 409, and the Unprocessable reasons (well-formed, but nothing can act on
# it) with 422. The gateway answers with it, and so does every per-item receipt.
HTTP_STATUS: Mapping[tuple[ErrorCode, str | None], int] = {
    (ErrorCode.CANCELLED, None): 499,
    (ErrorCode.UNKNOWN, None): 500,
    (ErrorCode.INVALID_ARGUMENT, None): 400,
    (ErrorCode.DEADLINE_EXCEEDED, None): 504,
    (ErrorCode.NOT_FOUND, None): 404,
    (ErrorCode.ALREADY_EXISTS, None): 409,
    (ErrorCode.PERMISSION_DENIED, None): 403,
    (ErrorCode.RESOURCE_EXHAUSTED, None): 429,
    (ErrorCode.FAILED_PRECONDITION, None): 409,
    (ErrorCode.FAILED_PRECONDITION, "UNKNOWN_EVENT_TYPE"): 422,
    # Paygentic's code for paying an invoice that is not ISSUED or PAYMENT_FAILED
    (ErrorCode.FAILED_PRECONDITION, "INVOICE_NOT_LINKABLE_STATUS"): 422,
    # ... and for a payment link of an invoice with nothing unpaid
    (ErrorCode.FAILED_PRECONDITION, "INVOICE_NO_BALANCE"): 422,
    # retryPayment (reference 2.11): the card was declined (402 Payment Required), the
    # customer has no saved method (422), the processor could not be reached (502)
    (ErrorCode.FAILED_PRECONDITION, "PAYMENT_DECLINED"): 402,
    (ErrorCode.FAILED_PRECONDITION, "NO_PAYMENT_METHOD"): 422,
    (ErrorCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"): 502,
    (ErrorCode.ABORTED, None): 409,
    (ErrorCode.OUT_OF_RANGE, None): 400,
    (ErrorCode.UNIMPLEMENTED, None): 501,
    (ErrorCode.INTERNAL, None): 500,
    (ErrorCode.UNAVAILABLE, None): 503,
    (ErrorCode.DATA_LOSS, None): 500,
    (ErrorCode.UNAUTHENTICATED, None): 401,
}


def http_status(code: ErrorCode, reason: str | None = None) -> int:
    """The HTTP status of an error with this code and reason (HTTP_STATUS)."""
    return HTTP_STATUS.get((code, reason)) or HTTP_STATUS.get((code, None), 500)


def is_unprocessable(code: ErrorCode, reason: str) -> bool:
    """Whether (code, reason) is one of the Unprocessable reasons HTTP_STATUS answers 422."""
    return HTTP_STATUS.get((code, reason)) == 422


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

    FAILED_PRECONDITION on gRPC; 422 over HTTP, as Paygentic's contract answers it. The
    reason is what tells the two apart on the wire, so it must be one HTTP_STATUS lists.
    """

    code = ErrorCode.FAILED_PRECONDITION

    def __init__(self, reason: str, message: str, *, field: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        if not is_unprocessable(self.code, reason):
            raise ValueError(f"{reason} is not a 422 reason of HTTP_STATUS (libs/core/errors.py)")
        super().__init__(reason, message, field=field, metadata=metadata)


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
