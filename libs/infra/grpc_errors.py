"""Domain errors <-> google.rpc.Status with ErrorInfo (and BadRequest when a field is named)."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from libs.core.errors import DomainError

ERROR_DOMAIN = "accrue.dev"


# Error text travels in gRPC trailers (8 KiB by default): echoed input is cut short so a
# long bad value still answers 400, not RESOURCE_EXHAUSTED.
MAX_TEXT = 512


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def to_grpc_status(err: DomainError) -> grpc.Status:
    details = []
    message = _cut(err.message)
    metadata = {_cut(k): _cut(v) for k, v in err.metadata.items()}
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN, metadata=metadata))
    details.append(info)
    if err.field is not None:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[error_details_pb2.BadRequest.FieldViolation(field=_cut(err.field), description=message)]
            )
        )
        details.append(bad)
    return rpc_status.to_status(status_pb2.Status(code=err.code.value, message=message, details=details))


@dataclass
class DecodedError:
    """What the gateway needs from a failed call to render the REST error body."""

    code: int
    message: str
    reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def decode_rpc_error(error: grpc.aio.AioRpcError | grpc.RpcError) -> DecodedError:
    code_enum = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    code = code_enum.value[0] if isinstance(code_enum, grpc.StatusCode) else code_pb2.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or code_enum.name.lower()
    decoded = DecodedError(code=code, message=message)
    metadata = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in metadata or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value if isinstance(value, bytes) else value.encode())
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                decoded.reason = info.reason
                decoded.metadata.update(info.metadata)
    return decoded
