"""What a payment-service call asks for, in plain values: server.py builds these from
requests (protos stay there), use_cases.py carries them out. ``None`` is "not given"."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from libs.core.grid import Duration


@dataclass(frozen=True)
class LineItem:
    description: str
    amount: Decimal
    quantity: int = 1


@dataclass(frozen=True)
class CreatePayment:
    amount: Decimal
    currency: str
    idempotency_key: str | None = None
    customer_id: str | None = None
    reference: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    line_items: list[LineItem] = field(default_factory=list)
    success_redirect_url: str | None = None
    failure_redirect_url: str | None = None
    save_payment_method: bool = False
    # expiresIn (default P30D, at most P31D)
    expires_in: Duration | None = None
    # the given parameters (JSON spelling): a replayed key must repeat them
    given: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PaymentFilters:
    status: str | None = None
    customer_id: str | None = None


@dataclass(frozen=True)
class SessionFilters:
    subscription_id: str | None = None
    customer_id: str | None = None
    status: str | None = None
    entity_type: str | None = None


@dataclass(frozen=True)
class CheckoutLine:
    description: str
    amount: str
    quantity: str


@dataclass(frozen=True)
class OpenSession:
    entity_type: str
    entity_id: str
    customer_id: str
    amount: Decimal
    currency: str
    subscription_id: str | None = None
    entity_label: str | None = None
    lines: list[CheckoutLine] = field(default_factory=list)
    success_redirect_url: str | None = None
    failure_redirect_url: str | None = None
    expires_at: datetime | None = None
    replace: bool = False
    save_payment_method: bool = False


@dataclass(frozen=True)
class CreateSetupSession:
    customer_id: str
    success_redirect_url: str | None = None
    failure_redirect_url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None


@dataclass(frozen=True)
class ChargeInvoice:
    invoice_id: str
    customer_id: str
    amount: Decimal
    currency: str
    attempt_key: str
    trigger: str  # automatic | manual
    attempt_number: int = 0
    subscription_id: str | None = None
    first_attempt_at: datetime | None = None
    effective_time: datetime | None = None


@dataclass(frozen=True)
class RefundInvoice:
    invoice_id: str
    credit_note_id: str
    amount: Decimal
    currency: str
    reason: str | None = None


@dataclass(frozen=True)
class CompleteCheckout:
    session_id: str
    card_token: str
    submit_nonce: str | None = None


@dataclass(frozen=True)
class UpdateSettings:
    retry_schedule_days: list[int] | None = None
    after_final_failure: str | None = None


__all__ = [
    "ChargeInvoice",
    "CheckoutLine",
    "CompleteCheckout",
    "CreatePayment",
    "CreateSetupSession",
    "LineItem",
    "OpenSession",
    "PaymentFilters",
    "RefundInvoice",
    "SessionFilters",
    "UpdateSettings",
]
