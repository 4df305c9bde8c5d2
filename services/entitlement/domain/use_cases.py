"""The entitlement service's use cases: load aggregates through the unit of work's
repositories, let them apply their rules, store them; evaluate balances from metering's
usage (balance.py is the model). Events are recorded by the aggregates and written by the
unit of work at commit.

Time: every entitlement is evaluated in its customer's time: ``at`` when the caller gives
one, else now, its test clock's current time when it lives on one (``CustomerTime``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from libs.core.errors import AlreadyExists, DomainError, FailedPrecondition, InvalidArgument, NotFound
from libs.core.money import currency_exponent, format_major, major_to_atomic, minor_unit_atomic, parse_decimal, round_to_minor
from libs.core.paging import Page
from services.entitlement.domain import balance, commands
from services.entitlement.domain.balance import UNLIMITED, Covered, Evaluation, Window
from services.entitlement.domain.model import Entitlement, FeatureFacts, Grant, GrantPurchase, key_reused, request_hash, text
from services.entitlement.domain.ports import (
    AdHocInvoice,
    Catalog,
    CheckReads,
    Customers,
    EntitlementUnitOfWork,
    Invoicing,
    IssuedInvoice,
    Usage,
    UsageAnswer,
    UsageKey,
)
from services.entitlement.domain.templates import Template, parse_template

UnitOfWorkFactory = Callable[[], AbstractAsyncContextManager[EntitlementUnitOfWork]]

PURCHASE_PURPOSE = "grant_purchase"
DEFAULT_CURRENCY = "USD"
MIN_PRICE = Decimal("0.50")
MAX_PRICE = Decimal("4503599.62")
MAX_COVERAGE_QUERIES = 1000


class CustomerTime:
    """Now in each customer's time for one call: the service clock's, or the test clock's
    current time (asked once per clock per call)."""

    def __init__(self, customers: Customers | None, now: datetime) -> None:
        self._customers = customers
        self.real_now = now
        self._clocks: dict[str, datetime] = {}

    async def now_for(self, test_clock_id: str | None) -> datetime:
        if test_clock_id is None or self._customers is None:
            return self.real_now
        if test_clock_id not in self._clocks:
            self._clocks[test_clock_id] = await self._customers.clock_time(test_clock_id)
        return self._clocks[test_clock_id]


# --- provisioning ---------------------------------------------------------------------


@dataclass(frozen=True)
class Provisioned:
    entitlement_ids: list[str]
    # features whose stored template could not be used: (feature id, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _reset_grant(entitlement: Entitlement, template: Template, now: datetime) -> Grant | None:
    """The template's reset units, as one recurring grant from ``active_from`` on (a
    one-time allowance: one grant that never refills)."""
    if not entitlement.metered or template.issue_after_reset <= 0:
        return None
    return Grant.create(
        entitlement=entitlement,
        amount=template.issue_after_reset,
        effective_at=entitlement.active_from,
        expires_at=None,
        priority=template.issue_after_reset_priority,
        reset_min_rollover=template.reset_min_rollover,
        reset_max_rollover=template.reset_max_rollover,
        source="reset",
        created_at=entitlement.active_from,
        now=now,
        recurrence_period=template.usage_period,
    )


async def apply_subscription_change(
    unit_of_work: UnitOfWorkFactory,
    catalog: Catalog,
    merchant_id: str,
    now: datetime,
    change: commands.ApplySubscriptionChange,
    *,
    customers: Customers | None = None,
) -> Provisioned:
    """ACTIVATED provisions one entitlement per feature of the plan version's prices,
    TERMINATED cancels the subscription's entitlements from its end on; anything else, or
    a repeat, changes nothing. One code path for the synchronous call and the stream.

    An activation that arrives after its subscription ended (the synchronous delivery
    failed, the stream's came after the termination was applied) provisions the
    entitlements canceled from the end on: the subscription's current state is asked
    once a set was provisioned (``customers``)."""
    subscription = change.subscription
    if subscription.merchant_id and subscription.merchant_id != merchant_id:
        raise NotFound("subscription", subscription.id, field="change.subscription.id")
    if change.kind == "activated":
        async with unit_of_work() as uow:
            existing = await uow.entitlements.of_subscription(merchant_id, subscription.id)
        if existing:
            return Provisioned([e.id for e in existing])
        provisioned = await _provision(unit_of_work, catalog, merchant_id, now, change)
        current = await _current(customers, subscription.id)
        if current is not None and current.status == "terminated":
            ended = current.terminated_at or change.effective_time
            await _cancel(unit_of_work, merchant_id, subscription.id, ended, now)
        return provisioned
    if change.kind == "terminated":
        ended = subscription.terminated_at or change.effective_time
        return Provisioned(await _cancel(unit_of_work, merchant_id, subscription.id, ended, now))
    async with unit_of_work() as uow:
        return Provisioned([e.id for e in await uow.entitlements.of_subscription(merchant_id, subscription.id)])


async def _current(customers: Customers | None, subscription_id: str) -> commands.SubscriptionFacts | None:
    """The subscription as the subscription service has it now (None: it cannot say)."""
    if customers is None:
        return None
    try:
        return await customers.subscription(subscription_id)
    except DomainError:
        return None


async def _cancel(unit_of_work: UnitOfWorkFactory, merchant_id: str, subscription_id: str, ended: datetime, now: datetime) -> list[str]:
    async with unit_of_work() as uow:
        found = await uow.entitlements.of_subscription(merchant_id, subscription_id, lock=True)
        for entitlement in found:
            if entitlement.cancel(ended, now):
                await uow.entitlements.save(entitlement)
        return [e.id for e in found]


async def _provision(
    unit_of_work: UnitOfWorkFactory, catalog: Catalog, merchant_id: str, now: datetime, change: commands.ApplySubscriptionChange
) -> Provisioned:
    subscription = change.subscription
    features = await catalog.plan_features(subscription)
    skipped: list[tuple[str, str]] = []
    async with unit_of_work() as uow:
        for attached in features:
            try:
                template = parse_template(attached.template, feature_type=attached.feature.type, field="feature.entitlementTemplate")
            except InvalidArgument as err:
                skipped.append((attached.feature.id, f"{err.field}: {err.message}"))
                continue
            entitlement = Entitlement.issue(
                merchant_id=merchant_id,
                customer_id=subscription.customer_id,
                feature=attached.feature,
                subscription_id=subscription.id,
                source="subscription",
                active_from=change.effective_time,
                active_to=None,
                template=template.to_json(),
                usage_period=template.usage_period,
                anchor=template.anchor or subscription.billing_anchor or subscription.started_at,
                is_soft_limit=template.is_soft_limit,
                preserve_overage_at_reset=template.preserve_overage_at_reset,
                billable_metric_id=template.billable_metric_id or attached.billable_metric_id,
                test_clock_id=subscription.test_clock_id,
                metadata={},
                now=now,
            )
            if await uow.entitlements.add_provisioned(entitlement):
                grant = _reset_grant(entitlement, template, now)
                if grant is not None:
                    await uow.grants.add(grant)
        found = await uow.entitlements.of_subscription(merchant_id, subscription.id)
    return Provisioned([e.id for e in found], skipped)


# --- issuing by hand ------------------------------------------------------------------


async def issue_entitlement(
    uow: EntitlementUnitOfWork,
    catalog: Catalog,
    customers: Customers,
    merchant_id: str,
    now: datetime,
    command: commands.IssueEntitlement,
) -> Entitlement:
    await customers.ensure_customer(command.customer_id)
    feature: FeatureFacts = await catalog.feature(command.feature_id)
    template = parse_template(command.template, feature_type=feature.type, field="template")
    if command.subscription_id is not None:
        subscription = await customers.subscription(command.subscription_id)
        if subscription.customer_id != command.customer_id:
            raise InvalidArgument(
                "subscriptionId",
                f"subscription {command.subscription_id} is not customer {command.customer_id}'s",
                reason="SUBSCRIPTION_MISMATCH",
            )
        if subscription.status == "terminated":
            raise FailedPrecondition(
                "SUBSCRIPTION_TERMINATED",
                f"subscription {command.subscription_id} has ended: its entitlements are canceled",
                field="subscriptionId",
            )
        test_clock_id = subscription.test_clock_id
    else:
        test_clock_id = await customers.customer_clock(command.customer_id)
    customer_now = await CustomerTime(customers, now).now_for(test_clock_id)
    active_from = command.active_from or customer_now
    metric_id = template.billable_metric_id
    if feature.type == "metered" and metric_id is not None:
        await catalog.ensure_billable_metric(metric_id)  # before anything is written
    if feature.type == "metered" and metric_id is None:
        metrics = await catalog.feature_metrics(feature.id)
        if len(metrics) != 1:
            raise InvalidArgument(
                "template.billableMetricId",
                "template.billableMetricId is required: "
                + ("no price carries this feature" if not metrics else f"{len(metrics)} metrics' prices carry this feature"),
                reason="REQUIRED",
            )
        metric_id = metrics[0]
    for other in await uow.entitlements.of_customer_feature(merchant_id, command.customer_id, feature.id):
        if other.overlaps(active_from, command.active_to):
            raise AlreadyExists(
                "ENTITLEMENT_EXISTS",
                f"customer {command.customer_id} already has entitlement {other.id} of this feature",
                field="featureId",
            )
    entitlement = Entitlement.issue(
        merchant_id=merchant_id,
        customer_id=command.customer_id,
        feature=feature,
        subscription_id=command.subscription_id,
        source="manual",
        active_from=active_from,
        active_to=command.active_to,
        template=template.to_json(),
        usage_period=template.usage_period,
        anchor=template.anchor or active_from,
        is_soft_limit=template.is_soft_limit,
        preserve_overage_at_reset=template.preserve_overage_at_reset,
        billable_metric_id=metric_id,
        test_clock_id=test_clock_id,
        metadata=dict(command.metadata),
        now=now,
    )
    await uow.entitlements.add(entitlement)
    grant = _reset_grant(entitlement, template, now)
    if grant is not None:
        await uow.grants.add(grant)
    return entitlement


# --- grants ---------------------------------------------------------------------------


async def create_grant(
    uow: EntitlementUnitOfWork, customers: Customers | None, merchant_id: str, now: datetime, command: commands.CreateGrant
) -> Grant:
    """Same key and parameters answer the grant made with them; other parameters 409."""
    entitlement = await uow.entitlements.get(merchant_id, command.entitlement_id, field="entitlementId")
    fingerprint = request_hash(dict(command.given))
    existing = await uow.grants.by_key(entitlement.id, command.idempotency_key)
    if existing is not None:
        existing.ensure_same_request(fingerprint)
        return existing
    entitlement.ensure_grantable()
    customer_now = await CustomerTime(customers, now).now_for(entitlement.test_clock_id)
    grant = Grant.create(
        entitlement=entitlement,
        amount=command.amount,
        effective_at=command.effective_at or customer_now,
        expires_at=command.expires_at,
        priority=command.priority if command.priority is not None else 0,
        reset_min_rollover=command.reset_min_rollover if command.reset_min_rollover is not None else Decimal(0),
        reset_max_rollover=command.reset_max_rollover if command.reset_max_rollover is not None else UNLIMITED,
        source="manual",
        created_at=customer_now,
        now=now,
        idempotency_key=command.idempotency_key,
        request_hash=fingerprint,
    )
    await uow.grants.add(grant)
    return grant


async def void_grant(
    uow: EntitlementUnitOfWork, customers: Customers | None, merchant_id: str, now: datetime, command: commands.VoidGrant
) -> Grant:
    entitlement = await uow.entitlements.get(merchant_id, command.entitlement_id, field="entitlementId")
    grant = await uow.grants.get(merchant_id, entitlement.id, command.grant_id, lock=True)
    if grant.voided_at is None:
        customer_now = await CustomerTime(customers, now).now_for(entitlement.test_clock_id)
        if grant.void(customer_now, now):
            await uow.grants.save(grant)
    return grant


# --- purchases ------------------------------------------------------------------------


@dataclass(frozen=True)
class PurchasePrice:
    atomic: int  # the line's amount, rounded to the currency's minor unit
    amount: str  # the same in major units
    minor_units: int


def purchase_price(price: str, currency: str) -> PurchasePrice:
    value = parse_decimal(price, "price", max_places=9, positive=True)
    if not MIN_PRICE <= value <= MAX_PRICE:
        raise InvalidArgument("price", f"price must be between {MIN_PRICE} and {MAX_PRICE}, got {price}", reason="OUT_OF_RANGE")
    rounded = round_to_minor(major_to_atomic(value, "price"), currency)
    return PurchasePrice(rounded, format_major(rounded, currency_exponent(currency)), rounded // minor_unit_atomic(currency))


async def claim_purchase(
    uow: EntitlementUnitOfWork,
    catalog: Catalog,
    customers: Customers,
    merchant_id: str,
    now: datetime,
    command: commands.PurchaseGrant,
) -> GrantPurchase:
    """The pending purchase of this key (a replay with other parameters: 409). Its
    invoice is issued after the commit (``issue_purchase_invoice``)."""
    entitlement = await uow.entitlements.get(merchant_id, command.entitlement_id, field="entitlementId")
    fingerprint = request_hash(dict(command.given))
    existing = await uow.purchases.by_key(entitlement.id, command.idempotency_key)
    if existing is not None:
        if existing.request_hash != fingerprint:
            raise key_reused()
        return existing
    entitlement.ensure_grantable()
    currency = DEFAULT_CURRENCY
    if entitlement.subscription_id is not None:
        subscription = await customers.subscription(entitlement.subscription_id)
        currency = await catalog.plan_currency(subscription.plan_id) or DEFAULT_CURRENCY
    purchase_price(command.price, currency)  # refused before anything is written
    if command.payment_expires_at is not None:
        customer_now = await CustomerTime(customers, now).now_for(entitlement.test_clock_id)
        if command.payment_expires_at <= customer_now:
            # a checkout that has already expired could never mint the grant
            raise InvalidArgument(
                "paymentExpiresAt",
                f"paymentExpiresAt must be in the future (now is {customer_now.isoformat()})",
                reason="OUT_OF_RANGE",
            )
    purchase = GrantPurchase.create(
        entitlement=entitlement,
        idempotency_key=command.idempotency_key,
        fingerprint=fingerprint,
        amount=command.amount,
        price=command.price,
        currency=currency,
        effective_at=command.effective_at,
        expires_at=command.expires_at,
        reset_min_rollover=command.reset_min_rollover,
        reset_max_rollover=command.reset_max_rollover,
        success_url=command.success_url,
        cancel_url=command.cancel_url,
        payment_expires_at=command.payment_expires_at,
        now=now,
    )
    await uow.purchases.add(purchase)
    return purchase


async def issue_purchase_invoice(
    unit_of_work: UnitOfWorkFactory,
    invoicing: Invoicing,
    customers: Customers | None,
    merchant_id: str,
    now: datetime,
    purchase_id: str,
) -> tuple[GrantPurchase, IssuedInvoice, PurchasePrice]:
    """The purchase's ad-hoc invoice (idempotent by the purchase id), recorded on it."""
    async with unit_of_work() as uow:
        purchase = await uow.purchases.get(merchant_id, purchase_id)
        entitlement = await uow.entitlements.get(merchant_id, purchase.entitlement_id)
    price = purchase_price(purchase.price, purchase.currency)
    issued_at = await CustomerTime(customers, now).now_for(entitlement.test_clock_id)
    invoice = await invoicing.issue_ad_hoc_invoice(
        AdHocInvoice(
            customer_id=entitlement.customer_id,
            currency=purchase.currency,
            description=f"{entitlement.feature_name}: {text(purchase.amount)} units",
            quantity=text(purchase.amount),
            amount=price.amount,
            purpose=PURCHASE_PURPOSE,
            reference=purchase.id,
            effective_time=issued_at,
            subscription_id=entitlement.subscription_id,
            success_url=purchase.success_url,
            cancel_url=purchase.cancel_url,
            payment_expires_at=purchase.payment_expires_at,
            metadata={"purchaseId": purchase.id, "entitlementId": entitlement.id},
        )
    )
    if purchase.invoice_id != invoice.id:
        async with unit_of_work() as uow:
            purchase = await uow.purchases.get(merchant_id, purchase_id, lock=True)
            purchase.attach_invoice(invoice.id, now)
            await uow.purchases.save(purchase)
    return purchase, invoice, price


async def record_purchase_paid(
    uow: EntitlementUnitOfWork, customers: Customers | None, merchant_id: str, now: datetime, command: commands.RecordPurchasePaid
) -> Grant:
    """The paid purchase's grant (minted once: a repeat answers the same grant)."""
    purchase = await uow.purchases.by_invoice(merchant_id, command.invoice_id, lock=True)
    if purchase is None and command.purchase_id is not None:
        purchase = await uow.purchases.get(merchant_id, command.purchase_id, lock=True)
        purchase.attach_invoice(command.invoice_id, now)
    if purchase is None:
        raise NotFound("grant_purchase", command.invoice_id, field="invoiceId")
    entitlement = await uow.entitlements.get(merchant_id, purchase.entitlement_id)
    if purchase.grant_id is not None:
        return await uow.grants.get(merchant_id, entitlement.id, purchase.grant_id)
    paid_at = command.paid_at or await CustomerTime(customers, now).now_for(entitlement.test_clock_id)
    grant = purchase.pay(entitlement, paid_at, now)
    await uow.grants.add(grant)
    await uow.purchases.save(purchase)
    return grant


# --- evaluation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluated:
    """An entitlement at one instant."""

    entitlement: Entitlement
    grants: Sequence[Grant]
    at: datetime
    status: str
    has_access: bool
    evaluation: Evaluation | None = None  # metered only
    usage_counted_until: datetime | None = None
    cached_since: datetime | None = None  # served from cached usage (stale.computedAt)


async def evaluate(
    items: Sequence[tuple[Entitlement, Sequence[Grant]]],
    *,
    at: datetime | None,
    times: CustomerTime,
    usage: Usage,
    merchant_id: str,
) -> list[Evaluated]:
    """Every item at ``at`` (None: now, in its customer's time), with all the usage they
    need read in one call."""
    open_ended = at is None
    prepared: list[tuple[Entitlement, Sequence[Grant], datetime, list[Window], balance.Prepared | None]] = []
    wanted: list[UsageKey] = []
    for entitlement, grants in items:
        when = at or await times.now_for(entitlement.test_clock_id)
        windows: list[Window] = []
        cut: balance.Prepared | None = None
        if entitlement.metered:
            cut = balance.prepare(
                entitlement.terms(),
                entitlement.active_from,
                entitlement.active_until,
                [g.terms() for g in grants],
                when,
                open_ended=open_ended,
            )
            windows = cut.windows
            if entitlement.billable_metric_id is not None:
                wanted.extend(UsageKey(entitlement.customer_id, entitlement.billable_metric_id, w) for w in windows)
        prepared.append((entitlement, grants, when, windows, cut))
    answer = await usage.readings(merchant_id, wanted) if wanted else UsageAnswer({}, None)
    out: list[Evaluated] = []
    for entitlement, grants, when, windows, cut in prepared:
        status = entitlement.status_at(when)
        live = entitlement.live_at(when)
        if cut is None:  # not metered
            out.append(Evaluated(entitlement, grants, when, status, live))
            continue
        metric_id = entitlement.billable_metric_id
        keys = [UsageKey(entitlement.customer_id, metric_id, w) for w in windows] if metric_id is not None else []
        readings = {key.window: answer.values[key] for key in keys} if metric_id is not None else {w: Decimal(0) for w in windows}
        evaluation = cut.evaluate(readings)
        has_access = live and (entitlement.is_soft_limit or evaluation.balance > 0)
        counted = answer.complete_until if metric_id is not None and answer.complete_until is not None else times.real_now
        out.append(Evaluated(entitlement, grants, when, status, has_access, evaluation, counted, answer.cached_since(keys)))
    return out


def _preference(entitlement: Entitlement, at: datetime) -> tuple[int, float, float]:
    """The entitlement a check answers with, of several of one key (lowest first): the
    live one, else one not yet started, else the latest to have ended; then the newest."""
    status = entitlement.status_at(at)
    rank = 0 if entitlement.live_at(at) else 1 if status == "active" else 2
    moment = entitlement.active_from if rank < 2 else entitlement.active_until or entitlement.active_from
    return rank, -moment.timestamp(), -entitlement.create_time.timestamp()


async def check_entitlement(
    reads: CheckReads,
    customers: Customers | None,
    usage: Usage,
    times: CustomerTime,
    merchant_id: str,
    query: commands.EntitlementQuery,
) -> Evaluated | None:
    """The hot path: one indexed query, the cached usage, evaluate. None: the customer has
    no entitlement of the key."""
    customer_id = await resolve_customer(customers, query)
    if query.feature_key is None:
        raise InvalidArgument("featureKey", "featureKey is required", reason="REQUIRED")
    found = await reads.for_check(merchant_id, customer_id, query.feature_key, query.product_id)
    if not found:
        return None
    ranked = []
    for entitlement, grants in found:
        when = query.at or await times.now_for(entitlement.test_clock_id)
        ranked.append((_preference(entitlement, when), entitlement.id, entitlement, grants))
    ranked.sort(key=lambda item: (item[0], item[1]))
    _, _, chosen, grants = ranked[0]
    return (await evaluate([(chosen, grants)], at=query.at, times=times, usage=usage, merchant_id=merchant_id))[0]


async def resolve_customer(customers: Customers | None, query: commands.EntitlementQuery) -> str:
    """Exactly one of customerId and externalCustomerId."""
    if (query.customer_id is None) == (query.external_customer_id is None):
        raise InvalidArgument(
            "customerId",
            "give exactly one of customerId and externalCustomerId",
            reason="REQUIRED" if query.customer_id is None else "CONFLICTING_FIELDS",
        )
    if query.customer_id is not None:
        return query.customer_id
    if customers is None:
        raise NotFound("customer", query.external_customer_id or "", field="externalCustomerId")
    return await customers.customer_by_external_id(query.external_customer_id or "")


async def list_entitlements(
    reads: CheckReads, merchant_id: str, customer_id: str, query: commands.EntitlementQuery, page: Page
) -> tuple[list[tuple[Entitlement, list[Grant]]], int]:
    """A page of the customer's entitlements, newest first (one query: a customer has few)."""
    if query.feature_key is not None and query.product_id is None:
        raise InvalidArgument("productId", "productId is required with featureKey", reason="REQUIRED")
    filters = commands.EntitlementFilters(
        customer_id=customer_id, feature_key=query.feature_key, product_id=query.product_id, subscription_id=query.subscription_id
    )
    found = await reads.of_customer(merchant_id, customer_id, filters)
    return found[page.offset : page.offset + page.limit], len(found)


# --- coverage (invoicing) -------------------------------------------------------------


@dataclass(frozen=True)
class CoverageResult:
    found: bool
    entitlement_id: str = ""
    is_soft_limit: bool = False
    usage: Decimal = Decimal(0)
    covered: Decimal = Decimal(0)
    billable: Decimal = Decimal(0)
    grants: Sequence[tuple[str, Decimal]] = ()


async def coverages(
    unit_of_work: UnitOfWorkFactory, usage: Usage, merchant_id: str, queries: Sequence[commands.CoverageQuery]
) -> tuple[list[CoverageResult], datetime | None]:
    """Per (subscription, metric, [start, end)): how much of the usage the grants of the
    subscription's metered entitlement on that metric covered; one GetUsages call."""
    if len(queries) > MAX_COVERAGE_QUERIES:
        raise InvalidArgument("queries", f"at most {MAX_COVERAGE_QUERIES} queries per call", reason="TOO_MANY_QUERIES")
    for index, q in enumerate(queries):
        if q.end <= q.start:
            raise InvalidArgument(f"queries[{index}].toTime", "toTime must be after fromTime", reason="OUT_OF_RANGE")
    async with unit_of_work() as uow:
        found = await uow.entitlements.metered_of_subscriptions(merchant_id, [(q.subscription_id, q.billable_metric_id) for q in queries])
        grants = await uow.grants.of_entitlements([e.id for e in found.values()])
    plans: list[tuple[Entitlement, list[Window]] | None] = []
    wanted: list[UsageKey] = []
    for q in queries:
        entitlement = found.get((q.subscription_id, q.billable_metric_id))
        if entitlement is None:
            plans.append(None)
            continue
        windows = balance.coverage_windows(
            entitlement.terms(),
            entitlement.active_from,
            entitlement.active_until,
            [g.terms() for g in grants[entitlement.id]],
            q.start,
            q.end,
        )
        wanted.extend(UsageKey(entitlement.customer_id, q.billable_metric_id, w) for w in windows)
        plans.append((entitlement, windows))
    answer = await usage.readings(merchant_id, wanted, fresh=True) if wanted else UsageAnswer({}, None)
    out: list[CoverageResult] = []
    for q, plan in zip(queries, plans, strict=True):
        if plan is None:
            out.append(CoverageResult(found=False))
            continue
        entitlement, windows = plan
        readings = {w: answer.values[UsageKey(entitlement.customer_id, q.billable_metric_id, w)] for w in windows}
        covered: Covered = balance.coverage(
            entitlement.terms(),
            entitlement.active_from,
            entitlement.active_until,
            [g.terms() for g in grants[entitlement.id]],
            q.start,
            q.end,
            readings,
        )
        billable = covered.usage - covered.covered if entitlement.is_soft_limit else Decimal(0)
        out.append(
            CoverageResult(
                found=True,
                entitlement_id=entitlement.id,
                is_soft_limit=entitlement.is_soft_limit,
                usage=covered.usage,
                covered=covered.covered,
                billable=billable,
                grants=tuple(covered.grants),
            )
        )
    return out, answer.complete_until
