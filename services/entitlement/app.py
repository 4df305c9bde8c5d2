"""Composition root of the entitlement service.

Not built yet: it starts, migrates its own database, reports healthy and exposes
accrue.entitlement.v1.EntitlementService, whose RPCs answer UNIMPLEMENTED (the generated base servicer).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from accrue.entitlement.v1 import entitlement_service_pb2, entitlement_service_pb2_grpc

from libs.infra.service import Runtime, ServiceDefinition, main, unimplemented_servicer
from services.entitlement.store import metadata

SERVICE_NAME = entitlement_service_pb2.DESCRIPTOR.services_by_name["EntitlementService"].full_name


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    entitlement_service_pb2_grpc.add_EntitlementServiceServicer_to_server(
        unimplemented_servicer(entitlement_service_pb2_grpc.EntitlementServiceServicer), server
    )


DEFINITION = ServiceDefinition(
    name="entitlement",
    grpc_services=[SERVICE_NAME],
    metadata=metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    register=register,
)

if __name__ == "__main__":
    main(DEFINITION)
