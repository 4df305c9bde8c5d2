"""What an invoicing call asks for, in plain values: server.py builds these from requests
(protos stay there), use_cases.py carries them out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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
class RecordPayment:
    invoice_id: str
    method: str
    reason: str | None = None


@dataclass(frozen=True)
class InvoiceFilters:
    status: str | None = None
    subscription_id: str | None = None
    customer_id: str | None = None
