"""Composition root of the invoicing service.

Not built yet: it starts, migrates its own database, reports healthy and exposes
accrue.invoicing.v1.InvoicingService, whose RPCs answer UNIMPLEMENTED (the generated base servicer).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from accrue.invoicing.v1 import invoicing_service_pb2, invoicing_service_pb2_grpc

from libs.infra.service import Runtime, ServiceDefinition, main, unimplemented_servicer
from services.invoicing.store import metadata

SERVICE_NAME = invoicing_service_pb2.DESCRIPTOR.services_by_name["InvoicingService"].full_name


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    invoicing_service_pb2_grpc.add_InvoicingServiceServicer_to_server(
        unimplemented_servicer(invoicing_service_pb2_grpc.InvoicingServiceServicer), server
    )


DEFINITION = ServiceDefinition(
    name="invoicing",
    grpc_services=[SERVICE_NAME],
    metadata=metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    register=register,
)

if __name__ == "__main__":
    main(DEFINITION)
