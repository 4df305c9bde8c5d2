"""The grpc.aio server every service runs: interceptors, health, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from libs.core.errors import DomainError
from libs.infra.context import IDEMPOTENCY_METADATA_KEY, MERCHANT_METADATA_KEY, idempotency_key_var, merchant_id_var
from libs.infra.declared import check_declared
from libs.infra.grpc_errors import to_grpc_status
from libs.infra.logging import get_logger

log = get_logger(__name__)


class RequestContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Sets the merchant and idempotency key from metadata, checks a unary request against
    the rules its proto declares (libs/infra/declared.py), maps domain errors to Status.

    One place for all three, and one path for the four kinds of RPC, so handlers raise
    DomainError and never touch grpc.StatusCode.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        kind = _KINDS[(bool(handler.request_streaming), bool(handler.response_streaming))]
        inner = getattr(handler, kind.attribute)
        checks = not handler.request_streaming

        async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with _request_scope(context, method):
                if checks:
                    check_declared(request)
                return await inner(request, context)

        async def streamed_response(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with _request_scope(context, method):
                if checks:
                    check_declared(request)
                responses = inner(request, context)
                if hasattr(responses, "__aiter__"):
                    async for response in responses:
                        yield response
                else:  # a handler that writes with context.write() and returns nothing
                    await responses

        return kind.build(
            streamed_response if handler.response_streaming else unary_response,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass(frozen=True)
class _Kind:
    attribute: str
    build: Callable[..., grpc.RpcMethodHandler]


# (request streaming, response streaming) -> the handler attribute and its builder
_KINDS = {
    (False, False): _Kind("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): _Kind("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): _Kind("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): _Kind("stream_stream", grpc.stream_stream_rpc_method_handler),
}


@asynccontextmanager
async def _request_scope(context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[None]:
    """The call's merchant and idempotency key in contextvars while the handler runs, and
    whatever it raises as a status: a DomainError as itself, NotImplementedError as
    UNIMPLEMENTED, anything else as INTERNAL (logged, never shown)."""
    md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
    merchant_token = merchant_id_var.set(md.get(MERCHANT_METADATA_KEY) or None)
    key_token = idempotency_key_var.set(md.get(IDEMPOTENCY_METADATA_KEY) or None)
    try:
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
        idempotency_key_var.reset(key_token)


class GrpcServer:
    """Owns the aio server, the health servicer and the stop sequence."""

    def __init__(self, service_names: Sequence[str], host: str, port: int) -> None:
        self.server = grpc.aio.server(
            interceptors=[aio_server_interceptor(), RequestContextInterceptor()],  # type: ignore[no-untyped-call]
            options=[("grpc.so_reuseport", 0)],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names = list(service_names)
        reflection.enable_server_reflection([*self._service_names, reflection.SERVICE_NAME, health.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
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
