"""The subscription service's aggregates: consumers, customers, test clocks and
subscriptions; the rules that change them and the events that say so.

After cosmicpython's ``domain/model.py`` (as services/catalog does it): each method
validates, changes the aggregate and records an event; the unit of work turns recorded
events into outbox rows at commit. Attribute names are the stored column names.

Time: ``now`` is the service clock's time (``update_time`` and the like); a
subscription's own instants (``terminated_at``, events' effective time) are in the
subscription's time, its test clock's when it lives on one (DESIGN section 7).

Pure: no SQLAlchemy, gRPC or NATS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from libs.core.clock import as_utc
from libs.core.domain import Aggregate, DomainEvent
from libs.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from libs.core.ids import new_id
from services.subscription.domain import commands, rules

# --- events ---------------------------------------------------------------------------


class CustomerChangeKind(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


class SubscriptionChangeKind(StrEnum):
    CREATED = "created"
    ACTIVATED = "activated"
    UPDATED = "updated"
    TERMINATED = "terminated"


class TestClockChangeKind(StrEnum):
    __test__ = False  # not a pytest class

    CREATED = "created"
    ADVANCED = "advanced"
    DELETED = "deleted"


@dataclass(frozen=True)
class CustomerChanged(DomainEvent):
    """Rendered as the customer is at commit; a delete carries ``before``. An update
    that changed the external id carries the one it had (``previous_external_id``,
    None when there was none) and ``external_id_changed``."""

    kind: CustomerChangeKind
    customer_id: str
    merchant_id: str
    external_id_changed: bool = False
    previous_external_id: str | None = None
    before: Customer | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SubscriptionChanged(DomainEvent):
    kind: SubscriptionChangeKind
    subscription_id: str
    merchant_id: str
    effective_time: datetime = field(compare=False)


@dataclass(frozen=True)
class TestClockChanged(DomainEvent):
    __test__ = False

    kind: TestClockChangeKind
    clock_id: str
    merchant_id: str


# --- consumers and customers ----------------------------------------------------------


@dataclass(kw_only=True)
class Consumer(Aggregate):
    """A consumer organization of a merchant (org_...): who pays. Found again by email."""

    merchant_id: str
    name: str
    email: str
    email_normalized: str
    address: dict[str, str]
    phone: str | None
    create_time: datetime
    update_time: datetime

    @classmethod
    def create(cls, details: commands.ConsumerDetails, *, merchant_id: str, now: datetime, field_prefix: str) -> Consumer:
        return cls(
            id=new_id("org"),
            merchant_id=merchant_id,
            name=rules.required_text(details.name, f"{field_prefix}.name"),
            email=details.email.strip(),
            email_normalized=rules.normalized_email(details.email),
            address={k: v for k, v in details.address.items() if v},
            phone=details.phone,
            create_time=now,
            update_time=now,
        )


DEFAULT_NOTIFICATIONS: dict[str, bool] = {"invoice_issued": True, "invoice_paid": True, "renewal_reminder": True}


@dataclass(kw_only=True)
class Customer(Aggregate):
    """A merchant's customer: the link between the merchant and one of its consumers."""

    merchant_id: str
    consumer_id: str
    external_id: str | None
    tax_id: str | None
    tax_rates: dict[str, str]
    notification_settings: dict[str, bool]
    create_time: datetime
    update_time: datetime
    delete_time: datetime | None = None

    @classmethod
    def create(
        cls,
        *,
        merchant_id: str,
        consumer_id: str,
        external_id: str | None,
        tax_id: str | None,
        tax_rates: Mapping[str, Any],
        now: datetime,
        field_prefix: str = "",
    ) -> Customer:
        customer = cls(
            id=new_id("cus"),
            merchant_id=merchant_id,
            consumer_id=consumer_id,
            external_id=external_id or None,
            tax_id=tax_id or None,
            tax_rates=rules.tax_rates(tax_rates, f"{field_prefix}taxRates"),
            notification_settings=dict(DEFAULT_NOTIFICATIONS),
            create_time=now,
            update_time=now,
        )
        customer._changed(CustomerChangeKind.CREATED)
        return customer

    def _changed(self, kind: CustomerChangeKind, **details: Any) -> None:
        event = CustomerChanged(kind, self.id, self.merchant_id, **details)
        self.withdraw(event)
        self.record(event)

    def ensure_external_id_free(self, holder: Customer | None) -> None:
        if holder is not None and holder.id != self.id:
            raise AlreadyExists(
                "EXTERNAL_ID_TAKEN",
                f"externalId {self.external_id!r} is already the key of customer {holder.id}",
                field="externalId",
            )

    def update(self, changes: Mapping[str, Any], now: datetime) -> None:
        before_external = self.external_id
        if "tax_id" in changes:
            self.tax_id = changes["tax_id"] or None
        if "external_id" in changes:
            self.external_id = changes["external_id"] or None
        if "tax_rates" in changes:
            self.tax_rates = rules.tax_rates_update(changes["tax_rates"])
        if "notification_settings" in changes:
            settings = dict(self.notification_settings)
            for name, value in dict(changes["notification_settings"]).items():
                if name not in DEFAULT_NOTIFICATIONS:
                    raise InvalidArgument(f"notificationSettings.{name}", f"unknown notification setting {name}")
                if value is not None:
                    settings[name] = bool(value)
            self.notification_settings = settings
        self.update_time = now
        if self.external_id != before_external:
            self._changed(CustomerChangeKind.UPDATED, external_id_changed=True, previous_external_id=before_external)
        elif not any(isinstance(e, CustomerChanged) and e.external_id_changed for e in self.events):
            self._changed(CustomerChangeKind.UPDATED)

    def delete(self, now: datetime, live_subscription: str | None) -> None:
        if live_subscription is not None:
            raise FailedPrecondition(
                "CUSTOMER_HAS_LIVE_SUBSCRIPTIONS",
                f"customer {self.id} has a live subscription ({live_subscription}); terminate it first",
                field="id",
            )
        before = dataclasses.replace(self)
        self.delete_time = now
        self._changed(CustomerChangeKind.DELETED, before=before)


# --- test clocks ----------------------------------------------------------------------


@dataclass(kw_only=True)
class TestClock(Aggregate):
    """A clock a merchant moves by hand; its subscriptions live in its time."""

    __test__: ClassVar[bool] = False

    merchant_id: str
    name: str | None
    description: str | None
    current_time: datetime
    create_time: datetime
    update_time: datetime
    delete_time: datetime | None = None

    @classmethod
    def create(cls, command: commands.CreateTestClock, *, merchant_id: str, now: datetime) -> TestClock:
        clock = cls(
            id=new_id("tc"),
            merchant_id=merchant_id,
            name=command.name,
            description=command.description,
            current_time=as_utc(command.current_time) if command.current_time is not None else now,
            create_time=now,
            update_time=now,
        )
        clock._changed(TestClockChangeKind.CREATED)
        return clock

    def _changed(self, kind: TestClockChangeKind) -> None:
        event = TestClockChanged(kind, self.id, self.merchant_id)
        self.withdraw(event)
        self.record(event)

    def advance_to(self, target: datetime, now: datetime, *, field: str) -> None:
        """Forward only: ``target`` must be later than the clock's time."""
        if target <= self.current_time:
            raise InvalidArgument(
                field,
                f"{field} must move the clock forward: {target.isoformat()} is not after its current time {self.current_time.isoformat()}",
                reason="TEST_CLOCK_BACKWARDS",
            )
        self.current_time = target
        self.update_time = now
        self._changed(TestClockChangeKind.ADVANCED)

    def delete(self, now: datetime, live_subscription: str | None) -> None:
        if live_subscription is not None:
            raise FailedPrecondition(
                "TEST_CLOCK_IN_USE", f"test clock {self.id} is used by live subscription {live_subscription}", field="id"
            )
        self.delete_time = now
        self.update_time = now
        self._changed(TestClockChangeKind.DELETED)


# --- subscriptions --------------------------------------------------------------------


@dataclass(frozen=True)
class PlanTerms:
    """What a subscription takes from its plan at creation (the catalog's answer)."""

    plan_id: str
    plan_version_id: str
    version_number: int
    currency: str
    billing_cadence: str
    billing_anchor: datetime | None
    tax_behavior: str
    default_tax_rate: str
    renewal_reminder_enabled: bool
    renewal_reminder_days: int


@dataclass(kw_only=True)
class Subscription(Aggregate):
    """A customer's subscription to a pinned plan version.

    The billing engine (engine.py, domain/timeline.py) reads: id, merchant_id,
    customer_id, plan_id, plan_version_id, version_number, currency, status,
    billing_anchor, billing_cadence, started_at, billing_starts_at,
    elapsed_period_billing, ending_at, terminated_at, test_clock_id, payment_term_days,
    tax_exempt, tax_behavior, default_tax_rate, customer_tax_rates, create_time, and for
    collection and Invoice 0's checkout auto_charge, redirect_urls, session_expiry_minutes.
    """

    merchant_id: str
    customer_id: str
    plan_id: str
    plan_version_id: str
    version_number: int
    currency: str
    name: str
    status: str
    version_policy: str
    started_at: datetime
    billing_starts_at: datetime
    elapsed_period_billing: str
    billing_anchor: datetime
    billing_cadence: str
    payment_term_days: int
    auto_charge: bool
    tax_exempt: bool
    tax_behavior: str
    default_tax_rate: str
    ending_at: datetime | None
    terminated_at: datetime | None = None
    terminated_by: str | None = None
    termination_reason: str | None = None
    termination_change_reason: str | None = None
    test_clock_id: str | None = None
    renewal_reminder_enabled: bool = True
    renewal_reminder_days: int = 3
    metadata: dict[str, Any] = field(default_factory=dict)
    change_reason: str | None = None
    change_description: str | None = None
    change_metadata: dict[str, Any] = field(default_factory=dict)
    redirect_urls: dict[str, str] = field(default_factory=dict)
    session_expiry_minutes: float = 240.0
    # Invoice 0 as the engine reported it (the `payment` union)
    invoice_zero_id: str | None = None
    invoice_zero_status: str | None = None
    invoice_zero_amount: str | None = None
    # its checkout, as invoicing answered it (the payment service's session and page)
    invoice_zero_session_id: str | None = None
    invoice_zero_payment_url: str | None = None
    create_time: datetime
    update_time: datetime
    # not stored with the subscription: the customer's current rates (store.py fills them)
    customer_tax_rates: dict[str, str] = field(default_factory=dict)

    NOT_STORED: ClassVar[frozenset[str]] = frozenset({"customer_tax_rates"})

    @classmethod
    def create(
        cls,
        command: commands.CreateSubscription,
        *,
        merchant_id: str,
        customer: Customer,
        plan: PlanTerms,
        test_clock: TestClock | None,
        now: datetime,
        effective_now: datetime,
    ) -> Subscription:
        """A new pending_payment subscription; ``effective_now`` is the subscription's own
        time at creation (its clock's, if any)."""
        c = command
        if c.started_at is None:
            raise InvalidArgument("startedAt", "startedAt is required", reason="REQUIRED")
        started_at = as_utc(c.started_at)
        ending_at = as_utc(c.ending_at) if c.ending_at is not None else None
        if ending_at is not None and ending_at <= started_at:
            raise InvalidArgument("endingAt", "endingAt must be after startedAt", reason="ENDING_BEFORE_START")
        elapsed = c.elapsed_period_billing or "none"
        if elapsed not in ("none", "per_period"):
            raise InvalidArgument("elapsedPeriodBilling", "elapsedPeriodBilling must be none or per_period", reason="INVALID_ENUM")
        subscription = cls(
            id=new_id("sub"),
            merchant_id=merchant_id,
            customer_id=customer.id,
            plan_id=plan.plan_id,
            plan_version_id=plan.plan_version_id,
            version_number=plan.version_number,
            currency=plan.currency,
            name=rules.required_text(c.name, "name"),
            status="pending_payment",
            version_policy=c.version_policy or "floating",
            started_at=started_at,
            billing_starts_at=rules.billing_starts_at(started_at, effective_now, elapsed),
            elapsed_period_billing=elapsed,
            billing_anchor=plan.billing_anchor if plan.billing_anchor is not None else started_at,
            billing_cadence=plan.billing_cadence,
            payment_term_days=c.payment_term_days or 0,
            auto_charge=c.auto_charge,
            tax_exempt=c.tax_exempt,
            tax_behavior=plan.tax_behavior,
            default_tax_rate=plan.default_tax_rate,
            ending_at=ending_at,
            test_clock_id=test_clock.id if test_clock is not None else None,
            renewal_reminder_enabled=plan.renewal_reminder_enabled if c.renewal_reminder_enabled is None else c.renewal_reminder_enabled,
            renewal_reminder_days=plan.renewal_reminder_days if c.renewal_reminder_days is None else c.renewal_reminder_days,
            metadata=rules.metadata(c.metadata),
            change_reason=c.change_reason,
            change_description=c.change_description,
            change_metadata=rules.metadata(c.change_metadata, "changeMetadata"),
            redirect_urls=rules.redirect_urls(c.redirect_urls),
            session_expiry_minutes=float(rules.session_expiry_minutes(c.session_expiry_minutes)),
            create_time=now,
            update_time=now,
            customer_tax_rates=dict(customer.tax_rates),
        )
        subscription._changed(SubscriptionChangeKind.CREATED, effective_now)
        return subscription

    def _changed(self, kind: SubscriptionChangeKind, at: datetime) -> None:
        event = SubscriptionChanged(kind, self.id, self.merchant_id, at)
        self.withdraw(event)
        self.record(event)

    @property
    def is_live(self) -> bool:
        return self.status in rules.LIVE_STATUSES

    def record_invoice_zero(
        self,
        invoice_id: str,
        *,
        paid: bool,
        amount: str,
        now: datetime,
        effective_now: datetime,
        session_id: str | None = None,
        payment_url: str | None = None,
    ) -> None:
        """The engine made Invoice 0: pending payment (with the checkout session invoicing
        opened for it), or paid at once (nothing due), which activates the subscription."""
        self.invoice_zero_id = invoice_id
        self.invoice_zero_amount = amount
        self.invoice_zero_status = "paid" if paid else "pending"
        self.invoice_zero_session_id = session_id
        self.invoice_zero_payment_url = payment_url
        self.update_time = now
        if paid:
            self.activate(now, effective_now)

    def activate(self, now: datetime, effective_now: datetime) -> bool:
        """pending_payment -> active (Invoice 0 paid); False when there was nothing to do."""
        if self.status != "pending_payment":
            return False
        self.status = "active"
        self.update_time = now
        self._changed(SubscriptionChangeKind.ACTIVATED, effective_now)
        return True

    def invoice_paid(self, invoice_id: str, sequence_number: int, amount: str, now: datetime, effective_now: datetime) -> None:
        if sequence_number != 0:
            return
        if self.invoice_zero_id is None or self.invoice_zero_id == invoice_id:
            self.invoice_zero_id = invoice_id
            self.invoice_zero_status = "paid"
            if amount:
                self.invoice_zero_amount = amount
            self.update_time = now
        self.activate(now, effective_now)

    def check_termination(self, at: datetime, *, field: str, strict: bool = True) -> None:
        """Not twice; ``at`` after the start (at the start itself when it is "now": a
        subscription ended the instant it began credits all it billed)."""
        if self.status == "terminated":
            raise FailedPrecondition("SUBSCRIPTION_TERMINATED", f"subscription {self.id} is already terminated", field=field)
        if at < self.started_at or (strict and at == self.started_at):
            raise InvalidArgument(
                field, f"{field} must be after startedAt ({self.started_at.isoformat()})", reason="TERMINATION_BEFORE_START"
            )

    def terminate(
        self,
        at: datetime,
        *,
        by: str | None,
        reason: str | None,
        change_reason: str | None,
        now: datetime,
        field: str = "id",
        strict: bool = False,
    ) -> None:
        self.check_termination(at, field=field, strict=strict)
        self.status = "terminated"
        self.terminated_at = at
        self.terminated_by = by
        self.termination_reason = reason
        self.termination_change_reason = change_reason
        if self.ending_at is not None and self.ending_at > at:
            self.ending_at = None
        self.update_time = now
        self._changed(SubscriptionChangeKind.TERMINATED, at)

    def end(self, at: datetime, now: datetime, *, reason: str | None = None) -> bool:
        """The scheduled end came (the engine's ``end`` step), or automatic collection gave
        up under the merchant's terminate policy (``reason`` payment_failed); False if
        already ended."""
        if self.status == "terminated":
            return False
        self.status = "terminated"
        self.terminated_at = at
        if reason is not None:
            self.termination_reason = reason
        self.update_time = now
        self._changed(SubscriptionChangeKind.TERMINATED, at)
        return True

    def update(self, changes: Mapping[str, Any], now: datetime, effective_now: datetime) -> None:
        """Settings (PATCH); ``ending_at`` and ``status`` are the use case's (they move the timeline)."""
        if self.status == "terminated" and changes:
            raise FailedPrecondition("SUBSCRIPTION_TERMINATED", f"subscription {self.id} is terminated and cannot change", field="id")
        for name in (
            "auto_charge",
            "tax_exempt",
            "renewal_reminder_enabled",
            "renewal_reminder_days",
            "payment_term_days",
            "version_policy",
        ):
            if name in changes and changes[name] is not None:
                setattr(self, name, changes[name])
        if "ending_at" in changes:
            ending_at = changes["ending_at"]
            if ending_at is not None:
                ending_at = as_utc(ending_at)
                if ending_at <= self.started_at:
                    raise InvalidArgument("endingAt", "endingAt must be after startedAt", reason="ENDING_BEFORE_START")
                if ending_at <= effective_now:
                    raise InvalidArgument(
                        "endingAt", "endingAt must be in the future; terminate the subscription to end it now", reason="ENDING_IN_PAST"
                    )
            self.ending_at = ending_at
        self.update_time = now
        self._changed(SubscriptionChangeKind.UPDATED, effective_now)
