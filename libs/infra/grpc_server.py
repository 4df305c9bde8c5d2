"""The grpc.aio server every service runs: interceptors, health, reflection (v1 and
v1alpha), graceful stop. Every call but health and reflection must carry a merchant token
(libs/infra/tokens.py)."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from libs.core.errors import DomainError
from libs.infra.context import (
    IDEMPOTENCY_METADATA_KEY,
    MERCHANT_TOKEN_METADATA_KEY,
    idempotency_key_var,
    merchant_id_var,
    merchant_token_var,
)
from libs.infra.declared import check_declared
from libs.infra.grpc_errors import to_grpc_status
from libs.infra.grpc_handlers import Inner, each_response, rewrap
from libs.infra.logging import get_logger
from libs.infra.metrics import MetricsInterceptor
from libs.infra.settings import ServiceSettings
from libs.infra.telemetry import records_spans
from libs.infra.tls import server_credentials
from libs.infra.tokens import VERIFY_KEYS_ENV, TokenVerifier

log = get_logger(__name__)


REFLECTION_V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
# what any caller may ask without a merchant token
_OPEN_PREFIXES = (f"/{health.SERVICE_NAME}/", f"/{reflection.SERVICE_NAME}/", f"/{REFLECTION_V1_SERVICE_NAME}/")


class RequestContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Verifies the call's merchant token and sets the merchant and idempotency key from
    metadata, checks a unary request against the rules its proto declares
    (libs/infra/declared.py), maps domain errors to Status.

    One place for all of it, and one path for the four kinds of RPC, so handlers raise
    DomainError and never touch grpc.StatusCode. Health and reflection need no token (and
    are not wrapped: they run as grpc registered them). Without a verifier (tests of the
    interceptor alone) the merchant is not set and handlers that need one refuse.
    """

    def __init__(self, verifier: TokenVerifier | None = None) -> None:
        self._verifier = verifier
        self._wrapped = _WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        if method.startswith(_OPEN_PREFIXES):
            return handler
        return self._wrapped.get(method, handler, self._wrap)

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        verifier = self._verifier
        checks = not handler.request_streaming

        def one_response(inner: Inner) -> Inner:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with _request_scope(context, method, verifier):
                    if checks:
                        check_declared(request)
                    return await inner(request, context)

            return wrapped

        def streamed_responses(inner: Inner) -> Inner:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with _request_scope(context, method, verifier):
                    if checks:
                        check_declared(request)
                    async for response in each_response(inner(request, context)):
                        yield response

            return wrapped

        return rewrap(handler, one_response=one_response, streamed_responses=streamed_responses)


@asynccontextmanager
async def _request_scope(context: grpc.aio.ServicerContext, method: str, verifier: TokenVerifier | None) -> AsyncIterator[None]:
    """The call's verified merchant (and the token that proved it) and idempotency key in
    contextvars while the handler runs, and whatever it raises as a status: a DomainError
    (an invalid token's too) as itself, NotImplementedError as UNIMPLEMENTED, anything else
    as INTERNAL (logged, never shown)."""
    md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    authorization = md.get(MERCHANT_TOKEN_METADATA_KEY) or None
    merchant_token = merchant_id_var.set(None)
    forwarded_token = merchant_token_var.set(None)
    key_token = idempotency_key_var.set(md.get(IDEMPOTENCY_METADATA_KEY) or None)
    try:
        if verifier is not None:
            merchant_id_var.set(verifier.merchant_of_metadata(authorization))
            merchant_token_var.set(authorization)
        yield
    except DomainError as err:
        await context.abort_with_status(to_grpc_status(err))
    except NotImplementedError:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not built yet")
    except (asyncio.CancelledError, grpc.aio.AbortError):
        raise
    except Exception as exc:
        log.error("unhandled_error", method=method, error=repr(exc), traceback=traceback.format_exc())
        await context.abort_with_status(to_grpc_status(DomainError("INTERNAL", "internal error")))  # code INTERNAL
    finally:
        merchant_id_var.reset(merchant_token)
        merchant_token_var.reset(forwarded_token)
        idempotency_key_var.reset(key_token)


class GrpcServer:
    """Owns the aio server, the health servicer and the stop sequence."""

    def __init__(self, service_names: Sequence[str], host: str, port: int, *, settings: ServiceSettings | None = None) -> None:
        settings = settings if settings is not None else ServiceSettings()
        if not settings.token_verify_keys:
            raise RuntimeError(f"{VERIFY_KEYS_ENV} is not set: a service cannot check which merchant a call acts for")
        verifier = TokenVerifier.from_text(settings.token_verify_keys)
        interceptors: list[grpc.aio.ServerInterceptor] = [
            MetricsInterceptor(),  # outermost: counts the final status the others set
            _Traced(aio_server_interceptor()),  # type: ignore[no-untyped-call]
            RequestContextInterceptor(verifier),
        ]
        self.server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names = list(service_names)
        open_services = [reflection.SERVICE_NAME, REFLECTION_V1_SERVICE_NAME, health.SERVICE_NAME]
        reflection.enable_server_reflection([*self._service_names, *open_services], self.server)
        _add_reflection_v1(self.server, [*self._service_names, *open_services])
        credentials = server_credentials(settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(f"{host}:{port}")
        else:
            self.port = self.server.add_secure_port(f"{host}:{port}", credentials)
        if self.port == 0:
            raise RuntimeError(f"could not bind gRPC on {host}:{port}")

    async def start(self) -> None:
        await self.server.start()
        for name in ["", *self._service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        # Readiness first, so load balancers drain us, then finish in-flight calls.
        for name in ["", *self._service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)


class _Traced(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """OpenTelemetry's server interceptor for our services only: it assumes a streaming
    handler is an async generator, which grpc's health Watch (it writes with
    context.write) is not, and health checks and reflection are no trace of their own."""

    def __init__(self, inner: grpc.aio.ServerInterceptor) -> None:
        self._inner = inner
        self._wrapped = _WrappedHandlers()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method.startswith(_OPEN_PREFIXES):
            return await continuation(handler_call_details)
        if records_spans():
            return await self._inner.intercept_service(continuation, handler_call_details)
        # No tracer provider (tracing off, libs/infra/telemetry.py): OpenTelemetry's
        # interceptor would start a no-op span, which is the caller's span context as the
        # current one. Only that is done: the call runs in the context extracted from its
        # metadata, so logs name the caller's trace and the calls it makes carry it on.
        # (bench/get_product.py: the full interceptor cost about 0.1 ms per call.)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self._wrapped.get(method, handler, _in_callers_trace)


def _callers_context(context: grpc.aio.ServicerContext) -> otel_context.Context:
    return propagate.extract({key: value for key, value in (context.invocation_metadata() or ())})


def _in_callers_trace(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def one_response(inner: Inner) -> Inner:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = otel_context.attach(_callers_context(context))
            try:
                return await inner(request, context)
            finally:
                otel_context.detach(token)

        return wrapped

    def streamed_responses(inner: Inner) -> Inner:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            token = otel_context.attach(_callers_context(context))
            try:
                async for response in each_response(inner(request, context)):
                    yield response
            finally:
                otel_context.detach(token)

        return wrapped

    return rewrap(handler, one_response=one_response, streamed_responses=streamed_responses)


class _WrappedHandlers:
    """An interceptor's wrapped handler per method, built once: grpc.aio asks every
    interceptor for the handler on every call, and rebuilding the wrapper each time is a
    measurable part of a short call. Kept only while grpc hands out the same handler."""

    def __init__(self) -> None:
        self._by_method: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(
        self, method: str, handler: grpc.RpcMethodHandler, wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]
    ) -> grpc.RpcMethodHandler:
        known = self._by_method.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = wrap(method, handler)
        self._by_method[method] = (handler, wrapped)
        return wrapped


def _reflection_v1_descriptor() -> None:
    """grpc.reflection.v1's messages are v1alpha's under another package: put the v1 file in
    the default pool (built from v1alpha's) so reflection can describe the v1 service too."""
    pool = descriptor_pool.Default()
    name = "grpc/reflection/v1/reflection.proto"
    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old_package = proto.package
    proto.name, proto.package = name, "grpc.reflection.v1"
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old_package, proto.package)
            method.output_type = method.output_type.replace(old_package, proto.package)
    for message in proto.message_type:
        for fld in message.field:
            if fld.type_name:
                fld.type_name = fld.type_name.replace(old_package, proto.package)
    pool.Add(proto)


def _add_reflection_v1(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serve grpc.reflection.v1 with the v1alpha servicer (grpcio-reflection has no v1 one;
    the two are wire-identical)."""
    _reflection_v1_descriptor()
    servicer = reflection.aio.ReflectionServicer(service_names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1_SERVICE_NAME, {"ServerReflectionInfo": handler}),))
