"""The payment service's use cases: sessions, one-off payments, saved methods, charges,
refunds, webhooks and the janitor's reconciliation, over the unit of work's repositories,
the card processor (processors/base.Processor) and invoicing.

Exactly one successful charge per payable rests on three things, in this order:

1. the attempt row is committed (``sending``) before the processor is called, under the
   database's unique rules (one attempt per key, one in flight and one succeeded per
   payable); whoever cannot insert it charges nothing;
2. the processor is called with the attempt's key as its Idempotency-Key, so the same
   key never charges twice, whoever sends it and however often;
3. the outcome is recorded in a new transaction, monotonically (ChargeAttempt.observe);
   an answer that never came (a timeout, a crash) is found by the key later (the
   janitor, or the next call for the same attempt).

Invoicing is told each decided outcome of an invoice (RecordChargeOutcome, idempotent by
attempt key) synchronously after the commit; ``reported_at`` marks the told ones, and the
janitor tells the rest.

Time: ``now`` is the service clock's (wall time); an attempt's ``effective_time`` and
``first_attempt_at`` are the subscription's (a test clock's) as the caller gives them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog

from libs.core import grid
from libs.core.clock import Clock
from libs.core.errors import AlreadyExists, DomainError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from libs.core.money import currency_exponent
from services.payment.domain import commands
from services.payment.domain.model import (
    DUPLICATE_REFUND_REASON,
    INVOICE_ENTITY_TYPES,
    NOT_SENT,
    PROCESSOR_MISMATCH,
    PROCESSOR_TIMEOUT,
    AttemptStatus,
    Change,
    ChargeAttempt,
    CollectionSettings,
    EntityType,
    Observation,
    PayableType,
    Payment,
    PaymentMethod,
    PaymentSession,
    PaymentStatus,
    Refund,
    RefundStatus,
    SessionMode,
    SessionStatus,
    Trigger,
    amount_text,
    check_card_token,
    check_line_items,
    check_metadata,
    check_payment_amount,
    check_payment_currency,
    check_submit_nonce,
    payment_expiry,
    redirect_url,
    request_hash,
    setup_expiry,
    to_minor,
)
from services.payment.domain.ports import ChargeReport, Customers, Invoicing, PaymentUnitOfWork
from services.payment.processors.base import (
    Charge,
    ChargeSource,
    ChargeStatus,
    InvalidWebhook,
    InvalidWebhookBody,
    Processor,
    ProcessorError,
    ProcessorRejected,
    ProcessorTimeout,
    ProcessorUnavailable,
    PublicConfig,
)

log = structlog.get_logger(__name__)

UnitOfWorkFactory = Callable[[], AbstractAsyncContextManager[PaymentUnitOfWork]]

MAX_OPEN_ITEMS = 1000
JANITOR_BATCH = 100
SESSION_POLL_SECONDS = 0.1
MAX_REPORT_BACKOFF_SECONDS = 60.0


@dataclass(frozen=True)
class Config:
    """How the use cases reach the outside: the gateway's public base URL (hosted pages,
    processor webhooks), the janitor's thresholds, and the fault hook of the SIGKILL test."""

    public_url: str
    reconcile_after: timedelta = timedelta(seconds=3)
    not_sent_after: timedelta = timedelta(seconds=60)
    checkout_wait_seconds: float = 8.0
    # called right after the processor answered a charge, before it is recorded
    after_charge_sent: Callable[[], None] | None = None

    def checkout_url(self, merchant_id: str, session_id: str) -> str:
        return f"{self.public_url}/checkout/{merchant_id}/{session_id}"

    def webhook_url(self, processor: str, merchant_id: str) -> str:
        return f"{self.public_url}/webhooks/processors/{processor}/{merchant_id}"


@dataclass(frozen=True)
class Outcome:
    """ChargeInvoice's answer (ChargeOutcome)."""

    status: str  # succeeded | failed | processing | no_payment_method
    attempt_key: str
    provider_payment_ref: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    decline_code: str | None = None
    next_attempt_at: datetime | None = None
    after_final_failure: str | None = None
    payment_session_id: str | None = None


def outcome_of(attempt: ChargeAttempt) -> Outcome:
    state = attempt.state
    status = state.value if state.final else AttemptStatus.PROCESSING.value
    failed = state == AttemptStatus.FAILED
    return Outcome(
        status=status,
        attempt_key=attempt.attempt_key,
        provider_payment_ref=attempt.provider_ref,
        failure_code=attempt.failure_code if failed else None,
        failure_message=attempt.failure_message if failed else None,
        decline_code=attempt.decline_code if failed else None,
        next_attempt_at=attempt.next_attempt_at if failed else None,
        after_final_failure=attempt.after_final_failure if failed else None,
        payment_session_id=attempt.session_id,
    )


@dataclass(frozen=True)
class CheckoutView:
    """What GetCheckout / CompleteCheckout answer: the session, the page's processor
    configuration, and the saved card of a completed setup."""

    session: PaymentSession
    public: PublicConfig
    saved_method: PaymentMethod | None = None


@dataclass(frozen=True)
class RefundResult:
    refunded: bool
    provider_refund_ref: str | None
    status: str


@dataclass(frozen=True)
class CreatedPayment:
    payment: Payment
    session: PaymentSession
    created: bool


@dataclass
class JanitorReport:
    """What one janitor pass did (logged, and read by tests)."""

    reconciled: int = 0
    reported: int = 0
    expired: int = 0
    released: int = 0
    refunds: int = 0
    errors: list[str] = field(default_factory=list)


_CHARGE_STATES = {
    ChargeStatus.PROCESSING: AttemptStatus.PROCESSING,
    ChargeStatus.SUCCEEDED: AttemptStatus.SUCCEEDED,
    ChargeStatus.FAILED: AttemptStatus.FAILED,
}


def observation_of(charge: Charge, *, authoritative: bool, sequence: int | None = None) -> Observation:
    return Observation(
        status=_CHARGE_STATES[charge.status],
        provider_ref=charge.ref,
        failure_code=charge.failure_code,
        decline_code=charge.decline_code,
        failure_message=charge.failure_message,
        sequence=sequence,
        authoritative=authoritative,
    )


def observation_for(attempt: ChargeAttempt, charge: Charge, *, authoritative: bool, sequence: int | None = None) -> Observation:
    """What the processor's charge for ``attempt``'s key says of the attempt. A charge of
    another amount or currency is not the attempt's (someone used its key at the processor
    for another charge): the attempt failed (``processor_mismatch``) and pays nothing."""
    if charge.amount_minor != attempt.amount_minor or charge.currency.upper() != attempt.currency.upper():
        log.error(
            "processor_charge_mismatch",
            attempt_key=attempt.attempt_key,
            charge_ref=charge.ref,
            expected=(attempt.amount_minor, attempt.currency),
            answered=(charge.amount_minor, charge.currency),
        )
        return Observation(
            status=AttemptStatus.FAILED,
            failure_code=PROCESSOR_MISMATCH,
            failure_message="the processor's charge for this attempt's key is not this attempt's (another amount or currency)",
            sequence=sequence,
            authoritative=True,
        )
    return observation_of(charge, authoritative=authoritative, sequence=sequence)


def duplicate_refund_key(attempt_key: str) -> str:
    """The processor's Idempotency-Key (and the refund row's key) of the automatic refund of
    a charge that paid an invoice already paid another way."""
    return f"duplicate:{attempt_key}"


def check_money(amount: Decimal, currency: str, field: str = "amount") -> None:
    currency_exponent(currency)  # names `currency` when it is no ISO 4217 code
    if amount <= 0:
        raise InvalidArgument(field, f"{field} must be greater than 0", reason="MUST_BE_POSITIVE")
    to_minor(amount, currency, field)


def _provider_unavailable() -> Unavailable:
    return Unavailable("PROVIDER_UNAVAILABLE", "the card processor could not be reached; nothing was charged")


class Payments:
    """Every use case of the service, over its ports. One per process (server and workers)."""

    def __init__(
        self,
        unit_of_work: UnitOfWorkFactory,
        processor: Processor,
        invoicing: Invoicing,
        customers: Customers,
        clock: Clock,
        config: Config,
    ) -> None:
        self._uow = unit_of_work
        self.processor = processor
        self._invoicing = invoicing
        self._customers = customers
        self._clock = clock
        self.config = config
        # attempt id -> (when the janitor tells invoicing again, the delay after that)
        self._report_backoff: dict[str, tuple[datetime, float]] = {}

    def _now(self) -> datetime:
        return self._clock.now()

    def _account(self, merchant_id: str) -> str:
        return f"acct_{self.processor.name}_{merchant_id}"

    # --- one-off payments ---------------------------------------------------------------

    async def create_payment(self, merchant_id: str, command: commands.CreatePayment) -> CreatedPayment:
        """A payment link and its session; the same idempotency key answers the first one
        (created False), other parameters with it are refused."""
        now = self._now()
        check_payment_amount(command.amount)
        check_payment_currency(command.currency)
        to_minor(command.amount, command.currency)
        check_line_items([(i.description, i.amount, i.quantity) for i in command.line_items], command.amount, command.currency)
        check_metadata(command.metadata)
        success = redirect_url(command.success_redirect_url, "successRedirectUrl")
        failure = redirect_url(command.failure_redirect_url, "failureRedirectUrl")
        later = grid.add(now, command.expires_in, field="expiresIn") if command.expires_in is not None else None
        expires_at = payment_expiry(now, None, later=later)
        lines = [
            {"description": item.description, "amount": format(item.amount, "f"), "quantity": str(item.quantity)}
            for item in command.line_items
        ]
        fingerprint = request_hash(dict(command.given))
        if command.customer_id:
            await self._customers.ensure_customer(command.customer_id, field="customerId")
        async with self._uow() as uow:
            if command.idempotency_key:
                existing = await uow.payments.by_key(merchant_id, command.idempotency_key)
                if existing is not None:
                    if existing.request_hash != fingerprint:
                        raise AlreadyExists(
                            "IDEMPOTENCY_KEY_REUSED",
                            "this idempotencyKey was already used with different parameters",
                            field="idempotencyKey",
                        )
                    assert existing.payment_session_id is not None
                    session = await uow.sessions.get(merchant_id, existing.payment_session_id)
                    return CreatedPayment(existing, session, created=False)
            payment = Payment.create(
                merchant_id=merchant_id,
                amount=command.amount,
                currency=command.currency,
                customer_id=command.customer_id,
                idempotency_key=command.idempotency_key,
                request_hash=fingerprint,
                reference=command.reference,
                metadata=command.metadata,
                line_items=[
                    {"description": i.description, "amount": format(i.amount, "f"), "quantity": i.quantity} for i in command.line_items
                ],
                success_redirect_url=success,
                failure_redirect_url=failure,
                save_payment_method=command.save_payment_method,
                expires_at=expires_at,
                now=now,
            )
            session = self._open(
                merchant_id,
                mode=SessionMode.PAYMENT,
                entity_type=EntityType.PAYMENT,
                entity_id=payment.id,
                customer_id=command.customer_id,
                subscription_id=None,
                amount=command.amount,
                currency=command.currency,
                entity_label=command.reference,
                lines=lines,
                success_redirect_url=success,
                failure_redirect_url=failure,
                metadata={},
                save_payment_method=command.save_payment_method,
                expires_at=expires_at,
                now=now,
            )
            payment.payment_session_id = session.id
            await uow.payments.add(payment)
            await uow.sessions.add(session)
            return CreatedPayment(payment, session, created=True)

    def _open(self, merchant_id: str, **values: Any) -> PaymentSession:
        session = PaymentSession.open(merchant_id=merchant_id, **values)
        session.url = self.config.checkout_url(merchant_id, session.id)
        session.processor = self.processor.name
        return session

    # --- sessions for invoicing -----------------------------------------------------------

    async def open_sessions(self, merchant_id: str, items: list[commands.OpenSession]) -> list[PaymentSession]:
        """A session per item, in order: the entity's open one, or (``replace``, or none
        open) a fresh one; a replaced pending session is cancelled."""
        if len(items) > MAX_OPEN_ITEMS:
            raise InvalidArgument("items", f"items has at most {MAX_OPEN_ITEMS} entries", reason="TOO_MANY_ITEMS")
        now = self._now()
        for i, item in enumerate(items):
            prefix = f"items[{i}]."
            if item.entity_type not in {t.value for t in INVOICE_ENTITY_TYPES}:
                raise InvalidArgument(
                    prefix + "entityType", f"{prefix}entityType must be invoice, subscription or topup", reason="INVALID_VALUE"
                )
            check_money(item.amount, item.currency, prefix + "amount")
            redirect_url(item.success_redirect_url, prefix + "successRedirectUrl")
            redirect_url(item.failure_redirect_url, prefix + "failureRedirectUrl")
        out: list[PaymentSession] = []
        async with self._uow() as uow:
            for item in items:
                out.append(await self._open_one(uow, merchant_id, item, now))
        return out

    async def _open_one(self, uow: PaymentUnitOfWork, merchant_id: str, item: commands.OpenSession, now: datetime) -> PaymentSession:
        existing = await uow.sessions.open_of_entity(merchant_id, item.entity_type, item.entity_id, lock=True)
        if existing is not None and existing.lapsed(now):
            existing.expire(now)
            await uow.sessions.save(existing)
            existing = None
        if existing is not None:
            if not item.replace or existing.status == SessionStatus.PROCESSING:
                return existing  # a session whose charge is in flight is not replaced under it
            existing.cancel(now)
            await uow.sessions.save(existing)
        expires_at = item.expires_at if item.expires_at is not None and item.expires_at > now else None
        session = self._open(
            merchant_id,
            mode=SessionMode.PAYMENT,
            entity_type=EntityType(item.entity_type),
            entity_id=item.entity_id,
            customer_id=item.customer_id,
            subscription_id=item.subscription_id,
            amount=item.amount,
            currency=item.currency,
            entity_label=item.entity_label,
            lines=[{"description": line.description, "amount": line.amount, "quantity": line.quantity} for line in item.lines],
            success_redirect_url=item.success_redirect_url or None,
            failure_redirect_url=item.failure_redirect_url or None,
            metadata={},
            save_payment_method=item.save_payment_method,
            expires_at=expires_at or now + timedelta(days=30),
            now=now,
        )
        if await uow.sessions.add_open(session):
            return session
        raced = await uow.sessions.open_of_entity(merchant_id, item.entity_type, item.entity_id)
        if raced is None:  # opened and closed again meanwhile: try once more
            await uow.sessions.add(session)
            return session
        return raced

    # --- setup sessions and saved methods -------------------------------------------------

    async def create_setup_session(
        self, uow: PaymentUnitOfWork, merchant_id: str, now: datetime, command: commands.CreateSetupSession
    ) -> PaymentSession:
        """A page where the customer saves a card for later off-session charges (one
        transaction: the caller's, which may replay an Idempotency-Key)."""
        success = redirect_url(command.success_redirect_url, "successRedirectUrl")
        failure = redirect_url(command.failure_redirect_url, "failureRedirectUrl")
        expires_at = setup_expiry(now, command.expires_at)
        await self._customers.ensure_customer(command.customer_id, field="id")
        session = self._open(
            merchant_id,
            mode=SessionMode.SETUP,
            entity_type=EntityType.CUSTOMER,
            entity_id=command.customer_id,
            customer_id=command.customer_id,
            subscription_id=None,
            amount=None,
            currency=None,
            entity_label=None,
            lines=[],
            success_redirect_url=success,
            failure_redirect_url=failure,
            metadata=dict(command.metadata),
            save_payment_method=True,
            expires_at=expires_at,
            now=now,
        )
        await uow.sessions.add(session)
        return session

    async def customer_methods(self, merchant_id: str, customer_id: str) -> list[PaymentMethod]:
        await self._customers.ensure_customer(customer_id, field="id")
        async with self._uow() as uow:
            return await uow.methods.of_customer(merchant_id, customer_id)

    async def _save_card(self, merchant_id: str, customer_id: str, token: str) -> PaymentMethod:
        """The token saved at the processor as the customer's method, and stored (brand,
        last4, expiry only). Raises the processor's errors."""
        saved = await self.processor.save_payment_method(merchant_id=merchant_id, customer_ref=customer_id, token=token)
        now = self._now()
        method = PaymentMethod.save(
            merchant_id=merchant_id,
            customer_id=customer_id,
            processor=self.processor.name,
            processor_ref=saved.ref,
            brand=saved.card.brand,
            last4=saved.card.last4,
            exp_month=saved.card.exp_month,
            exp_year=saved.card.exp_year,
            now=now,
        )
        return method

    # --- settings -----------------------------------------------------------------------

    async def settings(self, merchant_id: str) -> CollectionSettings:
        async with self._uow() as uow:
            return await uow.settings.get(merchant_id)

    async def update_settings(
        self, uow: PaymentUnitOfWork, merchant_id: str, now: datetime, command: commands.UpdateSettings
    ) -> CollectionSettings:
        current = await uow.settings.get(merchant_id)
        current.update(retry_schedule_days=command.retry_schedule_days, after_final_failure=command.after_final_failure, now=now)
        await uow.settings.save(current)
        return current

    # --- charging an invoice off-session ------------------------------------------------

    async def charge_invoice(self, merchant_id: str, command: commands.ChargeInvoice) -> Outcome:
        """Charge the customer's newest saved method for an invoice, once per key."""
        if command.trigger not in (Trigger.AUTOMATIC, Trigger.MANUAL):
            raise InvalidArgument("trigger", "trigger must be automatic or manual", reason="INVALID_VALUE")
        if not command.attempt_key:
            raise InvalidArgument("attemptKey", "attemptKey is required", reason="REQUIRED")
        check_money(command.amount, command.currency)
        now = self._now()
        async with self._uow() as uow:
            existing = await uow.attempts.by_key(merchant_id, command.attempt_key)
        if existing is not None:
            return await self._repeat(existing, command)
        raced: ChargeAttempt | None = None
        async with self._uow() as uow:
            paid = await uow.attempts.succeeded_of(merchant_id, PayableType.INVOICE, command.invoice_id)
            if paid is not None:
                return outcome_of(paid)
            methods = await uow.methods.of_customer(merchant_id, command.customer_id)
            if not methods:
                return Outcome(status="no_payment_method", attempt_key=command.attempt_key)
            method = methods[0]
            first_attempt_at = command.first_attempt_at
            if command.trigger == Trigger.AUTOMATIC and first_attempt_at is None:
                first_attempt_at = await uow.attempts.first_automatic_at(merchant_id, command.invoice_id) or command.effective_time or now
            attempt = ChargeAttempt.begin(
                merchant_id=merchant_id,
                attempt_key=command.attempt_key,
                payable_type=PayableType.INVOICE,
                payable_id=command.invoice_id,
                session_id=None,
                customer_id=command.customer_id,
                subscription_id=command.subscription_id,
                amount=command.amount,
                currency=command.currency,
                source_kind="method",
                source_ref=method.processor_ref,
                payment_method_id=method.id,
                trigger=Trigger(command.trigger),
                attempt_number=command.attempt_number,
                first_attempt_at=first_attempt_at,
                effective_time=command.effective_time,
                submit_nonce=None,
                now=now,
            )
            inserted = await uow.attempts.add_new(attempt)
            if not inserted:
                raced = await uow.attempts.by_key(merchant_id, command.attempt_key)
                paid = await uow.attempts.succeeded_of(merchant_id, PayableType.INVOICE, command.invoice_id)
            elif await self._paid_meanwhile(uow, attempt):
                paid = await uow.attempts.succeeded_of(merchant_id, PayableType.INVOICE, command.invoice_id)
                assert paid is not None
                return outcome_of(paid)
        if not inserted:
            if raced is not None:
                return await self._repeat(raced, command)
            if paid is not None:
                return outcome_of(paid)
            raise FailedPrecondition(
                "CONCURRENT_ATTEMPT",
                f"another charge of invoice {command.invoice_id} is in flight",
                metadata={"invoiceId": command.invoice_id},
            )
        return outcome_of(await self._send(attempt, off_session=True))

    @staticmethod
    async def _paid_meanwhile(uow: PaymentUnitOfWork, attempt: ChargeAttempt) -> bool:
        """After the insert: did an attempt that was in flight when the payable was first
        looked at succeed meanwhile? (The insert waited for it; this statement sees its
        commit.) Then the new attempt is withdrawn: a paid payable is never charged again."""
        if await uow.attempts.succeeded_of(attempt.merchant_id, attempt.payable_type, attempt.payable_id) is None:
            return False
        await uow.attempts.delete(attempt)
        return True

    async def _repeat(self, attempt: ChargeAttempt, command: commands.ChargeInvoice) -> Outcome:
        """The same key again: its outcome, an unknown one looked up by the key (and an
        attempt the processor never received sent again, with that same key)."""
        if attempt.payable_type != PayableType.INVOICE or attempt.payable_id != command.invoice_id:
            raise AlreadyExists("ATTEMPT_KEY_REUSED", "this attemptKey belongs to another payable", field="attemptKey")
        if attempt.decided:
            return outcome_of(await self._report(attempt))
        return outcome_of(await self._settle(attempt, resend=True))

    async def _settle(self, attempt: ChargeAttempt, *, resend: bool) -> ChargeAttempt:
        """An attempt in flight, asked of the processor by its key and recorded; with
        ``resend``, one the processor never got (and nobody is sending now) is sent again."""
        try:
            found = await self.processor.find_charge(merchant_id=attempt.merchant_id, idempotency_key=attempt.attempt_key)
        except ProcessorError as exc:
            log.warning("charge_lookup_failed", attempt_key=attempt.attempt_key, error=type(exc).__name__)
            return attempt
        now = self._now()
        if found is not None:
            recorded, _ = await self._record(attempt, observation_for(attempt, found, authoritative=True))
            return await self._report(recorded)
        # not found: the processor never received it (a timeout may have been the request's)
        if now - attempt.sent_at >= self.config.not_sent_after:
            recorded, _ = await self._record(
                attempt, Observation(AttemptStatus.FAILED, failure_code=NOT_SENT, failure_message="the charge never reached the processor")
            )
            return await self._report(recorded)
        if resend and attempt.source_kind == "method" and now - attempt.sent_at >= self.config.reconcile_after:
            # sent again with the same key: whatever did arrive meanwhile is answered, not repeated
            async with self._uow() as uow:
                fresh = await uow.attempts.get(attempt.merchant_id, attempt.id, lock=True)
                if fresh.decided:
                    return fresh
                fresh.resent(now)
                await uow.attempts.save(fresh)
            return await self._send(fresh, off_session=True)
        return attempt

    async def _send(self, attempt: ChargeAttempt, *, off_session: bool) -> ChargeAttempt:
        """Call the processor for a committed attempt and record what it answered."""
        source = ChargeSource(token=attempt.source_ref) if attempt.source_kind == "token" else ChargeSource(method_ref=attempt.source_ref)
        metadata = {
            "merchant_id": attempt.merchant_id,
            "attempt_key": attempt.attempt_key,
            "trigger": attempt.trigger,
            f"{attempt.payable_type}_id": attempt.payable_id,
        }
        if attempt.session_id:
            metadata["session_id"] = attempt.session_id
        try:
            charge = await self.processor.charge(
                merchant_id=attempt.merchant_id,
                idempotency_key=attempt.attempt_key,
                amount_minor=attempt.amount_minor,
                currency=attempt.currency,
                source=source,
                off_session=off_session,
                metadata=metadata,
                webhook_url=self.config.webhook_url(self.processor.name, attempt.merchant_id),
            )
        except ProcessorTimeout:
            log.info("charge_timed_out", attempt_key=attempt.attempt_key)
            seen = Observation(AttemptStatus.PROCESSING)
        except ProcessorUnavailable:
            await self._withdraw(attempt)
            raise _provider_unavailable() from None
        except ProcessorRejected as exc:
            seen = Observation(AttemptStatus.FAILED, failure_code=exc.code, failure_message=exc.message, authoritative=True)
        else:
            if self.config.after_charge_sent is not None:
                self.config.after_charge_sent()
            seen = observation_for(attempt, charge, authoritative=True)
        recorded, _ = await self._record(attempt, seen)
        return await self._report(recorded)

    async def _withdraw(self, attempt: ChargeAttempt) -> None:
        """The processor was never reached: the attempt goes, its session is pending again."""
        now = self._now()
        async with self._uow() as uow:
            current = await uow.attempts.get(attempt.merchant_id, attempt.id, lock=True)
            if current.state != AttemptStatus.SENDING:
                return
            await uow.attempts.delete(current)
            if current.session_id:
                session = await uow.sessions.get(current.merchant_id, current.session_id, lock=True)
                session.declined("provider_unavailable", "the card processor could not be reached; nothing was charged", now)
                await uow.sessions.save(session)
            if current.payable_type == PayableType.PAYMENT:
                payment = await uow.payments.get(current.merchant_id, current.payable_id, lock=True)
                payment.declined(now)
                await uow.payments.save(payment)

    async def _record(self, attempt: ChargeAttempt, seen: Observation) -> tuple[ChargeAttempt, Change]:
        """One observation applied in its own transaction, with what a decision changes."""
        now = self._now()
        async with self._uow() as uow:
            current = await uow.attempts.get(attempt.merchant_id, attempt.id, lock=True)
            change = await self._apply(uow, current, seen, now)
            return current, change

    async def _apply(self, uow: PaymentUnitOfWork, attempt: ChargeAttempt, seen: Observation, now: datetime) -> Change:
        change = attempt.observe(seen, now)
        if change == Change.APPLIED:
            if attempt.state == AttemptStatus.FAILED:
                attempt.schedule(await uow.settings.get(attempt.merchant_id))
            await self._effects(uow, attempt, now)
        if change in (Change.APPLIED, Change.DUPLICATE):
            await uow.attempts.save(attempt)
        return change

    async def _effects(self, uow: PaymentUnitOfWork, attempt: ChargeAttempt, now: datetime) -> None:
        """What an attempt's new state does to its session and its payable."""
        state = attempt.state
        if attempt.session_id:
            session = await uow.sessions.get(attempt.merchant_id, attempt.session_id, lock=True)
            if state == AttemptStatus.SUCCEEDED:
                session.complete(now, provider_payment_ref=attempt.provider_ref)
            elif state == AttemptStatus.FAILED:
                declines = await uow.attempts.failed_of_session(attempt.merchant_id, attempt.session_id, excluding=attempt.id) + 1
                session.declined(attempt.failure_code, attempt.failure_message, now, declines=declines)
                if session.status == SessionStatus.FAILED:
                    log.warning("checkout_failed_too_many_declines", session_id=session.id, declines=declines)
            else:
                session.provider_payment_ref = attempt.provider_ref or session.provider_payment_ref
            await uow.sessions.save(session)
            if state == AttemptStatus.FAILED and attempt.trigger == Trigger.PAGE and attempt.payment_method_id:
                # the page saved the card to charge it, and the charge declined: the card is
                # not the customer's method (no off-session charge may draw on it)
                await uow.methods.delete(attempt.merchant_id, attempt.payment_method_id)
        if attempt.payable_type == PayableType.PAYMENT:
            payment = await uow.payments.get(attempt.merchant_id, attempt.payable_id, lock=True)
            if state == AttemptStatus.SUCCEEDED:
                payment.complete(now)
            elif state == AttemptStatus.FAILED:
                payment.declined(now)
            else:
                payment.processing(now)
            await uow.payments.save(payment)
        if state == AttemptStatus.SUCCEEDED:
            # the payable is paid: its other pages take nothing more. One a submit holds is
            # skipped (no lock-order deadlock with it): that submit sees the success itself
            for other in await uow.sessions.open_of_payable(attempt.merchant_id, attempt.payable_id, lock=True, skip_locked=True):
                if other.id != attempt.session_id and other.cancel(now):
                    await uow.sessions.save(other)

    async def _report(self, attempt: ChargeAttempt) -> ChargeAttempt:
        """Tell invoicing a decided outcome it must know (then ``reported_at``); a failure
        to tell leaves it for the janitor."""
        if not attempt.needs_report:
            return attempt
        report = ChargeReport(
            invoice_id=attempt.payable_id,
            status=attempt.status,
            attempt_key=attempt.attempt_key,
            amount=amount_text(attempt.amount, attempt.currency),
            provider_payment_ref=attempt.provider_ref,
            failure_code=attempt.failure_code if attempt.state == AttemptStatus.FAILED else None,
            payment_session_id=attempt.session_id,
            # the caller's (subscription) time when it gave one; else invoicing's own now
            effective_time=attempt.effective_time,
        )
        try:
            answer = await self._invoicing.record_charge_outcome(report)
        except DomainError as exc:
            log.warning("charge_outcome_not_reported", attempt_key=attempt.attempt_key, reason=exc.reason, error=exc.message)
            return attempt
        if attempt.state == AttemptStatus.SUCCEEDED and answer is not None and answer.paid_by_other(attempt.attempt_key):
            # the invoice was paid by something else (out of band while this charge was in
            # flight, another attempt): this charge took the money twice, so it goes back
            try:
                await self._refund_duplicate(attempt, answer.paid_by_attempt_key)
            except Unavailable:
                return attempt  # told again (and refunded then) by the janitor
            except DomainError as exc:
                log.error("duplicate_charge_refund_refused", attempt_key=attempt.attempt_key, reason=exc.reason, error=exc.message)
        async with self._uow() as uow:
            current = await uow.attempts.get(attempt.merchant_id, attempt.id, lock=True)
            if current.status == report.status and current.reported_at is None:
                current.mark_reported(self._now())
                await uow.attempts.save(current)
            return current

    async def _refund_duplicate(self, attempt: ChargeAttempt, paid_by: str | None) -> None:
        """Refund (once: its key is ``duplicate:{attempt_key}``) a succeeded charge of an
        invoice something else had paid; the refund row says why (DUPLICATE_REFUND_REASON)."""
        key = duplicate_refund_key(attempt.attempt_key)
        async with self._uow() as uow:
            refund = await uow.refunds.by_credit_note(attempt.merchant_id, key, lock=True)
            if refund is None:
                current = await uow.attempts.get(attempt.merchant_id, attempt.id)
                if current.provider_ref is None:
                    log.error("duplicate_charge_without_ref", attempt_key=attempt.attempt_key)
                    return
                refund = Refund.begin(
                    merchant_id=current.merchant_id,
                    credit_note_id=key,
                    attempt=current,
                    amount=current.amount,
                    currency=current.currency,
                    reason=DUPLICATE_REFUND_REASON,
                    now=self._now(),
                )
                if not await uow.refunds.add_new(refund):
                    raced = await uow.refunds.by_credit_note(attempt.merchant_id, key)
                    assert raced is not None
                    refund = raced
            if refund.status in (RefundStatus.SUCCEEDED, RefundStatus.PENDING):
                return
        result = await self._send_refund(refund)
        log.warning(
            "duplicate_charge_refunded",
            attempt_key=attempt.attempt_key,
            invoice_id=attempt.payable_id,
            paid_by_attempt_key=paid_by,
            charge_ref=refund.charge_ref,
            refund_ref=result.provider_refund_ref,
            status=result.status,
        )

    # --- the hosted page ------------------------------------------------------------------

    async def get_checkout(self, merchant_id: str, session_id: str) -> CheckoutView:
        now = self._now()
        async with self._uow() as uow:
            session = await uow.sessions.get(merchant_id, session_id, field="sessionId")
            if session.lapsed(now):
                session = await uow.sessions.get(merchant_id, session_id, field="sessionId", lock=True)
                if session.expire(now):
                    await uow.sessions.save(session)
                    await self._expire_payable(uow, session, now)
        return await self._view(session)

    async def _view(self, session: PaymentSession) -> CheckoutView:
        method = None
        if session.payment_method_id:
            async with self._uow() as uow:
                method = await uow.methods.get(session.merchant_id, session.payment_method_id)
        return CheckoutView(session, self.processor.public_config(session.merchant_id), method)

    async def _reload(self, session: PaymentSession) -> CheckoutView:
        async with self._uow() as uow:
            fresh = await uow.sessions.get(session.merchant_id, session.id)
        return await self._view(fresh)

    async def complete_checkout(self, merchant_id: str, command: commands.CompleteCheckout) -> CheckoutView:
        """The page's submit. Pays (payment mode) or saves the card (setup mode) once per
        render: a second submit while one is in flight, of the same render, or after the
        session is done, charges nothing and answers the session as it is."""
        if not command.card_token:
            raise InvalidArgument("cardToken", "cardToken is required", reason="REQUIRED")
        check_card_token(command.card_token)
        nonce = command.submit_nonce or None
        if nonce is not None:
            check_submit_nonce(nonce)
        async with self._uow() as uow:
            session = await uow.sessions.get(merchant_id, command.session_id, field="sessionId")
        if session.mode == SessionMode.SETUP:
            return await self._complete_setup(session, command.card_token, nonce)
        payable = session.payable
        assert payable is not None
        if session.status == SessionStatus.PENDING and payable[0] == PayableType.INVOICE and not session.lapsed(self._now()):
            state = await self._invoicing.invoice_state(payable[1])
            if not state.payable:
                return await self._close_unpayable(session, state.status)
        now = self._now()
        async with self._uow() as uow:
            session = await uow.sessions.get(merchant_id, command.session_id, field="sessionId", lock=True)
            if session.lapsed(now):
                session.expire(now)
                await uow.sessions.save(session)
                await self._expire_payable(uow, session, now)
            if session.status != SessionStatus.PENDING:
                wait = nonce is not None and session.submit_nonce == nonce and session.status == SessionStatus.PROCESSING
                attempt = None
            elif nonce is not None and await uow.attempts.by_nonce(merchant_id, session.id, nonce) is not None:
                wait, attempt = False, None  # this render was submitted already (and declined)
            else:
                wait = False
                attempt = await self._begin_page_attempt(uow, session, command.card_token, nonce, now)
        if attempt is None:
            return await (self._wait_for(session) if wait else self._reload(session))
        if session.save_payment_method and session.customer_id:
            attempt = await self._save_then_use(attempt, session.customer_id, command.card_token)
            if attempt.decided:
                return await self._reload(session)
        await self._send(attempt, off_session=False)
        return await self._reload(session)

    async def _begin_page_attempt(
        self, uow: PaymentUnitOfWork, session: PaymentSession, token: str, nonce: str | None, now: datetime
    ) -> ChargeAttempt | None:
        """Claim the page's charge: the attempt row (None: another one holds the payable)."""
        payable_type, payable_id = session.payable or (PayableType.PAYMENT, session.entity_id)
        assert session.amount is not None and session.currency is not None
        payment = None
        if payable_type == PayableType.PAYMENT:
            payment = await uow.payments.get(session.merchant_id, payable_id, lock=True)
            if payment.status not in (PaymentStatus.PENDING, PaymentStatus.PROCESSING):
                return None
        paid = await uow.attempts.succeeded_of(session.merchant_id, payable_type, payable_id)
        if paid is not None:  # paid another way (an off-session charge): this page is done
            if paid.session_id == session.id:
                session.complete(now, provider_payment_ref=paid.provider_ref)
            else:
                session.cancel(now)
            await uow.sessions.save(session)
            return None
        attempt = ChargeAttempt.begin(
            merchant_id=session.merchant_id,
            attempt_key=session.next_attempt_key(),
            payable_type=payable_type,
            payable_id=payable_id,
            session_id=session.id,
            customer_id=session.customer_id,
            subscription_id=session.subscription_id,
            amount=session.amount,
            currency=session.currency,
            source_kind="token",
            source_ref=token,
            payment_method_id=None,
            trigger=Trigger.PAGE,
            attempt_number=session.attempt_count,
            first_attempt_at=None,
            effective_time=None,
            submit_nonce=nonce,
            now=now,
        )
        if not await uow.attempts.add_new(attempt):
            return None  # another attempt of the payable is in flight (retryPayment, another tab)
        if await self._paid_meanwhile(uow, attempt):
            session.cancel(now)
            await uow.sessions.save(session)
            return None
        session.begin(now, nonce=nonce)
        await uow.sessions.save(session)
        if payment is not None:
            payment.processing(now)
            await uow.payments.save(payment)
        return attempt

    async def _save_then_use(self, attempt: ChargeAttempt, customer_id: str, token: str) -> ChargeAttempt:
        """A page that keeps the card saves it first, then charges the saved method."""
        try:
            method = await self._save_card(attempt.merchant_id, customer_id, token)
        except ProcessorRejected as exc:
            recorded, _ = await self._record(attempt, Observation(AttemptStatus.FAILED, failure_code=exc.code, failure_message=exc.message))
            return recorded
        except ProcessorTimeout:
            seen = Observation(AttemptStatus.FAILED, failure_code=PROCESSOR_TIMEOUT, failure_message="the card could not be saved in time")
            recorded, _ = await self._record(attempt, seen)
            return recorded
        except ProcessorUnavailable:
            await self._withdraw(attempt)
            raise _provider_unavailable() from None
        now = self._now()
        async with self._uow() as uow:
            await uow.methods.add(method)
            current = await uow.attempts.get(attempt.merchant_id, attempt.id, lock=True)
            current.use_method(method_ref=method.processor_ref, payment_method_id=method.id, now=now)
            await uow.attempts.save(current)
        return current

    async def _complete_setup(self, session: PaymentSession, token: str, nonce: str | None) -> CheckoutView:
        now = self._now()
        async with self._uow() as uow:
            current = await uow.sessions.get(session.merchant_id, session.id, lock=True)
            if current.lapsed(now):
                current.expire(now)
                await uow.sessions.save(current)
            if current.status != SessionStatus.PENDING:
                claimed = False
                wait = nonce is not None and current.submit_nonce == nonce and current.status == SessionStatus.PROCESSING
            elif nonce is not None and current.submit_nonce == nonce:
                claimed, wait = False, False  # this render was submitted already (and failed)
            else:
                claimed, wait = True, False
                current.begin(now, nonce=nonce)
                await uow.sessions.save(current)
        if not claimed:
            return await (self._wait_for(current) if wait else self._reload(current))
        assert current.customer_id is not None
        try:
            method = await self._save_card(current.merchant_id, current.customer_id, token)
        except ProcessorRejected as exc:
            return await self._setup_failed(current, exc.code, exc.message)
        except ProcessorTimeout:
            return await self._setup_failed(current, PROCESSOR_TIMEOUT, "the card could not be saved in time")
        except ProcessorUnavailable:
            await self._setup_failed(current, "provider_unavailable", "the card processor could not be reached", decline=False)
            raise _provider_unavailable() from None
        async with self._uow() as uow:
            await uow.methods.add(method)
            done = await uow.sessions.get(current.merchant_id, current.id, lock=True)
            done.complete(self._now(), payment_method_id=method.id)
            await uow.sessions.save(done)
        return await self._view(done)

    async def _setup_failed(self, session: PaymentSession, code: str, message: str, *, decline: bool = True) -> CheckoutView:
        async with self._uow() as uow:
            current = await uow.sessions.get(session.merchant_id, session.id, lock=True)
            if decline:  # a setup session counts its refused cards in attempt_count
                current.attempt_count += 1
            current.declined(code, message, self._now(), declines=current.attempt_count if decline else 0)
            await uow.sessions.save(current)
        return await self._view(current)

    async def _wait_for(self, session: PaymentSession) -> CheckoutView:
        """A second submit of one render: wait (a while) for the first one's outcome."""
        deadline = asyncio.get_running_loop().time() + self.config.checkout_wait_seconds
        while True:
            view = await self._reload(session)
            if view.session.status != SessionStatus.PROCESSING or asyncio.get_running_loop().time() >= deadline:
                return view
            await asyncio.sleep(SESSION_POLL_SECONDS)

    async def _close_unpayable(self, session: PaymentSession, invoice_status: str) -> CheckoutView:
        """The invoice no longer takes payment (paid another way, voided): the page is done."""
        now = self._now()
        async with self._uow() as uow:
            current = await uow.sessions.get(session.merchant_id, session.id, lock=True)
            paid = await uow.attempts.succeeded_of(current.merchant_id, PayableType.INVOICE, current.entity_id)
            if paid is not None and paid.session_id == current.id:
                current.complete(now, provider_payment_ref=paid.provider_ref)
            else:
                current.cancel(now)
            await uow.sessions.save(current)
        log.info("checkout_closed", session_id=session.id, invoice_status=invoice_status)
        return await self._view(current)

    async def _expire_payable(self, uow: PaymentUnitOfWork, session: PaymentSession, now: datetime) -> None:
        if session.entity_type == EntityType.PAYMENT:
            payment = await uow.payments.get(session.merchant_id, session.entity_id, lock=True)
            if payment.expire(now):
                await uow.payments.save(payment)

    # --- processor webhooks ---------------------------------------------------------------

    async def handle_webhook(self, merchant_id: str, processor_name: str, headers: Mapping[str, str], body: bytes) -> str:
        """Verified, deduplicated by event id, applied monotonically: applied, duplicate,
        stale or ignored (no such charge of this merchant)."""
        if processor_name != self.processor.name:
            raise NotFound("processor", processor_name, field="processor")
        try:
            event = self.processor.parse_webhook(headers, body)
        except InvalidWebhookBody as exc:  # signed, but not an event
            raise InvalidArgument("body", f"the webhook's body is not a valid event: {exc}", reason="INVALID_WEBHOOK_BODY") from None
        except InvalidWebhook as exc:
            raise InvalidArgument("body", f"the webhook does not verify: {exc}", reason="INVALID_WEBHOOK_SIGNATURE") from None
        now = self._now()
        conflict: ChargeAttempt | None = None
        async with self._uow() as uow:
            if not await uow.webhooks.claim(processor_name, event.id, merchant_id=merchant_id, event_type=event.type, now=now):
                return "duplicate"
            if event.refund is not None:
                refund = await uow.refunds.by_credit_note(merchant_id, event.refund.idempotency_key, lock=True)
                if refund is None:
                    return "ignored"
                refund.answered(status=event.refund.status, provider_refund_ref=event.refund.ref, now=now)
                await uow.refunds.save(refund)
                return "applied"
            if event.charge is None:
                return "ignored"
            attempt = await uow.attempts.by_key(merchant_id, event.charge.idempotency_key, lock=True)
            if attempt is None:
                return "ignored"
            seen = observation_for(attempt, event.charge, authoritative=False, sequence=event.sequence)
            change = await self._apply(uow, attempt, seen, now)
            if change == Change.CONFLICT:
                conflict = attempt
        if conflict is not None:
            # a webhook says another final state than recorded: the processor's look-up settles it
            found = await self.processor.find_charge(merchant_id=merchant_id, idempotency_key=conflict.attempt_key)
            if found is None:
                return "stale"
            attempt, change = await self._record(conflict, observation_for(conflict, found, authoritative=True))
            if change != Change.APPLIED:
                change = Change.STALE
        if change == Change.APPLIED:  # whoever decided it tells invoicing (the janitor, if that fails)
            await self._report(attempt)
        return change.value

    # --- refunds --------------------------------------------------------------------------

    async def refund_invoice(self, merchant_id: str, command: commands.RefundInvoice) -> RefundResult:
        """Give back what paid an invoice, once per credit note."""
        if not command.credit_note_id:
            raise InvalidArgument("creditNoteId", "creditNoteId is required", reason="REQUIRED")
        check_money(command.amount, command.currency)
        now = self._now()
        async with self._uow() as uow:
            refund = await uow.refunds.by_credit_note(merchant_id, command.credit_note_id, lock=True)
            if refund is not None and refund.invoice_id != command.invoice_id:
                raise AlreadyExists("CREDIT_NOTE_REUSED", "this credit note refunds another invoice", field="creditNoteId")
            if refund is None:
                paid = await uow.attempts.succeeded_of(merchant_id, PayableType.INVOICE, command.invoice_id)
                if paid is not None and await uow.refunds.by_credit_note(merchant_id, duplicate_refund_key(paid.attempt_key)) is not None:
                    paid = None  # that charge was a duplicate, given back already: the invoice was paid another way
                if paid is None:
                    return RefundResult(refunded=False, provider_refund_ref=None, status=RefundStatus.SUCCEEDED.value)
                refund = Refund.begin(
                    merchant_id=merchant_id,
                    credit_note_id=command.credit_note_id,
                    attempt=paid,
                    amount=command.amount,
                    currency=command.currency,
                    reason=command.reason,
                    now=now,
                )
                if not await uow.refunds.add_new(refund):
                    raced = await uow.refunds.by_credit_note(merchant_id, command.credit_note_id)
                    assert raced is not None
                    refund = raced
            if refund.status in (RefundStatus.SUCCEEDED, RefundStatus.PENDING):
                return RefundResult(True, refund.provider_refund_ref, refund.status)
        return await self._send_refund(refund)

    async def _send_refund(self, refund: Refund) -> RefundResult:
        try:
            answer = await self.processor.refund(
                merchant_id=refund.merchant_id,
                idempotency_key=refund.credit_note_id,
                charge_ref=refund.charge_ref,
                amount_minor=refund.amount_minor,
            )
        except ProcessorTimeout:
            status, ref = RefundStatus.PENDING.value, None
        except ProcessorUnavailable:
            async with self._uow() as uow:
                current = await uow.refunds.by_credit_note(refund.merchant_id, refund.credit_note_id, lock=True)
                if current is not None and current.status == RefundStatus.SENDING:
                    await uow.refunds.delete(current)
            raise _provider_unavailable() from None
        except ProcessorRejected as exc:
            raise FailedPrecondition("REFUND_REJECTED", f"the processor refused the refund: {exc.message}") from None
        else:
            status, ref = answer.status, answer.ref
        async with self._uow() as uow:
            current = await uow.refunds.by_credit_note(refund.merchant_id, refund.credit_note_id, lock=True)
            assert current is not None
            current.answered(status=status, provider_refund_ref=ref, now=self._now())
            await uow.refunds.save(current)
        return RefundResult(current.status != RefundStatus.FAILED, current.provider_refund_ref, current.status)

    # --- paid another way -----------------------------------------------------------------

    async def invoice_paid(self, merchant_id: str, invoice_id: str) -> int:
        """An invoice paid outside its page (out of band, off-session): its pending pages
        are cancelled."""
        now = self._now()
        cancelled = 0
        async with self._uow() as uow:
            for session in await uow.sessions.open_of_payable(merchant_id, invoice_id, lock=True):
                paid = await uow.attempts.succeeded_of(merchant_id, PayableType.INVOICE, invoice_id)
                if paid is not None and paid.session_id == session.id:
                    continue
                if session.cancel(now):
                    await uow.sessions.save(session)
                    cancelled += 1
        return cancelled

    # --- the janitor ------------------------------------------------------------------------

    async def janitor_pass(self, acting: Callable[[str], AbstractContextManager[None]]) -> JanitorReport:
        """One round: attempts left in flight asked of the processor by key; decided outcomes
        invoicing was not told, told; lapsed sessions and payments expired; abandoned card
        saves released; pending refunds asked again. ``acting(merchant)`` wraps the work of
        one merchant (its calls carry a token for it)."""
        report = JanitorReport()
        now = self._now()
        async with self._uow() as uow:
            unsettled = await uow.attempts.unsettled(now - self.config.reconcile_after, JANITOR_BATCH)
        for attempt in unsettled:
            try:
                with acting(attempt.merchant_id):
                    settled = await self._settle(attempt, resend=False)
                if settled.state != attempt.state:
                    report.reconciled += 1
            except Exception as exc:  # one attempt must not stop the round
                report.errors.append(f"{attempt.attempt_key}: {exc!r}")
        async with self._uow() as uow:
            unreported = await uow.attempts.unreported(now - self.config.reconcile_after, JANITOR_BATCH)
        for attempt in unreported:
            if self._report_backoff.get(attempt.id, (now, 0.0))[0] > now:
                continue  # invoicing refused it lately: ask again later
            try:
                with acting(attempt.merchant_id):
                    told = await self._report(attempt)
                if told.reported_at is not None:
                    report.reported += 1
                    self._report_backoff.pop(attempt.id, None)
                else:
                    delay = min(max(self._report_backoff.get(attempt.id, (now, 0.5))[1] * 2, 1.0), MAX_REPORT_BACKOFF_SECONDS)
                    self._report_backoff[attempt.id] = (now + timedelta(seconds=delay), delay)
            except Exception as exc:
                report.errors.append(f"{attempt.attempt_key}: {exc!r}")
        report.expired = await self._expire_lapsed(now)
        report.released = await self._release_stuck(now - self.config.not_sent_after)
        async with self._uow() as uow:
            pending = await uow.refunds.pending(now - self.config.reconcile_after, JANITOR_BATCH)
        for refund in pending:
            try:
                with acting(refund.merchant_id):
                    await self._send_refund(refund)
                report.refunds += 1
            except Exception as exc:
                report.errors.append(f"{refund.credit_note_id}: {exc!r}")
        return report

    async def _expire_lapsed(self, now: datetime) -> int:
        expired = 0
        async with self._uow() as uow:
            for session in await uow.sessions.lapsed(now, JANITOR_BATCH):
                locked = await uow.sessions.get(session.merchant_id, session.id, lock=True)
                if locked.expire(now):
                    await uow.sessions.save(locked)
                    await self._expire_payable(uow, locked, now)
                    expired += 1
            for payment in await uow.payments.lapsed(now, JANITOR_BATCH):
                locked_payment = await uow.payments.get(payment.merchant_id, payment.id, lock=True)
                if locked_payment.expire(now):
                    await uow.payments.save(locked_payment)
                    expired += 1
        return expired

    async def _release_stuck(self, before: datetime) -> int:
        released = 0
        async with self._uow() as uow:
            for session in await uow.sessions.stuck(before, JANITOR_BATCH):
                locked = await uow.sessions.get(session.merchant_id, session.id, lock=True)
                if locked.mode == SessionMode.SETUP and locked.status == SessionStatus.PROCESSING:
                    locked.release(self._now())
                    await uow.sessions.save(locked)
                    released += 1
        return released


__all__ = [
    "CheckoutView",
    "Config",
    "CreatedPayment",
    "JanitorReport",
    "Outcome",
    "Payments",
    "RefundResult",
    "UnitOfWorkFactory",
    "observation_of",
    "outcome_of",
]
