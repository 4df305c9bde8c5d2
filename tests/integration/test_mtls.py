"""Optional mutual TLS (libs/infra/tls.py): a service with a certificate and a CA serves
TLS only and requires a client certificate that CA signed; channel() presents one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.core.errors import Unavailable
from libs.infra import grpc_client
from libs.infra.grpc_server import GrpcServer
from libs.infra.settings import ServiceSettings
from libs.infra.tls import LocalCa, channel_credentials, make_local_ca

pytestmark = pytest.mark.integration


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[int, LocalCa]]:
    ca = make_local_ca(tmp_path / "tls")
    settings = ServiceSettings(tls_cert=str(ca.cert), tls_key=str(ca.key), tls_ca=str(ca.ca))
    server = GrpcServer(["accrue.test.v1.Nothing"], "127.0.0.1", 0, settings=settings)
    await server.start()
    yield server.port, ca
    await server.stop(0)


def _check(channel: grpc.aio.Channel) -> object:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)


async def test_a_client_with_a_certificate_of_the_ca_is_served(tls_server: tuple[int, LocalCa]) -> None:
    port, ca = tls_server
    settings = ServiceSettings(tls_cert=str(ca.cert), tls_key=str(ca.key), tls_ca=str(ca.ca))
    async with grpc_client.channel(f"127.0.0.1:{port}", credentials=channel_credentials(settings)) as channel:
        answer = await _check(channel)  # type: ignore[misc]
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_plaintext_and_a_client_without_a_certificate_are_refused(tls_server: tuple[int, LocalCa]) -> None:
    port, ca = tls_server
    async with grpc_client.channel(f"127.0.0.1:{port}", credentials=grpc.local_channel_credentials()) as channel:
        with pytest.raises(Unavailable):
            await _check(channel)  # type: ignore[misc]
    no_cert = grpc.ssl_channel_credentials(root_certificates=ca.ca.read_bytes())
    async with grpc_client.channel(f"127.0.0.1:{port}", credentials=no_cert) as channel:
        with pytest.raises(Unavailable):
            await _check(channel)  # type: ignore[misc]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _check(plain)  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_one_channel_to_several_tls_servers_checks_each_certificate_and_reaches_both(tmp_path: Path) -> None:
    """Several processes of a service (libs/infra/runner.Mesh.service_target): one
    ``ipv4:`` target of all of them, balanced per call, each verified by its certificate."""
    ca = make_local_ca(tmp_path / "tls")
    settings = ServiceSettings(tls_cert=str(ca.cert), tls_key=str(ca.key), tls_ca=str(ca.ca))
    servers = [GrpcServer(["accrue.test.v1.Nothing"], "127.0.0.1", 0, settings=settings) for _ in range(2)]
    for server in servers:
        await server.start()
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server in servers)
        async with grpc_client.channel(target, credentials=channel_credentials(settings)) as channel:
            for _ in range(6):
                answer = await _check(channel)  # type: ignore[misc]
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
        await servers[0].stop(0)
        async with grpc_client.channel(target, credentials=channel_credentials(settings)) as channel:
            answer = await _check(channel)  # type: ignore[misc]  # the one still up
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        for server in servers:
            await server.stop(0)
