"""Grant purchases through invoicing's ad-hoc invoice (the grant exists once it is paid),
and coverage for invoicing: how much of a window's usage the grants covered."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from accrue.entitlement.v1 import entitlement_service_pb2 as ent
from accrue.entitlement.v1 import entitlement_service_pb2_grpc
from accrue.invoicing.v1 import invoicing_service_pb2 as inv
from accrue.invoicing.v1 import invoicing_service_pb2_grpc
from accrue.metering.v1 import metering_service_pb2 as met
from accrue.subscription.v1 import subscription_events_pb2 as sub_events

from libs.core.errors import AlreadyExists, InvalidArgument
from libs.infra import grpc_client
from libs.infra.proto_time import to_timestamp
from libs.testing.fixtures import StartHost
from libs.testing.waiting import eventually_async
from services.catalog import app as catalog_app
from services.entitlement import app as entitlement_app
from services.entitlement.tests.integration.conftest import World, struct, subscription_change
from services.invoicing import app as invoicing_app
from services.metering import app as metering_app
from services.subscription import app as subscription_app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def billing(start_host: StartHost) -> AsyncIterator[tuple[World, invoicing_service_pb2_grpc.InvoicingServiceStub]]:
    """The world of conftest.py plus invoicing (which calls the entitlement service back)."""
    catalog = await start_host(catalog_app.DEFINITION)
    catalog_addr = f"127.0.0.1:{catalog.grpc_port}"
    metering = await start_host(metering_app.DEFINITION, catalog_addr=catalog_addr)
    metering_addr = f"127.0.0.1:{metering.grpc_port}"
    subscription = await start_host(subscription_app.DEFINITION, catalog_addr=catalog_addr)
    subscription_addr = f"127.0.0.1:{subscription.grpc_port}"
    entitlement_port = _free_port()
    invoicing = await start_host(
        invoicing_app.DEFINITION,
        catalog_addr=catalog_addr,
        metering_addr=metering_addr,
        subscription_addr=subscription_addr,
        entitlement_addr=f"127.0.0.1:{entitlement_port}",
    )
    entitlement = await start_host(
        entitlement_app.DEFINITION,
        grpc_port=entitlement_port,
        catalog_addr=catalog_addr,
        metering_addr=metering_addr,
        subscription_addr=subscription_addr,
        invoicing_addr=f"127.0.0.1:{invoicing.grpc_port}",
    )
    ports = (catalog.grpc_port, metering.grpc_port, subscription.grpc_port, entitlement.grpc_port, invoicing.grpc_port)
    channels = [grpc_client.channel(f"127.0.0.1:{port}") for port in ports]
    from accrue.catalog.v1 import catalog_service_pb2_grpc
    from accrue.metering.v1 import metering_service_pb2_grpc
    from accrue.subscription.v1 import subscription_service_pb2_grpc

    world = World(
        catalog_service_pb2_grpc.CatalogServiceStub(channels[0]),
        metering_service_pb2_grpc.MeteringServiceStub(channels[1]),
        subscription_service_pb2_grpc.SubscriptionServiceStub(channels[2]),
        entitlement_service_pb2_grpc.EntitlementServiceStub(channels[3]),
        entitlement,
        f"org_{uuid.uuid4().hex[:12]}",
    )
    yield world, invoicing_service_pb2_grpc.InvoicingServiceStub(channels[4])
    for channel in channels:
        await channel.close()


async def test_a_purchase_is_an_invoice_and_its_payment_mints_the_grant_once(
    billing: tuple[World, invoicing_service_pb2_grpc.InvoicingServiceStub],
) -> None:
    world, invoicing = billing
    plan = await world.plan()
    customer_id = await world.customer()
    issued = await world.entitlements.IssueEntitlement(
        ent.IssueEntitlementRequest(customer_id=customer_id, feature_id=plan.metered_feature_id, template=ent.EntitlementTemplate()),
        metadata=world.md(),
    )
    request = ent.PurchaseGrantRequest(entitlement_id=issued.id, amount=500, price="19.999", idempotency_key="buy-1")
    bought = await world.entitlements.PurchaseGrant(request, metadata=world.md())
    again = await world.entitlements.PurchaseGrant(request, metadata=world.md())
    assert again.invoice_id == bought.invoice_id and bought.invoice_id.startswith("inv_")
    assert (bought.object, bought.entitlement_id, bought.grant_amount, bought.price, bought.currency) == (
        "grant_purchase", issued.id, 500.0, "19.999", "USD",
    )  # fmt: skip
    with pytest.raises(AlreadyExists) as reused:
        await world.entitlements.PurchaseGrant(
            ent.PurchaseGrantRequest(entitlement_id=issued.id, amount=501, price="19.999", idempotency_key="buy-1"), metadata=world.md()
        )
    assert reused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    with pytest.raises(InvalidArgument) as cheap:
        await world.entitlements.PurchaseGrant(
            ent.PurchaseGrantRequest(entitlement_id=issued.id, amount=1, price="0.49", idempotency_key="buy-2"), metadata=world.md()
        )
    assert cheap.value.field == "price"
    with pytest.raises(InvalidArgument) as expired:  # a checkout that expired already could never mint the grant
        await world.entitlements.PurchaseGrant(
            ent.PurchaseGrantRequest(
                entitlement_id=issued.id,
                amount=1,
                price="1.00",
                idempotency_key="buy-3",
                payment_expires_at=to_timestamp(datetime(2020, 1, 1, tzinfo=UTC)),
            ),
            metadata=world.md(),
        )
    assert expired.value.field == "paymentExpiresAt"

    invoice = await invoicing.GetInvoice(inv.GetInvoiceRequest(id=bought.invoice_id), metadata=world.md())
    assert invoice.purpose == "grant_purchase" and invoice.grand_total == "20.00"
    grants = await world.entitlements.ListGrants(ent.ListGrantsRequest(entitlement_id=issued.id), metadata=world.md())
    assert grants.pagination.total == 0  # nothing until it is paid

    await invoicing.RecordInvoicePayment(inv.RecordInvoicePaymentRequest(id=bought.invoice_id, method="out_of_band"), metadata=world.md())

    async def granted() -> int:
        listed = await world.entitlements.ListGrants(ent.ListGrantsRequest(entitlement_id=issued.id), metadata=world.md())
        return int(listed.pagination.total)

    assert await eventually_async(granted, 1, timeout=10) == 1
    grant = (await world.entitlements.ListGrants(ent.ListGrantsRequest(entitlement_id=issued.id), metadata=world.md())).data[0]
    assert (grant.source, grant.amount_decimal, grant.invoice_id) == ("purchase", "500", bought.invoice_id)
    repeat = await world.entitlements.RecordPurchasePaid(ent.RecordPurchasePaidRequest(invoice_id=bought.invoice_id), metadata=world.md())
    assert repeat.id == grant.id
    assert await granted() == 1


async def test_coverage_says_what_the_grants_covered_and_what_a_soft_limit_bills(world: World) -> None:
    plan = await world.plan({"isSoftLimit": True, "issueAfterReset": 10})
    customer_id = f"cus_{uuid.uuid4().hex[:12]}"
    start = datetime.now(UTC) - timedelta(hours=2)
    change = subscription_change(sub_events.SUBSCRIPTION_CHANGE_KIND_ACTIVATED, plan, customer_id, world.merchant, started_at=start)
    applied = await world.entitlements.ApplySubscriptionChange(ent.ApplySubscriptionChangeRequest(change=change), metadata=world.md())
    await world.metering.IngestEvent(
        met.IngestEventRequest(type=plan.event_type, source="t", subject=customer_id, data=struct({"tokens": 30})), metadata=world.md()
    )
    end = datetime.now(UTC) + timedelta(minutes=1)
    query = ent.CoverageQuery(
        subscription_id=change.subscription.id, billable_metric_id=plan.metric_id, from_time=to_timestamp(start), to_time=to_timestamp(end)
    )
    missing = ent.CoverageQuery(
        subscription_id="sub_other", billable_metric_id=plan.metric_id, from_time=query.from_time, to_time=query.to_time
    )

    async def usage() -> str:
        answer = await world.entitlements.GetCoverages(ent.GetCoveragesRequest(queries=[query]), metadata=world.md())
        return str(answer.coverages[0].usage_decimal)

    assert await eventually_async(usage, "30", timeout=15) == "30"
    answer = await world.entitlements.GetCoverages(ent.GetCoveragesRequest(queries=[query, missing]), metadata=world.md())
    found, none = answer.coverages
    assert found.found and found.entitlement_id in applied.entitlement_ids and found.is_soft_limit
    assert (found.usage_decimal, found.covered_decimal, found.billable_decimal) == ("30", "10", "20")
    assert [(g.covered_decimal) for g in found.grants] == ["10"]
    assert none.found is False
    assert answer.HasField("usage_counted_until")
