"""What an invoicing call asks for, in plain values: server.py builds these from requests
(protos stay there), use_cases.py carries them out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.invoicing.domain.model import Layout, Terms


@dataclass(frozen=True)
class OpenInvoice:
    terms: Terms
    sequence_number: int
    layout: Layout
    effective_time: datetime


@dataclass(frozen=True)
class CloseInvoice:
    terms: Terms
    sequence_number: int
    grace_period_end: datetime
    layout: Layout | None
    effective_time: datetime


@dataclass(frozen=True)
class IssueInvoice:
    terms: Terms
    sequence_number: int
    effective_time: datetime


@dataclass(frozen=True)
class AdHocItem:
    """One line of an ad-hoc invoice as asked: decimal strings, parsed by the aggregate."""

    description: str
    quantity: str
    amount: str


@dataclass(frozen=True)
class IssueAdHocInvoice:
    customer_id: str
    currency: str
    lines: Sequence[AdHocItem]
    purpose: str
    reference: str
    subscription_id: str | None
    effective_time: datetime
    success_url: str | None = None
    cancel_url: str | None = None
    payment_expires_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordPayment:
    invoice_id: str
    method: str
    reason: str | None = None


@dataclass(frozen=True)
class InvoiceFilters:
    status: str | None = None
    subscription_id: str | None = None
    customer_id: str | None = None


@dataclass(frozen=True)
class RecordChargeOutcome:
    """The payment service's report of how a charge attempt ended (RecordChargeOutcome)."""

    invoice_id: str
    status: str  # succeeded | failed
    attempt_key: str
    amount: str = ""  # decimal string charged (succeeded)
    provider_payment_ref: str | None = None
    failure_code: str | None = None
    payment_session_id: str | None = None
    effective_time: datetime | None = None
