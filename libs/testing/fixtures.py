"""pytest plugin: real PostgreSQL and NATS on loopback, the whole mesh, SDK clients.

Loaded for every test run (pyproject: ``-p libs.testing.fixtures``). The servers start
once per session, the same way ``make run`` starts them, on free ports.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from libs.infra.runner import Mesh


@dataclass
class Infra:
    """The session's real servers; tests create their own databases on the PostgreSQL."""

    mesh: Mesh

    @property
    def nats_url(self) -> str:
        return self.mesh.nats_url

    def new_database_url(self, prefix: str = "test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        assert self.mesh.pg is not None
        return self.mesh.pg.create_database(name)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("accrue")


@pytest.fixture(scope="session")
def infra_mesh(state_dir: Path) -> Iterator[Mesh]:
    """Real PostgreSQL (fsync off) and NATS, without services yet."""
    mesh = Mesh(state_dir, durable=False, gateway_port=0, log_level="INFO")
    mesh.start_infra()
    yield mesh
    mesh.stop()


@pytest.fixture(scope="session")
def infra(infra_mesh: Mesh) -> Infra:
    return Infra(infra_mesh)


@pytest.fixture(scope="session")
def mesh(infra_mesh: Mesh) -> Mesh:
    """The whole mesh as separate processes, plus a demo merchant; stopped with the session."""
    from libs.infra.runner import SERVICES

    for name in SERVICES:
        infra_mesh.start_service(name)
    for name in SERVICES:
        infra_mesh.wait_healthy(name)
    infra_mesh.start_aggregator()
    infra_mesh.start_gateway()
    infra_mesh.merchant_id, infra_mesh.api_key = infra_mesh.create_merchant("Merchant A")
    return infra_mesh


@dataclass
class MerchantClient:
    merchant_id: str
    api_key: str
    sdk: Any
    base_url: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def _client(mesh: Mesh, merchant_id: str, api_key: str) -> MerchantClient:
    from paygentic_sdk import Paygentic

    return MerchantClient(merchant_id, api_key, Paygentic(bearer_auth=api_key, server_url=mesh.gateway_url), mesh.gateway_url)


@pytest.fixture(scope="session")
def merchant_a(mesh: Mesh) -> MerchantClient:
    return _client(mesh, mesh.merchant_id, mesh.api_key)


@pytest.fixture(scope="session")
def merchant_b(mesh: Mesh) -> MerchantClient:
    merchant_id, api_key = mesh.create_merchant("Merchant B")
    return _client(mesh, merchant_id, api_key)


@pytest.fixture(scope="session")
def span_exporter() -> Any:
    """An in-memory span exporter on the global tracer provider (installed once)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter
