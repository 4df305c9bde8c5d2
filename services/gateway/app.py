"""The gateway: authenticates, transcodes REST+JSON to gRPC and maps errors back.

Business rules never live here. Routes come from the protos (transcoding.py), JSON from
protobuf's mapping (restjson.py), errors from google.rpc.Status (libs.infra.grpc_errors).

Besides the REST API it serves two things of its own that take no API key: the hosted
checkout pages (checkout/pages.py) and the processor webhooks (webhooks.py), both acting
for the merchant their path names and calling the payment service; they are not part of
the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncEngine
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from libs.core.errors import DomainError, ErrorCode, http_status
from libs.core.request_rules import is_idempotency_key
from libs.infra import grpc_client
from libs.infra.context import IDEMPOTENCY_METADATA_KEY
from libs.infra.grpc_errors import carried_error, decode_rpc_error
from libs.infra.logging import get_logger
from libs.infra.metrics import NO_ROUTE, ROUTE_SCOPE_KEY
from libs.infra.telemetry import extract_context, records_spans
from libs.infra.tls import channel_credentials
from libs.infra.tokens import SIGNING_KEY_ENV, TokenSigner
from services.gateway import restjson, webhooks
from services.gateway.auth import ApiKeys
from services.gateway.checkout import pages
from services.gateway.checkout.pages import CheckoutPages
from services.gateway.coalescing import Coalescer
from services.gateway.directory import MerchantDirectory, StoredMerchants
from services.gateway.inflight import InFlight
from services.gateway.inflight import Request as InFlightRequest
from services.gateway.openapi import build_openapi
from services.gateway.payments import GrpcPayment, PaymentBackend
from services.gateway.readiness import Readiness
from services.gateway.replies import (
    CATEGORY,
    ClientGone,
    HttpError,
    Receive,
    Reply,
    Send,
    check_json_media_type,
    error_body,
    error_reply,
    parse_json_object,
    read_body,
    respond,
    to_json,
)
from services.gateway.settings import GatewaySettings
from services.gateway.transcoding import Route, Router, build_routes

log = get_logger(__name__)
_tracer = trace.get_tracer("accrue.gateway")

Scope = dict[str, Any]

# where an internal caller exchanges an API key for a merchant token (libs/infra/tokens.py)
TOKENS_PATH = "/v0/internal/tokens"
# what a request's headers may hold (nginx's default buffers are 4 x 8 KiB)
MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024
# what a gRPC status without one of our reasons means to a REST caller (its own text names
# addresses and library internals, so it goes to the log, not to the client)
_PLAIN_STATUS: dict[ErrorCode, str] = {
    ErrorCode.CANCELLED: "the request was cancelled",
    ErrorCode.DEADLINE_EXCEEDED: "the {backend} service did not answer in time; retry the request",
    ErrorCode.RESOURCE_EXHAUSTED: "the {backend} service is out of capacity; retry the request later",
    ErrorCode.UNIMPLEMENTED: "{route} is not built yet",
    ErrorCode.UNAVAILABLE: "the {backend} service is unavailable; retry the request",
}


class KeyResolver(Protocol):
    """API key -> merchant (services/gateway/auth.py; tests pass a fake)."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def merchant_for(self, authorization: str | None) -> str | None: ...


def _own_error_body(metadata: Mapping[str, str]) -> dict[str, Any] | None:
    """A service may answer an error with the REST contract's own body for it (metadata
    ``body``: a JSON object), where Paygentic's is not the generic error envelope: a
    declined retryPayment is a RetryPaymentResponse whose ``error`` is an object."""
    raw = metadata.get("body")
    if not raw:
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class Gateway:
    """The ASGI application."""

    def __init__(
        self,
        settings: GatewaySettings,
        engine: AsyncEngine,
        *,
        keys: KeyResolver | None = None,
        merchants: MerchantDirectory | None = None,
        payment: PaymentBackend | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.keys: KeyResolver = keys if keys is not None else ApiKeys(settings, engine)
        # the routes without an API key (hosted checkout pages, processor webhooks) act for
        # the merchant their path names, which must be one this gateway's database knows
        self.merchants: MerchantDirectory = merchants if merchants is not None else StoredMerchants(engine)
        self._payment = payment
        self.checkout: CheckoutPages | None = None
        self.webhooks: webhooks.ProcessorWebhooks | None = None
        if not settings.token_signing_key:
            raise RuntimeError(f"{SIGNING_KEY_ENV} is not set: the gateway cannot prove its callers' merchant to the services")
        # one token per merchant, renewed at half its lifetime (libs/infra/tokens.py)
        self.tokens = TokenSigner.from_text(settings.token_signing_key, ttl_seconds=settings.token_ttl_seconds)
        self.router = Router(build_routes())
        self.openapi = json.dumps(build_openapi(self.router.routes)).encode()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable[Message, Message]] = {}
        self._coalescers: dict[str, Coalescer] = {}
        # the whole request (body, auth, backend call) fits in this; a gRPC deadline of
        # rpc_timeout_seconds fires first, so this only bounds what has no deadline of its own
        self._deadline = settings.rpc_timeout_seconds + 1.0
        self.inflight = InFlight(deadline=self._deadline, watch_after=settings.disconnect_watch_after_seconds)

    async def start(self) -> None:
        await self.keys.start()
        self.inflight.start()
        for route in self.router.routes:
            if route.backend not in self._channels:  # statuses are rendered here, not decoded into exceptions
                self._channels[route.backend] = grpc_client.channel(
                    self.settings.backend_address(route.backend),
                    timeout=self.settings.rpc_timeout_seconds,
                    decode_errors=False,
                    credentials=channel_credentials(self.settings),
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
                    route.coalesce,
                    route.batch_request_class,
                    route.batch_response_class,
                    batch_call,
                    timeout=self.settings.rpc_timeout_seconds,
                    max_in_flight=self.settings.coalesce_max_in_flight,
                )

        self._start_hosted()

    def _start_hosted(self) -> None:
        """The hosted checkout pages and processor webhooks: payment calls over the same
        channel (address, credentials, deadline) as the payment service's REST routes."""
        payment = self._payment
        if payment is None:
            if "payment" not in self._channels:
                self._channels["payment"] = grpc_client.channel(
                    self.settings.backend_address("payment"),
                    timeout=self.settings.rpc_timeout_seconds,
                    decode_errors=False,
                    credentials=channel_credentials(self.settings),
                )
            payment = GrpcPayment(self._channels["payment"], self.tokens, timeout=self.settings.rpc_timeout_seconds)
        self.checkout = CheckoutPages(payment, self.merchants)
        self.webhooks = webhooks.ProcessorWebhooks(payment, self.merchants)

    async def close(self) -> None:
        await self.inflight.close()
        await self.keys.close()
        for channel in self._channels.values():
            await channel.close(grace=None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        if method == "GET" and path == "/healthz":  # liveness: the process answers
            await respond(send, Reply(200, b'{"status":"ok"}'))
            return
        if method == "GET" and path == "/readyz":  # readiness: every backend is SERVING
            await respond(send, await self._readyz())
            return
        if method == "GET" and path == "/openapi.json":
            await respond(send, Reply(200, self.openapi))
            return
        if path == TOKENS_PATH:
            await respond(send, await self._exchange_token(method, scope["headers"]))
            return
        raw_headers = scope["headers"]
        if len(raw_headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in raw_headers) > MAX_HEADER_BYTES:
            await respond(send, error_reply(431, "HEADERS_TOO_LARGE", f"at most {MAX_HEADERS} headers of {MAX_HEADER_BYTES} bytes in all"))
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        if "traceparent" not in headers and not records_spans():
            # nothing records spans and no caller's trace is to be continued: a no-op span
            # would cost about a tenth of a meter event's CPU here for nothing
            reply = await self._serve(scope, receive, method, path, headers)
            if reply is not None:
                await respond(send, reply)
            return
        with _tracer.start_as_current_span(
            method, context=extract_context(headers), kind=SpanKind.SERVER, attributes={"http.request.method": method}
        ) as span:
            reply = await self._serve(scope, receive, method, path, headers)
            if reply is None:  # the client went away; nobody to answer
                span.set_attribute("http.client_disconnected", True)
                return
            span.set_attribute("http.response.status_code", reply.status)
            if reply.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            await respond(send, reply)

    async def _exchange_token(self, method: str, raw_headers: list[tuple[bytes, bytes]]) -> Reply:
        """POST /v0/internal/tokens: an API key (Authorization: Bearer <key>) for a merchant
        token, what an internal caller sends to the services' gRPC ports as
        ``authorization: Bearer <token>`` until ``expiresAt`` (renew at half its lifetime)."""
        if method != "POST":
            return error_reply(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {TOKENS_PATH}", headers=[(b"allow", b"POST")])
        authorization = next((v.decode("latin-1") for k, v in raw_headers if k.lower() == b"authorization"), None)
        merchant_id = await self.keys.merchant_for(authorization)
        if merchant_id is None:
            return error_reply(401, "UNAUTHENTICATED", "a valid API key is required: Authorization: Bearer <key>")
        token = self.tokens.mint(merchant_id)
        expires_at = datetime.fromtimestamp(token.expires_at, UTC).isoformat().replace("+00:00", "Z")
        body = {"token": token.value, "merchantId": merchant_id, "expiresAt": expires_at, "metadataKey": "authorization"}
        return Reply(201, to_json(body), [(b"cache-control", b"no-store")])

    _readiness: Readiness | None = None

    async def _readyz(self) -> Reply:
        """200 when every backend answers grpc.health.v1 SERVING (checked over this gateway's
        own channels, 0.5 s each, one result shared for 1 s), else 503 naming the down ones."""
        if self._readiness is None:
            self._readiness = Readiness(lambda: self._channels)
        verdict = await self._readiness.verdict()
        return Reply(200 if verdict.ready else 503, to_json(verdict.body()))

    async def _serve(self, scope: Scope, receive: Receive, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        """Every request gets an answer within its deadline, and a JSON one (a hosted page's
        is a page), whatever fails."""
        request = self.inflight.begin(receive)
        try:
            return await self._handle(scope, receive, method, path, headers, request)
        except asyncio.CancelledError:
            if not (request.expired or request.client_gone):
                raise
            request.task.uncancel()
            if request.client_gone:
                return None
            late = error_reply(504, "DEADLINE_EXCEEDED", f"the request did not complete within {self._deadline:g} seconds")
            return self._as_page(method, path, late)
        except HttpError as err:
            return err.reply
        except ClientGone:
            return None
        except Exception:
            log.exception("request_failed", method=method, path=path)
            failed = error_reply(500, "INTERNAL", "internal error; the request may be retried with the same Idempotency-Key")
            return self._as_page(method, path, failed)
        finally:
            self.inflight.end(request)

    def _as_page(self, method: str, path: str, reply: Reply) -> Reply:
        """A failure of a hosted checkout page is a page too (a browser shows it), not JSON."""
        if self.checkout is not None and method == "GET" and pages.route_template(path) == pages.PAGE:
            return self.checkout.failure_page(reply.status)
        return reply

    async def _handle(
        self, scope: Scope, receive: Receive, method: str, path: str, headers: dict[str, str], inflight: InFlightRequest
    ) -> Reply | None:
        if path.startswith((pages.PREFIX, webhooks.PREFIX)):
            return await self._hosted(scope, receive, method, path, headers)
        route, path_vars, allowed = self.router.match(method, path)
        scope[ROUTE_SCOPE_KEY] = route.template if route is not None else NO_ROUTE  # the metrics' route label (libs/infra/metrics.py)
        if route is not None:  # the span is named by the route's template (no raw ids), else by the method only
            trace.get_current_span().update_name(f"{method} {route.openapi_path}")
            if route.timeout_seconds > self.settings.rpc_timeout_seconds:  # a method allowed longer (timeout_seconds)
                inflight.deadline_at += route.timeout_seconds - self.settings.rpc_timeout_seconds
        if route is None:
            if allowed:
                allow = ", ".join(allowed).encode()
                return error_reply(405, "METHOD_NOT_ALLOWED", f"{method} is not allowed on {path}", headers=[(b"allow", allow)])
            return error_reply(404, "ROUTE_NOT_FOUND", f"no route for {method} {path}")
        merchant_id = await self.keys.merchant_for(headers.get("authorization"))
        if merchant_id is None:
            return error_reply(401, "UNAUTHENTICATED", "a valid API key is required: Authorization: Bearer <key>")
        idempotency_key = headers.get("idempotency-key")
        if idempotency_key is not None and not is_idempotency_key(idempotency_key):
            return error_reply(
                400,
                "INVALID_IDEMPOTENCY_KEY",
                "Idempotency-Key must be 1 to 255 printable ASCII characters (no tabs, no control or non-ASCII characters)",
                "Idempotency-Key",
            )
        try:
            request = await self._build_request(route, scope, receive, path_vars, headers)
        except DomainError as err:
            return Reply(400, to_json(error_body(400, err.message, "bad_request", err.reason, err.metadata)))
        metadata: list[tuple[str, str]] = [self.tokens.token_for(merchant_id).metadata()]
        if idempotency_key:
            metadata.append((IDEMPOTENCY_METADATA_KEY, idempotency_key))
        inflight.body_read = True  # from here a disconnect can be watched for (services/gateway/inflight.py)
        return await self._call(route, request, metadata, merchant_id, coalesce=not idempotency_key)

    async def _hosted(self, scope: Scope, receive: Receive, method: str, path: str, headers: dict[str, str]) -> Reply:
        """The hosted checkout pages and processor webhooks: no API key (the session id and
        the processor's signature are the capabilities), the same header limits, deadline,
        trace and metrics as every route. Their body is read whole and their call is not
        cancelled when the client leaves (``body_read`` stays False): a charge or a webhook
        the payment service has started is better finished than abandoned."""
        assert self.checkout is not None and self.webhooks is not None, "the gateway is not started"
        if path.startswith(webhooks.PREFIX):
            template = webhooks.TEMPLATE if webhooks.match(path) is not None else NO_ROUTE
        else:
            template = pages.route_template(path) or NO_ROUTE
        scope[ROUTE_SCOPE_KEY] = template
        if template != NO_ROUTE:
            trace.get_current_span().update_name(f"{method} {template}")
        if path.startswith(webhooks.PREFIX):
            return await self.webhooks.handle(method, path, scope["headers"], headers, receive)
        return await self.checkout.handle(method, path, scope.get("query_string", b""), headers, receive)

    async def _call(self, route: Route, request: Message, metadata: list[tuple[str, str]], merchant_id: str, *, coalesce: bool) -> Reply:
        coalescer = self._coalescers.get(route.grpc_path) if coalesce else None
        try:
            if coalescer is not None:
                outcome = await coalescer.submit(metadata, merchant_id, request)
                if outcome.response is None:
                    details = outcome.details if outcome.details is not None else ({"field": outcome.field} if outcome.field else None)
                    category = CATEGORY.get(outcome.http_status, "error")
                    return Reply(
                        outcome.http_status, to_json(error_body(outcome.http_status, outcome.message, category, outcome.code, details))
                    )
                response = outcome.response
            else:
                timeout = max(route.timeout_seconds, self.settings.rpc_timeout_seconds)
                response = await self._calls[route.grpc_path](request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return self._rpc_error_reply(route, exc)
        if route.success_code == 204:
            return Reply(204, None)
        status = route.success_code
        if route.created_field and not getattr(response, route.created_field):
            status = 200  # the resource already existed
        return Reply(status, to_json(restjson.message_to_json(response)))

    def _rpc_error_reply(self, route: Route, exc: grpc.aio.AioRpcError) -> Reply:
        err = carried_error(exc)
        if err is not None:
            status = http_status(err.code, err.reason)
            own = _own_error_body(err.metadata)
            if own is not None:  # the contract's own body for this error (retryPayment's RetryPaymentResponse)
                return Reply(status, to_json(own))
            return Reply(status, to_json(error_body(status, err.message, CATEGORY.get(status, "error"), err.reason, err.metadata)))
        # not one of our domain errors: gRPC's own text (addresses, library internals) is for the log
        plain = decode_rpc_error(exc)
        log.warning("backend_error", backend=route.backend, method=route.method.name, code=plain.reason, detail=plain.message)
        status = http_status(plain.code)
        template = _PLAIN_STATUS.get(plain.code, "internal error in the {backend} service")
        message = template.format(backend=route.backend, route=f"{route.http_method} {route.openapi_path}")
        return Reply(status, to_json(error_body(status, message, CATEGORY.get(status, "error"), plain.reason)))

    async def _build_request(
        self, route: Route, scope: Scope, receive: Receive, path_vars: dict[str, str], headers: dict[str, str]
    ) -> Message:
        request = route.request_class()
        descriptor: Descriptor = request.DESCRIPTOR  # type: ignore[assignment]
        payload: dict[str, Any] = {}
        body_fields: list[str] = []
        if route.body:
            raw = await read_body(receive, headers)
            # no body at all is an empty request; whitespace alone is not JSON (400)
            if raw:
                check_json_media_type(headers.get("content-type"))
                payload = parse_json_object(raw)
            body_fields = restjson.mask_paths(descriptor, payload)
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if query and not route.body:
            payload = restjson.query_to_json(descriptor, query)
        for name, value in path_vars.items():
            field_descriptor = descriptor.fields_by_name[name]
            payload[field_descriptor.json_name] = value
            payload.pop(name, None) if name != field_descriptor.json_name else None
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


class JsonErrorsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, but a request the HTTP parser refuses (a control
    character in a header, a malformed request line) gets the JSON error body too."""

    def send_400_response(self, msg: str) -> None:
        body = to_json(error_body(400, "the HTTP request is malformed (invalid request line or header)", "bad_request", "MALFORMED_HTTP"))
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        self.transport.close()
