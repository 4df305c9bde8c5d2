"""Aggregates -> protos with what they show: a customer's consumer, a subscription's
checkout and embedded customer. The RPCs answer through these, and the unit of work renders
a recorded event through them too, so an event carries exactly what a Get returns."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from accrue.subscription.v1 import subscription_service_pb2 as svc

from libs.core.domain import DomainEvent
from libs.infra.db import OutboxMessage
from services.subscription import events, mapping
from services.subscription.domain.model import (
    Customer,
    CustomerChanged,
    Subscription,
    SubscriptionChanged,
    TestClock,
    TestClockChanged,
)
from services.subscription.domain.ports import Checkouts
from services.subscription.store import SubscriptionReads


class HasReads(Protocol):
    @property
    def reads(self) -> SubscriptionReads: ...


async def customers(uow: HasReads, found: Sequence[Customer]) -> list[svc.Customer]:
    consumers = await uow.reads.consumers_by_id([c.consumer_id for c in found])
    return [mapping.customer(c, consumers.get(c.consumer_id)) for c in found]


async def customer(uow: HasReads, found: Customer) -> svc.Customer:
    return (await customers(uow, [found]))[0]


def test_clock(found: TestClock) -> svc.TestClock:
    return mapping.test_clock(found)


test_clock.__test__ = False  # type: ignore[attr-defined]


async def subscriptions(uow: HasReads, found: Sequence[Subscription], *, include_customer: bool = False) -> list[svc.Subscription]:
    if not include_customer:
        return [mapping.subscription(s) for s in found]
    owners = await uow.reads.customers_by_id([s.customer_id for s in found])
    consumers = await uow.reads.consumers_by_id([c.consumer_id for c in owners.values()])
    out = []
    for s in found:
        owner = owners.get(s.customer_id)
        embedded = mapping.embedded_customer(owner, consumers.get(owner.consumer_id)) if owner is not None else None
        out.append(mapping.subscription(s, embedded))
    return out


async def subscription(uow: HasReads, found: Subscription) -> svc.Subscription:
    return (await subscriptions(uow, [found]))[0]


async def with_current_checkouts(found: Sequence[svc.Subscription], checkouts: Checkouts | None) -> None:
    """A pending_payment subscription's ``payment`` shows Invoice 0's checkout as invoicing
    knows it now (hosted_link replaces the session the engine recorded at issue): one
    GetInvoice per pending subscription, concurrently, outside any transaction. Invoicing
    not answering leaves the recorded checkout."""
    if checkouts is None:
        return
    pending = [s for s in found if s.status == "pending_payment" and s.payment.status == "pending" and s.payment.invoice_id]
    if not pending:
        return
    current = await asyncio.gather(*(checkouts.invoice_zero_checkout(s.payment.invoice_id) for s in pending))
    for shown, checkout in zip(pending, current, strict=True):
        if checkout is not None:
            shown.payment.checkout_url = checkout.url
            shown.payment.payment_session_id = checkout.session_id


async def outbox_message(uow: Any, event: DomainEvent) -> OutboxMessage:
    """The unit of work's translator: a recorded change rendered as it is at commit (a
    customer's delete as it was before), built into the service's event by events.py.
    A customer change draws its ``sequence`` here: in the changing transaction, after the
    row was written (and any lock or unique-index wait is behind it)."""
    reads: SubscriptionReads = uow.reads
    if isinstance(event, CustomerChanged):
        if event.before is not None:
            found: Customer | None = event.before
        else:
            found = (await reads.customers_by_id([event.customer_id])).get(event.customer_id)
        assert found is not None, f"customer {event.customer_id} recorded a change and is gone"
        sequence = await reads.next_customer_sequence()
        return events.customer_changed(
            event.kind,
            await customer(uow, found),
            sequence=sequence,
            change_time=found.delete_time or found.update_time,
            external_id_changed=event.external_id_changed,
            previous_external_id=event.previous_external_id,
        )
    if isinstance(event, SubscriptionChanged):
        sub = await reads.subscription_by_id(event.subscription_id)
        assert sub is not None, f"subscription {event.subscription_id} recorded a change and is gone"
        return events.subscription_changed(event.kind, await subscription(uow, sub), event.effective_time)
    if isinstance(event, TestClockChanged):
        clock = await reads.clock_by_id(event.clock_id)
        assert clock is not None, f"test clock {event.clock_id} recorded a change and is gone"
        return events.test_clock_changed(event.kind, mapping.test_clock(clock), await reads.customers_on_clock(clock.id))
    raise TypeError(f"the subscription service records no {type(event).__name__}")
