"""The entitlement service's definition: which features a customer may use, and how much of them.

Not built yet: it starts, migrates its own database, creates its stream, reports healthy
and serves accrue.entitlement.v1.EntitlementService, whose RPCs answer UNIMPLEMENTED (server.py).
"""

from __future__ import annotations

from pathlib import Path

from accrue.entitlement.v1 import entitlement_service_pb2, entitlement_service_pb2_grpc

from libs.infra.service import ServiceDefinition, main, servicer
from services.entitlement import events, store
from services.entitlement.server import EntitlementServicer

DEFINITION = ServiceDefinition(
    name="entitlement",
    grpc_services=[entitlement_service_pb2.DESCRIPTOR.services_by_name["EntitlementService"].full_name],
    register=servicer(entitlement_service_pb2_grpc.add_EntitlementServiceServicer_to_server, EntitlementServicer.of),
    metadata=store.metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    streams={events.STREAM: list(events.STREAM_SUBJECTS)},
)

if __name__ == "__main__":
    main(DEFINITION)
