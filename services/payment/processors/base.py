"""The adapter interface between the payment service and a card processor.

Everything the payment service needs from a processor is here, and nothing else: the
service never sees a card number (the browser tokenizes the card at the processor and
hands Accrue a token), only a token, a saved method's reference and the card's brand,
last four digits and expiry.

Rules every adapter keeps (the payment service's exactly-once guarantee rests on them):

- ``charge`` is idempotent by ``idempotency_key`` at the processor: the same key never
  makes a second charge, whatever the parameters, however often it is sent.
- ``find_charge`` finds a charge by that key; None means the processor never received
  it (so it can be sent again with the same key).
- An answer that does not come within the adapter's timeout raises ``ProcessorTimeout``:
  the outcome is unknown, not failed. The caller records it as unknown and finds the
  charge by its key later.
- ``ProcessorUnavailable`` means the request certainly did not reach the processor (a
  refused connection): nothing was charged.
- Webhooks are verified (signature, timestamp) before they are parsed; a bad one raises
  ``InvalidWebhook``.

Amounts are integer minor units of the currency (cents), as every processor takes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class ChargeStatus(StrEnum):
    """Where a charge stands at the processor. ``processing`` is not final."""

    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ProcessorError(Exception):
    """Base of the adapter's errors."""


class ProcessorTimeout(ProcessorError):
    """No answer in time: the request may or may not have reached the processor."""


class ProcessorUnavailable(ProcessorError):
    """The request did not reach the processor (connection refused, DNS): nothing happened."""


class ProcessorRejected(ProcessorError):
    """The processor refused the request itself (a bad or used token, a bad amount)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidWebhook(ProcessorError):
    """A webhook whose signature or timestamp does not verify, or whose body is not one."""


class InvalidWebhookBody(InvalidWebhook):
    """A webhook that verifies (signed) but whose body is not an event of the processor
    (not JSON, nested too deeply, fields missing or of the wrong type)."""


@dataclass(frozen=True, slots=True)
class Card:
    """What Accrue may keep of a card."""

    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True, slots=True)
class SavedMethod:
    """A card saved at the processor for later off-session charges."""

    ref: str  # the processor's id (pm_...)
    card: Card


@dataclass(frozen=True, slots=True)
class ChargeSource:
    """What a charge draws on: a one-time token from the browser, or a saved method."""

    token: str | None = None
    method_ref: str | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    """A charge as the processor reports it."""

    ref: str  # ch_...
    idempotency_key: str
    status: ChargeStatus
    amount_minor: int
    currency: str
    failure_code: str | None = None  # card_declined, insufficient_funds, processing_error, ...
    decline_code: str | None = None  # the issuer's reason (generic_decline, insufficient_funds, ...)
    failure_message: str | None = None
    card: Card | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Refund:
    """A refund as the processor reports it."""

    ref: str  # re_...
    idempotency_key: str
    charge_ref: str
    amount_minor: int
    status: str  # succeeded | pending | failed


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A verified processor event. ``sequence`` orders the events of one object (a newer
    state has a larger one), so an event that arrives after a newer one is recognised."""

    id: str
    type: str  # charge.processing | charge.succeeded | charge.failed | refund.succeeded | ...
    created_at: datetime
    sequence: int
    charge: Charge | None = None
    refund: Refund | None = None


@dataclass(frozen=True, slots=True)
class PublicConfig:
    """What the hosted page needs to tokenize a card in the browser."""

    processor: str
    tokenize_url: str
    publishable_key: str
    # origins the page's Content-Security-Policy must allow the browser to connect to
    connect_origins: tuple[str, ...] = field(default_factory=tuple)


class Processor(Protocol):
    """One card processor. ``merchant_id`` names whose processor account acts."""

    name: str

    def public_config(self, merchant_id: str) -> PublicConfig: ...

    async def save_payment_method(self, *, merchant_id: str, customer_ref: str, token: str) -> SavedMethod:
        """Turns a one-time token into a saved method (the token is used up)."""
        ...

    async def charge(
        self,
        *,
        merchant_id: str,
        idempotency_key: str,
        amount_minor: int,
        currency: str,
        source: ChargeSource,
        off_session: bool,
        metadata: Mapping[str, str],
        webhook_url: str | None,
    ) -> Charge:
        """Creates the charge (or answers the one the key already made)."""
        ...

    async def find_charge(self, *, merchant_id: str, idempotency_key: str) -> Charge | None: ...

    async def refund(self, *, merchant_id: str, idempotency_key: str, charge_ref: str, amount_minor: int) -> Refund: ...

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Verifies and parses a webhook; raises InvalidWebhook (a bad signature) or
        InvalidWebhookBody (signed, but not an event), never anything else."""
        ...

    async def aclose(self) -> None: ...
