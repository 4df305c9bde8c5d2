"""The entry point of every Accrue process, and of the whole local mesh.

    python -m services.run                       the mesh (``make run``): every process of the registry
    python -m services.run <name> [serve|migrate] one process: a service, a worker or the gateway
                                                 (or metering-edge, the edge ingest process)

The Kubernetes manifests run ``python -m services.run <name>`` too (deploy/k8s/base).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from libs.infra import runner, service
from services import registry
from services.gateway import host as gateway
from services.gateway.merchants import create_merchant_sync
from services.metering import app as metering_app


def _edge_hub_env(domains: Sequence[str]) -> dict[str, str]:
    """The central meter stream sources each edge domain's stream (services/metering/app.py)."""
    return {"ACCRUE_METER_EDGE_DOMAINS": ",".join(domains)}


# edge ingestion (README "Edge ingestion"): an edge's gateway sends metering calls to an
# ingest-only metering process on the edge's NATS leaf node, everything else centrally
EDGE = runner.EdgePlan(ingest=metering_app.EDGE, stands_in_for=metering_app.DEFINITION.name, hub_env=_edge_hub_env)

TOPOLOGY = runner.Topology(
    services=registry.SERVICES,
    workers=registry.WORKERS,
    gateway=gateway.DEFINITION,
    entry="services.run",
    create_merchant=create_merchant_sync,
    externals=registry.EXTERNALS,
    edge=EDGE,
)


@dataclass
class Mesh(runner.Mesh):
    """The local mesh of this repository's registry (libs/infra/runner.py's Mesh with its topology)."""

    topology: runner.Topology | None = field(default=TOPOLOGY)

    def start_aggregator(self, name: str = metering_app.AGGREGATOR.name) -> runner.Process:
        """One more metering aggregator worker; several share one durable consumer."""
        return self.start_worker(metering_app.AGGREGATOR.name, name)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        asyncio.set_event_loop_policy(None)
        runner.main(TOPOLOGY)
        return
    try:
        definition = EDGE.ingest if args[0] == EDGE.ingest.name else TOPOLOGY.definition(args[0])
    except KeyError:
        everything = (*(e.definition for e in TOPOLOGY.externals), *TOPOLOGY.services, *TOPOLOGY.workers, TOPOLOGY.gateway, EDGE.ingest)
        names = ", ".join(d.name for d in everything)
        sys.exit(f"accrue: no process {args[0]!r} (one of: {names})")
    service.main(definition, args[1:])


if __name__ == "__main__":
    main()
