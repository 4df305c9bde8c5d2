"""The services the subscription service calls, behind its domain ports: the catalog
(a plan's default version, pinned at creation), metering (a test clock's time) and
invoicing (Invoice 0's current checkout, read when a pending subscription is shown).
Calls carry the current merchant token (libs/infra/grpc_client.py); another merchant's
plan is simply not found."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from accrue.catalog.v1 import catalog_service_pb2 as catalog
from accrue.catalog.v1 import catalog_service_pb2_grpc
from accrue.invoicing.v1 import invoicing_service_pb2 as invoicing
from accrue.invoicing.v1 import invoicing_service_pb2_grpc
from accrue.metering.v1 import metering_service_pb2 as metering
from accrue.metering.v1 import metering_service_pb2_grpc

from libs.core.errors import FailedPrecondition, NotFound, Unavailable
from libs.infra import grpc_client
from libs.infra.context import acting_for, current_merchant_id
from libs.infra.logging import get_logger
from libs.infra.proto_time import from_timestamp, to_timestamp
from services.subscription.domain.model import PlanTerms, TestClock
from services.subscription.domain.ports import Checkout

log = get_logger(__name__)

_PAGE = 100


def _percent(value: float) -> str:
    """The plan's default tax rate (a JSON double on the catalog's wire) as a decimal string."""
    text = format(Decimal(repr(value)).normalize(), "f")
    return "0" if text in ("-0", "0.0") else text


class CatalogPlans:
    """PlanCatalog over the catalog's gRPC API: GetPlan, and the default version's number
    from ListPlanVersions (GetPlanVersion is addressed by number)."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._stub: catalog_service_pb2_grpc.CatalogServiceStub | None = None

    def _catalog(self) -> catalog_service_pb2_grpc.CatalogServiceStub:
        if not self._address:
            raise Unavailable("CATALOG_UNAVAILABLE", "the subscription service has no catalog address (ACCRUE_CATALOG_ADDR)")
        if self._stub is None:  # the channel belongs to the running event loop
            self._stub = catalog_service_pb2_grpc.CatalogServiceStub(grpc_client.channel(self._address))
        return self._stub

    async def plan_terms(self, plan_id: str) -> PlanTerms:
        stub = self._catalog()
        try:
            plan = await stub.GetPlan(catalog.GetPlanRequest(id=plan_id))
        except NotFound:
            raise NotFound("plan", plan_id, field="planId") from None
        if plan.HasField("delete_time") or (current_merchant_id() and plan.merchant_id != current_merchant_id()):
            raise NotFound("plan", plan_id, field="planId")
        if not plan.HasField("default_version_id") or not plan.default_version_id:
            raise FailedPrecondition(
                "PLAN_HAS_NO_DEFAULT_VERSION", f"plan {plan_id} has no default version to subscribe to", field="planId"
            )
        number = await self._version_number(stub, plan_id, plan.default_version_id)
        version = await stub.GetPlanVersion(catalog.GetPlanVersionRequest(id=plan_id, version_number=number))
        if version.status not in ("", "published"):
            raise FailedPrecondition(
                "PLAN_VERSION_NOT_PUBLISHED", f"the default version of plan {plan_id} is {version.status}", field="planId"
            )
        return PlanTerms(
            plan_id=plan.id,
            plan_version_id=version.id,
            version_number=version.version_number,
            currency=plan.currency,
            billing_cadence=plan.billing_cadence or "P1M",
            billing_anchor=from_timestamp(plan.billing_anchor_time) if plan.HasField("billing_anchor_time") else None,
            tax_behavior=plan.tax_behavior or "exclusive",
            default_tax_rate=_percent(plan.default_tax_rate),
            renewal_reminder_enabled=plan.renewal_reminder_enabled,
            renewal_reminder_days=plan.renewal_reminder_days,
        )

    async def _version_number(self, stub: catalog_service_pb2_grpc.CatalogServiceStub, plan_id: str, version_id: str) -> int:
        offset = 0
        while True:
            page = await stub.ListPlanVersions(catalog.ListPlanVersionsRequest(id=plan_id, limit=_PAGE, offset=offset))
            for version in page.data:
                if version.id == version_id:
                    return int(version.version_number)
            offset += len(page.data)
            if not page.data or offset >= page.pagination.total:
                raise FailedPrecondition("PLAN_HAS_NO_DEFAULT_VERSION", f"plan {plan_id}'s default version was not found", field="planId")


class MeteringClocks:
    """ClockSync over metering's internal SyncTestClock."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._stub: metering_service_pb2_grpc.MeteringServiceStub | None = None

    async def sync_test_clock(self, clock: TestClock, customer_ids: Sequence[str], *, deleted: bool = False) -> None:
        if not self._address:
            return  # no metering in this deployment (unit-style hosts): nothing to tell
        if self._stub is None:
            self._stub = metering_service_pb2_grpc.MeteringServiceStub(grpc_client.channel(self._address))
        request = metering.SyncTestClockRequest(
            test_clock_id=clock.id, current_time=to_timestamp(clock.current_time), customer_ids=list(customer_ids), deleted=deleted
        )
        # the caller's Idempotency-Key belongs to the caller's mutation, not to this call
        with acting_for(clock.merchant_id):
            await self._stub.SyncTestClock(request)


# a read of a pending subscription waits this long for invoicing, then shows the recorded checkout
CHECKOUT_TIMEOUT_SECONDS = 2.0
_PAYABLE = ("ISSUED", "PAYMENT_FAILED")


class InvoicingCheckouts:
    """Checkouts over invoicing's GetInvoice: Invoice 0's session as it is now (a
    hosted_link replaces the one the engine recorded at issue). Never fails: invoicing
    down, slow or refusing answers None (the recorded checkout is shown)."""

    def __init__(self, address: str | None, *, timeout: float = CHECKOUT_TIMEOUT_SECONDS) -> None:
        self._address = address
        self._timeout = timeout
        self._stub: invoicing_service_pb2_grpc.InvoicingServiceStub | None = None

    async def invoice_zero_checkout(self, invoice_id: str) -> Checkout | None:
        if not self._address:
            return None
        if self._stub is None:  # the channel belongs to the running event loop
            self._stub = invoicing_service_pb2_grpc.InvoicingServiceStub(grpc_client.shared_channel(self._address))
        try:
            found = await self._stub.GetInvoice(invoicing.GetInvoiceRequest(id=invoice_id), timeout=self._timeout)
        except Exception as err:  # a read falls back to the recorded checkout
            log.warning("invoice_zero_checkout_unread", invoice_id=invoice_id, error=repr(err))
            return None
        if found.status not in _PAYABLE or not found.HasField("payment_session_id") or not found.HasField("payment_url"):
            return None
        return Checkout(found.payment_session_id, found.payment_url)
