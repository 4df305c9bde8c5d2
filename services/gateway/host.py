"""The gateway's definition: the ASGI app (services/gateway/app.py) on uvicorn, run by
the same host as every service (libs/infra/service.py), its backends from the registry."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.infra import service
from libs.infra.metrics import HttpMetrics
from libs.infra.service import Host, Runtime, ServiceDefinition
from services.gateway import store
from services.gateway.app import Gateway, JsonErrorsHttpToolsProtocol
from services.gateway.settings import GatewaySettings
from services.registry import SERVICES


def uvicorn_config(app: Any) -> uvicorn.Config:
    """The gateway's HTTP server settings (also what bench/ceilings.py's raw ASGI ceiling runs)."""
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=JsonErrorsHttpToolsProtocol,
        # a stop waits this long for requests in flight, then cancels the rest (each is also bounded by its deadline)
        timeout_graceful_shutdown=2,
        loop="none",
        backlog=2048,
        # no proxy-header rewriting, no Server/Date headers: per-request work nobody reads
        proxy_headers=False,
        server_header=False,
        date_header=False,
    )


def _http(runtime: Runtime) -> uvicorn.Config:
    gateway = Gateway(runtime.settings_as(GatewaySettings), runtime.db.engine)
    runtime.extras["gateway"] = gateway
    return uvicorn_config(HttpMetrics(gateway))  # requests, statuses and latency per route (libs/infra/metrics.py)


DEFINITION = ServiceDefinition(
    name="gateway",
    settings=GatewaySettings,
    metadata=store.metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    http=_http,
    messaging=False,
    talks_to=tuple(definition.name for definition in SERVICES),
)


class GatewayHost(Host):
    """The gateway in this process (tests): http_port 0 listens on any free port."""

    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__(DEFINITION, settings)

    @property
    def engine(self) -> AsyncEngine | None:
        return None if self.runtime is None else self.runtime.db.engine

    @property
    def gateway(self) -> Gateway | None:
        return None if self.runtime is None else self.runtime.extras.get("gateway")


def main(argv: Sequence[str] | None = None) -> None:
    service.main(DEFINITION, argv)


if __name__ == "__main__":
    main()
