"""The entitlement service's aggregates: entitlements (a feature provisioned to a customer),
the grants of metered ones, and grant purchases awaiting payment; the rules that change
them and the events that say so.

After cosmicpython's ``domain/model.py`` (as the other services do it): each method
validates, changes the aggregate and records an event; the unit of work turns recorded
events into outbox rows at commit. Attribute names are the stored column names.

Time: ``now`` is the service clock's (``update_time``); an entitlement's own instants
(``active_from``, ``canceled_at``, a grant's ``effective_at``, ``voided_at``) are in the
customer's time, its test clock's when it lives on one. A balance is not stored: it is a
pure function of the entitlement, its grants, an instant and metering's usage
(balance.py).

Pure: no SQLAlchemy, gRPC or NATS.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from libs.core.domain import Aggregate, DomainEvent
from libs.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from libs.core.ids import new_id
from services.entitlement.domain.balance import UNLIMITED, GrantTerms, MeteredTerms

# units are exact to 1e-8 (the contract's smallest grant)
UNIT_QUANTUM = Decimal("1e-8")

ENTITLEMENT_PREFIX = "ent"
GRANT_PREFIX = "grant"
PURCHASE_PREFIX = "gpur"

# --- events ---------------------------------------------------------------------------


class EntitlementChangeKind(StrEnum):
    ISSUED = "issued"
    CANCELED = "canceled"


class GrantChangeKind(StrEnum):
    CREATED = "created"
    VOIDED = "voided"


@dataclass(frozen=True)
class EntitlementChanged(DomainEvent):
    kind: EntitlementChangeKind
    entitlement_id: str
    merchant_id: str


@dataclass(frozen=True)
class GrantChanged(DomainEvent):
    kind: GrantChangeKind
    grant_id: str
    merchant_id: str


# --- rules ----------------------------------------------------------------------------


def units(value: Decimal, field: str, *, positive: bool = True) -> Decimal:
    """A unit amount: finite, > 0 (or >= 0), a multiple of 1e-8."""
    if not value.is_finite():
        raise InvalidArgument(field, f"{field} must be a finite number", reason="INVALID_NUMBER")
    if positive and value <= 0:
        raise InvalidArgument(field, f"{field} must be greater than 0, got {text(value)}", reason="MUST_BE_POSITIVE")
    if value < 0:
        raise InvalidArgument(field, f"{field} must not be negative, got {text(value)}", reason="MUST_NOT_BE_NEGATIVE")
    if value > UNLIMITED:
        raise InvalidArgument(field, f"{field} must be at most {UNLIMITED}", reason="OUT_OF_RANGE")
    if value != value.quantize(UNIT_QUANTUM):
        raise InvalidArgument(field, f"{field} must be a multiple of 0.00000001", reason="TOO_MANY_DECIMAL_PLACES")
    return value + 0  # normalizes -0


def text(value: Decimal) -> str:
    """A decimal as the API shows it: plain notation, no trailing zeros."""
    if value.is_zero():
        return "0"
    return format(value.normalize(), "f")


def request_hash(parameters: dict[str, Any]) -> str:
    """The fingerprint of a request's given parameters (canonical JSON): an idempotency
    key replayed with other parameters is refused."""
    canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_window(effective_at: datetime, expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= effective_at:
        raise InvalidArgument("expiresAt", "expiresAt must be after effectiveAt", reason="EXPIRES_BEFORE_EFFECTIVE")


def check_rollover(minimum: Decimal, maximum: Decimal) -> None:
    if minimum > maximum:
        raise InvalidArgument("resetMinRollover", "resetMinRollover must not exceed resetMaxRollover", reason="MIN_ABOVE_MAX")


# --- entitlements ---------------------------------------------------------------------


@dataclass(kw_only=True)
class Entitlement(Aggregate):
    """A feature provisioned to a customer: by its subscription (one per plan feature) or
    by hand. Canceling ends access from ``canceled_at`` on; it is never deleted."""

    merchant_id: str
    customer_id: str
    feature_id: str
    feature_key: str
    feature_name: str
    product_id: str
    feature_type: str  # boolean | static | metered
    subscription_id: str | None
    source: str  # subscription (provisioned) | manual (issued by hand)
    active_from: datetime
    active_to: datetime | None
    canceled_at: datetime | None
    # the normalized template (templates.Template.to_json()): what it was provisioned from
    template: dict[str, Any]
    # metered: the evaluation's terms, resolved at issue
    usage_period: str | None
    anchor: datetime | None
    is_soft_limit: bool
    preserve_overage_at_reset: bool
    billable_metric_id: str | None
    test_clock_id: str | None
    metadata: dict[str, str]
    create_time: datetime
    update_time: datetime

    @classmethod
    def issue(
        cls,
        *,
        merchant_id: str,
        customer_id: str,
        feature: FeatureFacts,
        subscription_id: str | None,
        source: str,
        active_from: datetime,
        active_to: datetime | None,
        template: dict[str, Any],
        usage_period: str | None,
        anchor: datetime | None,
        is_soft_limit: bool,
        preserve_overage_at_reset: bool,
        billable_metric_id: str | None,
        test_clock_id: str | None,
        metadata: dict[str, str],
        now: datetime,
    ) -> Entitlement:
        if active_to is not None and active_to <= active_from:
            raise InvalidArgument("activeTo", "activeTo must be after activeFrom", reason="ACTIVE_TO_BEFORE_ACTIVE_FROM")
        entitlement = cls(
            id=new_id(ENTITLEMENT_PREFIX),
            merchant_id=merchant_id,
            customer_id=customer_id,
            feature_id=feature.id,
            feature_key=feature.key,
            feature_name=feature.name,
            product_id=feature.product_id,
            feature_type=feature.type,
            subscription_id=subscription_id,
            source=source,
            active_from=active_from,
            active_to=active_to,
            canceled_at=None,
            template=template,
            usage_period=usage_period if feature.type == "metered" else None,
            anchor=anchor if feature.type == "metered" else None,
            is_soft_limit=is_soft_limit if feature.type == "metered" else False,
            preserve_overage_at_reset=preserve_overage_at_reset if feature.type == "metered" else False,
            billable_metric_id=billable_metric_id if feature.type == "metered" else None,
            test_clock_id=test_clock_id,
            metadata=dict(metadata),
            create_time=now,
            update_time=now,
        )
        entitlement.record(EntitlementChanged(EntitlementChangeKind.ISSUED, entitlement.id, merchant_id))
        return entitlement

    @property
    def metered(self) -> bool:
        return self.feature_type == "metered"

    @property
    def config(self) -> dict[str, Any] | None:
        value = self.template.get("config") if self.feature_type == "static" else None
        return dict(value) if isinstance(value, dict) else None

    def status_at(self, at: datetime) -> str:
        """canceled from ``canceled_at`` on; else expired from ``active_to`` on; else active."""
        if self.canceled_at is not None and self.canceled_at <= at:
            return "canceled"
        if self.active_to is not None and self.active_to <= at:
            return "expired"
        return "active"

    def live_at(self, at: datetime) -> bool:
        """Active at ``at`` and started: access before usage is considered."""
        return self.status_at(at) == "active" and self.active_from <= at

    def overlaps(self, start: datetime, end: datetime | None) -> bool:
        """Whether [start, end) meets this entitlement's (not canceled) lifetime."""
        if self.canceled_at is not None:
            return False
        ends_after_start = self.active_to is None or self.active_to > start
        starts_before_end = end is None or self.active_from < end
        return ends_after_start and starts_before_end

    def terms(self) -> MeteredTerms:
        return MeteredTerms(
            usage_period=self.usage_period,
            anchor=self.anchor or self.active_from,
            is_soft_limit=self.is_soft_limit,
            preserve_overage_at_reset=self.preserve_overage_at_reset,
        )

    @property
    def active_until(self) -> datetime | None:
        ends = [t for t in (self.active_to, self.canceled_at) if t is not None]
        return min(ends) if ends else None

    def ensure_grantable(self) -> None:
        if not self.metered:
            raise FailedPrecondition(
                "ENTITLEMENT_NOT_METERED", f"entitlement {self.id} is {self.feature_type}: only metered entitlements take grants"
            )
        if self.canceled_at is not None:
            raise FailedPrecondition("ENTITLEMENT_CANCELED", f"entitlement {self.id} is canceled")

    def cancel(self, at: datetime, now: datetime) -> bool:
        """No access from ``at`` on (its subscription ended). A repeat does nothing."""
        if self.canceled_at is not None:
            return False
        self.canceled_at = at
        self.active_to = at if self.active_to is None or self.active_to > at else self.active_to
        self.update_time = now
        self.record(EntitlementChanged(EntitlementChangeKind.CANCELED, self.id, self.merchant_id))
        return True


@dataclass(frozen=True)
class FeatureFacts:
    """A catalog feature as an entitlement keeps it."""

    id: str
    key: str
    name: str
    type: str
    product_id: str


# --- grants ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class Grant(Aggregate):
    """Units granted to a metered entitlement: by hand (``manual``), by its template at
    every reset (``reset``, recurring), or bought (``purchase``, once its invoice is paid)."""

    merchant_id: str
    entitlement_id: str
    amount: Decimal
    effective_at: datetime
    expires_at: datetime | None
    voided_at: datetime | None
    priority: int
    reset_min_rollover: Decimal
    reset_max_rollover: Decimal
    recurring: bool
    recurrence_period: str | None
    source: str  # manual | reset | purchase
    idempotency_key: str | None
    request_hash: str | None
    invoice_id: str | None
    purchase_id: str | None
    created_at: datetime
    update_time: datetime

    @classmethod
    def create(
        cls,
        *,
        entitlement: Entitlement,
        amount: Decimal,
        effective_at: datetime,
        expires_at: datetime | None,
        priority: int,
        reset_min_rollover: Decimal,
        reset_max_rollover: Decimal,
        source: str,
        created_at: datetime,
        now: datetime,
        recurrence_period: str | None = None,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        invoice_id: str | None = None,
        purchase_id: str | None = None,
    ) -> Grant:
        check_window(effective_at, expires_at)
        check_rollover(reset_min_rollover, reset_max_rollover)
        grant = cls(
            id=new_id(GRANT_PREFIX),
            merchant_id=entitlement.merchant_id,
            entitlement_id=entitlement.id,
            amount=units(amount, "amount"),
            effective_at=effective_at,
            expires_at=expires_at,
            voided_at=None,
            priority=priority,
            reset_min_rollover=reset_min_rollover,
            reset_max_rollover=reset_max_rollover,
            recurring=recurrence_period is not None,
            recurrence_period=recurrence_period,
            source=source,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            invoice_id=invoice_id,
            purchase_id=purchase_id,
            created_at=created_at,
            update_time=now,
        )
        grant.record(GrantChanged(GrantChangeKind.CREATED, grant.id, grant.merchant_id))
        return grant

    def terms(self) -> GrantTerms:
        return GrantTerms(
            id=self.id,
            amount=self.amount,
            effective_at=self.effective_at,
            expires_at=self.expires_at,
            voided_at=self.voided_at,
            priority=self.priority,
            created_at=self.created_at,
            reset_min_rollover=self.reset_min_rollover,
            reset_max_rollover=self.reset_max_rollover,
            recurring=self.recurring,
        )

    def ensure_same_request(self, fingerprint: str) -> None:
        if self.request_hash != fingerprint:
            raise key_reused()

    def void(self, at: datetime, now: datetime) -> bool:
        """Stops counting from ``at`` on. A repeat does nothing (the first void stands)."""
        if self.voided_at is not None:
            return False
        self.voided_at = at
        self.update_time = now
        self.record(GrantChanged(GrantChangeKind.VOIDED, self.id, self.merchant_id))
        return True


def key_reused() -> AlreadyExists:
    """The one 409 of an idempotency key reused with other parameters."""
    return AlreadyExists("IDEMPOTENCY_KEY_REUSED", "this idempotencyKey was already used with different parameters", field="idempotencyKey")


# --- purchases ------------------------------------------------------------------------


@dataclass(kw_only=True)
class GrantPurchase(Aggregate):
    """Units sold through an ad-hoc invoice: pending until the invoice is paid, then the
    grant it minted (``grant_id``)."""

    merchant_id: str
    entitlement_id: str
    idempotency_key: str
    request_hash: str
    amount: Decimal
    price: str  # as requested, a decimal string in major units
    currency: str
    effective_at: datetime | None
    expires_at: datetime | None
    reset_min_rollover: Decimal | None
    reset_max_rollover: Decimal | None
    success_url: str | None
    cancel_url: str | None
    payment_expires_at: datetime | None
    status: str  # pending | paid
    invoice_id: str | None
    grant_id: str | None
    paid_at: datetime | None
    create_time: datetime
    update_time: datetime

    @classmethod
    def create(
        cls,
        *,
        entitlement: Entitlement,
        idempotency_key: str,
        fingerprint: str,
        amount: Decimal,
        price: str,
        currency: str,
        effective_at: datetime | None,
        expires_at: datetime | None,
        reset_min_rollover: Decimal | None,
        reset_max_rollover: Decimal | None,
        success_url: str | None,
        cancel_url: str | None,
        payment_expires_at: datetime | None,
        now: datetime,
    ) -> GrantPurchase:
        if effective_at is not None:
            check_window(effective_at, expires_at)
        check_rollover(reset_min_rollover or Decimal(0), UNLIMITED if reset_max_rollover is None else reset_max_rollover)
        return cls(
            id=new_id(PURCHASE_PREFIX),
            merchant_id=entitlement.merchant_id,
            entitlement_id=entitlement.id,
            idempotency_key=idempotency_key,
            request_hash=fingerprint,
            amount=units(amount, "amount"),
            price=price,
            currency=currency,
            effective_at=effective_at,
            expires_at=expires_at,
            reset_min_rollover=reset_min_rollover,
            reset_max_rollover=reset_max_rollover,
            success_url=success_url,
            cancel_url=cancel_url,
            payment_expires_at=payment_expires_at,
            status="pending",
            invoice_id=None,
            grant_id=None,
            paid_at=None,
            create_time=now,
            update_time=now,
        )

    def attach_invoice(self, invoice_id: str, now: datetime) -> None:
        if self.invoice_id != invoice_id:
            self.invoice_id = invoice_id
            self.update_time = now

    def pay(self, entitlement: Entitlement, paid_at: datetime, now: datetime) -> Grant:
        """The grant the payment mints (call once: ``grant_id`` is None)."""
        effective_at = self.effective_at or paid_at
        expires_at = self.expires_at
        if expires_at is not None and expires_at <= effective_at:
            expires_at = effective_at  # paid after it would have expired: a grant that never counts
        grant = Grant.create(
            entitlement=entitlement,
            amount=self.amount,
            effective_at=effective_at,
            expires_at=None,
            priority=0,
            reset_min_rollover=self.reset_min_rollover if self.reset_min_rollover is not None else Decimal(0),
            reset_max_rollover=self.reset_max_rollover if self.reset_max_rollover is not None else UNLIMITED,
            source="purchase",
            created_at=paid_at,
            now=now,
            invoice_id=self.invoice_id,
            purchase_id=self.id,
        )
        grant.expires_at = expires_at
        self.status, self.grant_id, self.paid_at, self.update_time = "paid", grant.id, paid_at, now
        return grant
