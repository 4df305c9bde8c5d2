"""The subscription service's definition: customers, test clocks, subscriptions and the
billing timeline that drives their invoices (DESIGN section 7).

It calls the catalog (plans, pinned at creation), invoicing (through the billing engine,
engine.py), metering (a test clock's time, SyncTestClock), the entitlement service
(each activation and termination, after its commit: entitlements.py) and the payment
service (automatic collection: ChargeInvoice from the engine's collect rows); its scheduler runs
the real-time due work outside any request, so it mints merchant tokens for that work.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from accrue.subscription.v1 import subscription_service_pb2, subscription_service_pb2_grpc

from libs.infra.service import Runtime, ServiceDefinition, Worker, main
from services.subscription import events, store
from services.subscription.clients import CatalogPlans, InvoicingCheckouts, MeteringClocks
from services.subscription.entitlements import EntitlementDelivery
from services.subscription.server import SubscriptionServicer
from services.subscription.settings import SubscriptionSettings

SERVICE_NAME = subscription_service_pb2.DESCRIPTOR.services_by_name["SubscriptionService"].full_name


def _engine() -> Any:
    """The billing engine's module (engine.py), once it is there; it declares its due_work
    table on store.metadata when imported."""
    if importlib.util.find_spec("services.subscription.engine") is None:
        return None
    return importlib.import_module("services.subscription.engine")


ENGINE = _engine()


def timeline_of(runtime: Runtime) -> Any:
    """The runtime's one billing engine (its servicer and its scheduler share it)."""
    if "timeline" not in runtime.extras:
        runtime.extras["timeline"] = None if ENGINE is None else ENGINE.build_timeline(runtime, unit_of_work=lambda: runtime.db.uow())
    return runtime.extras["timeline"]


def deliver_entitlements(runtime: Runtime) -> None:
    """Activations and terminations go to the entitlement service after each commit that
    wrote them (every unit of work of runtime.db: the servicer's and the engine's)."""
    if "entitlements" not in runtime.extras:
        delivery = EntitlementDelivery(runtime.settings_as(SubscriptionSettings).entitlement_addr)
        runtime.db.add_commit_listener(delivery)
        runtime.extras["entitlements"] = delivery


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    settings = runtime.settings_as(SubscriptionSettings)
    deliver_entitlements(runtime)
    servicer = SubscriptionServicer(
        runtime.db,
        runtime.clock,
        catalog=CatalogPlans(settings.catalog_addr),
        metering=MeteringClocks(settings.metering_addr),
        timeline=timeline_of(runtime),
        checkouts=InvoicingCheckouts(settings.invoicing_addr),
    )
    subscription_service_pb2_grpc.add_SubscriptionServiceServicer_to_server(servicer, server)


def workers(runtime: Runtime) -> Sequence[Worker]:
    deliver_entitlements(runtime)
    if ENGINE is None:
        return []
    timeline_of(runtime)
    return list(ENGINE.scheduler_workers(runtime))


DEFINITION = ServiceDefinition(
    name="subscription",
    grpc_services=[SERVICE_NAME],
    register=register,
    metadata=store.metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    settings=SubscriptionSettings,
    streams={events.STREAM: list(events.STREAM_SUBJECTS)},
    workers=workers,
    talks_to=("catalog", "invoicing", "metering", "entitlement", "payment"),
    mints_tokens=True,
)

if __name__ == "__main__":
    main(DEFINITION)
