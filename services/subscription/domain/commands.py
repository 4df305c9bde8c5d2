"""What a subscription-service mutation asks for, in plain values: server.py builds these
from requests (protos stay there), use_cases.py carries them out. Updates carry the
AIP-134 mask's fields (proto names) and their new values, None where a field is cleared."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ConsumerDetails:
    """The consumer organization to create, or reuse by email."""

    name: str
    email: str
    address: Mapping[str, str]
    phone: str | None = None


@dataclass(frozen=True)
class CreateCustomer:
    consumer: ConsumerDetails | None = None
    consumer_id: str | None = None
    tax_id: str | None = None
    external_id: str | None = None
    tax_rates: Mapping[str, Any] = field(default_factory=dict)
    # the request field the consumer came in (inline customers of a subscription: "customer")
    consumer_field: str = "consumer"


@dataclass(frozen=True)
class Update:
    resource_id: str
    changes: Mapping[str, Any]


@dataclass(frozen=True)
class Delete:
    resource_id: str


@dataclass(frozen=True)
class CreateTestClock:
    current_time: datetime | None = None
    name: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class AdvanceTestClock:
    clock_id: str
    current_time: datetime | None = None
    advance_by: str | None = None


@dataclass(frozen=True)
class CreateSubscription:
    name: str
    plan_id: str
    started_at: datetime | None
    customer_id: str | None = None
    customer: CreateCustomer | None = None
    ending_at: datetime | None = None
    auto_charge: bool = False
    tax_exempt: bool = False
    elapsed_period_billing: str | None = None
    test_clock_id: str | None = None
    renewal_reminder_enabled: bool | None = None
    renewal_reminder_days: int | None = None
    payment_term_days: int | None = None
    session_expiry_minutes: float | None = None
    version_policy: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    change_reason: str | None = None
    change_description: str | None = None
    change_metadata: Mapping[str, Any] = field(default_factory=dict)
    redirect_urls: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TerminateSubscription:
    subscription_id: str
    reason: str
    change_reason: str | None = None


@dataclass(frozen=True)
class RecordInvoicePaid:
    subscription_id: str
    invoice_id: str
    sequence_number: int
    amount: str = ""
