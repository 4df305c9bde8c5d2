"""Domain errors <-> google.rpc.Status, both ways.

A server encodes (libs/infra/grpc_server.py): ErrorInfo with the reason and metadata,
BadRequest when a field is named, RetryInfo when retrying may succeed. A client decodes
(libs/infra/grpc_client.py, the gateway) back into the same DomainError subclass, so a
caller of another service catches ``NotFound`` or checks ``retryable`` as if the error
had been raised in its own process.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from libs.core.errors import (
    Aborted,
    AlreadyExists,
    DomainError,
    ErrorCode,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Unprocessable,
    is_unprocessable,
)

ERROR_DOMAIN = "accrue.dev"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

# Error text travels in gRPC trailers (8 KiB by default): echoed input is cut short so a
# long bad value still answers 400, not RESOURCE_EXHAUSTED.
MAX_TEXT = 512

# What a decoded error is an instance of; FAILED_PRECONDITION with an Unprocessable
# reason is Unprocessable. Codes not listed decode to DomainError with that code.
_CLASS_OF_CODE: dict[ErrorCode, type[DomainError]] = {
    ErrorCode.INVALID_ARGUMENT: InvalidArgument,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.ALREADY_EXISTS: AlreadyExists,
    ErrorCode.FAILED_PRECONDITION: FailedPrecondition,
    ErrorCode.ABORTED: Aborted,
    ErrorCode.UNAUTHENTICATED: Unauthenticated,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.UNAVAILABLE: Unavailable,
}


def cut_text(text: str) -> str:
    """A text as a status carries it: at most MAX_TEXT characters."""
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest | error_details_pb2.RetryInfo) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def to_grpc_status(err: DomainError) -> grpc.Status:
    message = cut_text(err.message)
    metadata = {cut_text(k): cut_text(v) for k, v in err.metadata.items()}
    details = [_pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN, metadata=metadata))]
    if err.field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=cut_text(err.field), description=message)
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if err.retryable:
        details.append(_pack(error_details_pb2.RetryInfo()))
    return rpc_status.to_status(status_pb2.Status(code=err.code.value, message=message, details=details))


def _code_of(error: grpc.RpcError) -> ErrorCode:
    code = error.code() if hasattr(error, "code") else None
    number = code.value[0] if isinstance(code, grpc.StatusCode) else ErrorCode.UNKNOWN.value
    return ErrorCode(number) if number in ErrorCode._value2member_map_ else ErrorCode.UNKNOWN


def _message_of(error: grpc.RpcError, code: ErrorCode) -> str:
    return str((error.details() if hasattr(error, "details") else None) or code.name.lower())


def _status_proto(error: grpc.RpcError) -> status_pb2.Status | None:
    for key, value in (error.trailing_metadata() if hasattr(error, "trailing_metadata") else None) or ():
        if key == _STATUS_DETAILS_KEY:
            return status_pb2.Status.FromString(value if isinstance(value, bytes) else value.encode())
    return None


def _rebuild(code: ErrorCode, reason: str, message: str, *, field: str | None, metadata: dict[str, str], retryable: bool) -> DomainError:
    cls = Unprocessable if is_unprocessable(code, reason) else _CLASS_OF_CODE.get(code, DomainError)
    # the subclasses' constructors build reason and metadata from their own arguments;
    # a decoded error has them already
    err = cls.__new__(cls)
    DomainError.__init__(err, reason, message, field=field, metadata=metadata)
    if err.code is not code:
        err.code = code
    if err.retryable is not retryable:
        err.retryable = retryable
    return err


def carried_error(error: grpc.RpcError) -> DomainError | None:
    """The domain error a failed call's status carries (it has an ErrorInfo), or None
    when the status is not one of ours: a transport failure, a deadline, a library's own."""
    status = _status_proto(error)
    if status is None:
        return None
    reason: str | None = None
    metadata: dict[str, str] = {}
    field: str | None = None
    retryable = False
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
            metadata.update(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                field = bad.field_violations[0].field
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retryable = True
    if reason is None:
        return None
    code = _code_of(error)
    return _rebuild(code, reason, _message_of(error, code), field=field, metadata=metadata, retryable=retryable)


def decode_rpc_error(error: grpc.RpcError) -> DomainError:
    """A failed call as a DomainError: the one its status carries, or, for a status that
    is not one of ours, one named after the code (reason ``UNAVAILABLE``, the library's
    text as message) and retryable as its class is (Unavailable is)."""
    carried = carried_error(error)
    if carried is not None:
        return carried
    code = _code_of(error)
    cls = _CLASS_OF_CODE.get(code, DomainError)
    return _rebuild(code, code.name, _message_of(error, code), field=None, metadata={}, retryable=cls.retryable)
