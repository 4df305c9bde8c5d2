"""The payment service in-process on real PostgreSQL and NATS, with the subscription service
(customers), a fake invoicing gRPC service (GetInvoice, RecordChargeOutcome) and a card
processor in memory (tests/fakes.py) where the sandbox would be; the janitor on short
thresholds so a test sees it work."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from accrue.invoicing.v1 import invoicing_service_pb2_grpc
from accrue.payment.v1 import payment_service_pb2 as pay
from accrue.payment.v1 import payment_service_pb2_grpc
from accrue.subscription.v1 import subscription_service_pb2 as sub
from accrue.subscription.v1 import subscription_service_pb2_grpc

from libs.infra import grpc_client
from libs.infra.service import Host
from libs.testing.fixtures import StartHost
from libs.testing.tokens import merchant_metadata
from services.payment import app as payment_app
from services.payment import store
from services.payment.processors.factory import register_processor
from services.payment.tests.fakes import OK, FakeInvoice, FakeInvoicing, FakeProcessor, render_nonce, token
from services.subscription import app as subscription_app

PUBLIC_URL = "http://gateway.test"


@dataclass
class World:
    payments: payment_service_pb2_grpc.PaymentServiceStub
    subscriptions: subscription_service_pb2_grpc.SubscriptionServiceStub
    processor: FakeProcessor
    invoicing: FakeInvoicing
    host: Host
    merchant: str
    subscriptions_addr: str = ""

    def md(self, merchant: str | None = None) -> tuple[tuple[str, str], ...]:
        return (merchant_metadata(merchant or self.merchant),)

    async def customer(self, merchant: str | None = None) -> str:
        created = await self.subscriptions.CreateCustomer(
            sub.CreateCustomerRequest(
                consumer=sub.CreateCustomerConsumer(
                    name="Ada", email=f"{uuid.uuid4().hex[:8]}@example.com", address=sub.Address(country="DE", zip_code="10115")
                )
            ),
            metadata=self.md(merchant),
        )
        return str(created.customer_id)

    async def save_card(self, customer_id: str, behaviour: str = OK) -> pay.Checkout:
        setup = await self.payments.CreateCustomerPaymentMethod(pay.CreateCustomerPaymentMethodRequest(id=customer_id), metadata=self.md())
        request = pay.CompleteCheckoutRequest(session_id=setup.id, card_token=token(behaviour), submit_nonce=render_nonce())
        checkout: pay.Checkout = await self.payments.CompleteCheckout(request, metadata=self.md())
        return checkout

    def invoice(self, amount: str = "49.00", currency: str = "USD", status: str = "ISSUED") -> str:
        invoice_id = f"inv_{uuid.uuid4().hex[:16]}"
        self.invoicing.invoices[invoice_id] = FakeInvoice(status=status, unpaid_amount=amount, currency=currency)
        return invoice_id

    async def open_session(self, invoice_id: str, customer_id: str, *, amount: str = "49.00", **extra: Any) -> pay.PaymentSession:
        item = pay.OpenSessionRequest(
            entity_type="invoice", entity_id=invoice_id, customer_id=customer_id, amount=amount, currency="USD", **extra
        )
        opened: pay.OpenSessionsResponse = await self.payments.OpenSessions(pay.OpenSessionsRequest(items=[item]), metadata=self.md())
        return opened.sessions[0]

    def charge(self, invoice_id: str, customer_id: str, key: str, *, trigger: str = "manual", **extra: Any) -> pay.ChargeInvoiceRequest:
        return pay.ChargeInvoiceRequest(
            invoice_id=invoice_id, customer_id=customer_id, amount="49.00", currency="USD", attempt_key=key, trigger=trigger, **extra
        )

    async def rows(self, table: sa.Table, **where: Any) -> list[Any]:
        assert self.host.runtime is not None
        query = sa.select(table).where(*(table.c[name] == value for name, value in where.items()))
        async with self.host.runtime.db.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    async def attempts(self, payable_id: str) -> list[Any]:
        return sorted(await self.rows(store.charge_attempts, payable_id=payable_id), key=lambda row: row.create_time)


@dataclass
class InvoicingServer:
    """The fake invoicing on a port of its own."""

    servicer: FakeInvoicing
    port: int


@pytest.fixture
async def invoicing_server() -> AsyncIterator[InvoicingServer]:
    """Set up before the hosts, so it stops after them (a janitor may still report)."""
    servicer = FakeInvoicing()  # type: ignore[abstract]  # only GetInvoice and RecordChargeOutcome are called
    server = grpc.aio.server()
    invoicing_service_pb2_grpc.add_InvoicingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield InvoicingServer(servicer, port)
    await server.stop(None)


async def start_world(start_host: StartHost, invoicing: InvoicingServer, processor: FakeProcessor, **settings: Any) -> World:
    register_processor(processor.name, lambda: processor)
    subscription = await start_host(subscription_app.DEFINITION)
    values: dict[str, Any] = {
        "payment_processor": processor.name,
        "public_url": PUBLIC_URL,
        "subscription_addr": f"127.0.0.1:{subscription.grpc_port}",
        "invoicing_addr": f"127.0.0.1:{invoicing.port}",
        "payment_janitor_seconds": 0.2,
        "payment_reconcile_after_seconds": 0.5,
        "payment_not_sent_after_seconds": 2.0,
        "payment_checkout_wait_seconds": 5.0,
    }
    payment = await start_host(payment_app.DEFINITION, **{**values, **settings})
    return World(
        payment_service_pb2_grpc.PaymentServiceStub(grpc_client.shared_channel(f"127.0.0.1:{payment.grpc_port}")),
        subscription_service_pb2_grpc.SubscriptionServiceStub(grpc_client.shared_channel(f"127.0.0.1:{subscription.grpc_port}")),
        processor,
        invoicing.servicer,
        payment,
        f"org_{uuid.uuid4().hex[:12]}",
        f"127.0.0.1:{subscription.grpc_port}",
    )


@pytest.fixture
async def world(invoicing_server: InvoicingServer, start_host: StartHost) -> World:
    return await start_world(start_host, invoicing_server, FakeProcessor())
