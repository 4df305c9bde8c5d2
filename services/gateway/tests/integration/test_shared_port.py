"""Several gateway processes on one port (ACCRUE_HTTP_REUSE_PORT, what the runner's
gateway_processes uses): both serve, and the kernel gives connections to each; without
the setting a second gateway on a taken port fails to start instead of sharing it."""

from __future__ import annotations

import httpx
import pytest

from libs.infra.embedded import free_port
from libs.testing.fixtures import Infra
from services.gateway.host import GatewayHost
from services.gateway.settings import GatewaySettings

pytestmark = pytest.mark.integration


def _settings(infra: Infra, port: int, *, reuse: bool) -> GatewaySettings:
    return GatewaySettings(database_url=infra.new_database_url("shared_port_gateway"), http_port=port, http_reuse_port=reuse)


async def test_two_gateways_share_one_port_and_each_gets_connections(infra: Infra) -> None:
    port = free_port()
    first, second = GatewayHost(_settings(infra, port, reuse=True)), GatewayHost(_settings(infra, port, reuse=True))
    await first.start()
    try:
        await second.start()
        try:
            assert first.port == second.port == port
            served: set[int] = set()
            for _ in range(64):  # a new connection each time: SO_REUSEPORT hashes connections
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    assert (await client.get("/healthz")).status_code == 200
                served = {id(host) for host in (first, second) if _requests(host) > 0}
                if len(served) == 2:
                    break
            assert len(served) == 2, "every connection went to one gateway"
        finally:
            await second.stop()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:  # the other one still serves
            assert (await client.get("/healthz")).status_code == 200
    finally:
        await first.stop()


async def test_without_the_setting_a_taken_port_is_an_error(infra: Infra) -> None:
    port = free_port()
    first = GatewayHost(_settings(infra, port, reuse=False))
    await first.start()
    try:
        with pytest.raises(OSError):
            await GatewayHost(_settings(infra, port, reuse=False)).start()
    finally:
        await first.stop()


def _requests(host: GatewayHost) -> int:
    """Requests this host's HTTP server has answered (uvicorn counts them per server)."""
    server = host._http
    return 0 if server is None else server.server_state.total_requests
