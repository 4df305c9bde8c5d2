"""Calls between services, over a real grpc.aio server in-process (GrpcServer, with its
interceptors) and a test servicer of all four kinds of RPC: the server's request context
and error mapping on every kind, and the client channel's deadline, forwarded metadata
and error decoding (libs/infra/grpc_client.py). Loopback only; no database, no NATS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from accrue.catalog.v1 import catalog_service_pb2 as catalog
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2

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
)
from libs.infra import grpc_client
from libs.infra.context import (
    IDEMPOTENCY_METADATA_KEY,
    current_idempotency_key,
    current_merchant_id,
    idempotency_key_var,
    merchant_token_var,
)
from libs.infra.embedded import free_port
from libs.infra.grpc_server import GrpcServer
from libs.testing.tokens import merchant_metadata

Request = catalog.CreateProductRequest
SERVICE = "accrue.test.v1.Probe"
KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
MERCHANT = "org_probe"
pytestmark = pytest.mark.integration


def _flagged(err: DomainError, retryable: bool) -> DomainError:
    err.retryable = retryable
    return err


# every DomainError subclass, with a field and metadata where it takes them, and one
# error whose retryable differs from its class's (it travels; it is not inferred)
ERRORS: dict[str, DomainError] = {
    "invalid": InvalidArgument("properties.tiers[1].upTo", "upTo must be above 10", reason="INVALID_TIER", metadata={"tier": "1"}),
    "missing": NotFound("product", "prod_404", field="id"),
    "duplicate": AlreadyExists("FEATURE_KEY_TAKEN", "key api-calls is taken", field="key", metadata={"key": "api-calls"}),
    "in_use": FailedPrecondition("FEE_HAS_PRICES", "fee fee_1 still has price price_1"),
    "unprocessable": Unprocessable("UNKNOWN_EVENT_TYPE", "no billable metric consumes events of type 'x'", field="type"),
    "raced": Aborted("PLAN_VERSION_CONFLICT", "another version was minted first"),
    "anonymous": Unauthenticated("MERCHANT_REQUIRED", "the call carries no authenticated merchant"),
    "forbidden": PermissionDenied("KEY_SCOPE", "the key may not write"),
    "down": Unavailable("METER_STREAM_UNAVAILABLE", "the meter stream did not acknowledge"),
    "not_retryable": _flagged(Unavailable("CATALOG_GONE", "the catalog was retired"), False),
    "retryable_conflict": _flagged(FailedPrecondition("LOCKED", "the invoice is being finalized"), True),
    "internal": DomainError("LEDGER_BROKEN", "the ledger does not balance", metadata={"ledger": "l_1"}),
}


def _subclasses(cls: type[DomainError]) -> set[type[DomainError]]:
    return {cls}.union(*(_subclasses(sub) for sub in cls.__subclasses__()))


def _act(request: Request, context: grpc.aio.ServicerContext) -> struct_pb2.Struct:
    """What the probe does, by the request's name."""
    if request.name in ERRORS:
        raise ERRORS[request.name]
    if request.name == "boom":
        raise RuntimeError("boom: a bug, not for callers")
    if request.name == "todo":
        raise NotImplementedError
    out = struct_pb2.Struct()
    remaining = context.time_remaining()
    out.update({"merchant": current_merchant_id(), "key": current_idempotency_key() or "", "remaining": remaining or -1.0})
    return out


STARTED = struct_pb2.Struct(fields={"started": struct_pb2.Value(bool_value=True)})


async def _unary_unary(request: Request, context: grpc.aio.ServicerContext) -> struct_pb2.Struct:
    if request.name == "hang":
        await asyncio.Event().wait()
    return _act(request, context)


async def _unary_stream(request: Request, context: grpc.aio.ServicerContext) -> AsyncIterator[struct_pb2.Struct]:
    yield STARTED  # an error after a first response is mapped too
    yield _act(request, context)


async def _unary_stream_written(request: Request, context: grpc.aio.ServicerContext) -> None:
    """The other server-streaming style: context.write(), nothing returned."""
    await context.write(STARTED)
    await context.write(_act(request, context))


async def _stream_unary(requests: AsyncIterator[Request], context: grpc.aio.ServicerContext) -> struct_pb2.Struct:
    received = [request async for request in requests]
    return _act(received[0], context)


async def _stream_stream(requests: AsyncIterator[Request], context: grpc.aio.ServicerContext) -> AsyncIterator[struct_pb2.Struct]:
    yield STARTED
    async for request in requests:
        yield _act(request, context)


def _probe_handler() -> grpc.GenericRpcHandler:
    codec: dict[str, Any] = {"request_deserializer": Request.FromString, "response_serializer": struct_pb2.Struct.SerializeToString}
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(_unary_unary, **codec),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(_unary_stream, **codec),
            "UnaryStreamWritten": grpc.unary_stream_rpc_method_handler(_unary_stream_written, **codec),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(_stream_unary, **codec),
            "StreamStream": grpc.stream_stream_rpc_method_handler(_stream_stream, **codec),
        },
    )


@pytest.fixture(scope="module")
async def address() -> AsyncIterator[str]:
    server = GrpcServer([SERVICE], "127.0.0.1", 0)
    server.server.add_generic_rpc_handlers((_probe_handler(),))
    await server.start()
    yield f"127.0.0.1:{server.port}"
    await server.stop(grace=0)


def _path(kind: str) -> str:
    return f"/{SERVICE}/" + "".join(part.title() for part in kind.split("_"))


async def call(
    channel: grpc.aio.Channel, kind: str, requests: list[Request], *, metadata: list[tuple[str, str]] | None = None
) -> list[struct_pb2.Struct]:
    """Every response of one call of ``kind`` (the last one is the probe's answer)."""
    codec: dict[str, Callable[..., Any]] = {
        "request_serializer": Request.SerializeToString,
        "response_deserializer": struct_pb2.Struct.FromString,
    }
    method = getattr(channel, kind)(_path(kind), **codec)
    if kind == "unary_unary":
        return [await method(requests[0], metadata=metadata)]
    if kind == "unary_stream":
        return [response async for response in method(requests[0], metadata=metadata)]
    if kind == "stream_unary":
        return [await method(iter(requests), metadata=metadata)]
    return [response async for response in method(iter(requests), metadata=metadata)]


def _status(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, error_details_pb2.ErrorInfo | None, str]:
    info = None
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
    return error.code(), info, error.details() or ""


async def _refused(address: str, kind: str, request: Request) -> tuple[grpc.StatusCode, error_details_pb2.ErrorInfo | None, str]:
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(channel, kind, [request], metadata=[merchant_metadata(MERCHANT)])
    return _status(caught.value)


# --- the server's interceptor, on every kind ---------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_every_kind_sees_the_merchant_and_idempotency_key(address: str, kind: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        responses = await call(
            channel, kind, [Request(name="ok")], metadata=[merchant_metadata(MERCHANT), (IDEMPOTENCY_METADATA_KEY, "key-1")]
        )
    assert (responses[-1]["merchant"], responses[-1]["key"]) == (MERCHANT, "key-1")


@pytest.mark.parametrize("kind", KINDS)
async def test_every_kind_maps_a_domain_error_to_its_status_with_error_info(address: str, kind: str) -> None:
    code, info, message = await _refused(address, kind, Request(name="missing"))
    assert code == grpc.StatusCode.NOT_FOUND and message == "product 'prod_404' was not found"
    assert info is not None and info.reason == "PRODUCT_NOT_FOUND" and info.domain == "accrue.dev"
    assert dict(info.metadata) == {"resource": "product", "id": "prod_404", "field": "id"}


@pytest.mark.parametrize("kind", KINDS)
async def test_every_kind_answers_an_unexpected_exception_internal_without_its_text(address: str, kind: str) -> None:
    code, info, message = await _refused(address, kind, Request(name="boom"))
    assert code == grpc.StatusCode.INTERNAL and info is not None and info.reason == "INTERNAL"
    assert message == "internal error"


@pytest.mark.parametrize("kind", KINDS)
async def test_every_kind_answers_not_implemented_unimplemented(address: str, kind: str) -> None:
    code, info, message = await _refused(address, kind, Request(name="todo"))
    assert code == grpc.StatusCode.UNIMPLEMENTED and info is None
    assert message == f"{_path(kind)} is not built yet"


@pytest.mark.parametrize("kind", ["unary_unary", "unary_stream"])
async def test_a_unary_request_is_checked_against_its_declared_rules_first(address: str, kind: str) -> None:
    code, info, _ = await _refused(address, kind, Request(name="x" * 256))  # name is at most 255 characters
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert info is not None and info.reason == "TOO_LONG" and info.metadata["field"] == "name"


async def test_a_server_stream_written_with_context_write_gets_the_same_context_and_errors(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        method = channel.unary_stream(
            f"/{SERVICE}/UnaryStreamWritten",
            request_serializer=Request.SerializeToString,
            response_deserializer=struct_pb2.Struct.FromString,
        )
        md = [merchant_metadata(MERCHANT)]
        answered = [response async for response in method(Request(name="ok"), metadata=md)]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [response async for response in method(Request(name="in_use"), metadata=md)]
    assert answered[-1]["merchant"] == MERCHANT
    code, info, _ = _status(caught.value)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and info is not None and info.reason == "FEE_HAS_PRICES"


# --- the client channel --------------------------------------------------------------------


def test_every_domain_error_class_is_in_the_round_trip() -> None:
    assert {type(err) for err in ERRORS.values()} == _subclasses(DomainError)


@pytest.mark.parametrize("name", list(ERRORS))
async def test_a_domain_error_comes_back_as_itself(address: str, name: str) -> None:
    raised = ERRORS[name]
    async with grpc_client.channel(address) as channel:
        with pytest.raises(DomainError) as caught:
            await call(channel, "unary_unary", [Request(name=name)], metadata=[merchant_metadata(MERCHANT)])
    got = caught.value
    assert type(got) is type(raised)
    assert (got.code, got.reason, got.message, got.field, got.metadata, got.retryable) == (
        raised.code,
        raised.reason,
        raised.message,
        raised.field,
        raised.metadata,
        raised.retryable,
    )
    assert isinstance(got.__cause__, grpc.aio.AioRpcError)


@pytest.mark.parametrize("kind", KINDS)
async def test_every_kind_decodes_its_failure(address: str, kind: str) -> None:
    async with grpc_client.channel(address) as channel:
        with pytest.raises(NotFound) as caught:
            await call(channel, kind, [Request(name="missing")], metadata=[merchant_metadata(MERCHANT)])
    assert caught.value.reason == "PRODUCT_NOT_FOUND" and caught.value.field == "id"


@pytest.mark.parametrize("kind", KINDS)
async def test_the_current_merchant_and_key_are_forwarded(address: str, kind: str) -> None:
    # what a servicer called by org_caller has: the token it was called with
    merchant_token, key_token = merchant_token_var.set(merchant_metadata("org_caller")[1]), idempotency_key_var.set("key-from-caller")
    try:
        async with grpc_client.channel(address) as channel:
            forwarded = (await call(channel, kind, [Request(name="ok")]))[-1]
            explicit = (await call(channel, kind, [Request(name="ok")], metadata=[merchant_metadata("org_explicit")]))[-1]
    finally:
        merchant_token_var.reset(merchant_token)
        idempotency_key_var.reset(key_token)
    assert (forwarded["merchant"], forwarded["key"]) == ("org_caller", "key-from-caller")
    assert (explicit["merchant"], explicit["key"]) == ("org_explicit", "key-from-caller")


async def test_without_a_current_merchant_nothing_is_forwarded(address: str) -> None:
    async with grpc_client.channel(address) as channel:
        with pytest.raises(Unauthenticated) as caught:
            await call(channel, "unary_unary", [Request(name="ok")])
    assert caught.value.reason == "MERCHANT_TOKEN_REQUIRED"


async def test_every_call_has_the_default_deadline_unless_it_sets_its_own(address: str) -> None:
    md = [merchant_metadata(MERCHANT)]
    async with grpc_client.channel(address) as channel:
        method = channel.unary_unary(
            _path("unary_unary"), request_serializer=Request.SerializeToString, response_deserializer=struct_pb2.Struct.FromString
        )
        default = (await method(Request(name="ok"), metadata=md)).fields["remaining"].number_value
        own = (await method(Request(name="ok"), metadata=md, timeout=120.0)).fields["remaining"].number_value
    async with grpc_client.channel(address, timeout=30.0) as channel:
        configured = (await call(channel, "stream_stream", [Request(name="ok")], metadata=md))[-1].fields["remaining"].number_value
    async with grpc.aio.insecure_channel(address) as channel:  # a plain channel: no deadline at all
        plain = (await call(channel, "unary_unary", [Request(name="ok")], metadata=md))[-1].fields["remaining"].number_value
    # what the server sees left of the deadline (gRPC rounds it up a little)
    limit = grpc_client.DEFAULT_TIMEOUT_SECONDS
    assert 0 < default <= limit + 1
    assert limit + 1 < own <= 121.0
    assert limit + 1 < configured <= 31.0
    assert plain == -1.0


async def test_a_call_past_its_deadline_fails_deadline_exceeded(address: str) -> None:
    async with grpc_client.channel(address, timeout=0.2) as channel:
        with pytest.raises(DomainError) as caught:
            await asyncio.wait_for(call(channel, "unary_unary", [Request(name="hang")], metadata=[merchant_metadata(MERCHANT)]), 10)
    assert caught.value.code is ErrorCode.DEADLINE_EXCEEDED and caught.value.reason == "DEADLINE_EXCEEDED"
    assert not caught.value.retryable


async def test_an_unreachable_service_is_unavailable_and_retryable() -> None:
    async with grpc_client.channel(f"127.0.0.1:{free_port()}") as channel:
        with pytest.raises(Unavailable) as caught:
            await call(channel, "unary_unary", [Request(name="ok")])
    assert caught.value.retryable and caught.value.reason == "UNAVAILABLE"
