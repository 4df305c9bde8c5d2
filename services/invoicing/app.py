"""The invoicing service's definition: invoices: drafts, finalization, line items from usage and fees.

Not built yet: it starts, migrates its own database, creates its stream, reports healthy
and serves accrue.invoicing.v1.InvoicingService, whose RPCs answer UNIMPLEMENTED (server.py).
"""

from __future__ import annotations

from pathlib import Path

from accrue.invoicing.v1 import invoicing_service_pb2, invoicing_service_pb2_grpc

from libs.infra.service import ServiceDefinition, main, servicer
from services.invoicing import events, store
from services.invoicing.server import InvoicingServicer

DEFINITION = ServiceDefinition(
    name="invoicing",
    grpc_services=[invoicing_service_pb2.DESCRIPTOR.services_by_name["InvoicingService"].full_name],
    register=servicer(invoicing_service_pb2_grpc.add_InvoicingServiceServicer_to_server, InvoicingServicer.of),
    metadata=store.metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    streams={events.STREAM: list(events.STREAM_SUBJECTS)},
)

if __name__ == "__main__":
    main(DEFINITION)
