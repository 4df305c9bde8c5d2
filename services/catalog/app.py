"""Composition root of the catalog service."""

from __future__ import annotations

from pathlib import Path

import grpc
from accrue.catalog.v1 import catalog_service_pb2, catalog_service_pb2_grpc

from libs.infra.db import ReadConnections
from libs.infra.service import Runtime, ServiceDefinition, main
from services.catalog.events import STREAM, STREAM_SUBJECTS
from services.catalog.server import CatalogServicer
from services.catalog.store import LiveRows, metadata

SERVICE_NAME = catalog_service_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    # the single-row Gets' own connections, as many as the engine's pool keeps, closed with the database
    servicer = CatalogServicer(runtime.db, runtime.clock, LiveRows(ReadConnections.beside(runtime.db)))
    catalog_service_pb2_grpc.add_CatalogServiceServicer_to_server(servicer, server)


DEFINITION = ServiceDefinition(
    name="catalog",
    grpc_services=[SERVICE_NAME],
    metadata=metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    register=register,
    streams={STREAM: list(STREAM_SUBJECTS)},
)

if __name__ == "__main__":
    main(DEFINITION)
