"""The payment service's aggregates: payment sessions (hosted checkout), one-off payments,
saved payment methods, charge attempts and refunds; the rules that change them and the
events that say so.

After cosmicpython's ``domain/model.py`` (as the other services do it): each method
validates, changes the aggregate and records an event; the unit of work turns recorded
events into outbox rows at commit. Attribute names are the stored column names.

The heart is ``ChargeAttempt``: one row per try of charging a payable (an invoice or a
one-off payment), written and committed as ``sending`` before the processor is called,
its outcome applied monotonically afterwards (``observe``): a final state is never
overwritten by ``processing`` or by an older webhook, and two final states that disagree
are settled by the processor's own answer (``authoritative``), never by a webhook alone.

Amounts are exact decimals in major units (the wire's decimal strings) and integer minor
units for the processor; money never touches a float. Pure: no SQLAlchemy, gRPC or NATS.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from libs.core.domain import Aggregate, DomainEvent
from libs.core.errors import InvalidArgument
from libs.core.ids import PREFIXES, new_id
from libs.core.money import currency_exponent, exact_context
from libs.core.request_rules import is_card_token, is_idempotency_key, is_page_nonce

SESSION_PREFIX = PREFIXES["payment_session"]
PAYMENT_PREFIX = PREFIXES["payment"]
METHOD_PREFIX = PREFIXES["payment_method"]
ATTEMPT_PREFIX = PREFIXES["charge_attempt"]
REFUND_PREFIX = PREFIXES["refund"]

# --- vocabularies -----------------------------------------------------------------------


class SessionStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


OPEN_SESSION_STATUSES = (SessionStatus.PENDING, SessionStatus.PROCESSING)


class SessionMode(StrEnum):
    PAYMENT = "payment"
    SETUP = "setup"


class EntityType(StrEnum):
    """What a session pays: Invoice 0 (subscription), an invoice k >= 1 (invoice), a grant
    purchase's ad-hoc invoice (topup), a one-off payment (payment); a setup session saves a
    card for a customer (customer)."""

    INVOICE = "invoice"
    SUBSCRIPTION = "subscription"
    TOPUP = "topup"
    PAYMENT = "payment"
    CUSTOMER = "customer"


INVOICE_ENTITY_TYPES = (EntityType.INVOICE, EntityType.SUBSCRIPTION, EntityType.TOPUP)


class PayableType(StrEnum):
    """What a charge pays: an invoice (reported to invoicing) or a one-off payment."""

    INVOICE = "invoice"
    PAYMENT = "payment"


class PaymentStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class AttemptStatus(StrEnum):
    SENDING = "sending"  # committed, the processor maybe not called yet
    PROCESSING = "processing"  # the processor has it (or its answer never came)
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (AttemptStatus.SUCCEEDED, AttemptStatus.FAILED)


IN_FLIGHT = (AttemptStatus.SENDING, AttemptStatus.PROCESSING)


class Trigger(StrEnum):
    AUTOMATIC = "automatic"  # autoCharge at issue and the dunning retries (the timeline)
    MANUAL = "manual"  # retryPayment
    PAGE = "page"  # the hosted page's submit


class AfterFinalFailure(StrEnum):
    KEEP_ACTIVE = "keep_active"
    TERMINATE = "terminate"


class Change(StrEnum):
    """What an observation of a charge did to its attempt."""

    APPLIED = "applied"  # the attempt moved on
    DUPLICATE = "duplicate"  # it said what was recorded already
    STALE = "stale"  # older than what is recorded (processing after a final state, a lower sequence)
    CONFLICT = "conflict"  # a final state other than the recorded one, from a source that cannot settle it


# failure codes Accrue itself gives (the processor's own come through as they are)
NOT_SENT = "not_sent"  # the processor never received the charge (found by key: none)
PROCESSOR_TIMEOUT = "processor_timeout"


# --- events -----------------------------------------------------------------------------


class SessionChangeKind(StrEnum):
    OPENED = "opened"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


@dataclass(frozen=True)
class SessionChanged(DomainEvent):
    kind: SessionChangeKind
    session_id: str
    merchant_id: str


@dataclass(frozen=True)
class ChargeDecided(DomainEvent):
    attempt_id: str
    merchant_id: str
    status: AttemptStatus


@dataclass(frozen=True)
class PaymentMethodSaved(DomainEvent):
    method_id: str
    merchant_id: str


# --- rules ------------------------------------------------------------------------------

PAYMENT_CURRENCIES = ("USD", "EUR", "GBP", "AUD")
MIN_PAYMENT = Decimal("1.00")
MAX_PAYMENT = Decimal("5000.00")
MAX_LINE_ITEMS = 100
DEFAULT_PAYMENT_LIFETIME = timedelta(days=30)
MAX_PAYMENT_LIFETIME = timedelta(days=31)
DEFAULT_SETUP_LIFETIME = timedelta(days=30)
MAX_SETUP_LIFETIME = timedelta(days=30)
DEFAULT_INVOICE_SESSION_LIFETIME = timedelta(days=30)

# a card-testing guard: a session stops taking cards after this many declines
MAX_DECLINES_PER_SESSION = 10
TOO_MANY_DECLINES = "too_many_declines"
# a charge the processor answered for an attempt's key that is not the attempt's charge
PROCESSOR_MISMATCH = "processor_mismatch"
# the refund of a charge that paid an invoice something else had paid already
DUPLICATE_REFUND_REASON = "duplicate_charge"

# one-off payment metadata, as the catalog's LIMITS (Stripe's numbers)
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LENGTH = 40
MAX_METADATA_VALUE_LENGTH = 500
MAX_LINE_DESCRIPTION_LENGTH = 500
MAX_LINE_QUANTITY = 1_000_000

DEFAULT_RETRY_SCHEDULE_DAYS = (3, 5, 7)
MAX_RETRIES = 10
MAX_RETRY_DAY = 60

_URL = re.compile(r"https?://[^\s]+")


def redirect_url(value: str | None, field: str) -> str | None:
    """A merchant's redirect: an absolute http(s) URL (no javascript:, no data:)."""
    if value is None or value == "":
        return None
    if _URL.fullmatch(value) is None:
        raise InvalidArgument(field, f"{field} must be an absolute http or https URL", reason="INVALID_URL")
    return value


# the largest charge in minor units (a processor's amounts are integers; JSON-safe)
MAX_MINOR = 10**15


def to_minor(amount: Decimal, currency: str, field: str = "amount") -> int:
    """``amount`` in the currency's minor units (USD cents), exactly: an amount finer than
    the currency's minor unit is refused, never rounded."""
    exponent = currency_exponent(currency)
    scaled = amount.scaleb(exponent, context=exact_context())
    if scaled != scaled.to_integral_value(context=exact_context()):
        raise InvalidArgument(field, f"{field} has more decimal places than {currency} has ({exponent})", reason="TOO_MANY_DECIMAL_PLACES")
    minor = int(scaled)
    if abs(minor) >= MAX_MINOR:
        raise InvalidArgument(field, f"{field} is too large to charge", reason="AMOUNT_TOO_LARGE")
    return minor


def amount_text(amount: Decimal, currency: str | None) -> str:
    """A decimal string with the currency's places ("49.00"), as the API shows amounts."""
    if currency is None:
        return format(amount, "f")
    places = currency_exponent(currency)
    return format(amount.quantize(Decimal(1).scaleb(-places), context=exact_context()), "f")


def check_payment_amount(amount: Decimal) -> Decimal:
    if not MIN_PAYMENT <= amount <= MAX_PAYMENT:
        raise InvalidArgument(
            "amount", f"amount must be between {MIN_PAYMENT} and {MAX_PAYMENT}, got {format(amount, 'f')}", reason="AMOUNT_OUT_OF_RANGE"
        )
    return amount


def check_payment_currency(currency: str) -> str:
    if currency not in PAYMENT_CURRENCIES:
        raise InvalidArgument("currency", f"currency must be one of {', '.join(PAYMENT_CURRENCIES)}", reason="UNSUPPORTED_CURRENCY")
    return currency


def payment_expiry(now: datetime, lifetime: timedelta | None, *, later: datetime | None = None) -> datetime:
    """When a one-off payment's page stops taking payment: ``expiresIn`` (default P30D) from
    now, at most P31D. ``later`` is ``now`` moved by a calendar duration (P1M)."""
    expires_at = later if later is not None else now + (lifetime if lifetime is not None else DEFAULT_PAYMENT_LIFETIME)
    if expires_at <= now:
        raise InvalidArgument("expiresIn", "expiresIn must be a positive duration", reason="OUT_OF_RANGE")
    if expires_at > now + MAX_PAYMENT_LIFETIME:
        raise InvalidArgument("expiresIn", "expiresIn must be at most P31D", reason="OUT_OF_RANGE")
    return expires_at


def setup_expiry(now: datetime, expires_at: datetime | None) -> datetime:
    """A setup session's end: ``expiresAt`` (in the future, at most 30 days ahead), default 30 days."""
    if expires_at is None:
        return now + DEFAULT_SETUP_LIFETIME
    if expires_at <= now:
        raise InvalidArgument("expiresAt", "expiresAt must be in the future", reason="OUT_OF_RANGE")
    if expires_at > now + MAX_SETUP_LIFETIME:
        raise InvalidArgument("expiresAt", "expiresAt must be at most 30 days ahead", reason="OUT_OF_RANGE")
    return expires_at


def request_hash(parameters: dict[str, Any]) -> str:
    """The fingerprint of a create's parameters: an idempotency key replayed with other
    parameters is refused."""
    canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_card_token(value: str, field: str = "cardToken") -> str:
    """A processor's token reference (``tok_...``), never card data. The value is not quoted
    back: a refused one may be a card number."""
    if not is_card_token(value):
        raise InvalidArgument(
            field,
            f"{field} must be the processor's card token (a lowercase prefix, '_', then 8-64 letters or digits; never card data)",
            reason="INVALID_CARD_TOKEN",
        )
    return value


def check_submit_nonce(value: str, field: str = "submitNonce") -> str:
    """The page render's nonce: 8-128 URL-safe characters, no run of 12 or more digits."""
    if not is_page_nonce(value):
        raise InvalidArgument(field, f"{field} must be 8-128 letters, digits, '_' or '-' (and no card data)", reason="INVALID_SUBMIT_NONCE")
    return value


def check_idempotency_key(value: str, field: str = "idempotencyKey") -> str:
    """The Idempotency-Key header's rule (the gateway's): 1 to 255 printable ASCII characters."""
    if not is_idempotency_key(value):
        raise InvalidArgument(
            field,
            f"{field} must be 1 to 255 printable ASCII characters (no tabs, no control or non-ASCII characters)",
            reason="INVALID_IDEMPOTENCY_KEY",
        )
    return value


def _shown(key: str) -> str:
    return repr(key if len(key) <= 40 else key[:40] + "...")


def check_metadata(values: dict[str, str], field: str = "metadata") -> dict[str, str]:
    """At most 50 keys of at most 40 characters, values of at most 500 (the catalog's LIMITS)."""
    if len(values) > MAX_METADATA_KEYS:
        raise InvalidArgument(
            field, f"{field} has {len(values)} keys; at most {MAX_METADATA_KEYS} are allowed", reason="TOO_MANY_METADATA_KEYS"
        )
    for key, value in values.items():
        if len(key) > MAX_METADATA_KEY_LENGTH:
            raise InvalidArgument(
                field, f"{field} key {_shown(key)} is longer than {MAX_METADATA_KEY_LENGTH} characters", reason="KEY_TOO_LONG"
            )
        if len(value) > MAX_METADATA_VALUE_LENGTH:
            here = f"{field}.{key}"
            raise InvalidArgument(here, f"{here} is longer than {MAX_METADATA_VALUE_LENGTH} characters", reason="TOO_LONG")
    return dict(values)


def check_line_items(items: list[tuple[str, Decimal, int]], amount: Decimal, currency: str) -> None:
    """A one-off payment's display lines (description, amount, quantity): each amount a
    non-negative exact amount of the currency, at most 5000.00, each quantity 1-1000000;
    together (amount x quantity) exactly the payment's amount."""
    if len(items) > MAX_LINE_ITEMS:
        raise InvalidArgument("lineItems", f"lineItems has at most {MAX_LINE_ITEMS} items", reason="TOO_MANY_ITEMS")
    if not items:
        return
    total = 0
    for i, (description, line_amount, quantity) in enumerate(items):
        here = f"lineItems[{i}]"
        if len(description) > MAX_LINE_DESCRIPTION_LENGTH:
            raise InvalidArgument(
                f"{here}.description", f"{here}.description is longer than {MAX_LINE_DESCRIPTION_LENGTH} characters", reason="TOO_LONG"
            )
        if line_amount < 0:
            raise InvalidArgument(f"{here}.amount", f"{here}.amount must not be negative", reason="MUST_NOT_BE_NEGATIVE")
        if line_amount > MAX_PAYMENT:
            shown = format(line_amount, "f")
            message = f"{here}.amount must be at most {MAX_PAYMENT}, got {shown}"
            raise InvalidArgument(f"{here}.amount", message, reason="AMOUNT_OUT_OF_RANGE")
        minor = to_minor(line_amount, currency, f"{here}.amount")
        if not 1 <= quantity <= MAX_LINE_QUANTITY:
            raise InvalidArgument(
                f"{here}.quantity", f"{here}.quantity must be between 1 and {MAX_LINE_QUANTITY}, got {quantity}", reason="OUT_OF_RANGE"
            )
        total += minor * quantity
    expected = to_minor(amount, currency)
    if total != expected:
        places = currency_exponent(currency)
        summed = amount_text(Decimal(total).scaleb(-places, context=exact_context()), currency)
        raise InvalidArgument(
            "lineItems",
            f"lineItems add up to {summed} (amount x quantity) but amount is {amount_text(amount, currency)}",
            reason="LINE_ITEMS_MISMATCH",
        )


def page_attempt_key(session_id: str, n: int) -> str:
    """The key (and the processor's Idempotency-Key) of a session's n-th page attempt."""
    return f"{session_id}:{n}"


# --- collection settings and dunning ----------------------------------------------------


def check_retry_schedule(days: list[int]) -> list[int]:
    """Days after the first failed automatic charge: strictly increasing, each 1-60, at most 10."""
    if len(days) > MAX_RETRIES:
        raise InvalidArgument("retryScheduleDays", f"retryScheduleDays has at most {MAX_RETRIES} entries", reason="TOO_MANY_RETRIES")
    for i, day in enumerate(days):
        if not 1 <= day <= MAX_RETRY_DAY:
            raise InvalidArgument(
                f"retryScheduleDays[{i}]", f"retryScheduleDays[{i}] must be between 1 and {MAX_RETRY_DAY}, got {day}", reason="OUT_OF_RANGE"
            )
        if i and day <= days[i - 1]:
            raise InvalidArgument(
                f"retryScheduleDays[{i}]",
                f"retryScheduleDays must be strictly increasing ({days[i - 1]} then {day})",
                reason="NOT_INCREASING",
            )
    return list(days)


@dataclass
class CollectionSettings:
    """A merchant's dunning: when a failed automatic charge is retried, and what happens
    after the last retry fails. ``update_time`` None: the defaults, never changed."""

    merchant_id: str
    retry_schedule_days: list[int] = field(default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE_DAYS))
    after_final_failure: str = AfterFinalFailure.KEEP_ACTIVE.value
    update_time: datetime | None = None

    def update(self, *, retry_schedule_days: list[int] | None, after_final_failure: str | None, now: datetime) -> None:
        if retry_schedule_days is not None:
            self.retry_schedule_days = check_retry_schedule(retry_schedule_days)
        if after_final_failure is not None:
            if after_final_failure not in set(AfterFinalFailure):
                raise InvalidArgument("afterFinalFailure", "afterFinalFailure must be keep_active or terminate", reason="INVALID_VALUE")
            self.after_final_failure = after_final_failure
        self.update_time = now


@dataclass(frozen=True)
class NextAttempt:
    """What a failed automatic attempt answers: the next retry's instant, or the policy."""

    at: datetime | None
    after_final_failure: str | None


def next_attempt(settings: CollectionSettings, attempt_number: int, first_attempt_at: datetime) -> NextAttempt:
    """Attempt n failed: the retry is due at first_attempt_at + schedule[n] days while n is
    within the schedule (attempt 0 at issue: the first retry), else the schedule is
    exhausted and the merchant's policy applies."""
    schedule = settings.retry_schedule_days
    if 0 <= attempt_number < len(schedule):
        return NextAttempt(first_attempt_at + timedelta(days=schedule[attempt_number]), None)
    return NextAttempt(None, settings.after_final_failure)


# --- sessions ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class PaymentSession(Aggregate):
    """A hosted checkout: pays one payable (payment mode) or saves a card (setup mode).
    Pending until paid (completed), replaced or paid another way (cancelled), or past its
    ``expires_at`` (expired); processing while an attempt is in flight. A declined charge
    leaves it pending with the decline (the customer may try another card)."""

    merchant_id: str
    mode: str
    entity_type: str
    entity_id: str
    customer_id: str | None
    subscription_id: str | None
    amount: Decimal | None
    currency: str | None
    status: str
    entity_label: str | None
    lines: list[dict[str, str]]
    success_redirect_url: str | None
    failure_redirect_url: str | None
    metadata: dict[str, Any]
    save_payment_method: bool
    expires_at: datetime
    completed_at: datetime | None
    provider_payment_ref: str | None
    failure_code: str | None
    failure_message: str | None
    payment_method_id: str | None
    submit_nonce: str | None
    attempt_count: int
    create_time: datetime
    update_time: datetime
    # the hosted page and the processor taking its cards (set when it is opened)
    url: str | None = None
    processor: str | None = None

    @classmethod
    def open(
        cls,
        *,
        merchant_id: str,
        mode: SessionMode,
        entity_type: EntityType,
        entity_id: str,
        customer_id: str | None,
        subscription_id: str | None,
        amount: Decimal | None,
        currency: str | None,
        entity_label: str | None,
        lines: list[dict[str, str]],
        success_redirect_url: str | None,
        failure_redirect_url: str | None,
        metadata: dict[str, Any],
        save_payment_method: bool,
        expires_at: datetime,
        now: datetime,
        session_id: str | None = None,
    ) -> PaymentSession:
        if mode is SessionMode.PAYMENT and (amount is None or amount <= 0):
            raise InvalidArgument("amount", "amount must be greater than 0", reason="MUST_BE_POSITIVE")
        if expires_at <= now:
            raise InvalidArgument("expiresAt", "expiresAt must be in the future", reason="OUT_OF_RANGE")
        session = cls(
            id=session_id or new_id(SESSION_PREFIX),
            merchant_id=merchant_id,
            mode=mode.value,
            entity_type=entity_type.value,
            entity_id=entity_id,
            customer_id=customer_id,
            subscription_id=subscription_id,
            amount=amount,
            currency=currency,
            status=SessionStatus.PENDING.value,
            entity_label=entity_label,
            lines=lines,
            success_redirect_url=success_redirect_url,
            failure_redirect_url=failure_redirect_url,
            metadata=dict(metadata),
            save_payment_method=save_payment_method,
            expires_at=expires_at,
            completed_at=None,
            provider_payment_ref=None,
            failure_code=None,
            failure_message=None,
            payment_method_id=None,
            submit_nonce=None,
            attempt_count=0,
            create_time=now,
            update_time=now,
        )
        session.record(SessionChanged(SessionChangeKind.OPENED, session.id, merchant_id))
        return session

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_SESSION_STATUSES

    @property
    def payable(self) -> tuple[PayableType, str] | None:
        if self.mode != SessionMode.PAYMENT:
            return None
        if self.entity_type == EntityType.PAYMENT:
            return PayableType.PAYMENT, self.entity_id
        return PayableType.INVOICE, self.entity_id

    def lapsed(self, now: datetime) -> bool:
        """Pending past its end: it takes nothing more (an attempt in flight finishes first)."""
        return self.status == SessionStatus.PENDING and now >= self.expires_at

    def expire(self, now: datetime) -> bool:
        if not self.lapsed(now):
            return False
        self.status = SessionStatus.EXPIRED.value
        self.update_time = now
        self.record(SessionChanged(SessionChangeKind.EXPIRED, self.id, self.merchant_id))
        return True

    def cancel(self, now: datetime) -> bool:
        """Replaced, or its payable paid another way. Only a pending session: one whose
        attempt is in flight finishes it."""
        if self.status != SessionStatus.PENDING:
            return False
        self.status = SessionStatus.CANCELLED.value
        self.update_time = now
        self.record(SessionChanged(SessionChangeKind.CANCELLED, self.id, self.merchant_id))
        return True

    def next_attempt_key(self) -> str:
        """The key of the next page attempt (the session row is locked while it is taken)."""
        self.attempt_count += 1
        return page_attempt_key(self.id, self.attempt_count)

    def begin(self, now: datetime, *, nonce: str | None = None) -> None:
        """A submit was claimed: an attempt (or a card save) is in flight."""
        self.status = SessionStatus.PROCESSING.value
        self.submit_nonce = nonce
        self.failure_code = None
        self.failure_message = None
        self.update_time = now

    def declined(self, code: str | None, message: str | None, now: datetime, *, declines: int = 0) -> None:
        """The attempt failed: pending again, showing why (another card may be tried), unless
        it was the session's ``MAX_DECLINES_PER_SESSION``-th decline (card testing): then
        the session is failed and takes no more cards."""
        if self.status in (SessionStatus.PENDING, SessionStatus.PROCESSING, SessionStatus.COMPLETED):
            self.status = SessionStatus.PENDING.value
        self.failure_code = code
        self.failure_message = message
        self.update_time = now
        if declines >= MAX_DECLINES_PER_SESSION and self.status == SessionStatus.PENDING:
            self.status = SessionStatus.FAILED.value
            self.failure_code = TOO_MANY_DECLINES
            self.failure_message = f"too many declined cards ({declines}): this page takes no more cards"

    def complete(self, now: datetime, *, provider_payment_ref: str | None = None, payment_method_id: str | None = None) -> bool:
        if self.status == SessionStatus.COMPLETED:
            return False
        self.status = SessionStatus.COMPLETED.value
        self.completed_at = now
        self.failure_code = None
        self.failure_message = None
        if provider_payment_ref is not None:
            self.provider_payment_ref = provider_payment_ref
        if payment_method_id is not None:
            self.payment_method_id = payment_method_id
        self.update_time = now
        self.record(SessionChanged(SessionChangeKind.COMPLETED, self.id, self.merchant_id))
        return True

    def release(self, now: datetime) -> None:
        """A claimed setup save that never finished (the process died): pending again."""
        if self.status == SessionStatus.PROCESSING:
            self.status = SessionStatus.PENDING.value
            self.update_time = now


# --- one-off payments -------------------------------------------------------------------


@dataclass(kw_only=True)
class Payment(Aggregate):
    """A one-off payment link: pending until its session is paid (completed) or past
    ``expires_at`` (expired); processing while a charge is in flight."""

    merchant_id: str
    amount: Decimal
    currency: str
    status: str
    customer_id: str | None
    idempotency_key: str | None
    request_hash: str
    reference: str | None
    metadata: dict[str, str]
    line_items: list[dict[str, Any]]
    success_redirect_url: str | None
    failure_redirect_url: str | None
    save_payment_method: bool
    expires_at: datetime
    payment_session_id: str | None
    completed_at: datetime | None
    create_time: datetime
    update_time: datetime

    @classmethod
    def create(
        cls,
        *,
        merchant_id: str,
        amount: Decimal,
        currency: str,
        customer_id: str | None,
        idempotency_key: str | None,
        request_hash: str,
        reference: str | None,
        metadata: dict[str, str],
        line_items: list[dict[str, Any]],
        success_redirect_url: str | None,
        failure_redirect_url: str | None,
        save_payment_method: bool,
        expires_at: datetime,
        now: datetime,
    ) -> Payment:
        check_payment_amount(amount)
        check_payment_currency(currency)
        to_minor(amount, currency)
        if save_payment_method and not customer_id:
            raise InvalidArgument("customerId", "savePaymentMethod needs a customerId", reason="CUSTOMER_REQUIRED")
        if len(line_items) > MAX_LINE_ITEMS:
            raise InvalidArgument("lineItems", f"lineItems has at most {MAX_LINE_ITEMS} items", reason="TOO_MANY_ITEMS")
        return cls(
            id=new_id(PAYMENT_PREFIX),
            merchant_id=merchant_id,
            amount=amount,
            currency=currency,
            status=PaymentStatus.PENDING.value,
            customer_id=customer_id,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            reference=reference,
            metadata=dict(metadata),
            line_items=list(line_items),
            success_redirect_url=success_redirect_url,
            failure_redirect_url=failure_redirect_url,
            save_payment_method=save_payment_method,
            expires_at=expires_at,
            payment_session_id=None,
            completed_at=None,
            create_time=now,
            update_time=now,
        )

    def processing(self, now: datetime) -> None:
        if self.status == PaymentStatus.PENDING:
            self.status = PaymentStatus.PROCESSING.value
            self.update_time = now

    def declined(self, now: datetime) -> None:
        if self.status in (PaymentStatus.PROCESSING, PaymentStatus.COMPLETED):
            self.status = PaymentStatus.PENDING.value
            self.completed_at = None
            self.update_time = now

    def complete(self, now: datetime) -> bool:
        if self.status == PaymentStatus.COMPLETED:
            return False
        self.status = PaymentStatus.COMPLETED.value
        self.completed_at = now
        self.update_time = now
        return True

    def expire(self, now: datetime) -> bool:
        if self.status != PaymentStatus.PENDING or now < self.expires_at:
            return False
        self.status = PaymentStatus.EXPIRED.value
        self.update_time = now
        return True


# --- saved methods ----------------------------------------------------------------------


@dataclass(kw_only=True)
class PaymentMethod(Aggregate):
    """A card saved at the processor for off-session charges: only its brand, last four
    digits and expiry (the number never reaches Accrue)."""

    merchant_id: str
    customer_id: str
    processor: str
    processor_ref: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int
    create_time: datetime

    @classmethod
    def save(
        cls,
        *,
        merchant_id: str,
        customer_id: str,
        processor: str,
        processor_ref: str,
        brand: str,
        last4: str,
        exp_month: int,
        exp_year: int,
        now: datetime,
    ) -> PaymentMethod:
        if not re.fullmatch(r"[0-9]{4}", last4):
            raise ValueError("last4 must be four digits")
        method = cls(
            id=new_id(METHOD_PREFIX),
            merchant_id=merchant_id,
            customer_id=customer_id,
            processor=processor,
            processor_ref=processor_ref,
            brand=brand,
            last4=last4,
            exp_month=exp_month,
            exp_year=exp_year,
            create_time=now,
        )
        method.record(PaymentMethodSaved(method.id, merchant_id))
        return method


# --- charge attempts --------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """A charge's state as one source told it: the processor's answer to the charge or to a
    look-up by key (``authoritative``), a webhook (with its per-object ``sequence``), or
    Accrue's own conclusion (never sent)."""

    status: AttemptStatus
    provider_ref: str | None = None
    failure_code: str | None = None
    decline_code: str | None = None
    failure_message: str | None = None
    sequence: int | None = None
    authoritative: bool = False


@dataclass(kw_only=True)
class ChargeAttempt(Aggregate):
    """One try at charging a payable, identified by ``attempt_key`` (also the processor's
    Idempotency-Key). The database holds at most one in flight and at most one succeeded
    per payable (partial unique indexes), and one per key."""

    merchant_id: str
    attempt_key: str
    payable_type: str
    payable_id: str
    session_id: str | None
    customer_id: str | None
    subscription_id: str | None
    amount: Decimal
    amount_minor: int
    currency: str
    source_kind: str  # token | method
    source_ref: str  # the processor's token (tok_...) or saved method (pm_...)
    payment_method_id: str | None
    status: str
    provider_ref: str | None
    failure_code: str | None
    decline_code: str | None
    failure_message: str | None
    trigger: str
    attempt_number: int
    first_attempt_at: datetime | None
    effective_time: datetime | None
    submit_nonce: str | None
    processor_sequence: int | None
    next_attempt_at: datetime | None
    after_final_failure: str | None
    sent_at: datetime
    decided_at: datetime | None
    reported_at: datetime | None
    create_time: datetime
    update_time: datetime

    @classmethod
    def begin(
        cls,
        *,
        merchant_id: str,
        attempt_key: str,
        payable_type: PayableType,
        payable_id: str,
        session_id: str | None,
        customer_id: str | None,
        subscription_id: str | None,
        amount: Decimal,
        currency: str,
        source_kind: str,
        source_ref: str,
        payment_method_id: str | None,
        trigger: Trigger,
        attempt_number: int,
        first_attempt_at: datetime | None,
        effective_time: datetime | None,
        submit_nonce: str | None,
        now: datetime,
    ) -> ChargeAttempt:
        if amount <= 0:
            raise InvalidArgument("amount", "amount must be greater than 0", reason="MUST_BE_POSITIVE")
        return cls(
            id=new_id(ATTEMPT_PREFIX),
            merchant_id=merchant_id,
            attempt_key=attempt_key,
            payable_type=payable_type.value,
            payable_id=payable_id,
            session_id=session_id,
            customer_id=customer_id,
            subscription_id=subscription_id,
            amount=amount,
            amount_minor=to_minor(amount, currency),
            currency=currency,
            source_kind=source_kind,
            source_ref=source_ref,
            payment_method_id=payment_method_id,
            status=AttemptStatus.SENDING.value,
            provider_ref=None,
            failure_code=None,
            decline_code=None,
            failure_message=None,
            trigger=trigger.value,
            attempt_number=attempt_number,
            first_attempt_at=first_attempt_at,
            effective_time=effective_time,
            submit_nonce=submit_nonce,
            processor_sequence=None,
            next_attempt_at=None,
            after_final_failure=None,
            sent_at=now,
            decided_at=None,
            reported_at=None,
            create_time=now,
            update_time=now,
        )

    @property
    def state(self) -> AttemptStatus:
        return AttemptStatus(self.status)

    @property
    def decided(self) -> bool:
        return self.state.final

    @property
    def needs_report(self) -> bool:
        """Invoicing is told every decided outcome of an invoice's automatic and manual
        attempts, and a page's successes (a page's decline is the customer's to retry)."""
        if self.payable_type != PayableType.INVOICE or not self.decided or self.reported_at is not None:
            return False
        return self.state == AttemptStatus.SUCCEEDED or self.trigger != Trigger.PAGE

    def use_method(self, *, method_ref: str, payment_method_id: str, now: datetime) -> None:
        """A page attempt saving the card first charges the saved method."""
        self.source_kind, self.source_ref, self.payment_method_id = "method", method_ref, payment_method_id
        self.update_time = now

    def resent(self, now: datetime) -> None:
        self.sent_at = now
        self.update_time = now

    def observe(self, seen: Observation, now: datetime) -> Change:
        """Apply what a source says about the charge, monotonically:

        * an older webhook (a sequence not above the last one applied) is stale;
        * ``processing`` never overwrites a final state (stale), and moves ``sending`` on;
        * a final state ends an in-flight attempt (once: ChargeDecided);
        * the same final state again is a duplicate;
        * a different final state changes it only when the processor itself answered
          (``authoritative``: its look-up by key wins), else it is a conflict for the caller
          to settle by asking the processor.
        """
        if seen.sequence is not None and self.processor_sequence is not None and seen.sequence <= self.processor_sequence:
            return Change.STALE
        current = self.state
        if seen.status == AttemptStatus.SENDING:
            raise ValueError("no source observes an attempt as sending")
        if not seen.status.final:
            if current.final:
                return Change.STALE
            self._note(seen, now)
            if current == AttemptStatus.PROCESSING:
                return Change.DUPLICATE
            self.status = AttemptStatus.PROCESSING.value
            return Change.APPLIED
        if current.final:
            if current == seen.status:
                self._note(seen, now)
                return Change.DUPLICATE
            if not seen.authoritative:
                return Change.CONFLICT
        self._note(seen, now)
        self.status = seen.status.value
        if seen.status == AttemptStatus.SUCCEEDED:
            self.failure_code = self.decline_code = self.failure_message = None
            self.next_attempt_at = self.after_final_failure = None
        else:
            self.failure_code = seen.failure_code or self.failure_code or "card_declined"
            self.decline_code = seen.decline_code
            self.failure_message = seen.failure_message
        self.decided_at = now
        self.reported_at = None  # a changed outcome is told again
        self.record(ChargeDecided(self.id, self.merchant_id, seen.status))
        return Change.APPLIED

    def _note(self, seen: Observation, now: datetime) -> None:
        if seen.provider_ref:
            self.provider_ref = seen.provider_ref
        if seen.sequence is not None:
            self.processor_sequence = max(seen.sequence, self.processor_sequence or 0)
        self.update_time = now

    def schedule(self, settings: CollectionSettings) -> None:
        """A failed automatic attempt carries when it is retried (or the policy after the last)."""
        if self.trigger != Trigger.AUTOMATIC or self.state != AttemptStatus.FAILED:
            return
        first = self.first_attempt_at or self.effective_time or self.create_time
        due = next_attempt(settings, self.attempt_number, first)
        self.next_attempt_at, self.after_final_failure = due.at, due.after_final_failure

    def mark_reported(self, now: datetime) -> None:
        self.reported_at = now


# --- refunds ----------------------------------------------------------------------------


class RefundStatus(StrEnum):
    SENDING = "sending"
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(kw_only=True)
class Refund(Aggregate):
    """A full refund of an invoice's charge, idempotent by its credit note (the processor's
    Idempotency-Key); committed as ``sending`` before the processor is called."""

    merchant_id: str
    credit_note_id: str
    invoice_id: str
    attempt_id: str
    charge_ref: str
    amount: Decimal
    amount_minor: int
    currency: str
    status: str
    provider_refund_ref: str | None
    reason: str | None
    create_time: datetime
    update_time: datetime

    @classmethod
    def begin(
        cls,
        *,
        merchant_id: str,
        credit_note_id: str,
        attempt: ChargeAttempt,
        amount: Decimal,
        currency: str,
        reason: str | None,
        now: datetime,
    ) -> Refund:
        if currency != attempt.currency:
            raise InvalidArgument("currency", f"currency must be the charge's ({attempt.currency})", reason="CURRENCY_MISMATCH")
        minor = to_minor(amount, currency)
        if minor <= 0 or minor > attempt.amount_minor:
            raise InvalidArgument("amount", "amount must be above 0 and at most what was charged", reason="OUT_OF_RANGE")
        if attempt.provider_ref is None:
            raise ValueError("a succeeded attempt has its charge")
        return cls(
            id=new_id(REFUND_PREFIX),
            merchant_id=merchant_id,
            credit_note_id=credit_note_id,
            invoice_id=attempt.payable_id,
            attempt_id=attempt.id,
            charge_ref=attempt.provider_ref,
            amount=amount,
            amount_minor=minor,
            currency=currency,
            status=RefundStatus.SENDING.value,
            provider_refund_ref=None,
            reason=reason,
            create_time=now,
            update_time=now,
        )

    def answered(self, *, status: str, provider_refund_ref: str | None, now: datetime) -> None:
        if self.status == RefundStatus.SUCCEEDED:
            return
        self.status = status if status in set(RefundStatus) else RefundStatus.PENDING.value
        if provider_refund_ref:
            self.provider_refund_ref = provider_refund_ref
        self.update_time = now


__all__ = [
    "ATTEMPT_PREFIX",
    "INVOICE_ENTITY_TYPES",
    "IN_FLIGHT",
    "AfterFinalFailure",
    "AttemptStatus",
    "Change",
    "ChargeAttempt",
    "ChargeDecided",
    "CollectionSettings",
    "EntityType",
    "NextAttempt",
    "Observation",
    "PayableType",
    "Payment",
    "PaymentMethod",
    "PaymentMethodSaved",
    "PaymentSession",
    "PaymentStatus",
    "Refund",
    "RefundStatus",
    "SessionChangeKind",
    "SessionChanged",
    "SessionMode",
    "SessionStatus",
    "Trigger",
    "amount_text",
    "check_retry_schedule",
    "next_attempt",
    "redirect_url",
    "to_minor",
]
