"""What the invoicing use cases need from the world: repositories over its own database
(store.py implements them over PostgreSQL, tests/fakes.py in memory) and the services
it reads or tells (clients.py over gRPC, tests/fakes.py in memory).

Every query is scoped to the merchant: another merchant's invoice is NotFound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from libs.core.paging import Page
from services.invoicing.domain.calculation import Billed, Carry, Charge, Coverage
from services.invoicing.domain.commands import InvoiceFilters
from services.invoicing.domain.model import CreditNote, Invoice, InvoiceLine, Terms


class InvoiceRepository(Protocol):
    async def get(self, merchant_id: str, invoice_id: str, *, lock: bool = False, field: str = "id") -> Invoice:
        """The merchant's invoice, or NotFound naming ``field``."""
        ...

    async def by_sequence(self, merchant_id: str, subscription_id: str, sequence_number: int, *, lock: bool = False) -> Invoice | None: ...

    async def add_if_absent(self, invoice: Invoice) -> tuple[Invoice, bool]:
        """The subscription's invoice of that sequence number: ``invoice`` if none existed
        (True), else the one that did (False). The store holds one per (subscription, k)
        however many callers race."""
        ...

    async def by_reference(self, merchant_id: str, purpose: str, reference: str) -> Invoice | None:
        """The merchant's ad-hoc invoice of that (purpose, reference)."""
        ...

    async def add_ad_hoc_if_absent(self, invoice: Invoice) -> tuple[Invoice, bool]:
        """The ad-hoc invoice of (merchant, purpose, reference): ``invoice`` if none existed
        (True), else the one that did (False); one per key however many callers race."""
        ...

    async def save(self, invoice: Invoice) -> None: ...

    async def list_page(self, merchant_id: str, filters: InvoiceFilters, page: Page) -> tuple[list[Invoice], int]:
        """Matching invoices, newest created first (ties: higher sequence number first), and how many match."""
        ...

    async def of_subscription(self, merchant_id: str, subscription_id: str) -> list[Invoice]:
        """Every invoice of the subscription's timeline (purpose subscription), by sequence number."""
        ...

    # --- batches (domain/batches.py) ---

    async def by_sequences(
        self, merchant_id: str, keys: Sequence[tuple[str, int]], *, lock: bool = False
    ) -> dict[tuple[str, int], Invoice]: ...

    async def add_many_if_absent(self, batch: Sequence[Invoice]) -> dict[tuple[str, int], Invoice]:
        """add_if_absent of invoices with distinct keys; a key missing from the answer is
        another merchant's subscription."""
        ...

    async def save_many(self, batch: Sequence[Invoice]) -> None: ...

    async def of_subscriptions(self, merchant_id: str, subscription_ids: Sequence[str]) -> dict[str, list[Invoice]]: ...


class LineRepository(Protocol):
    async def add_all(self, merchant_id: str, lines: Sequence[InvoiceLine]) -> None: ...

    async def of_invoices(self, invoice_ids: Sequence[str]) -> dict[str, list[InvoiceLine]]:
        """Each invoice's stored lines in position order."""
        ...


class BilledRepository(Protocol):
    async def add_all(self, merchant_id: str, subscription_id: str, billed: Sequence[Billed]) -> None: ...

    async def of_subscription(self, merchant_id: str, subscription_id: str, *, window_end_after: datetime) -> list[Billed]:
        """What the subscription's issued invoices billed for windows ending after the instant."""
        ...

    async def add_many(self, merchant_id: str, billed: Sequence[tuple[str, Sequence[Billed]]]) -> None: ...

    async def of_subscriptions(
        self, merchant_id: str, subscription_ids: Sequence[str], *, window_end_after: datetime
    ) -> dict[str, list[Billed]]: ...


class CarryRepository(Protocol):
    async def lock(self, merchant_id: str, customer_id: str, currency: str) -> Carry:
        """The customer's carry in that currency (zero when new), locked until the unit of work ends."""
        ...

    async def peek(self, merchant_id: str, customer_id: str, currency: str) -> Carry: ...

    async def lock_many(self, merchant_id: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Carry]:
        """lock of many (customer, currency) rows, in key order."""
        ...

    async def save_many(self, merchant_id: str, carries: dict[tuple[str, str], Carry], now: datetime) -> None: ...

    async def save(self, merchant_id: str, customer_id: str, currency: str, carry: Carry, now: datetime) -> None: ...


class CreditNoteRepository(Protocol):
    async def add(self, note: CreditNote) -> None: ...

    async def save(self, note: CreditNote) -> None:
        """A stored note's status, void and refund fields as they are now."""
        ...

    async def of_invoice(self, invoice_id: str) -> list[CreditNote]:
        """The invoice's credit notes, oldest first."""
        ...


@dataclass(frozen=True)
class ReceivedOutcome:
    """A charge outcome the payment service reported (RecordChargeOutcome), kept by its
    attempt key: a repeat of a key is answered without changing anything."""

    attempt_key: str
    merchant_id: str
    invoice_id: str
    status: str  # succeeded | failed
    amount: int | None  # atomic units charged (succeeded)
    provider_payment_ref: str | None
    failure_code: str | None
    payment_session_id: str | None
    effective_time: datetime | None
    received_at: datetime


class OutcomeRepository(Protocol):
    async def add_if_absent(self, outcome: ReceivedOutcome) -> bool:
        """Keep the outcome; False when its attempt key was kept already with this status
        (nothing written)."""
        ...

    async def succeeded_charge_of(self, invoice_id: str) -> str | None:
        """The processor's charge that paid the invoice ("" when it named none); None when
        no charge of it succeeded."""
        ...


class Numbering(Protocol):
    async def next_number(self, merchant_id: str) -> int:
        """The merchant's next invoice number (1, 2, ...), from its counter row, locked
        until the unit of work ends: a rolled-back issue gives its number back, so the
        numbers of issued invoices have no gaps."""
        ...

    async def next_numbers(self, merchant_id: str, count: int) -> list[int]:
        """The next ``count`` numbers, consecutive, locked as ``next_number``."""
        ...


class InvoicingUnitOfWork(Protocol):
    @property
    def invoices(self) -> InvoiceRepository: ...

    @property
    def lines(self) -> LineRepository: ...

    @property
    def billed(self) -> BilledRepository: ...

    @property
    def carry(self) -> CarryRepository: ...

    @property
    def credit_notes(self) -> CreditNoteRepository: ...

    @property
    def outcomes(self) -> OutcomeRepository: ...

    @property
    def numbering(self) -> Numbering: ...


# --- other services --------------------------------------------------------------------


class Catalog(Protocol):
    async def charges(self, terms: Terms) -> list[Charge]:
        """The pinned plan version's price slots as charges (with their metrics' names)."""
        ...


@dataclass(frozen=True)
class Reading:
    """One usage answer of metering: the quantity, the watermark it is complete until,
    and what was asked (the line's provenance)."""

    quantity: Decimal
    complete_until: datetime | None
    query: dict[str, Any] = field(default_factory=dict)


class Meter(Protocol):
    async def usage(self, metric_id: str, subject: str, start: datetime, end: datetime) -> Reading: ...

    async def usages(self, wanted: Sequence[tuple[str, str, datetime, datetime]]) -> tuple[list[Reading], datetime | None]:
        """Many (metric, subject, start, end) readings at once, in order, and metering's
        watermark, read before them: every event accepted before it is in the readings."""
        ...


class Subscriptions(Protocol):
    async def invoice_paid(self, invoice: Invoice) -> None:
        """Tell the subscription service (synchronously) that an invoice was paid."""
        ...


@dataclass(frozen=True)
class CoverageQuery:
    """One question to the entitlement service: how much of the subscription's usage of
    the metric over [start, end) its grants covered."""

    subscription_id: str
    metric_id: str
    start: datetime
    end: datetime


class Entitlements(Protocol):
    async def coverages(self, queries: Sequence[CoverageQuery]) -> tuple[list[Coverage | None], datetime | None]:
        """One answer per query, in order (None: no metered entitlement on that metric,
        bill the usage as it is), and the watermark the usage was counted until."""
        ...

    async def purchase_paid(self, invoice: Invoice, paid_at: datetime | None) -> None:
        """Tell the entitlement service (synchronously) that a grant-purchase invoice was
        paid; ``paid_at`` in the customer's time (None: now in the customer's time)."""
        ...


# --- the payment service ------------------------------------------------------------------


@dataclass(frozen=True)
class CheckoutLine:
    """A line the hosted page lists: what, its amount (atomic units) and quantity."""

    description: str
    amount: int
    quantity: Decimal = Decimal(1)


@dataclass(frozen=True)
class SessionRequest:
    """Open (or, with ``replace``, renew) the checkout session of one payable invoice."""

    entity_type: str  # subscription (Invoice 0) | invoice | topup (grant purchase)
    entity_id: str
    customer_id: str
    subscription_id: str | None
    amount: int  # atomic units owed (> 0)
    currency: str
    label: str
    lines: Sequence[CheckoutLine]
    success_redirect_url: str | None
    failure_redirect_url: str | None
    expires_at: datetime  # wall time
    replace: bool = False
    save_payment_method: bool = False


@dataclass(frozen=True)
class Session:
    """An open checkout session: its id (ps_...) and its hosted page."""

    id: str
    url: str


@dataclass(frozen=True)
class ChargeRequest:
    """Charge an invoice off-session on the customer's saved method (ChargeInvoice)."""

    invoice_id: str
    customer_id: str
    subscription_id: str | None
    amount: int  # atomic units owed
    currency: str
    attempt_key: str
    trigger: str = "manual"


@dataclass(frozen=True)
class ChargeResult:
    """How a charge attempt ended (ChargeOutcome)."""

    status: str  # succeeded | failed | processing | no_payment_method
    attempt_key: str
    provider_payment_ref: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    decline_code: str | None = None
    payment_session_id: str | None = None


@dataclass(frozen=True)
class RefundResult:
    """RefundInvoice's answer: whether money went back through the processor."""

    refunded: bool
    provider_refund_ref: str | None
    status: str


class Payments(Protocol):
    async def open_sessions(self, merchant_id: str, requests: Sequence[SessionRequest]) -> list[Session]:
        """One session per request, in order (idempotent per entity; ``replace`` renews)."""
        ...

    async def charge_invoice(self, merchant_id: str, request: ChargeRequest) -> ChargeResult:
        """Raises FailedPrecondition CONCURRENT_ATTEMPT while another attempt is in flight."""
        ...

    async def refund_invoice(
        self, merchant_id: str, *, invoice_id: str, credit_note_id: str, amount: int, currency: str, reason: str | None
    ) -> RefundResult:
        """Refunds what was charged for the invoice, idempotent by the credit note id."""
        ...
