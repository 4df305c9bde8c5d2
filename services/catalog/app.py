"""Composition root of the catalog service."""

from __future__ import annotations

from pathlib import Path

import grpc
from accrue.catalog.v1 import catalog_service_pb2, catalog_service_pb2_grpc

from libs.infra.service import Runtime, ServiceDefinition, main
from services.catalog.events import STREAM, STREAM_SUBJECTS
from services.catalog.server import CatalogServicer
from services.catalog.store import LiveRows, ReadConnections, metadata

SERVICE_NAME = catalog_service_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    # the single-row Gets' own connections, as many as the engine's pool keeps, closed with the database
    reads = ReadConnections(runtime.settings.database_url, runtime.settings.db_pool_size)
    runtime.db.on_dispose(reads.close)
    servicer = CatalogServicer(runtime.db, runtime.clock, LiveRows(reads))
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
