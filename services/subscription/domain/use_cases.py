"""The subscription service's use cases: load aggregates through the unit of work's
repositories, let them apply their rules, store them. Events are recorded by the
aggregates and written by the unit of work at commit.

Some calls go on after their transaction commits (the billing engine runs Invoice 0 or
a final close; metering learns a clock's time): those steps are the ``after_*``
functions, which the servicer calls once the mutation has committed, so a call answers
what it caused (DESIGN section 7, read your writes).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from libs.core import grid
from libs.core.clock import as_utc
from libs.core.errors import FailedPrecondition, InvalidArgument, NotFound
from services.subscription.domain import commands, rules
from services.subscription.domain.model import Consumer, Customer, Subscription, TestClock
from services.subscription.domain.ports import ClockSync, PlanCatalog, SubscriptionUnitOfWork, Timeline

# --- customers ------------------------------------------------------------------------


async def create_customer(
    uow: SubscriptionUnitOfWork, merchant_id: str, now: datetime, command: commands.CreateCustomer
) -> tuple[Customer, bool]:
    """A new customer (True), or the merchant's live customer of the same consumer (False):
    consumers are found again by email, case-insensitively."""
    prefix = command.consumer_field
    consumer: Consumer | None
    if command.consumer_id:
        if command.consumer is not None:
            raise InvalidArgument("consumerId", "give consumer or consumerId, not both", reason="CONFLICTING_FIELDS")
        consumer = await uow.consumers.get(merchant_id, command.consumer_id, field="consumerId")
    elif command.consumer is not None:
        rules.required_text(command.consumer.email, f"{prefix}.email")
        consumer = await uow.consumers.claim_email(merchant_id, command.consumer.email)
        if consumer is None:
            consumer = Consumer.create(command.consumer, merchant_id=merchant_id, now=now, field_prefix=prefix)
            await uow.consumers.add(consumer)
    else:
        raise InvalidArgument(prefix, f"{prefix} is required unless consumerId is given", reason="REQUIRED")
    existing = await uow.customers.live_of_consumer(merchant_id, consumer.id)
    if existing is not None:
        return existing, False
    field_prefix = "" if prefix == "consumer" else f"{prefix}."
    customer = Customer.create(
        merchant_id=merchant_id,
        consumer_id=consumer.id,
        external_id=command.external_id,
        tax_id=command.tax_id,
        tax_rates=command.tax_rates,
        now=now,
        field_prefix=field_prefix,
    )
    if customer.external_id is not None:
        customer.ensure_external_id_free(await uow.customers.claim_external_id(merchant_id, customer.external_id))
    await uow.customers.add(customer)
    return customer, True


async def update_customer(uow: SubscriptionUnitOfWork, merchant_id: str, now: datetime, command: commands.Update) -> Customer:
    if not command.changes:
        return await uow.customers.get(merchant_id, command.resource_id)
    customer = await uow.customers.get(merchant_id, command.resource_id, lock=True)
    customer.update(command.changes, now)
    if "external_id" in command.changes and customer.external_id is not None:
        customer.ensure_external_id_free(await uow.customers.claim_external_id(merchant_id, customer.external_id))
    await uow.customers.save(customer)
    return customer


async def delete_customer(uow: SubscriptionUnitOfWork, merchant_id: str, now: datetime, command: commands.Delete) -> Customer:
    customer = await uow.customers.get(merchant_id, command.resource_id, lock=True)
    customer.delete(now, await uow.subscriptions.live_of_customer(customer.id))
    await uow.customers.save(customer)
    return customer


# --- test clocks ----------------------------------------------------------------------


async def create_test_clock(uow: SubscriptionUnitOfWork, merchant_id: str, now: datetime, command: commands.CreateTestClock) -> TestClock:
    clock = TestClock.create(command, merchant_id=merchant_id, now=now)
    await uow.test_clocks.add(clock)
    return clock


def advance_target(clock: TestClock, command: commands.AdvanceTestClock) -> tuple[datetime, str]:
    """Where the clock goes, and the field that said so: exactly one of currentTime and
    advanceBy (an ISO 8601 duration, calendar-aware: P1M from Jan 31 is Feb 28/29)."""
    if (command.current_time is None) == (command.advance_by is None):
        raise InvalidArgument("currentTime", "give exactly one of currentTime and advanceBy", reason="ADVANCE_NEEDS_ONE_OF")
    if command.current_time is not None:
        return as_utc(command.current_time), "currentTime"
    duration = grid.parse_duration(command.advance_by, "advanceBy")
    return grid.add(clock.current_time, duration, field="advanceBy"), "advanceBy"


async def advance_test_clock(uow: SubscriptionUnitOfWork, merchant_id: str, now: datetime, command: commands.AdvanceTestClock) -> TestClock:
    """Moves the clock (locked: concurrent advances of one clock take turns). The work
    that fell due runs after the commit (``after_advance``)."""
    clock = await uow.test_clocks.get(merchant_id, command.clock_id, lock=True)
    target, field = advance_target(clock, command)
    clock.advance_to(target, now, field=field)
    await uow.test_clocks.save(clock)
    return clock


async def after_advance(clock: TestClock, customer_ids: Sequence[str], *, metering: ClockSync | None, timeline: Timeline | None) -> None:
    """After the commit: metering first (so events of the clock's present are accepted and
    complete), then every piece of due work up to the clock's new time."""
    if metering is not None:
        await metering.sync_test_clock(clock, customer_ids)
    if timeline is not None:
        await timeline.advance_clock(clock.merchant_id, clock.id, clock.current_time)


async def delete_test_clock(uow: SubscriptionUnitOfWork, merchant_id: str, now: datetime, command: commands.Delete) -> TestClock:
    clock = await uow.test_clocks.get(merchant_id, command.resource_id, lock=True)
    clock.delete(now, await uow.subscriptions.live_on_clock(clock.id))
    await uow.test_clocks.save(clock)
    return clock


# --- subscriptions --------------------------------------------------------------------


async def effective_now(uow: SubscriptionUnitOfWork, subscription: Subscription, now: datetime) -> datetime:
    """The subscription's "now": its clock's time if it lives on one, else the service's."""
    if subscription.test_clock_id is None:
        return now
    return await clock_time(uow, subscription.merchant_id, subscription.test_clock_id, now)


async def clock_time(uow: SubscriptionUnitOfWork, merchant_id: str, clock_id: str, now: datetime) -> datetime:
    try:
        return (await uow.test_clocks.get(merchant_id, clock_id)).current_time
    except NotFound:
        return now  # a deleted clock's subscriptions are all terminated; their time stopped mattering


async def create_subscription(
    uow: SubscriptionUnitOfWork,
    merchant_id: str,
    now: datetime,
    command: commands.CreateSubscription,
    *,
    catalog: PlanCatalog,
    timeline: Timeline | None,
) -> Subscription:
    """Validates, stores the subscription pending_payment and lays its first due work
    (in this transaction); Invoice 0 is made after the commit (``after_create``)."""
    if command.customer_id and command.customer is not None:
        raise InvalidArgument("customer", "give customerId or customer, not both", reason="CONFLICTING_FIELDS")
    if not command.customer_id and command.customer is None:
        raise InvalidArgument("customerId", "customerId is required unless an inline customer is given", reason="REQUIRED")
    if not command.plan_id:
        raise InvalidArgument("planId", "planId is required", reason="REQUIRED")
    if command.started_at is None:
        raise InvalidArgument("startedAt", "startedAt is required", reason="REQUIRED")
    # Invoice 0's checkout terms, before anything is asked or written (Subscription.create
    # keeps the checked values): a value the payment service or invoicing would refuse
    # would leave the subscription pending_payment with no checkout
    rules.session_expiry_minutes(command.session_expiry_minutes)
    rules.redirect_urls(command.redirect_urls)
    clock: TestClock | None = None
    if command.test_clock_id:
        clock = await uow.test_clocks.get(merchant_id, command.test_clock_id, field="testClockId")
    plan = await catalog.plan_terms(command.plan_id)
    if command.customer_id:
        customer = await uow.customers.get(merchant_id, command.customer_id, field="customerId", lock=True)
    else:
        assert command.customer is not None
        found, created = await create_customer(uow, merchant_id, now, command.customer)
        customer = found if created else await uow.customers.get(merchant_id, found.id, field="customer", lock=True)
    conflict = await uow.subscriptions.clock_conflict(customer.id, clock.id if clock else None)
    if conflict is not None:
        where = f"test clock {clock.id}" if clock else "real time"
        raise FailedPrecondition(
            "CUSTOMER_ON_OTHER_CLOCK",
            f"customer {customer.id} lives in another time than {where} (subscription {conflict}); a customer lives on at most one clock",
            field="testClockId",
        )
    at = clock.current_time if clock is not None else now
    subscription = Subscription.create(
        command, merchant_id=merchant_id, customer=customer, plan=plan, test_clock=clock, now=now, effective_now=at
    )
    await uow.subscriptions.add(subscription)
    if timeline is not None:
        await timeline.schedule_new(uow.session, subscription, at)
    return subscription


async def after_create(
    subscription: Subscription, clock: TestClock | None, now: datetime, *, metering: ClockSync | None, timeline: Timeline | None
) -> list[Any]:
    """After the commit: metering learns the customer's clock, the engine makes Invoice 0
    (up to the subscription's now). Returns what the engine ran."""
    at = clock.current_time if clock is not None else now
    if metering is not None and clock is not None:
        await metering.sync_test_clock(clock, [subscription.customer_id])
    if timeline is None:
        return []
    ran = await timeline.run_subscription(subscription.merchant_id, subscription.id, at)
    return list(ran or [])


async def terminate_subscription(
    uow: SubscriptionUnitOfWork, merchant_id: str, now: datetime, command: commands.TerminateSubscription, *, timeline: Timeline | None
) -> Subscription:
    subscription = await uow.subscriptions.get(merchant_id, command.subscription_id, lock=True)
    # a subscription that has not started yet ends at its start
    at = max(await effective_now(uow, subscription, now), subscription.started_at)
    rules.required_text(command.reason, "reason")
    subscription.terminate(at, by=merchant_id, reason=command.reason, change_reason=command.change_reason, now=now)
    await uow.subscriptions.save(subscription)
    if timeline is not None:
        await timeline.schedule_termination(uow.session, subscription, at)
    return subscription


async def after_termination(subscription: Subscription, at: datetime, *, timeline: Timeline | None) -> None:
    """After the commit: the final invoice closes at the termination (``at``: the
    subscription's now; its issue waits for grace)."""
    if timeline is not None and subscription.terminated_at is not None:
        await timeline.run_subscription(subscription.merchant_id, subscription.id, at)


async def update_subscription(
    uow: SubscriptionUnitOfWork, merchant_id: str, now: datetime, command: commands.Update, *, timeline: Timeline | None
) -> Subscription:
    """PATCH: settings, ``endingAt`` (the engine's end row moves), ``status`` active
    (a pending_payment subscription activated by hand) or terminated (at ``terminatedAt``,
    clamped to now)."""
    changes = dict(command.changes)
    if not changes:
        return await uow.subscriptions.get(merchant_id, command.resource_id)
    subscription = await uow.subscriptions.get(merchant_id, command.resource_id, lock=True)
    at = await effective_now(uow, subscription, now)
    status = changes.pop("status", None)
    terminated_at = changes.pop("terminated_at", None)
    terminated_by = changes.pop("terminated_by", None)
    termination_reason = changes.pop("termination_reason", None)
    if status is None and (terminated_at is not None or terminated_by is not None or termination_reason is not None):
        raise InvalidArgument("status", "terminatedAt, terminatedBy and terminationReason need status terminated", reason="REQUIRED")
    settings = {k: v for k, v in changes.items() if k in _SETTINGS}
    if settings:
        subscription.update(settings, now, at)
        if "ending_at" in settings and timeline is not None:
            await timeline.schedule_end(uow.session, subscription, subscription.ending_at)
    if status == "terminated":
        when = min(as_utc(terminated_at), at) if terminated_at is not None else max(at, subscription.started_at)
        subscription.terminate(
            when,
            by=terminated_by or merchant_id,
            reason=termination_reason,
            change_reason=None,
            now=now,
            field="terminatedAt",
            strict=terminated_at is not None,
        )
        if timeline is not None:
            await timeline.schedule_termination(uow.session, subscription, when)
    elif status == "active":
        if subscription.status == "terminated":
            raise FailedPrecondition("SUBSCRIPTION_TERMINATED", f"subscription {subscription.id} is terminated", field="status")
        subscription.activate(now, at)
    await uow.subscriptions.save(subscription)
    return subscription


_SETTINGS = frozenset(
    {"ending_at", "auto_charge", "tax_exempt", "renewal_reminder_enabled", "renewal_reminder_days", "payment_term_days", "version_policy"}
)


async def record_invoice_paid(
    uow: SubscriptionUnitOfWork, merchant_id: str, now: datetime, command: commands.RecordInvoicePaid
) -> Subscription:
    """Invoicing reports a paid invoice; Invoice 0 activates a pending_payment subscription.
    A repeat changes nothing."""
    subscription = await uow.subscriptions.get(merchant_id, command.subscription_id, field="subscriptionId", lock=True)
    at = await effective_now(uow, subscription, now)
    subscription.invoice_paid(command.invoice_id, command.sequence_number, command.amount, now, at)
    await uow.subscriptions.save(subscription)
    return subscription
