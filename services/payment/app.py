"""The payment service's definition: payment methods, payment sessions (hosted checkout),
one-off payments, charge attempts and refunds, through one card processor adapter
(processors/: the sandbox by default, ACCRUE_PAYMENT_PROCESSOR).

It opens hosted pages for invoicing (OpenSessions), charges invoices off-session for the
subscription timeline and retryPayment (ChargeInvoice), takes the page's submits and the
processor's webhooks from the gateway, and tells invoicing each decided outcome
(RecordChargeOutcome). Its janitor (janitor.py) reconciles what a timeout or a crash left
unknown; its consumer closes the pages of invoices paid another way. The janitor and the
consumer call invoicing outside any request, so it mints merchant tokens.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import grpc
from accrue.payment.v1 import payment_service_pb2, payment_service_pb2_grpc

from libs.infra.messaging import EventConsumer, PullSpec
from libs.infra.service import Runtime, ServiceDefinition, Worker, main
from services.invoicing import events as invoicing_events
from services.payment import events, store, views
from services.payment.clients import InvoicingClient, SubscriptionClient
from services.payment.consumers import INVOICE_DURABLE, PaidInvoices
from services.payment.domain.use_cases import Config, Payments
from services.payment.janitor import Janitor
from services.payment.processors.factory import build_processor
from services.payment.server import PaymentServicer
from services.payment.settings import PaymentServiceSettings
from services.payment.store import SqlPaymentUnitOfWork

SERVICE_NAME = payment_service_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name
KILL_AFTER_CHARGE_SENT = "kill_after_charge_sent"


def _kill_self() -> None:
    """The SIGKILL test's fault: die between the processor's answer and its record."""
    os.kill(os.getpid(), signal.SIGKILL)


def payments_of(runtime: Runtime) -> Payments:
    """The process's one Payments (server, janitor and consumer share it)."""
    found = runtime.extras.get("payments")
    if isinstance(found, Payments):
        return found
    settings = runtime.settings_as(PaymentServiceSettings)

    def unit_of_work() -> SqlPaymentUnitOfWork:
        return SqlPaymentUnitOfWork(runtime.db, clock=runtime.clock, translate=views.outbox_message)

    payments = Payments(
        unit_of_work,
        build_processor(settings.payment_processor),
        InvoicingClient(settings.invoicing_addr),
        SubscriptionClient(settings.subscription_addr),
        runtime.clock,
        Config(
            public_url=settings.base_url,
            reconcile_after=timedelta(seconds=settings.payment_reconcile_after_seconds),
            not_sent_after=timedelta(seconds=settings.payment_not_sent_after_seconds),
            checkout_wait_seconds=settings.payment_checkout_wait_seconds,
            after_charge_sent=_kill_self if settings.payment_fault == KILL_AFTER_CHARGE_SENT else None,
        ),
    )
    runtime.extras["payments"] = payments
    runtime.extras["unit_of_work"] = unit_of_work
    return payments


def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    payments = payments_of(runtime)
    servicer = PaymentServicer(payments, runtime.extras["unit_of_work"], runtime.clock)
    payment_service_pb2_grpc.add_PaymentServiceServicer_to_server(servicer, server)


def workers(runtime: Runtime) -> Sequence[Worker]:
    payments = payments_of(runtime)
    settings = runtime.settings_as(PaymentServiceSettings)
    return [
        Janitor(payments, every_seconds=settings.payment_janitor_seconds),
        EventConsumer(
            runtime.db,
            runtime.js,
            PullSpec(stream=invoicing_events.STREAM, durable=INVOICE_DURABLE, filter_subject=invoicing_events.INVOICE_PAID),
            handler=PaidInvoices(payments),
        ),
    ]


DEFINITION = ServiceDefinition(
    name="payment",
    grpc_services=[SERVICE_NAME],
    register=register,
    metadata=store.metadata,
    migrations_dir=Path(__file__).parent / "migrations",
    settings=PaymentServiceSettings,
    streams={events.STREAM: list(events.STREAM_SUBJECTS)},
    workers=workers,
    # customers from the subscription service; invoices' state and charge outcomes to invoicing
    talks_to=("subscription", "invoicing"),
    mints_tokens=True,
)

if __name__ == "__main__":
    main(DEFINITION)
