"""The sandbox processor in-process (its real host: migrations, uvicorn, the deliveries
worker) on a fresh database of the session's PostgreSQL, the payment service's adapter
pointed at it, and a webhook receiver that records what arrives."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from libs.infra.service import Host
from libs.testing.fixtures import StartHost
from services.payment.processors.sandbox import SandboxProcessor, SandboxProcessorSettings
from services.sandbox.app import DEFINITION

SECRET = "sk_test_integration_secret"
PUBLISHABLE = "pk_test_integration_publishable"
WEBHOOK_SECRET = "whsec_aW50ZWdyYXRpb24tdGVzdC13ZWJob29rLXNlY3JldA=="

# quick, deterministic by default: no duplicates, no reordering, a short slow card
QUIET: dict[str, Any] = {
    "sandbox_secret_key": SECRET,
    "sandbox_publishable_key": PUBLISHABLE,
    "sandbox_webhook_secret": WEBHOOK_SECRET,
    "sandbox_slow_seconds": 1.5,
    "sandbox_webhook_min_delay_ms": 5,
    "sandbox_webhook_max_delay_ms": 50,
    "sandbox_webhook_duplicate_rate": 0.0,
    "sandbox_webhook_reorder_rate": 0.0,
    "sandbox_webhook_first_retry_seconds": 0.1,
}


@dataclass
class Sandbox:
    host: Host
    url: str
    database_url: str
    client: httpx.AsyncClient  # authenticated with the secret key

    def adapter(self, timeout: float = 5.0, **settings: Any) -> SandboxProcessor:
        values = {"url": self.url, "secret_key": SECRET, "publishable_key": PUBLISHABLE, "webhook_secret": WEBHOOK_SECRET}
        return SandboxProcessor(SandboxProcessorSettings(**{**values, "timeout_seconds": timeout, **settings}))

    async def token(self, number: str = "4242 4242 4242 4242", cvc: str = "123") -> str:
        response = await self.client.post(
            "/v1/tokens", json={"publishableKey": PUBLISHABLE, "number": number, "expMonth": 12, "expYear": 2034, "cvc": cvc}
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["id"]
        return token

    async def records(self, what: str, **params: str) -> list[dict[str, Any]]:
        response = await self.client.get(f"/v1/_sandbox/{what}", params=params)
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data


StartSandbox = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
async def start_sandbox(start_host: StartHost) -> AsyncIterator[StartSandbox]:
    clients: list[httpx.AsyncClient] = []

    async def start(**settings: Any) -> Sandbox:
        host = await start_host(DEFINITION, **{**QUIET, **settings})
        url = f"http://127.0.0.1:{host.port}"
        client = httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {SECRET}"}, timeout=30)
        clients.append(client)
        return Sandbox(host, url, host.settings.database_url, client)

    yield start
    for client in clients:
        await client.aclose()


@pytest.fixture
async def sandbox(start_sandbox: StartSandbox) -> Sandbox:
    return await start_sandbox()


@dataclass
class Receiver:
    """An HTTP endpoint that records every request; the first ``fail_first`` get a 500."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail_first: int = 0
    answered: list[int] = field(default_factory=list)

    async def app(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status = 500 if len(self.answered) < self.fail_first else 200
        self.answered.append(status)
        if status == 200:
            self.received.append((headers, body))
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})

    async def wait_for(self, count: int, timeout: float = 10) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"{len(self.received)} of {count} webhooks arrived"
            await asyncio.sleep(0.02)
        return self.received


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    found.url = f"http://127.0.0.1:{sock.getsockname()[1]}/webhooks/processors/sandbox/org_test"
    server = uvicorn.Server(uvicorn.Config(found.app, log_config=None, access_log=False, lifespan="off", loop="none", interface="asgi3"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield found
    server.should_exit = True
    with contextlib.suppress(Exception):
        await task


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout}s"
        await asyncio.sleep(0.05)
