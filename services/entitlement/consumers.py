"""What the entitlement service consumes, outside any request:

* the subscription service's ``SubscriptionChanged`` (its stream): activated provisions,
  terminated cancels, through the use case ApplySubscriptionChange runs (the subscription
  service also calls that synchronously after its commit; both paths are idempotent);
* invoicing's ``invoice.paid``: a paid grant-purchase invoice mints its grant, the use
  case RecordPurchasePaid runs (invoicing also calls it synchronously);
* metering's ``UsageStored`` hint on core NATS: whose usage changed, so the usage cache
  forgets those readings (lossy by design: cached readings also age out).

The durable consumers claim each event in their inbox (libs/infra/messaging.EventConsumer)
and run the use case in its own unit of work, as the merchant of the event
(libs.infra.context.acting_for: calls to other services carry a token this process mints).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from accrue.invoicing.v1 import invoicing_events_pb2 as invoicing_events
from accrue.metering.v1 import metering_resources_pb2 as metering_resources
from accrue.subscription.v1 import subscription_events_pb2 as subscription_events
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from libs.core.clock import Clock
from libs.infra.context import acting_for
from libs.infra.db import UnitOfWork
from libs.infra.logging import get_logger
from libs.infra.messaging import ReceivedEvent
from libs.infra.proto_struct import struct_to_dict
from libs.infra.proto_time import from_timestamp
from services.entitlement.domain import commands, use_cases
from services.entitlement.domain.ports import Catalog, Customers
from services.entitlement.domain.use_cases import PURCHASE_PURPOSE, UnitOfWorkFactory
from services.entitlement.usage import UsageCache
from services.metering import events as metering_events

log = get_logger(__name__)

SUBSCRIPTION_DURABLE = "entitlement-subscriptions"
INVOICE_DURABLE = "entitlement-invoices"
USAGE_STORED_SUBJECT = metering_events.USAGE_STORED_SUBJECT


class SubscriptionChanges:
    """Handler of ``accrue.subscription.v1.subscription.>``: activated and terminated."""

    def __init__(self, unit_of_work: UnitOfWorkFactory, catalog: Catalog, customers: Customers, clock: Clock) -> None:
        self._unit_of_work = unit_of_work
        self._catalog = catalog
        self._customers = customers
        self._clock = clock

    async def __call__(self, event: ReceivedEvent, inbox: UnitOfWork) -> None:
        from services.entitlement.server import change_of

        change = subscription_events.SubscriptionChanged.FromString(event.payload)
        if change.kind not in (
            subscription_events.SUBSCRIPTION_CHANGE_KIND_ACTIVATED,
            subscription_events.SUBSCRIPTION_CHANGE_KIND_TERMINATED,
        ):
            return
        merchant_id = change.merchant_id or change.subscription.merchant_id
        if not merchant_id or not change.subscription.id:
            log.warning("subscription_event_ignored", reason="malformed", event_id=event.event_id)
            return
        with acting_for(merchant_id):
            provisioned = await use_cases.apply_subscription_change(
                self._unit_of_work, self._catalog, merchant_id, self._clock.now(), change_of(change), customers=self._customers
            )
        for feature_id, why in provisioned.skipped:
            log.warning("entitlement_template_skipped", subscription_id=change.subscription.id, feature_id=feature_id, error=why)


class PaidInvoices:
    """Handler of ``accrue.invoicing.v1.invoice.paid``: grant purchases."""

    def __init__(self, unit_of_work: UnitOfWorkFactory, customers: Customers, clock: Clock) -> None:
        self._unit_of_work = unit_of_work
        self._customers = customers
        self._clock = clock

    async def __call__(self, event: ReceivedEvent, inbox: UnitOfWork) -> None:
        change = invoicing_events.InvoiceChanged.FromString(event.payload)
        invoice = change.invoice
        if not invoice.HasField("purpose") or invoice.purpose != PURCHASE_PURPOSE:
            return
        merchant_id = change.merchant_id or invoice.merchant_id
        purchase_id = struct_to_dict(invoice.metadata).get("purchaseId")
        paid_at = from_timestamp(invoice.paid_at) if invoice.HasField("paid_at") else None
        if paid_at is None and change.HasField("effective_time"):
            paid_at = from_timestamp(change.effective_time)
        command = commands.RecordPurchasePaid(
            invoice_id=invoice.id, paid_at=paid_at, purchase_id=purchase_id if isinstance(purchase_id, str) else None
        )
        with acting_for(merchant_id):
            async with self._unit_of_work() as uow:
                await use_cases.record_purchase_paid(uow, self._customers, merchant_id, self._clock.now(), command)


class UsageHints:
    """A worker: metering's core-NATS ``UsageStored`` hints invalidate the usage cache per
    (merchant, subject)."""

    SUBJECTS: Sequence[str] = (USAGE_STORED_SUBJECT,)

    def __init__(self, nc: NatsClient, cache: UsageCache) -> None:
        self._nc = nc
        self._cache = cache
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        subscriptions = [await self._nc.subscribe(subject, cb=self._on_message) for subject in self.SUBJECTS]
        try:
            await self._stopped.wait()
        finally:
            for subscription in subscriptions:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    def stop(self) -> None:
        self._stopped.set()

    async def _on_message(self, msg: Msg) -> None:
        try:
            hint = metering_resources.UsageStored.FromString(msg.data)
            for stored in hint.subjects:
                self._cache.invalidate(stored.merchant_id, stored.subject)
        except Exception as exc:  # a bad message must not stop the subscription
            log.warning("usage_hint_ignored", subject=msg.subject, error=str(exc))
