"""The sandbox processor's HTTP API, a small ASGI app: it parses and checks requests,
authenticates them, calls the use cases (processor.py) and renders their JSON (views.py).

    POST /v1/tokens                 publishable key; CORS open (the browser calls it)
    POST /v1/payment_methods        {token, customer}
    POST /v1/charges                Idempotency-Key; {amount, currency, token | paymentMethod,
                                    offSession, metadata, webhookUrl}
    GET  /v1/charges?idempotencyKey=K   {data: [charge]} (0 or 1)
    GET  /v1/charges/{id}
    POST /v1/refunds                Idempotency-Key; {charge, amount}
    GET  /v1/_sandbox/charges[?metadataKey=&metadataValue=]   every charge (test-only records)
    GET  /v1/_sandbox/refunds[?charge=]
    GET  /v1/_sandbox/webhooks[?objectId=]                     every delivery of every event
    POST /v1/_sandbox/events/{id}/redeliver                    one more delivery, now
    GET  /healthz, /readyz

Server calls carry ``Authorization: Bearer <secret key>``; ``Sandbox-Account`` names the
processor account acting (the adapter sends the merchant id; default ``default``).
Errors are ``{"error": {"code", "message", "param"}}``. Nothing here logs a request body:
a card number passes through ``/v1/tokens`` only, into ``cards.read_card``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from libs.infra.logging import get_logger
from libs.infra.metrics import ROUTE_SCOPE_KEY
from services.sandbox import views
from services.sandbox.processor import ChargeRequest, Sandbox, SandboxError

log = get_logger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024
MAX_AMOUNT = 99_999_999
MAX_METADATA_KEYS = 50
CORS_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"POST, OPTIONS"),
    (b"access-control-allow-headers", b"authorization, content-type"),
    (b"access-control-max-age", b"600"),
]
_PRINTABLE = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,254}$")
_CURRENCY = re.compile(r"^[A-Za-z]{3}$")


@dataclass
class Reply:
    status: int
    body: Any
    headers: list[tuple[bytes, bytes]] | None = None


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            value = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise SandboxError(400, "invalid_request", "the body is not JSON") from None
        if not isinstance(value, dict):
            raise SandboxError(400, "invalid_request", "the body must be a JSON object")
        return value

    @property
    def account(self) -> str:
        account = self.headers.get("sandbox-account", "default")
        if not _PRINTABLE.match(account):
            raise SandboxError(400, "parameter_invalid", "Sandbox-Account must be 1-255 printable characters", "Sandbox-Account")
        return account

    def idempotency_key(self) -> str:
        key = self.headers.get("idempotency-key")
        if key is None:
            raise SandboxError(400, "parameter_missing", "an Idempotency-Key header is required", "Idempotency-Key")
        if not _PRINTABLE.match(key):
            raise SandboxError(400, "parameter_invalid", "Idempotency-Key must be 1-255 printable ASCII characters", "Idempotency-Key")
        return key


def error(status: int, code: str, message: str, param: str | None = None, headers: list[tuple[bytes, bytes]] | None = None) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message, "param": param}}, headers)


class SandboxApp:
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        settings = sandbox.settings
        self._secret = settings.sandbox_secret_key.encode()
        self._publishable = settings.sandbox_publishable_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        reply = await self._serve(scope, receive)
        await _respond(send, reply)

    async def _serve(self, scope: Scope, receive: Receive) -> Reply:
        path: str = scope["path"]
        method: str = scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        tokens = path == "/v1/tokens"
        try:
            body = await _read_body(receive, headers)
            request = Request(method, path, dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))), headers, body)
            reply = await self._route(scope, request)
        except SandboxError as err:
            reply = error(err.status, err.code, err.message, err.param)
        except Exception:
            log.exception("sandbox_request_failed", route=scope.get(ROUTE_SCOPE_KEY))
            reply = error(500, "api_error", "the sandbox processor failed; try again")
        if tokens:
            reply.headers = [*(reply.headers or []), *CORS_HEADERS]
        return reply

    async def _route(self, scope: Scope, request: Request) -> Reply:
        method, path = request.method, request.path
        parts = path.strip("/").split("/")

        def route(template: str, *allowed: str) -> None:
            scope[ROUTE_SCOPE_KEY] = template
            if method not in allowed:
                raise _MethodNotAllowed(allowed)

        try:
            if path == "/healthz":
                route(path, "GET")
                return Reply(200, {"status": "ok"})
            if path == "/readyz":
                route(path, "GET")
                try:
                    await self.sandbox.ready()
                except Exception:
                    return Reply(503, {"status": "unavailable", "reason": "the database does not answer"})
                return Reply(200, {"status": "ok"})
            if path == "/v1/tokens":
                route(path, "POST", "OPTIONS")
                if method == "OPTIONS":
                    return Reply(204, None)
                return await self._tokenize(request)
            if parts[:1] != ["v1"]:
                return error(404, "not_found", f"no route {path}")
            self._authenticate_secret(request)
            if path == "/v1/payment_methods":
                route(path, "POST")
                return await self._save_method(request)
            if path == "/v1/charges":
                route(path, "GET", "POST")
                return await (self._charge(request) if method == "POST" else self._find(request))
            if len(parts) == 3 and parts[1] == "charges":
                route("/v1/charges/{id}", "GET")
                found = await self.sandbox.get_charge(parts[2])
                if found is None or found["account"] != request.account:
                    return error(404, "resource_missing", "there is no such charge", "id")
                return Reply(200, views.charge(found))
            if path == "/v1/refunds":
                route(path, "POST")
                return await self._refund(request)
            if path == "/v1/_sandbox/charges":
                route(path, "GET")
                rows = await self.sandbox.all_charges(request.query.get("metadataKey"), request.query.get("metadataValue"))
                return Reply(200, {"data": [views.charge(row) for row in rows]})
            if path == "/v1/_sandbox/refunds":
                route(path, "GET")
                return Reply(200, {"data": [views.refund(row) for row in await self.sandbox.all_refunds(request.query.get("charge"))]})
            if path == "/v1/_sandbox/webhooks":
                route(path, "GET")
                rows = await self.sandbox.all_deliveries(request.query.get("objectId"))
                return Reply(200, {"data": [views.delivery(row) for row in rows]})
            if len(parts) == 5 and parts[1:3] == ["_sandbox", "events"] and parts[4] == "redeliver":
                route("/v1/_sandbox/events/{id}/redeliver", "POST")
                return Reply(202, views.delivery(await self.sandbox.redeliver(parts[3])))
        except _MethodNotAllowed as err:
            return error(
                405, "method_not_allowed", f"{method} is not allowed on {path}", headers=[(b"allow", ", ".join(err.allowed).encode())]
            )
        return error(404, "not_found", f"no route {path}")

    # --- authentication -------------------------------------------------------------

    def _authenticate_secret(self, request: Request) -> None:
        if not hmac.compare_digest(_bearer(request.headers).encode(), self._secret):
            raise SandboxError(401, "invalid_api_key", "a valid secret key is required: Authorization: Bearer <secret key>")

    def _authenticate_publishable(self, request: Request, body: dict[str, Any]) -> None:
        given = body.get("publishableKey")
        key = given if isinstance(given, str) else _bearer(request.headers)
        if not hmac.compare_digest(key.encode(), self._publishable):
            raise SandboxError(401, "invalid_api_key", "a valid publishable key is required (publishableKey)", "publishableKey")

    # --- endpoints ------------------------------------------------------------------

    async def _tokenize(self, request: Request) -> Reply:
        body = request.json()
        self._authenticate_publishable(request, body)
        try:
            row = await self.sandbox.tokenize(body.pop("number", None), body.get("expMonth"), body.get("expYear"), body.pop("cvc", None))
        except SandboxError:
            raise
        except Exception as exc:  # no traceback: its frames hold the card
            log.error("sandbox_tokenize_failed", error=type(exc).__name__)
            raise SandboxError(500, "api_error", "the sandbox processor failed; try again") from None
        return Reply(200, views.token(row))

    async def _save_method(self, request: Request) -> Reply:
        body = request.json()
        row = await self.sandbox.save_method(_string(body, "token"), _string(body, "customer"))
        return Reply(200, views.payment_method(row))

    async def _charge(self, request: Request) -> Reply:
        key = request.idempotency_key()
        body = request.json()
        amount = body.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
            raise SandboxError(400, "parameter_invalid", f"amount must be an integer of minor units, 1-{MAX_AMOUNT}", "amount")
        currency = body.get("currency")
        if not isinstance(currency, str) or not _CURRENCY.match(currency):
            raise SandboxError(400, "parameter_invalid", "currency must be a three-letter ISO 4217 code", "currency")
        token, method = _optional_string(body, "token"), _optional_string(body, "paymentMethod")
        if (token is None) == (method is None):
            raise SandboxError(400, "parameter_invalid", "exactly one of token and paymentMethod is required", "token")
        off_session = body.get("offSession", False)
        if not isinstance(off_session, bool):
            raise SandboxError(400, "parameter_invalid", "offSession must be true or false", "offSession")
        charge = ChargeRequest(
            account=request.account,
            idempotency_key=key,
            amount=amount,
            currency=currency.upper(),
            token=token,
            payment_method=method,
            off_session=off_session,
            metadata=_metadata(body.get("metadata")),
            webhook_url=_webhook_url(body.get("webhookUrl")),
        )
        row, replayed = await self.sandbox.charge(charge)
        return Reply(200, views.charge(row), [(b"idempotent-replayed", b"true")] if replayed else None)

    async def _find(self, request: Request) -> Reply:
        key = request.query.get("idempotencyKey")
        if not key:
            raise SandboxError(400, "parameter_missing", "idempotencyKey is required", "idempotencyKey")
        found = await self.sandbox.find_by_key(request.account, key)
        return Reply(200, {"data": [] if found is None else [views.charge(found)]})

    async def _refund(self, request: Request) -> Reply:
        key = request.idempotency_key()
        body = request.json()
        amount = body.get("amount")
        if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0):
            raise SandboxError(400, "parameter_invalid", "amount must be a positive integer of minor units", "amount")
        row, replayed = await self.sandbox.refund(request.account, key, _string(body, "charge"), amount)
        return Reply(200, views.refund(row), [(b"idempotent-replayed", b"true")] if replayed else None)


class _MethodNotAllowed(Exception):
    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = allowed


def _bearer(headers: dict[str, str]) -> str:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise SandboxError(400, "parameter_missing", f"{name} is required", name)
    if not isinstance(value, str) or not _PRINTABLE.match(value):
        raise SandboxError(400, "parameter_invalid", f"{name} must be 1-255 printable characters", name)
    return value


def _optional_string(body: dict[str, Any], name: str) -> str | None:
    return None if body.get(name) is None else _string(body, name)


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS:
        raise SandboxError(400, "parameter_invalid", f"metadata must be an object of at most {MAX_METADATA_KEYS} strings", "metadata")
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > 40 or len(item) > 500:
            raise SandboxError(400, "parameter_invalid", "metadata values are strings of at most 500 characters", f"metadata.{key}")
    return dict(value)


def _webhook_url(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= 2000:
        parts = urlsplit(value)
        if parts.scheme in ("http", "https") and parts.netloc:
            return value
    raise SandboxError(400, "parameter_invalid", "webhookUrl must be an http(s) URL", "webhookUrl")


async def _read_body(receive: Receive, headers: dict[str, str]) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise SandboxError(413, "body_too_large", f"the body is larger than {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise SandboxError(413, "body_too_large", f"the body is larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(send: Send, reply: Reply) -> None:
    body = b"" if reply.body is None else orjson.dumps(reply.body)
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store"), *(reply.headers or [])]
    if reply.status != 204:
        headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body if reply.status != 204 else b""})
