"""The entry point of every Accrue process, and of the whole local mesh.

    python -m services.run                       the mesh (``make run``): every process of the registry
    python -m services.run <name> [serve|migrate] one process: a service, a worker or the gateway

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

TOPOLOGY = runner.Topology(
    services=registry.SERVICES,
    workers=registry.WORKERS,
    gateway=gateway.DEFINITION,
    entry="services.run",
    create_merchant=create_merchant_sync,
    externals=registry.EXTERNALS,
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
        definition = TOPOLOGY.definition(args[0])
    except KeyError:
        everything = (*(e.definition for e in TOPOLOGY.externals), *TOPOLOGY.services, *TOPOLOGY.workers, TOPOLOGY.gateway)
        names = ", ".join(d.name for d in everything)
        sys.exit(f"accrue: no process {args[0]!r} (one of: {names})")
    service.main(definition, args[1:])


if __name__ == "__main__":
    main()
