"""pytest plugin: real PostgreSQL and NATS on loopback, the whole mesh, SDK clients, one
service host in-process, and the test tiers.

Loaded for every test run (pyproject: ``-p libs.testing.fixtures``). The servers start
once per session, the same way ``make run`` starts them, on free ports. What the mesh
runs is the ``topology`` fixture's (the repository's conftest.py gives the registry's:
nothing under libs knows the services).

Tiers by folder: tests/e2e -> ``e2e``; tests/integration and services/*/tests/integration
-> ``integration``; libs/tests/unit and services/*/tests/unit -> ``unit`` (``pytest -m unit``
runs the fast tier). A marker a test sets itself is kept.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from libs.core.clock import Clock
from libs.infra.runner import Mesh, Topology
from libs.infra.service import Host, ServiceDefinition
from libs.testing.tokens import install_session_keys

TIERS = {
    "unit": "fast: no servers, no processes (domain rules on fakes, pure functions)",
    "integration": "one service in-process against real PostgreSQL and NATS",
    "e2e": "drives the whole mesh through the gateway (real PostgreSQL, NATS, processes)",
}


def tier_of(path: Path, root: Path) -> str | None:
    """The tier of a test file by its folder (None: in no tier folder)."""
    parts = path.relative_to(root).parts if path.is_relative_to(root) else path.parts
    if parts[:2] == ("tests", "e2e"):
        return "e2e"
    if parts[:2] == ("tests", "integration") or (parts[:1] == ("services",) and parts[2:4] == ("tests", "integration")):
        return "integration"
    if parts[:3] == ("libs", "tests", "unit") or (parts[:1] == ("services",) and parts[2:4] == ("tests", "unit")):
        return "unit"
    return None


def pytest_configure(config: pytest.Config) -> None:
    install_session_keys()  # every process the tests start signs and verifies merchant tokens with one pair
    for name, text in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(config.rootpath)
    for item in items:
        tier = tier_of(Path(item.path), root)
        if tier is not None and all(item.get_closest_marker(name) is None for name in TIERS):
            item.add_marker(getattr(pytest.mark, tier))


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
def infra_mesh(state_dir: Path, topology: Topology) -> Iterator[Mesh]:
    """Real PostgreSQL (fsync off) and NATS, without services yet."""
    mesh = Mesh(state_dir, durable=False, gateway_port=0, log_level="INFO", topology=topology)
    mesh.start_infra()
    yield mesh
    mesh.stop()


@pytest.fixture(scope="session")
def infra(infra_mesh: Mesh) -> Infra:
    return Infra(infra_mesh)


@pytest.fixture
async def nc(infra: Infra) -> AsyncIterator[Any]:
    """A NATS client of the session's server, closed after the test."""
    from libs.infra import messaging

    client = await messaging.connect(infra.nats_url, "test")
    yield client
    await client.close()


@pytest.fixture(scope="session")
def mesh(infra_mesh: Mesh) -> Mesh:
    """The whole mesh as separate processes, as ``make run`` starts it (Mesh.start), with
    "Merchant A"; stopped with the session. The topology's externals run too, first (the
    sandbox card processor): where they are and their keys are in ``mesh.external_env``
    (``ACCRUE_SANDBOX_URL``, ``ACCRUE_SANDBOX_SECRET_KEY``, ...), the gateway's public URL
    in ``mesh.public_url``."""
    infra_mesh.start(merchant_name="Merchant A")
    return infra_mesh


StartHost = Callable[..., Awaitable[Host]]


@pytest.fixture
async def start_host(infra: Infra) -> AsyncIterator[StartHost]:
    """``await start_host(definition, clock=FakeClock(), **settings)``: the definition's
    host in this process on a fresh database migrated by its real Alembic history, on
    the session's NATS, gRPC (or HTTP) on a free port; stopped after the test."""
    started: list[Host] = []

    async def start(definition: ServiceDefinition, clock: Clock | None = None, **settings: Any) -> Host:
        values: dict[str, Any] = {
            "database_url": infra.new_database_url(definition.database_name.replace("-", "_")),
            "nats_url": infra.nats_url,
            "grpc_port": 0,
            "http_port": 0,
        }
        host = Host(definition, definition.settings(**{**values, **settings}), clock=clock)
        await host.start()
        started.append(host)
        return host

    yield start
    for host in reversed(started):
        await host.stop()


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
