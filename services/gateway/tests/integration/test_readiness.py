"""The gateway's /readyz against real gRPC health servers: ready only while every backend
answers SERVING, 503 naming the one that is down (a dead port, a NOT_SERVING service),
one round of checks shared within the cache window; /healthz stays liveness."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from libs.infra.embedded import free_port
from services.gateway.app import Gateway
from services.gateway.readiness import Readiness
from services.gateway.settings import GatewaySettings

pytestmark = pytest.mark.integration

BACKENDS = ("catalog", "subscription", "metering", "invoicing", "payment", "entitlement")


class NoKeys:
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def merchant_for(self, authorization: str | None) -> str | None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def health_server() -> AsyncIterator[tuple[str, health.HealthServicer]]:
    server = grpc.aio.server()
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    yield f"127.0.0.1:{port}", servicer
    await server.stop(None)


async def _gateway(addrs: dict[str, str]) -> Gateway:
    settings = GatewaySettings(rpc_timeout_seconds=0.5, backend_addrs=addrs)
    app = Gateway(settings, None, keys=NoKeys())  # type: ignore[arg-type]
    await app.start()
    return app


async def _get(app: Gateway, path: str) -> tuple[int, Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": b"", "headers": []}
    await app(scope, receive, send)
    start, body = sent
    return int(start["status"]), json.loads(body["body"])


async def test_ready_while_every_backend_serves_and_503_naming_a_dead_one(health_server: tuple[str, Any]) -> None:
    live, _ = health_server
    app = await _gateway(dict.fromkeys(BACKENDS, live))
    try:
        status, body = await _get(app, "/readyz")
        assert status == 200, body
        assert body == {"status": "ready", "backends": dict.fromkeys(BACKENDS, "SERVING")}
    finally:
        await app.close()

    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    app = await _gateway({**dict.fromkeys(BACKENDS, live), "payment": dead})
    try:
        status, body = await asyncio.wait_for(_get(app, "/readyz"), 3)  # bounded by the 0.5 s check timeout
        assert status == 503
        assert body["status"] == "unavailable"
        assert body["backends"]["payment"] == "UNAVAILABLE"
        assert {name for name, state in body["backends"].items() if state != "SERVING"} == {"payment"}
        assert await _get(app, "/healthz") == (200, {"status": "ok"})  # liveness does not follow the backends
    finally:
        await app.close()


async def test_a_not_serving_backend_makes_it_unready_after_the_cache_window(health_server: tuple[str, Any]) -> None:
    live, servicer = health_server
    app = await _gateway(dict.fromkeys(BACKENDS, live))
    clock = Clock()
    app._readiness = Readiness(lambda: app._channels, ttl=1.0, clock=clock)
    try:
        assert (await _get(app, "/readyz"))[0] == 200
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # e.g. a service draining on SIGTERM
        clock.now = 0.5
        assert (await _get(app, "/readyz"))[0] == 200  # the shared result of the last round
        clock.now = 1.5
        status, body = await _get(app, "/readyz")
        assert status == 503
        assert set(body["backends"].values()) == {"NOT_SERVING"}
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        clock.now = 3.0
        assert (await _get(app, "/readyz"))[0] == 200  # back once it serves again
    finally:
        await app.close()
