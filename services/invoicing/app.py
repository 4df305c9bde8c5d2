"""Composition root of the invoicing service: invoices made by the billing engine's steps
(OpenInvoice, CloseInvoice, IssueInvoice) and ad hoc (IssueAdHocInvoice: grant purchases),
their lines with calculation provenance (included quantities from the entitlement
service), numbering, credit notes, payments (out of band; checkout sessions, retries and
refunds through the payment service) and the charge outcomes the payment service
reports; the REST reads of /v2/invoices."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
from accrue.invoicing.v1 import invoicing_service_pb2, invoicing_service_pb2_grpc

from libs.infra.service import Runtime, ServiceDefinition, main
from services.invoicing import events, store
from services.invoicing.clients import CatalogClient, EntitlementClient, MeterClient, PaymentClient, SubscriptionClient
from services.invoicing.domain.use_cases import Policy, Sources
from services.invoicing.server import InvoicingServicer
from services.invoicing.settings import InvoicingSettings

SERVICE_NAME = invoicing_service_pb2.DESCRIPTOR.services_by_name["InvoicingService"].full_name


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    settings = runtime.settings_as(InvoicingSettings)
    sources = Sources(
        catalog=CatalogClient(settings.catalog_addr),
        meter=MeterClient(settings.metering_addr),
        subscriptions=SubscriptionClient(settings.subscription_addr),
        entitlements=EntitlementClient(settings.entitlement_addr) if settings.entitlement_addr else None,
        payments=PaymentClient(settings.payment_addr) if settings.payment_addr else None,
    )
    policy = Policy(
        max_event_age=timedelta(days=settings.metering_max_event_age_days),
        usage_wait_seconds=settings.invoicing_usage_wait_seconds,
    )
    invoicing_service_pb2_grpc.add_InvoicingServiceServicer_to_server(InvoicingServicer(runtime.db, runtime.clock, sources, policy), server)


DEFINITION = ServiceDefinition(
    name="invoicing",
    grpc_services=[SERVICE_NAME],
    metadata=store.metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    settings=InvoicingSettings,
    register=register,
    streams={events.STREAM: list(events.STREAM_SUBJECTS)},
    # prices from the catalog, usage from metering, activation by Invoice 0 to the
    # subscription service, included quantities and paid grant purchases to the
    # entitlement service, checkout sessions, retries and refunds to the payment service
    # (every port is decided before the first process starts)
    talks_to=("catalog", "metering", "subscription", "entitlement", "payment"),
    mints_tokens=True,
)

if __name__ == "__main__":
    main(DEFINITION)
