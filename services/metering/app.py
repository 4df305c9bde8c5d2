"""Composition root of the metering service.

Not built yet: it starts, migrates its own database, reports healthy and exposes
accrue.metering.v1.MeteringService, whose RPCs answer UNIMPLEMENTED (the generated base servicer).
"""

from __future__ import annotations

from pathlib import Path

import grpc
from accrue.metering.v1 import metering_service_pb2, metering_service_pb2_grpc

from libs.infra.service import Runtime, ServiceDefinition, main
from services.metering.store import metadata

SERVICE_NAME = metering_service_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    metering_service_pb2_grpc.add_MeteringServiceServicer_to_server(metering_service_pb2_grpc.MeteringServiceServicer(), server)  # type: ignore[abstract]  # the base answers UNIMPLEMENTED


DEFINITION = ServiceDefinition(
    name="metering",
    grpc_services=[SERVICE_NAME],
    metadata=metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    register=register,
)

if __name__ == "__main__":
    main(DEFINITION)
