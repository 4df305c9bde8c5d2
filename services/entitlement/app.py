"""The entitlement service's definition: which features a customer may use, and how much
of them (entitlements, grants, balances).

It provisions a subscription's entitlements when it becomes active and cancels them when
it ends (ApplySubscriptionChange, called by the subscription service after its commit,
and the same events from its stream), sells grants through invoicing's ad-hoc invoices,
and computes balances from metering's deduplicated usage through an in-process cache
(usage.py) that metering's UsageStored hints invalidate. Its consumers call other
services outside any request, so it mints merchant tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from accrue.entitlement.v1 import entitlement_service_pb2, entitlement_service_pb2_grpc

from libs.infra.messaging import EventConsumer, PullSpec
from libs.infra.service import Runtime, ServiceDefinition, Worker, main
from services.entitlement import events, store, views
from services.entitlement.clients import CatalogClient, InvoicingClient, MeteringClient, SubscriptionClient
from services.entitlement.consumers import INVOICE_DURABLE, SUBSCRIPTION_DURABLE, PaidInvoices, SubscriptionChanges, UsageHints
from services.entitlement.server import EntitlementServicer
from services.entitlement.settings import EntitlementSettings
from services.entitlement.store import SqlEntitlementUnitOfWork
from services.entitlement.usage import UsageCache
from services.invoicing import events as invoicing_events
from services.subscription import events as subscription_events

SERVICE_NAME = entitlement_service_pb2.DESCRIPTOR.services_by_name["EntitlementService"].full_name


@dataclass
class Parts:
    """What the servicer and the workers of one process share."""

    catalog: CatalogClient
    customers: SubscriptionClient
    invoicing: InvoicingClient
    usage: UsageCache


def parts_of(runtime: Runtime) -> Parts:
    if "parts" not in runtime.extras:
        settings = runtime.settings_as(EntitlementSettings)
        runtime.extras["parts"] = Parts(
            catalog=CatalogClient(settings.catalog_addr),
            customers=SubscriptionClient(settings.subscription_addr),
            invoicing=InvoicingClient(settings.invoicing_addr),
            usage=UsageCache(
                MeteringClient(settings.metering_addr) if settings.metering_addr else None,
                runtime.clock,
                max_age=settings.entitlement_usage_cache_seconds,
            ),
        )
    parts: Parts = runtime.extras["parts"]
    return parts


def _unit_of_work(runtime: Runtime) -> SqlEntitlementUnitOfWork:
    return SqlEntitlementUnitOfWork(runtime.db, clock=runtime.clock, translate=views.outbox_message)


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    parts = parts_of(runtime)
    servicer = EntitlementServicer(
        runtime.db, runtime.clock, catalog=parts.catalog, customers=parts.customers, usage=parts.usage, invoicing=parts.invoicing
    )
    entitlement_service_pb2_grpc.add_EntitlementServiceServicer_to_server(servicer, server)


def workers(runtime: Runtime) -> Sequence[Worker]:
    parts = parts_of(runtime)

    def unit_of_work() -> SqlEntitlementUnitOfWork:
        return _unit_of_work(runtime)

    return [
        EventConsumer(
            runtime.db,
            runtime.js,
            PullSpec(
                stream=subscription_events.STREAM, durable=SUBSCRIPTION_DURABLE, filter_subject=subscription_events.SUBSCRIPTION_SUBJECTS
            ),
            handler=SubscriptionChanges(unit_of_work, parts.catalog, parts.customers, runtime.clock),
        ),
        EventConsumer(
            runtime.db,
            runtime.js,
            PullSpec(stream=invoicing_events.STREAM, durable=INVOICE_DURABLE, filter_subject=invoicing_events.INVOICE_PAID),
            handler=PaidInvoices(unit_of_work, parts.customers, runtime.clock),
        ),
        UsageHints(runtime.nats, parts.usage),
    ]


DEFINITION = ServiceDefinition(
    name="entitlement",
    grpc_services=[SERVICE_NAME],
    register=register,
    metadata=store.metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    settings=EntitlementSettings,
    streams={events.STREAM: list(events.STREAM_SUBJECTS)},
    workers=workers,
    # plan features from the catalog; customers, subscriptions and test clocks from the
    # subscription service; usage from metering; grant-purchase invoices from invoicing
    talks_to=("catalog", "metering", "subscription", "invoicing"),
    mints_tokens=True,
)

if __name__ == "__main__":
    main(DEFINITION)
