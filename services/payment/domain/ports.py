"""What the payment service's use cases need from storage and from other systems.

store.py implements the repositories over PostgreSQL. Every merchant-facing query is
scoped to the merchant: another merchant's session, payment or attempt is NotFound. The
janitor's queries (``unsettled``, ``unreported``, ``lapsed``) span merchants: it works for
all of them. A repository registers every aggregate it returns or adds with the unit of
work, which collects their events at commit.

The card processor is services/payment/processors/base.Processor; invoicing (an invoice's
state, RecordChargeOutcome) and the subscription service (customers) are ports too
(clients.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from libs.core.paging import Page
from services.payment.domain.commands import PaymentFilters, SessionFilters
from services.payment.domain.model import ChargeAttempt, CollectionSettings, Payment, PaymentMethod, PaymentSession, Refund


class SessionRepository(Protocol):
    async def get(self, merchant_id: str, resource_id: str, *, field: str | None = None, lock: bool = False) -> PaymentSession: ...

    async def save(self, session: PaymentSession) -> None: ...

    async def add(self, session: PaymentSession) -> None: ...

    async def add_open(self, session: PaymentSession) -> bool:
        """Insert a payment-mode session unless its entity has an open one (False: nothing written)."""
        ...

    async def open_of_entity(self, merchant_id: str, entity_type: str, entity_id: str, *, lock: bool = False) -> PaymentSession | None: ...

    async def open_of_payable(
        self, merchant_id: str, entity_id: str, *, lock: bool = False, skip_locked: bool = False
    ) -> list[PaymentSession]:
        """The open payment-mode sessions of an invoice or payment, whatever their entity
        type (``skip_locked``: not those another transaction holds)."""
        ...

    async def list_page(self, merchant_id: str, filters: SessionFilters, page: Page) -> tuple[list[PaymentSession], int]: ...

    async def lapsed(self, now: datetime, limit: int) -> list[PaymentSession]:
        """Pending sessions past their end, of every merchant."""
        ...

    async def stuck(self, before: datetime, limit: int) -> list[PaymentSession]:
        """Setup sessions claimed (processing) before ``before``, of every merchant."""
        ...


class PaymentRepository(Protocol):
    async def get(self, merchant_id: str, resource_id: str, *, field: str | None = None, lock: bool = False) -> Payment: ...

    async def add(self, payment: Payment) -> None: ...

    async def save(self, payment: Payment) -> None: ...

    async def by_key(self, merchant_id: str, key: str) -> Payment | None:
        """The payment made with this idempotency key; until this unit of work ends no other
        one can be made with it."""
        ...

    async def list_page(self, merchant_id: str, filters: PaymentFilters, page: Page) -> tuple[list[Payment], int]: ...

    async def lapsed(self, now: datetime, limit: int) -> list[Payment]: ...


class MethodRepository(Protocol):
    async def get(self, merchant_id: str, resource_id: str, *, field: str | None = None, lock: bool = False) -> PaymentMethod: ...

    async def add(self, method: PaymentMethod) -> None: ...

    async def of_customer(self, merchant_id: str, customer_id: str) -> list[PaymentMethod]:
        """Newest first: the first one is what off-session charges draw on."""
        ...

    async def delete(self, merchant_id: str, method_id: str) -> None:
        """The method is no longer the customer's (a card saved to be charged, then declined)."""
        ...


class AttemptRepository(Protocol):
    async def get(self, merchant_id: str, resource_id: str, *, field: str | None = None, lock: bool = False) -> ChargeAttempt: ...

    async def save(self, attempt: ChargeAttempt) -> None: ...

    async def add_new(self, attempt: ChargeAttempt) -> bool:
        """Insert unless a unique rule holds it back (its key is taken, its payable has an
        attempt in flight or a succeeded one, its session a submit of the same nonce):
        False, nothing written. A conflicting insert still in flight is waited for."""
        ...

    async def delete(self, attempt: ChargeAttempt) -> None:
        """Only an attempt that certainly never reached the processor."""
        ...

    async def by_key(self, merchant_id: str, key: str, *, lock: bool = False) -> ChargeAttempt | None: ...

    async def by_nonce(self, merchant_id: str, session_id: str, nonce: str) -> ChargeAttempt | None: ...

    async def succeeded_of(self, merchant_id: str, payable_type: str, payable_id: str) -> ChargeAttempt | None: ...

    async def failed_of_session(self, merchant_id: str, session_id: str, *, excluding: str | None = None) -> int:
        """How many of a session's attempts failed (declines), not counting ``excluding``."""
        ...

    async def first_automatic_at(self, merchant_id: str, invoice_id: str) -> datetime | None:
        """When the invoice's first automatic attempt was (the dunning schedule counts from it)."""
        ...

    async def unsettled(self, before: datetime, limit: int) -> list[ChargeAttempt]:
        """Attempts sending or processing, last touched before ``before``, of every merchant."""
        ...

    async def unreported(self, before: datetime, limit: int) -> list[ChargeAttempt]:
        """Decided attempts (before ``before``: the deciding call tells invoicing itself)
        whose outcome invoicing must still be told, of every merchant."""
        ...


class SettingsRepository(Protocol):
    async def get(self, merchant_id: str) -> CollectionSettings:
        """The merchant's settings (the defaults when never changed)."""
        ...

    async def save(self, settings: CollectionSettings) -> None: ...


class RefundRepository(Protocol):
    async def by_credit_note(self, merchant_id: str, credit_note_id: str, *, lock: bool = False) -> Refund | None: ...

    async def add_new(self, refund: Refund) -> bool: ...

    async def save(self, refund: Refund) -> None: ...

    async def delete(self, refund: Refund) -> None: ...

    async def pending(self, before: datetime, limit: int) -> list[Refund]: ...


class WebhookLog(Protocol):
    async def claim(self, processor: str, event_id: str, *, merchant_id: str, event_type: str, now: datetime) -> bool:
        """True the first time a processor's event id is seen (committed with its effect)."""
        ...


class PaymentUnitOfWork(Protocol):
    @property
    def sessions(self) -> SessionRepository: ...

    @property
    def payments(self) -> PaymentRepository: ...

    @property
    def methods(self) -> MethodRepository: ...

    @property
    def attempts(self) -> AttemptRepository: ...

    @property
    def settings(self) -> SettingsRepository: ...

    @property
    def refunds(self) -> RefundRepository: ...

    @property
    def webhooks(self) -> WebhookLog: ...


@dataclass(frozen=True)
class InvoiceState:
    """What the page needs to know of an invoice before charging it."""

    status: str  # ISSUED, PAYMENT_FAILED, PAID, ...
    unpaid_amount: Decimal
    currency: str

    @property
    def payable(self) -> bool:
        return self.status in ("ISSUED", "PAYMENT_FAILED") and self.unpaid_amount > 0


@dataclass(frozen=True)
class ChargeReport:
    """How an attempt of an invoice ended, for invoicing's RecordChargeOutcome."""

    invoice_id: str
    status: str  # succeeded | failed
    attempt_key: str
    amount: str
    provider_payment_ref: str | None
    failure_code: str | None
    payment_session_id: str | None
    effective_time: datetime | None


@dataclass(frozen=True)
class RecordedOutcome:
    """Invoicing's answer to RecordChargeOutcome: the invoice's status and which attempt
    paid it (None: unpaid, or paid out of band)."""

    status: str
    paid_by_attempt_key: str | None = None

    def paid_by_other(self, attempt_key: str) -> bool:
        """Paid, and not by ``attempt_key``: a success of that attempt is a second payment."""
        return self.status == "PAID" and self.paid_by_attempt_key != attempt_key


class Invoicing(Protocol):
    async def invoice_state(self, invoice_id: str) -> InvoiceState: ...

    async def record_charge_outcome(self, report: ChargeReport) -> RecordedOutcome | None:
        """Idempotent by attempt key at invoicing; answers the invoice as it then is."""
        ...


class Customers(Protocol):
    async def ensure_customer(self, customer_id: str, *, field: str = "customerId") -> None:
        """NotFound naming ``field`` unless the merchant has this customer."""
        ...
