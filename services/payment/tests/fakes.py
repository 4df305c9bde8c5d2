"""A card processor in memory, keeping base.py's rules (a charge per idempotency key, found
by that key; a timeout leaves the outcome unknown; webhooks verified before parsing), and
a fake invoicing gRPC service: what the payment service's tests put where the sandbox
and invoicing would be.

Behaviours are chosen by token (``tok_ok_...``, ``tok_decline_...``, ...) and carried by
the method a token is saved as, as the sandbox's test cards are.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import grpc
from accrue.invoicing.v1 import invoicing_service_pb2 as inv
from accrue.invoicing.v1 import invoicing_service_pb2_grpc

from services.payment.processors.base import (
    Card,
    Charge,
    ChargeSource,
    ChargeStatus,
    InvalidWebhook,
    ProcessorRejected,
    ProcessorTimeout,
    ProcessorUnavailable,
    PublicConfig,
    Refund,
    SavedMethod,
    WebhookEvent,
)

SECRET = b"fake-webhook-secret"
SIGNATURE_HEADER = "fake-signature"

# token prefix -> behaviour
OK = "ok"  # succeeds
DECLINE = "decline"  # card_declined / generic_decline
INSUFFICIENT = "insufficient"  # insufficient_funds
DECLINE_LATER = "later"  # saves fine, every charge declined
SLOW = "slow"  # the charge stays processing (the call times out) until ``finish``
LOST = "lost"  # the charge succeeds, its answer never comes (a timeout)
VANISH = "vanish"  # the request times out and never arrived (nothing charged, nothing found)
UNREACHABLE = "unreachable"  # a charge is refused before it reaches the processor (saving works)


def token(behaviour: str = OK) -> str:
    """A token of the processor's shape (``tok_`` then letters and digits), its behaviour
    before the ``X``: ``tok_declineX00000007``."""
    return f"tok_{behaviour}X{next(_tokens):08d}"


_tokens = itertools.count(1)


def render_nonce() -> str:
    """A page render's nonce as the gateway makes them (URL-safe, no long digit runs)."""
    return f"render-{secrets.token_urlsafe(12)}"


@dataclass
class FakeProcessor:
    name: str = "fake"
    charges: dict[tuple[str, str], Charge] = field(default_factory=dict)
    # every charge call, by key (the same key many times is one charge)
    charge_calls: list[str] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)  # method ref -> behaviour
    used_tokens: set[str] = field(default_factory=set)
    refunds: dict[tuple[str, str], Refund] = field(default_factory=dict)
    # while set, every charge waits for it (concurrency tests)
    gate: asyncio.Event | None = None
    # set when a charge is waiting at the gate
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def public_config(self, merchant_id: str) -> PublicConfig:
        return PublicConfig(processor=self.name, tokenize_url="http://fake.test/v1/tokens", publishable_key="pk_fake")

    @staticmethod
    def behaviour_of(token: str) -> str:
        body = token.partition("_")[2]
        return body.partition("X")[0] if "X" in body else OK

    async def save_payment_method(self, *, merchant_id: str, customer_ref: str, token: str) -> SavedMethod:
        if token in self.used_tokens:
            raise ProcessorRejected("token_already_used", "this token was used already")
        behaviour = self.behaviour_of(token)
        self.used_tokens.add(token)
        ref = f"pm_fake_{next(self._ids)}"
        self.methods[ref] = behaviour
        return SavedMethod(ref=ref, card=Card(brand="visa", last4="4242", exp_month=12, exp_year=2034))

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
        self.charge_calls.append(idempotency_key)
        if self.gate is not None:
            self.arrived.set()
            await self.gate.wait()
        existing = self.charges.get((merchant_id, idempotency_key))
        if existing is not None:
            return existing
        if source.token is not None:
            behaviour = self.behaviour_of(source.token)
            if behaviour == UNREACHABLE:
                raise ProcessorUnavailable("refused")
            if source.token in self.used_tokens:
                raise ProcessorRejected("token_already_used", "this token was used already")
            self.used_tokens.add(source.token)
        else:
            assert source.method_ref is not None
            if source.method_ref not in self.methods:
                raise ProcessorRejected("no_such_payment_method", "unknown payment method")
            behaviour = self.methods[source.method_ref]
            if behaviour == UNREACHABLE:
                raise ProcessorUnavailable("refused")
            if behaviour == VANISH:
                raise ProcessorTimeout("no answer in time")
            if behaviour == DECLINE_LATER:
                behaviour = DECLINE
        charge = Charge(
            ref=f"ch_fake_{next(self._ids)}",
            idempotency_key=idempotency_key,
            status=ChargeStatus.SUCCEEDED,
            amount_minor=amount_minor,
            currency=currency,
            card=Card(brand="visa", last4="4242", exp_month=12, exp_year=2034),
            created_at=datetime.now(UTC),
        )
        if behaviour == DECLINE:
            charge = replace(
                charge, status=ChargeStatus.FAILED, failure_code="card_declined", decline_code="generic_decline", failure_message="declined"
            )
        elif behaviour == INSUFFICIENT:
            charge = replace(
                charge,
                status=ChargeStatus.FAILED,
                failure_code="insufficient_funds",
                decline_code="insufficient_funds",
                failure_message="insufficient funds",
            )
        elif behaviour == SLOW:
            charge = replace(charge, status=ChargeStatus.PROCESSING)
        self.charges[(merchant_id, idempotency_key)] = charge
        if behaviour in (SLOW, LOST):
            raise ProcessorTimeout("no answer in time")
        return charge

    def finish(self, merchant_id: str, key: str, status: ChargeStatus = ChargeStatus.SUCCEEDED) -> Charge:
        """A slow charge ends."""
        done = replace(self.charges[(merchant_id, key)], status=status)
        if status == ChargeStatus.FAILED:
            done = replace(done, failure_code="card_declined", decline_code="generic_decline")
        self.charges[(merchant_id, key)] = done
        return done

    async def find_charge(self, *, merchant_id: str, idempotency_key: str) -> Charge | None:
        return self.charges.get((merchant_id, idempotency_key))

    async def refund(self, *, merchant_id: str, idempotency_key: str, charge_ref: str, amount_minor: int) -> Refund:
        found = self.refunds.get((merchant_id, idempotency_key))
        if found is None:
            found = Refund(
                ref=f"re_fake_{next(self._ids)}",
                idempotency_key=idempotency_key,
                charge_ref=charge_ref,
                amount_minor=amount_minor,
                status="succeeded",
            )
            self.refunds[(merchant_id, idempotency_key)] = found
        return found

    def succeeded(self, merchant_id: str) -> list[Charge]:
        return [c for (m, _), c in self.charges.items() if m == merchant_id and c.status == ChargeStatus.SUCCEEDED]

    # --- webhooks -----------------------------------------------------------------------

    def webhook(self, charge: Charge, *, event_type: str, sequence: int, event_id: str | None = None) -> tuple[dict[str, str], bytes]:
        """A signed event about ``charge`` as the processor would send it."""
        status = event_type.removeprefix("charge.")
        body = json.dumps(
            {
                "id": event_id or f"evt_fake_{next(self._ids)}",
                "type": event_type,
                "sequence": sequence,
                "created": datetime.now(UTC).isoformat(),
                "charge": {
                    "ref": charge.ref,
                    "idempotency_key": charge.idempotency_key,
                    "status": status,
                    "amount_minor": charge.amount_minor,
                    "currency": charge.currency,
                    "failure_code": charge.failure_code if status == "failed" else None,
                },
            }
        ).encode()
        return {SIGNATURE_HEADER: hmac.new(SECRET, body, hashlib.sha256).hexdigest()}, body

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        expected = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(headers.get(SIGNATURE_HEADER, ""), expected):
            raise InvalidWebhook("bad signature")
        event = json.loads(body)
        raw = event["charge"]
        charge = Charge(
            ref=raw["ref"],
            idempotency_key=raw["idempotency_key"],
            status=ChargeStatus(raw["status"]),
            amount_minor=raw["amount_minor"],
            currency=raw["currency"],
            failure_code=raw["failure_code"],
        )
        return WebhookEvent(
            id=event["id"],
            type=event["type"],
            created_at=datetime.fromisoformat(event["created"]),
            sequence=event["sequence"],
            charge=charge,
        )

    async def aclose(self) -> None:
        return None


@dataclass
class FakeInvoice:
    status: str = "ISSUED"
    unpaid_amount: str = "49.00"
    currency: str = "USD"
    # the attempt whose success paid it (None: unpaid, or paid out of band)
    paid_by_attempt_key: str | None = None


class FakeInvoicing(invoicing_service_pb2_grpc.InvoicingServiceServicer):
    """GetInvoice and RecordChargeOutcome the way invoicing answers them (idempotent by
    attempt key), recording every report."""

    def __init__(self) -> None:
        self.invoices: dict[str, FakeInvoice] = {}
        self.reports: list[inv.RecordChargeOutcomeRequest] = []
        self.fail_reports = False

    def reported(self, invoice_id: str) -> list[tuple[str, str]]:
        """What invoicing learnt of an invoice, in order: each (attempt key, status) once.
        Reports are at least once (a request and the janitor's reconciliation may both
        decide an attempt in flight, and both tell), and invoicing takes them by key."""
        return list(dict.fromkeys((r.attempt_key, r.status) for r in self.reports if r.invoice_id == invoice_id))

    async def GetInvoice(self, request: inv.GetInvoiceRequest, context: Any) -> inv.Invoice:
        found = self.invoices.get(request.id)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such invoice")
        assert found is not None
        return inv.Invoice(id=request.id, status=found.status, unpaid_amount=found.unpaid_amount, currency=found.currency)

    async def RecordChargeOutcome(self, request: inv.RecordChargeOutcomeRequest, context: Any) -> inv.Invoice:
        if self.fail_reports:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "invoicing is down")
        self.reports.append(request)
        found = self.invoices.setdefault(request.invoice_id, FakeInvoice())
        if request.status == "succeeded":
            if found.status != "PAID":  # paid once: by the first success (a PAID invoice stays as it was paid)
                found.status, found.unpaid_amount = "PAID", "0.00"
                found.paid_by_attempt_key = request.attempt_key
        elif found.status != "PAID":
            found.status = "PAYMENT_FAILED"
        answer = inv.Invoice(id=request.invoice_id, status=found.status, unpaid_amount=found.unpaid_amount)
        if found.status == "PAID" and found.paid_by_attempt_key:
            answer.paid_by_attempt_key = found.paid_by_attempt_key
        return answer


def money(text: str) -> Decimal:
    return Decimal(text)
