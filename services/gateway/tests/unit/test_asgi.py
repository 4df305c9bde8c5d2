"""The gateway's ASGI app in-process, with a fake key resolver and fake backends: every
request gets a JSON answer within its deadline, and a request whose client went away
stops holding its backend call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from libs.infra.context import IDEMPOTENCY_METADATA_KEY
from libs.infra.embedded import free_port
from services.gateway.app import Gateway
from services.gateway.settings import GatewaySettings

MERCHANT = "org_test"
AUTH = ("authorization", "Bearer sk_test_good")


class FakeKeys:
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def merchant_for(self, authorization: str | None) -> str | None:
        return MERCHANT if authorization == AUTH[1] else None


class Client:
    """Drives the ASGI app as uvicorn would; ``leave`` makes the client disconnect."""

    def __init__(self, app: Gateway) -> None:
        self.app = app
        self.left = asyncio.Event()

    async def request(
        self, method: str, path: str, *, body: bytes = b"", headers: list[tuple[str, str]] | None = None, query: bytes = b""
    ) -> tuple[int | None, dict[str, str], Any]:
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop(0)
            await self.left.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "query_string": query,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers if headers is not None else [AUTH])],
        }
        await self.app(scope, receive, send)
        if not sent:
            return None, {}, None
        start, body_message = sent
        response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
        payload = body_message["body"]
        return start["status"], response_headers, json.loads(payload) if payload else None


@pytest.fixture
async def gateway() -> Any:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: a real channel answers UNAVAILABLE
    settings = GatewaySettings(
        rpc_timeout_seconds=0.5,
        disconnect_watch_after_seconds=0.05,
        backend_addrs={name: dead for name in ("catalog", "subscription", "metering", "invoicing", "payment", "entitlement")},
    )
    app = Gateway(settings, None, keys=FakeKeys())  # type: ignore[arg-type]
    await app.start()
    yield app
    await app.close()


def _replace_call(app: Gateway, rpc: str, call: Callable[..., Awaitable[Any]]) -> None:
    (path,) = [p for p in app._calls if p.endswith("/" + rpc)]
    app._calls[path] = call


async def test_a_backend_that_never_answers_gets_a_json_504_at_the_deadline(gateway: Gateway) -> None:
    async def never(request: Any, **_: Any) -> Any:
        await asyncio.Event().wait()

    _replace_call(gateway, "ListProducts", never)
    status, headers, body = await asyncio.wait_for(Client(gateway).request("GET", "/v0/products"), 5)
    assert status == 504 and headers["content-type"] == "application/json"
    assert body["code"] == "DEADLINE_EXCEEDED"


async def test_a_client_that_leaves_cancels_its_backend_call(gateway: Gateway) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow(request: Any, **_: Any) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    _replace_call(gateway, "ListProducts", slow)
    client = Client(gateway)
    request = asyncio.create_task(client.request("GET", "/v0/products"))
    await asyncio.wait_for(started.wait(), 5)
    client.left.set()
    status, _, _ = await asyncio.wait_for(request, 0.5)  # well before the 1.5 s deadline
    assert status is None  # nobody to answer
    assert cancelled.is_set()


async def test_an_unexpected_error_is_the_json_500_body(gateway: Gateway) -> None:
    async def broken(request: Any, **_: Any) -> Any:
        raise AttributeError("boom inside the gateway")

    _replace_call(gateway, "ListProducts", broken)
    status, headers, body = await Client(gateway).request("GET", "/v0/products")
    assert status == 500 and headers["content-type"] == "application/json"
    assert body["code"] == "INTERNAL" and "boom" not in body["message"]


async def test_unavailable_backend_names_the_service_not_its_address(gateway: Gateway) -> None:
    status, _, body = await Client(gateway).request("GET", "/v0/products")
    assert status == 503 and body["code"] == "UNAVAILABLE"
    assert body["message"] == "the catalog service is unavailable; retry the request"
    assert "127.0.0.1" not in json.dumps(body)


@pytest.mark.parametrize("key", ["caf\u00e9", "a\tb", "x" * 256, "line\x7fdel"])
async def test_an_idempotency_key_grpc_cannot_carry_is_a_400_naming_the_header(gateway: Gateway, key: str) -> None:
    for method, path in [("GET", "/v0/products"), ("POST", "/v0/products"), ("PATCH", "/v0/products/prod_1"), ("POST", "/v0/events")]:
        status, _, body = await asyncio.wait_for(
            Client(gateway).request(method, path, body=b"{}", headers=[AUTH, ("idempotency-key", key)]), 2
        )
        assert status == 400, (method, path, body)
        assert body["code"] == "INVALID_IDEMPOTENCY_KEY" and body["details"]["field"] == "Idempotency-Key"


async def test_longest_printable_idempotency_key_reaches_the_backend(gateway: Gateway) -> None:
    seen: list[Any] = []

    async def record(request: Any, *, metadata: Any, **_: Any) -> Any:
        seen.append(dict(metadata))
        raise grpc.aio.AioRpcError(grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), details="gone")

    _replace_call(gateway, "GetProduct", record)
    key = "k" * 254 + "~"
    status, _, _ = await Client(gateway).request("GET", "/v0/products/prod_1", headers=[AUTH, ("idempotency-key", key)])
    assert status == 404
    assert seen[0][IDEMPOTENCY_METADATA_KEY] == key


async def test_http_semantics(gateway: Gateway) -> None:
    client = Client(gateway)
    status, headers, body = await client.request("DELETE", "/v0/products")
    assert status == 405 and headers["allow"] == "GET, POST" and body["code"] == "METHOD_NOT_ALLOWED"
    status, _, body = await client.request("POST", "/v0/products", body=b'{"name":"x"}', headers=[AUTH, ("content-type", "text/plain")])
    assert status == 415 and body["details"]["field"] == "Content-Type"
    status, _, body = await client.request("POST", "/v0/products", body=b"{" + b" " * (1 << 20) + b"}", headers=[AUTH])
    assert status == 413 and body["code"] == "BODY_TOO_LARGE"
    status, _, body = await client.request("POST", "/v0/products", body=b"{}", headers=[AUTH, ("content-length", str(2 << 20))])
    assert status == 413
    status, _, body = await client.request("GET", "/v0/products", headers=[])
    assert status == 401 and body["error"] == "unauthorized"


async def test_too_many_or_too_large_headers_are_431(gateway: Gateway) -> None:
    client = Client(gateway)
    status, _, body = await client.request("GET", "/v0/products", headers=[AUTH, *[(f"x-h{i}", "v") for i in range(101)]])
    assert status == 431 and body["code"] == "HEADERS_TOO_LARGE"
    status, _, _ = await client.request("GET", "/v0/products", headers=[AUTH, ("x-big", "v" * 40_000)])
    assert status == 431
