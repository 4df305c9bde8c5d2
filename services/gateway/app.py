"""The gateway: authenticates, transcodes REST+JSON to gRPC and maps errors back.

Business rules never live here. Routes come from the protos (transcoding.py), JSON from
protobuf's mapping (restjson.py), errors from google.rpc.Status (libs.infra.grpc_errors).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import grpc
import orjson
import uvicorn
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.core.errors import DomainError, InvalidArgument
from libs.infra import migrations
from libs.infra.context import IDEMPOTENCY_METADATA_KEY, MERCHANT_METADATA_KEY
from libs.infra.db import create_engine
from libs.infra.grpc_errors import decode_rpc_error
from libs.infra.logging import configure_logging, get_logger
from libs.infra.service import run
from libs.infra.telemetry import configure_tracing, extract_context
from services.gateway import restjson, store
from services.gateway.coalescing import Coalescer
from services.gateway.openapi import build_openapi
from services.gateway.settings import GatewaySettings
from services.gateway.transcoding import Route, Router, build_routes

log = get_logger(__name__)
_tracer = trace.get_tracer("accrue.gateway")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# google.rpc.Code -> (HTTP status, Paygentic `error` category). FAILED_PRECONDITION is
# 409, not Google's 400: Paygentic answers "still in use" conflicts with 409.
HTTP_OF_CODE: dict[int, tuple[int, str]] = {
    1: (499, "cancelled"),
    2: (500, "internal_error"),
    3: (400, "bad_request"),
    4: (504, "timeout"),
    5: (404, "not_found"),
    6: (409, "conflict"),
    7: (403, "forbidden"),
    8: (429, "rate_limited"),
    9: (409, "conflict"),
    10: (409, "conflict"),
    11: (400, "bad_request"),
    12: (501, "not_implemented"),
    13: (500, "internal_error"),
    14: (503, "service_unavailable"),
    15: (500, "internal_error"),
    16: (401, "unauthorized"),
}
MAX_BODY_BYTES = 1 << 20
_CATEGORY = {400: "bad_request", 404: "not_found", 409: "conflict", 422: "unprocessable_entity", 503: "service_unavailable"}


def _error_body(status: int, message: str, error: str, code: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": message, "error": error, "code": code}
    if details:
        body["details"] = details
    return body


class Gateway:
    """The ASGI application."""

    def __init__(self, settings: GatewaySettings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.router = Router(build_routes())
        self.openapi = json.dumps(build_openapi(self.router.routes)).encode()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable[Message, Message]] = {}
        self._keys: dict[str, tuple[str, float]] = {}
        self._coalescers: dict[str, Coalescer] = {}

    async def start(self) -> None:
        for route in self.router.routes:
            if route.backend not in self._channels:
                self._channels[route.backend] = grpc.aio.insecure_channel(
                    self.settings.backend_address(route.backend),
                    interceptors=aio_client_interceptors(),  # type: ignore[no-untyped-call]
                )
            self._calls[route.grpc_path] = self._channels[route.backend].unary_unary(
                route.grpc_path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=route.response_class.FromString,
            )
            if route.coalesce is not None and route.batch_request_class is not None and route.batch_response_class is not None:
                batch_call = self._channels[route.backend].unary_unary(
                    route.batch_grpc_path,
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=route.batch_response_class.FromString,
                )
                self._coalescers[route.grpc_path] = Coalescer(
                    route.coalesce, route.batch_request_class, batch_call, timeout=self.settings.rpc_timeout_seconds
                )

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)

    async def _merchant_for(self, authorization: str | None) -> str | None:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        secret = authorization[7:].strip()
        cached = self._keys.get(secret)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        merchant_id = await store.merchant_for_key(self.engine, secret)
        if merchant_id is not None:
            self._keys[secret] = (merchant_id, now + self.settings.api_key_cache_seconds)
        return merchant_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if method == "GET" and path == "/healthz":
            await _respond(send, 200, b'{"status":"ok"}')
            return
        if method == "GET" and path == "/openapi.json":
            await _respond(send, 200, self.openapi)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        with _tracer.start_as_current_span(
            f"{method} {path}", context=extract_context(headers), kind=SpanKind.SERVER, attributes={"http.request.method": method}
        ) as span:
            status, body = await self._handle(scope, receive, method, path, headers)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            await _respond(send, status, body)

    async def _handle(self, scope: Scope, receive: Receive, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes | None]:
        route, path_vars, path_known = self.router.match(method, path)
        if route is None:
            if path_known:
                return 405, _json(_error_body(405, f"{method} is not allowed on {path}", "method_not_allowed", "METHOD_NOT_ALLOWED"))
            return 404, _json(_error_body(404, f"no route for {method} {path}", "not_found", "ROUTE_NOT_FOUND"))
        merchant_id = await self._merchant_for(headers.get("authorization"))
        if merchant_id is None:
            return 401, _json(
                _error_body(401, "a valid API key is required: Authorization: Bearer <key>", "unauthorized", "UNAUTHENTICATED")
            )
        try:
            request = await self._build_request(route, scope, receive, path_vars)
        except DomainError as err:
            return 400, _json(_error_body(400, err.message, "bad_request", err.reason, err.metadata))
        metadata: list[tuple[str, str]] = [(MERCHANT_METADATA_KEY, merchant_id)]
        idempotency_key = headers.get("idempotency-key")
        if idempotency_key:
            metadata.append((IDEMPOTENCY_METADATA_KEY, idempotency_key))
        coalescer = self._coalescers.get(route.grpc_path) if not idempotency_key else None
        try:
            if coalescer is not None:
                outcome = await coalescer.submit(metadata, merchant_id, request)
                if outcome.response is None:
                    details = {"field": outcome.field} if outcome.field else None
                    category = _CATEGORY.get(outcome.http_status, "error")
                    return outcome.http_status, _json(_error_body(outcome.http_status, outcome.message, category, outcome.code, details))
                response = outcome.response
            else:
                response = await self._calls[route.grpc_path](request, metadata=metadata, timeout=self.settings.rpc_timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            decoded = decode_rpc_error(exc)
            status, category = HTTP_OF_CODE.get(decoded.code, (500, "internal_error"))
            override = decoded.metadata.pop("http_status", None)
            if override == "422":
                status, category = 422, "unprocessable_entity"
            code = decoded.reason or exc.code().name
            if decoded.code == 14 and decoded.reason is None:
                log.warning("backend_unavailable", backend=route.backend, detail=decoded.message)
            return status, _json(_error_body(status, decoded.message, category, code, decoded.metadata))
        if route.success_code == 204:
            return 204, None
        return route.success_code, _json(restjson.message_to_json(response))

    async def _build_request(self, route: Route, scope: Scope, receive: Receive, path_vars: dict[str, str]) -> Message:
        request = route.request_class()
        descriptor: Descriptor = request.DESCRIPTOR  # type: ignore[assignment]
        payload: dict[str, Any] = {}
        body_fields: list[str] = []
        if route.body:
            raw = await _read_body(receive)
            if raw.strip():
                try:
                    parsed = orjson.loads(raw)
                except json.JSONDecodeError as exc:
                    raise InvalidArgument(
                        "body", f"the body is not valid JSON: {exc.msg} at position {exc.pos}", reason="INVALID_JSON"
                    ) from exc
                if not isinstance(parsed, dict):
                    raise InvalidArgument("body", "the body must be a JSON object", reason="INVALID_JSON")
                payload = parsed
            body_fields = restjson.mask_paths(descriptor, payload)
        query = parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)
        if query and not route.body:
            payload = restjson.query_to_json(descriptor, query)
        for name, value in path_vars.items():
            field = descriptor.fields_by_name[name]
            payload[field.json_name] = value
            payload.pop(name, None) if name != field.json_name else None
        restjson.parse_into(request, payload)
        if route.http_method == "PATCH" and "update_mask" in descriptor.fields_by_name:
            request.update_mask.paths.extend(p for p in body_fields if p not in path_vars)  # type: ignore[attr-defined]
        return request

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _json(value: Any) -> bytes:
    return orjson.dumps(value)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InvalidArgument("body", f"the body is larger than {MAX_BODY_BYTES} bytes", reason="BODY_TOO_LARGE")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes | None) -> None:
    payload = body or b""
    headers = [(b"content-length", str(len(payload)).encode())]
    if body is not None:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class GatewayHost:
    """Runs the gateway in this process on a pre-bound socket (port 0 = any free port)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.engine: AsyncEngine | None = None
        self.gateway: Gateway | None = None

    async def start(self) -> None:
        s = self.settings
        if s.migrate_on_start:
            await asyncio.to_thread(migrations.upgrade, s.database_url, Path(__file__).parent / "migrations", store.metadata)
        self.engine = create_engine(s.database_url, pool_size=5)
        self.gateway = Gateway(s, self.engine)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((s.http_host, s.http_port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.gateway,
            log_config=None,
            access_log=False,
            lifespan="on",
            http="httptools",
            loop="none",
            backlog=2048,
            # no proxy-header rewriting, no Server/Date headers: per-request work nobody reads
            proxy_headers=False,
            server_header=False,
            date_header=False,
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task
            await asyncio.sleep(0.01)
        if s.port_file:
            Path(s.port_file).write_text(str(self.port))
        log.info("gateway_started", port=self.port)

    async def wait(self) -> None:
        """Until the server exits (uvicorn stops itself on SIGINT/SIGTERM)."""
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        if self.engine is not None:
            await self.engine.dispose()
        log.info("gateway_stopped")


async def _serve(settings: GatewaySettings) -> None:
    host = GatewayHost(settings)
    await host.start()
    await host.wait()
    await host.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="accrue-gateway")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args(argv)
    settings = GatewaySettings()
    configure_logging("gateway", settings.log_level)
    if args.command == "migrate":
        migrations.upgrade(settings.database_url, Path(__file__).parent / "migrations", store.metadata)
        return
    configure_tracing("gateway", settings.otel_exporter_otlp_endpoint)
    run(_serve(settings))


if __name__ == "__main__":
    main()
