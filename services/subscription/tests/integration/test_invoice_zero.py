"""Invoice 0 through the real services in-process (catalog, invoicing and the subscription
service with its billing engine, on real PostgreSQL and NATS; the payment service is a
stand-in, ``FakePaymentService``, answering OpenSessions and ChargeInvoice): the answer of
CreateSubscription carries the ``payment`` union of Invoice 0 with the checkout invoicing
answered, paying it activates the subscription before the payment call returns, and a
plan with nothing due in advance makes the subscription active at once."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from accrue.catalog.v1 import catalog_service_pb2 as cat
from accrue.catalog.v1 import catalog_service_pb2_grpc
from accrue.invoicing.v1 import invoicing_service_pb2 as inv
from accrue.invoicing.v1 import invoicing_service_pb2_grpc
from accrue.payment.v1 import payment_service_pb2 as pay
from accrue.payment.v1 import payment_service_pb2_grpc
from accrue.subscription.v1 import subscription_service_pb2 as svc
from accrue.subscription.v1 import subscription_service_pb2_grpc
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from libs.infra.proto_time import from_timestamp, to_timestamp
from libs.testing.fixtures import StartHost
from libs.testing.tokens import merchant_metadata
from services.catalog import app as catalog_app
from services.invoicing import app as invoicing_app
from services.subscription import app as subscription_app

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakePaymentService(payment_service_pb2_grpc.PaymentServiceServicer):
    """The payment service's internal RPCs as invoicing and the subscription timeline call
    them. OpenSessions: one pending session per payable (a fresh one with ``replace``).
    ChargeInvoice: ``decline`` False pays the invoice the way a real success reaches
    invoicing and, for Invoice 0, the subscription (invoicing's RecordInvoicePayment, which
    calls RecordInvoicePaid synchronously), reading the subscription right after (what
    ``seen`` records: the paying chain committed while the charging batch was open);
    ``decline`` True answers failed with the merchant's schedule (``schedule`` days from the
    first attempt, then ``policy``). Every other RPC answers UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.merchant = ""
        self.invoicing: invoicing_service_pb2_grpc.InvoicingServiceStub | None = None
        self.subscriptions: subscription_service_pb2_grpc.SubscriptionServiceStub | None = None
        self.opened: list[pay.OpenSessionRequest] = []
        self.sessions: dict[tuple[str, str], pay.PaymentSession] = {}
        self.charges: list[pay.ChargeInvoiceRequest] = []
        self.seen: list[str] = []
        self.decline = False
        self.schedule = (3, 5, 7)
        self.policy = "keep_active"

    async def OpenSessions(self, request: pay.OpenSessionsRequest, context: object) -> pay.OpenSessionsResponse:
        out = []
        for item in request.items:
            self.opened.append(item)
            key = (item.entity_type, item.entity_id)
            if key not in self.sessions or item.replace:
                session_id = f"ps_{uuid.uuid4().hex[:16]}"
                self.sessions[key] = pay.PaymentSession(
                    object="payment_session", id=session_id, entity_type=item.entity_type, entity_id=item.entity_id,
                    amount=item.amount, currency=item.currency, status="pending",
                    url=f"http://localhost:8000/checkout/{self.merchant}/{session_id}",
                )  # fmt: skip
            out.append(self.sessions[key])
        return pay.OpenSessionsResponse(sessions=out)

    async def ChargeInvoice(self, request: pay.ChargeInvoiceRequest, context: object) -> pay.ChargeOutcome:
        self.charges.append(request)
        md = (merchant_metadata(self.merchant),)
        if self.decline:
            outcome = pay.ChargeOutcome(status="failed", attempt_key=request.attempt_key, failure_code="card_declined")
            n = request.attempt_number
            if n < len(self.schedule):
                first = from_timestamp(request.first_attempt_at)
                outcome.next_attempt_at.CopyFrom(to_timestamp(first + timedelta(days=self.schedule[n])))
            else:
                outcome.after_final_failure = self.policy
            return outcome
        assert self.invoicing is not None and self.subscriptions is not None
        await self.invoicing.RecordInvoicePayment(
            inv.RecordInvoicePaymentRequest(id=request.invoice_id, method="out_of_band"), metadata=md, timeout=10
        )
        if request.HasField("subscription_id"):
            sub = await self.subscriptions.GetSubscription(svc.GetSubscriptionRequest(id=request.subscription_id), metadata=md, timeout=10)
            self.seen.append(sub.status)
        return pay.ChargeOutcome(status="succeeded", attempt_key=request.attempt_key, provider_payment_ref=f"ch_{request.attempt_key}")


@dataclass
class Mesh:
    catalog: catalog_service_pb2_grpc.CatalogServiceStub
    invoicing: invoicing_service_pb2_grpc.InvoicingServiceStub
    subscriptions: subscription_service_pb2_grpc.SubscriptionServiceStub
    merchant: str
    # the stand-in payment service (only this module's fixture runs one)
    payment: FakePaymentService = field(default_factory=lambda: FakePaymentService())  # type: ignore[abstract]

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (merchant_metadata(self.merchant),)

    async def plan(self, *, fee: str | None, metered: bool = True) -> str:
        """A plan with a metered price in arrears (unless not ``metered``) and, when ``fee``,
        a monthly in-advance fee."""
        product = await self.catalog.CreateProduct(cat.CreateProductRequest(name="API", description="d"), metadata=self.md)
        metric = await self.catalog.CreateBillableMetric(
            cat.CreateBillableMetricRequest(
                product_id=product.id, name="Tokens", description="t", unit="tokens", aggregation="SUM",
                event_type=f"tokens.{uuid.uuid4().hex[:8]}", value_property="$.tokens",
            ),
            metadata=self.md,
        )  # fmt: skip
        metered_price = await self.catalog.CreatePrice(
            cat.CreatePriceRequest(
                invoice_display_name="Tokens", payment_term="in_arrears", model="standard", billable_metric_id=metric.id,
                properties=_struct({"unitPrice": "0.002"}),
            ),
            metadata=self.md,
        )  # fmt: skip
        lines = [{"priceId": metered_price.id, "key": "tokens"}] if metered else []
        if fee is not None:
            base = await self.catalog.CreateFee(cat.CreateFeeRequest(product_id=product.id, name="Base", description="b"), metadata=self.md)
            fee_price = await self.catalog.CreatePrice(
                cat.CreatePriceRequest(
                    invoice_display_name="Base", payment_term="in_advance", fee_id=base.id, billing_cadence="P1M",
                    properties=_struct({"unitPrice": fee}),
                ),
                metadata=self.md,
            )  # fmt: skip
            lines.append({"priceId": fee_price.id, "key": "base"})
        values = [struct_pb2.Value(struct_value=_struct(line)) for line in lines]
        plan = await self.catalog.CreatePlan(
            cat.CreatePlanRequest(product_id=product.id, name="Pro", currency="USD", prices=values), metadata=self.md
        )
        return str(plan.id)

    async def subscribe(
        self,
        plan_id: str,
        *,
        started_at: datetime | None = None,
        test_clock_id: str | None = None,
        auto_charge: bool = False,
        **fields: Any,
    ) -> svc.Subscription:
        customer = await self.subscriptions.CreateCustomer(
            svc.CreateCustomerRequest(
                consumer=svc.CreateCustomerConsumer(
                    name="Ada", email=f"{uuid.uuid4().hex[:8]}@example.com", address=svc.Address(country="DE", zip_code="10115")
                )
            ),
            metadata=self.md,
        )
        request = svc.CreateSubscriptionRequest(
            name="Pro", plan_id=plan_id, customer_id=customer.customer_id, started_at=to_timestamp(started_at or datetime.now(UTC))
        )
        if test_clock_id is not None:
            request.test_clock_id = test_clock_id
        if auto_charge:
            request.auto_charge = True
        for name, value in fields.items():
            if isinstance(value, Message):
                getattr(request, name).CopyFrom(value)
            else:
                setattr(request, name, value)
        created: svc.Subscription = await self.subscriptions.CreateSubscription(request, metadata=self.md)
        return created


def _struct(values: dict[str, str]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


@pytest.fixture
async def mesh(start_host: StartHost) -> AsyncIterator[Mesh]:
    payment = FakePaymentService()  # type: ignore[abstract]  # only OpenSessions and ChargeInvoice are called
    payment_server = grpc.aio.server()
    payment_service_pb2_grpc.add_PaymentServiceServicer_to_server(payment, payment_server)
    payment_addr = f"127.0.0.1:{payment_server.add_insecure_port('127.0.0.1:0')}"
    await payment_server.start()
    catalog = await start_host(catalog_app.DEFINITION)
    catalog_addr = f"127.0.0.1:{catalog.grpc_port}"
    subscription_port = _free_port()  # the two call each other: one address is fixed first
    invoicing = await start_host(
        invoicing_app.DEFINITION, catalog_addr=catalog_addr, subscription_addr=f"127.0.0.1:{subscription_port}", payment_addr=payment_addr
    )
    subscription = await start_host(
        subscription_app.DEFINITION,
        grpc_port=subscription_port,
        catalog_addr=catalog_addr,
        invoicing_addr=f"127.0.0.1:{invoicing.grpc_port}",
        payment_addr=payment_addr,
        subscription_grace_period_seconds=0,
        subscription_charge_timeout_seconds=30,
    )
    try:
        async with (
            grpc.aio.insecure_channel(catalog_addr) as c,
            grpc.aio.insecure_channel(f"127.0.0.1:{invoicing.grpc_port}") as i,
            grpc.aio.insecure_channel(f"127.0.0.1:{subscription.grpc_port}") as s,
        ):
            merchant = f"org_{uuid.uuid4().hex[:12]}"
            payment.merchant = merchant
            payment.invoicing = invoicing_service_pb2_grpc.InvoicingServiceStub(i)
            payment.subscriptions = subscription_service_pb2_grpc.SubscriptionServiceStub(s)
            yield Mesh(
                catalog_service_pb2_grpc.CatalogServiceStub(c),
                payment.invoicing,
                payment.subscriptions,
                merchant,
                payment,
            )
    finally:
        await payment_server.stop(None)


async def test_invoice_zero_is_pending_until_paid_then_the_subscription_is_active(mesh: Mesh) -> None:
    plan_id = await mesh.plan(fee="49.00")
    sub = await mesh.subscribe(plan_id)
    assert sub.status == "pending_payment"
    payment = sub.payment
    assert (payment.status, payment.amount, payment.breakdown.upfront_charges, payment.breakdown.wallet_charge) == (
        "pending", "49.00", "49.00", "0.00",
    )  # fmt: skip
    assert payment.invoice_id.startswith("inv_")
    invoice = await mesh.invoicing.GetInvoice(inv.GetInvoiceRequest(id=payment.invoice_id), metadata=mesh.md)
    assert (invoice.sequence_number, invoice.status, invoice.subscription_id) == (0, "ISSUED", sub.id)
    # the checkout is the session the payment service opened for Invoice 0 (through invoicing)
    session = mesh.payment.sessions[("subscription", payment.invoice_id)]
    assert (payment.checkout_url, payment.payment_session_id) == (invoice.payment_url, invoice.payment_session_id)
    assert (payment.payment_session_id, payment.checkout_url) == (
        session.id,
        f"http://localhost:8000/checkout/{mesh.merchant}/{session.id}",
    )
    assert mesh.payment.charges == []  # no autoCharge: nothing charged

    await mesh.invoicing.RecordInvoicePayment(
        inv.RecordInvoicePaymentRequest(id=payment.invoice_id, method="out_of_band"), metadata=mesh.md
    )
    active = await mesh.subscriptions.GetSubscription(svc.GetSubscriptionRequest(id=sub.id), metadata=mesh.md)
    assert active.status == "active"
    assert (active.payment.status, active.payment.invoice_id) == ("paid", payment.invoice_id)


async def test_invoice_zeros_session_gets_the_subscriptions_redirects_and_lifetime(mesh: Mesh) -> None:
    plan_id = await mesh.plan(fee="49.00")
    before = datetime.now(UTC)
    sub = await mesh.subscribe(
        plan_id,
        redirect_urls=svc.RedirectUrls(on_success="https://shop.example/ok", on_failure="https://shop.example/no"),
        session_expiry_minutes=30,
    )
    (opened,) = [o for o in mesh.payment.opened if o.entity_id == sub.payment.invoice_id]
    assert (opened.entity_type, opened.success_redirect_url, opened.failure_redirect_url) == (
        "subscription", "https://shop.example/ok", "https://shop.example/no",
    )  # fmt: skip
    expires = from_timestamp(opened.expires_at)
    assert before + timedelta(minutes=29) < expires <= datetime.now(UTC) + timedelta(minutes=30)
    assert sub.payment.payment_session_id == mesh.payment.sessions[("subscription", sub.payment.invoice_id)].id


async def test_a_hosted_link_replacing_invoice_zeros_session_shows_on_the_subscription(mesh: Mesh) -> None:
    """GET and list show Invoice 0's checkout as invoicing knows it now: a hosted_link's
    fresh session, not the cancelled one recorded at issue."""
    plan_id = await mesh.plan(fee="49.00")
    sub = await mesh.subscribe(plan_id)
    first = sub.payment.payment_session_id
    linked = await mesh.invoicing.RecordInvoicePayment(
        inv.RecordInvoicePaymentRequest(id=sub.payment.invoice_id, method="hosted_link"), metadata=mesh.md
    )
    assert linked.payment_session_id != first
    got = await mesh.subscriptions.GetSubscription(svc.GetSubscriptionRequest(id=sub.id), metadata=mesh.md)
    assert (got.status, got.payment.status) == ("pending_payment", "pending")
    assert (got.payment.payment_session_id, got.payment.checkout_url) == (linked.payment_session_id, linked.payment_url)
    listed = await mesh.subscriptions.ListSubscriptions(svc.ListSubscriptionsRequest(customer_id=sub.customer_id), metadata=mesh.md)
    assert [(s.id, s.payment.payment_session_id, s.payment.checkout_url) for s in listed.data] == [
        (sub.id, linked.payment_session_id, linked.payment_url)
    ]


async def test_bad_checkout_terms_are_refused_before_anything_is_written(mesh: Mesh) -> None:
    plan_id = await mesh.plan(fee="49.00")
    for fields in (
        {"session_expiry_minutes": 1e15},
        {"session_expiry_minutes": 1.5},
        {"redirect_urls": svc.RedirectUrls(on_success="javascript:alert(1)")},
        {"redirect_urls": svc.RedirectUrls(on_failure="/relative")},
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await mesh.subscribe(plan_id, **fields)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
    listed = await mesh.subscriptions.ListSubscriptions(svc.ListSubscriptionsRequest(limit=100), metadata=mesh.md)
    assert list(listed.data) == []  # nothing written
    assert mesh.payment.opened == []  # no Invoice 0, no session


async def test_nothing_due_in_advance_makes_the_subscription_active_at_once(mesh: Mesh) -> None:
    sub = await mesh.subscribe(await mesh.plan(fee=None))
    assert sub.status == "active"
    assert sub.payment.status == "paid" and sub.payment.invoice_id.startswith("inv_")
    assert sub.payment.amount in ("0.00", "0")


async def test_an_advance_answers_once_the_renewal_invoice_is_issued(mesh: Mesh) -> None:
    plan_id = await mesh.plan(fee="10.00", metered=False)
    start = datetime(2024, 1, 31, tzinfo=UTC)
    clock = await mesh.subscriptions.CreateTestClock(svc.CreateTestClockRequest(current_time=to_timestamp(start)), metadata=mesh.md)
    sub = await mesh.subscribe(plan_id, started_at=start, test_clock_id=clock.id)
    assert (sub.status, sub.payment.amount) == ("pending_payment", "10.00")
    moved = await mesh.subscriptions.AdvanceTestClock(svc.AdvanceTestClockRequest(id=clock.id, advance_by="P1M"), metadata=mesh.md)
    assert moved.current_time == to_timestamp(datetime(2024, 2, 29, tzinfo=UTC))
    listed = await mesh.invoicing.ListInvoices(inv.ListInvoicesRequest(subscription_id=sub.id, limit=10), metadata=mesh.md)
    by_sequence = {i.sequence_number: i for i in listed.data}
    # Invoice 1 (boundary Feb 29, grace 0) is issued in the clock's time when the advance answers
    assert by_sequence[1].status == "ISSUED"
    assert by_sequence[1].issued_at == to_timestamp(datetime(2024, 2, 29, tzinfo=UTC))
    assert by_sequence[1].grand_total == "10.00"


async def test_a_scheduled_end_and_a_termination_run_through_the_engine(mesh: Mesh) -> None:
    plan_id = await mesh.plan(fee="30.00", metered=False)
    start = datetime(2024, 4, 1, tzinfo=UTC)
    clock = await mesh.subscriptions.CreateTestClock(svc.CreateTestClockRequest(current_time=to_timestamp(start)), metadata=mesh.md)
    ending = await mesh.subscribe(plan_id, started_at=start, test_clock_id=clock.id)
    ending_at = datetime(2024, 4, 11, tzinfo=UTC)
    patched = await mesh.subscriptions.UpdateSubscription(
        svc.UpdateSubscriptionRequest(id=ending.id, ending_at=to_timestamp(ending_at)), metadata=mesh.md
    )
    assert patched.ending_at == to_timestamp(ending_at) and patched.status == "pending_payment"
    now_ending = await mesh.subscribe(plan_id, started_at=start, test_clock_id=clock.id)

    await mesh.subscriptions.AdvanceTestClock(svc.AdvanceTestClockRequest(id=clock.id, advance_by="P15D"), metadata=mesh.md)
    ended = await mesh.subscriptions.GetSubscription(svc.GetSubscriptionRequest(id=ending.id), metadata=mesh.md)
    assert (ended.status, ended.terminated_at) == ("terminated", to_timestamp(ending_at))

    terminated = await mesh.subscriptions.TerminateSubscription(
        svc.TerminateSubscriptionRequest(id=now_ending.id, reason="switching"), metadata=mesh.md
    )
    assert (terminated.status, terminated.terminated_at) == ("terminated", to_timestamp(datetime(2024, 4, 16, tzinfo=UTC)))
    listed = await mesh.invoicing.ListInvoices(inv.ListInvoicesRequest(subscription_id=now_ending.id, limit=10), metadata=mesh.md)
    final = max(listed.data, key=lambda i: i.sequence_number)
    # grace 0: the final invoice is issued at the termination, in the clock's time; it only
    # credits the unused half month of the fee, so nothing is owed (PAID at issue)
    assert final.status == "PAID" and final.issued_at == to_timestamp(datetime(2024, 4, 16, tzinfo=UTC))
