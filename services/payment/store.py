"""The payment service's own database: its tables and the repositories that read and write
them (loading and saving the domain's aggregates). Every table is declared here and
created by a migration in migrations/versions (tests/integration/test_migrations.py
checks that the two agree).

* payment_sessions: hosted checkouts; at most one open (pending or processing) payment
  session per entity (the index OpenSessions relies on).
* payments: one-off payment links; an idempotency key is unique per merchant.
* payment_methods: saved cards: the processor's reference, brand, last4 and expiry only.
* charge_attempts: every try at charging a payable. The exactly-once rules are the
  database's: one attempt per (merchant, attempt_key), at most one in flight (sending or
  processing) and at most one succeeded per payable, one per (session, submit nonce).
* processed_webhooks: processor events already applied (deduplication by event id).
* payment_settings: a merchant's dunning schedule and policy (no row: the defaults).
* refunds: one per credit note.

No card number, token secret or CVC is stored anywhere: a page attempt keeps the
processor's one-time token reference (tok_...), which the processor refuses to use twice.

Amounts are exact ``numeric`` major units plus integer minor units for the processor;
SQLAlchemy Core, a row becomes an aggregate by column name (libs/infra/repository.py).
Merchant-facing queries are scoped by merchant_id; the janitor's span merchants.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.core.domain import EventCollector
from libs.core.paging import Page
from libs.infra.db import add_infra_tables
from libs.infra.repository import RepositoryUnitOfWork, TableRepository, load_aggregate
from services.payment.domain.commands import PaymentFilters, SessionFilters
from services.payment.domain.model import (
    ChargeAttempt,
    CollectionSettings,
    Payment,
    PaymentMethod,
    PaymentSession,
    Refund,
)

metadata = sa.MetaData()
add_infra_tables(metadata)

TS = sa.DateTime(timezone=True)
MONEY = sa.Numeric()

payment_sessions = sa.Table(
    "payment_sessions",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("mode", sa.Text, nullable=False),
    sa.Column("entity_type", sa.Text, nullable=False),
    sa.Column("entity_id", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text),
    sa.Column("subscription_id", sa.Text),
    sa.Column("amount", MONEY),
    sa.Column("currency", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("entity_label", sa.Text),
    sa.Column("lines", pg.JSONB, nullable=False),
    sa.Column("success_redirect_url", sa.Text),
    sa.Column("failure_redirect_url", sa.Text),
    sa.Column("metadata", pg.JSONB, nullable=False),
    sa.Column("save_payment_method", sa.Boolean, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
    sa.Column("completed_at", TS),
    sa.Column("provider_payment_ref", sa.Text),
    sa.Column("failure_code", sa.Text),
    sa.Column("failure_message", sa.Text),
    sa.Column("payment_method_id", sa.Text),
    sa.Column("submit_nonce", sa.Text),
    sa.Column("attempt_count", sa.Integer, nullable=False),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.Column("url", sa.Text),
    sa.Column("processor", sa.Text),
    sa.CheckConstraint("mode IN ('payment', 'setup')", name="ck_payment_sessions_mode"),
    sa.CheckConstraint(
        "status IN ('pending', 'processing', 'completed', 'failed', 'expired', 'cancelled')", name="ck_payment_sessions_status"
    ),
    sa.CheckConstraint(
        "entity_type IN ('invoice', 'subscription', 'topup', 'payment', 'customer')", name="ck_payment_sessions_entity_type"
    ),
    # one open page per payable entity: OpenSessions is idempotent by (entity_type, entity_id)
    sa.Index(
        "uq_payment_sessions_open_entity",
        "merchant_id",
        "entity_type",
        "entity_id",
        unique=True,
        postgresql_where=sa.text("mode = 'payment' AND status IN ('pending', 'processing')"),
    ),
    sa.Index("ix_payment_sessions_merchant_created", "merchant_id", "create_time"),
    sa.Index("ix_payment_sessions_entity", "merchant_id", "entity_id"),
    sa.Index("ix_payment_sessions_pending_expiry", "expires_at", postgresql_where=sa.text("status = 'pending'")),
)

payments = sa.Table(
    "payments",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("amount", MONEY, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text),
    sa.Column("idempotency_key", sa.Text),
    sa.Column("request_hash", sa.Text, nullable=False),
    sa.Column("reference", sa.Text),
    sa.Column("metadata", pg.JSONB, nullable=False),
    sa.Column("line_items", pg.JSONB, nullable=False),
    sa.Column("success_redirect_url", sa.Text),
    sa.Column("failure_redirect_url", sa.Text),
    sa.Column("save_payment_method", sa.Boolean, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
    sa.Column("payment_session_id", sa.Text),
    sa.Column("completed_at", TS),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.CheckConstraint("status IN ('pending', 'processing', 'completed', 'expired', 'cancelled')", name="ck_payments_status"),
    sa.Index(
        "uq_payments_merchant_key", "merchant_id", "idempotency_key", unique=True, postgresql_where=sa.text("idempotency_key IS NOT NULL")
    ),
    sa.Index("ix_payments_merchant_created", "merchant_id", "create_time"),
    sa.Index("ix_payments_pending_expiry", "expires_at", postgresql_where=sa.text("status = 'pending'")),
)

payment_methods = sa.Table(
    "payment_methods",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("processor", sa.Text, nullable=False),
    sa.Column("processor_ref", sa.Text, nullable=False),
    sa.Column("brand", sa.Text, nullable=False),
    sa.Column("last4", sa.Text, nullable=False),
    sa.Column("exp_month", sa.Integer, nullable=False),
    sa.Column("exp_year", sa.Integer, nullable=False),
    sa.Column("create_time", TS, nullable=False),
    sa.CheckConstraint("last4 ~ '^[0-9]{4}$'", name="ck_payment_methods_last4"),
    sa.Index("ix_payment_methods_customer", "merchant_id", "customer_id", "create_time"),
    sa.Index("uq_payment_methods_ref", "merchant_id", "processor", "processor_ref", unique=True),
)

charge_attempts = sa.Table(
    "charge_attempts",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("attempt_key", sa.Text, nullable=False),
    sa.Column("payable_type", sa.Text, nullable=False),
    sa.Column("payable_id", sa.Text, nullable=False),
    sa.Column("session_id", sa.Text),
    sa.Column("customer_id", sa.Text),
    sa.Column("subscription_id", sa.Text),
    sa.Column("amount", MONEY, nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("source_kind", sa.Text, nullable=False),
    sa.Column("source_ref", sa.Text, nullable=False),
    sa.Column("payment_method_id", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("provider_ref", sa.Text),
    sa.Column("failure_code", sa.Text),
    sa.Column("decline_code", sa.Text),
    sa.Column("failure_message", sa.Text),
    sa.Column("trigger", sa.Text, nullable=False),
    sa.Column("attempt_number", sa.Integer, nullable=False),
    sa.Column("first_attempt_at", TS),
    sa.Column("effective_time", TS),
    sa.Column("submit_nonce", sa.Text),
    sa.Column("processor_sequence", sa.BigInteger),
    sa.Column("next_attempt_at", TS),
    sa.Column("after_final_failure", sa.Text),
    sa.Column("sent_at", TS, nullable=False),
    sa.Column("decided_at", TS),
    sa.Column("reported_at", TS),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.CheckConstraint("status IN ('sending', 'processing', 'succeeded', 'failed')", name="ck_charge_attempts_status"),
    sa.CheckConstraint("payable_type IN ('invoice', 'payment')", name="ck_charge_attempts_payable_type"),
    sa.CheckConstraint("trigger IN ('automatic', 'manual', 'page')", name="ck_charge_attempts_trigger"),
    sa.CheckConstraint("source_kind IN ('token', 'method')", name="ck_charge_attempts_source_kind"),
    sa.CheckConstraint("amount_minor > 0", name="ck_charge_attempts_amount"),
    sa.Index("uq_charge_attempts_key", "merchant_id", "attempt_key", unique=True),
    # at most one attempt of a payable in flight, at most one that succeeded
    sa.Index(
        "uq_charge_attempts_in_flight",
        "merchant_id",
        "payable_type",
        "payable_id",
        unique=True,
        postgresql_where=sa.text("status IN ('sending', 'processing')"),
    ),
    sa.Index(
        "uq_charge_attempts_succeeded",
        "merchant_id",
        "payable_type",
        "payable_id",
        unique=True,
        postgresql_where=sa.text("status = 'succeeded'"),
    ),
    # a double submit of one page render is one attempt
    sa.Index(
        "uq_charge_attempts_session_nonce", "session_id", "submit_nonce", unique=True, postgresql_where=sa.text("submit_nonce IS NOT NULL")
    ),
    sa.Index("ix_charge_attempts_payable", "merchant_id", "payable_type", "payable_id"),
    sa.Index("ix_charge_attempts_unsettled", "update_time", postgresql_where=sa.text("status IN ('sending', 'processing')")),
    sa.Index(
        "ix_charge_attempts_unreported",
        "decided_at",
        postgresql_where=sa.text("reported_at IS NULL AND payable_type = 'invoice' AND status IN ('succeeded', 'failed')"),
    ),
)

processed_webhooks = sa.Table(
    "processed_webhooks",
    metadata,
    sa.Column("processor", sa.Text, primary_key=True),
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("received_at", TS, nullable=False),
)

payment_settings = sa.Table(
    "payment_settings",
    metadata,
    sa.Column("merchant_id", sa.Text, primary_key=True),
    sa.Column("retry_schedule_days", pg.ARRAY(sa.Integer), nullable=False),
    sa.Column("after_final_failure", sa.Text, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.CheckConstraint("after_final_failure IN ('keep_active', 'terminate')", name="ck_payment_settings_after_final_failure"),
)

refunds = sa.Table(
    "refunds",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("credit_note_id", sa.Text, nullable=False),
    sa.Column("invoice_id", sa.Text, nullable=False),
    sa.Column("attempt_id", sa.Text, nullable=False),
    sa.Column("charge_ref", sa.Text, nullable=False),
    sa.Column("amount", MONEY, nullable=False),
    sa.Column("amount_minor", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("provider_refund_ref", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("create_time", TS, nullable=False),
    sa.Column("update_time", TS, nullable=False),
    sa.CheckConstraint("status IN ('sending', 'pending', 'succeeded', 'failed')", name="ck_refunds_status"),
    sa.Index("uq_refunds_credit_note", "merchant_id", "credit_note_id", unique=True),
    sa.Index("ix_refunds_pending", "update_time", postgresql_where=sa.text("status = 'pending'")),
)

OPEN = ("pending", "processing")
IN_FLIGHT = ("sending", "processing")


async def _advisory_lock(conn: AsyncConnection, key: str) -> None:
    """A transaction lock on ``key``: a concurrent claim of the same key waits for this
    transaction, then sees its row (so no unique violation)."""
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(key, 0))))


class SessionRepository(TableRepository[PaymentSession]):
    resource = "payment_session"

    async def add_open(self, session: PaymentSession) -> bool:
        stmt = pg.insert(payment_sessions).values(**self._values(session)).on_conflict_do_nothing().returning(payment_sessions.c.id)
        inserted = (await self._conn.execute(stmt)).first() is not None
        if inserted:
            self._seen.track(session)
        return inserted

    async def open_of_entity(self, merchant_id: str, entity_type: str, entity_id: str, *, lock: bool = False) -> PaymentSession | None:
        t = payment_sessions
        query = sa.select(t).where(
            t.c.merchant_id == merchant_id,
            t.c.entity_type == entity_type,
            t.c.entity_id == entity_id,
            t.c.mode == "payment",
            t.c.status.in_(OPEN),
        )
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return None if row is None else self._load(row)

    async def open_of_payable(
        self, merchant_id: str, entity_id: str, *, lock: bool = False, skip_locked: bool = False
    ) -> list[PaymentSession]:
        t = payment_sessions
        query = (
            sa.select(t)
            .where(t.c.merchant_id == merchant_id, t.c.entity_id == entity_id, t.c.mode == "payment", t.c.status.in_(OPEN))
            .order_by(t.c.create_time, t.c.id)
        )
        if lock:
            query = query.with_for_update(skip_locked=skip_locked)
        return [self._load(row) for row in (await self._conn.execute(query)).all()]

    async def list_page(self, merchant_id: str, filters: SessionFilters, page: Page) -> tuple[list[PaymentSession], int]:
        t = payment_sessions
        conditions = [t.c.merchant_id == merchant_id, t.c.mode == "payment"]
        if filters.subscription_id is not None:
            conditions.append(t.c.subscription_id == filters.subscription_id)
        if filters.customer_id is not None:
            conditions.append(t.c.customer_id == filters.customer_id)
        if filters.status is not None:
            conditions.append(t.c.status == filters.status)
        if filters.entity_type is not None:
            conditions.append(t.c.entity_type == filters.entity_type)
        return await self._page(sa.and_(*conditions), page)

    async def lapsed(self, now: datetime, limit: int) -> list[PaymentSession]:
        t = payment_sessions
        query = sa.select(t).where(t.c.status == "pending", t.c.expires_at <= now).order_by(t.c.expires_at).limit(limit)
        return [self._load(row) for row in (await self._conn.execute(query)).all()]

    async def stuck(self, before: datetime, limit: int) -> list[PaymentSession]:
        t = payment_sessions
        query = sa.select(t).where(t.c.mode == "setup", t.c.status == "processing", t.c.update_time < before).limit(limit)
        return [self._load(row) for row in (await self._conn.execute(query)).all()]


class PaymentRepository(TableRepository[Payment]):
    resource = "payment"

    async def by_key(self, merchant_id: str, key: str) -> Payment | None:
        await _advisory_lock(self._conn, f"payment-key:{merchant_id}:{key}")
        t = payments
        row = (await self._conn.execute(sa.select(t).where(t.c.merchant_id == merchant_id, t.c.idempotency_key == key))).first()
        return None if row is None else self._load(row)

    async def list_page(self, merchant_id: str, filters: PaymentFilters, page: Page) -> tuple[list[Payment], int]:
        t = payments
        conditions = [t.c.merchant_id == merchant_id]
        if filters.status is not None:
            conditions.append(t.c.status == filters.status)
        if filters.customer_id is not None:
            conditions.append(t.c.customer_id == filters.customer_id)
        return await self._page(sa.and_(*conditions), page)

    async def lapsed(self, now: datetime, limit: int) -> list[Payment]:
        t = payments
        query = sa.select(t).where(t.c.status == "pending", t.c.expires_at <= now).order_by(t.c.expires_at).limit(limit)
        return [self._load(row) for row in (await self._conn.execute(query)).all()]


class MethodRepository(TableRepository[PaymentMethod]):
    resource = "payment_method"

    async def of_customer(self, merchant_id: str, customer_id: str) -> list[PaymentMethod]:
        t = payment_methods
        query = (
            sa.select(t)
            .where(t.c.merchant_id == merchant_id, t.c.customer_id == customer_id)
            .order_by(t.c.create_time.desc(), t.c.id.desc())
        )
        return [self._load(row) for row in (await self._conn.execute(query)).all()]

    async def delete(self, merchant_id: str, method_id: str) -> None:
        t = payment_methods
        await self._conn.execute(t.delete().where(t.c.merchant_id == merchant_id, t.c.id == method_id))


class AttemptRepository(TableRepository[ChargeAttempt]):
    resource = "charge_attempt"

    async def add_new(self, attempt: ChargeAttempt) -> bool:
        t = charge_attempts
        stmt = pg.insert(t).values(**self._values(attempt)).on_conflict_do_nothing().returning(t.c.id)
        inserted = (await self._conn.execute(stmt)).first() is not None
        if inserted:
            self._seen.track(attempt)
        return inserted

    async def delete(self, attempt: ChargeAttempt) -> None:
        await self._conn.execute(charge_attempts.delete().where(charge_attempts.c.id == attempt.id))

    async def by_key(self, merchant_id: str, key: str, *, lock: bool = False) -> ChargeAttempt | None:
        t = charge_attempts
        query = sa.select(t).where(t.c.merchant_id == merchant_id, t.c.attempt_key == key)
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return None if row is None else self._load(row)

    async def by_nonce(self, merchant_id: str, session_id: str, nonce: str) -> ChargeAttempt | None:
        t = charge_attempts
        query = sa.select(t).where(t.c.merchant_id == merchant_id, t.c.session_id == session_id, t.c.submit_nonce == nonce)
        row = (await self._conn.execute(query)).first()
        return None if row is None else self._load(row)

    async def succeeded_of(self, merchant_id: str, payable_type: str, payable_id: str) -> ChargeAttempt | None:
        t = charge_attempts
        query = sa.select(t).where(
            t.c.merchant_id == merchant_id, t.c.payable_type == payable_type, t.c.payable_id == payable_id, t.c.status == "succeeded"
        )
        row = (await self._conn.execute(query)).first()
        return None if row is None else self._load(row)

    async def failed_of_session(self, merchant_id: str, session_id: str, *, excluding: str | None = None) -> int:
        t = charge_attempts
        query = sa.select(sa.func.count()).where(t.c.merchant_id == merchant_id, t.c.session_id == session_id, t.c.status == "failed")
        if excluding is not None:
            query = query.where(t.c.id != excluding)
        count: int = (await self._conn.execute(query)).scalar_one()
        return count

    async def first_automatic_at(self, merchant_id: str, invoice_id: str) -> datetime | None:
        t = charge_attempts
        query = sa.select(sa.func.min(sa.func.coalesce(t.c.first_attempt_at, t.c.effective_time, t.c.create_time))).where(
            t.c.merchant_id == merchant_id, t.c.payable_type == "invoice", t.c.payable_id == invoice_id, t.c.trigger == "automatic"
        )
        value: datetime | None = (await self._conn.execute(query)).scalar_one()
        return value

    async def unsettled(self, before: datetime, limit: int) -> list[ChargeAttempt]:
        t = charge_attempts
        query = sa.select(t).where(t.c.status.in_(IN_FLIGHT), t.c.update_time < before).order_by(t.c.update_time).limit(limit)
        return [self._load(row) for row in (await self._conn.execute(query)).all()]

    async def unreported(self, before: datetime, limit: int) -> list[ChargeAttempt]:
        t = charge_attempts
        query = (
            sa.select(t)
            .where(
                t.c.reported_at.is_(None),
                t.c.decided_at < before,
                t.c.payable_type == "invoice",
                t.c.status.in_(("succeeded", "failed")),
                sa.or_(t.c.status == "succeeded", t.c.trigger != "page"),
            )
            .order_by(t.c.decided_at)
            .limit(limit)
        )
        return [self._load(row) for row in (await self._conn.execute(query)).all()]


class SettingsRepository:
    """A merchant's collection settings: one row once changed."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get(self, merchant_id: str) -> CollectionSettings:
        t = payment_settings
        row = (await self._conn.execute(sa.select(t).where(t.c.merchant_id == merchant_id))).first()
        if row is None:
            return CollectionSettings(merchant_id=merchant_id)
        return CollectionSettings(
            merchant_id=merchant_id,
            retry_schedule_days=list(row.retry_schedule_days),
            after_final_failure=row.after_final_failure,
            update_time=row.update_time,
        )

    async def save(self, settings: CollectionSettings) -> None:
        t = payment_settings
        values: dict[str, Any] = {
            "merchant_id": settings.merchant_id,
            "retry_schedule_days": list(settings.retry_schedule_days),
            "after_final_failure": settings.after_final_failure,
            "update_time": settings.update_time,
        }
        stmt = pg.insert(t).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[t.c.merchant_id],
            set_={"retry_schedule_days": stmt.excluded.retry_schedule_days, "after_final_failure": stmt.excluded.after_final_failure,
                  "update_time": stmt.excluded.update_time},
        )  # fmt: skip
        await self._conn.execute(stmt)


class RefundRepository(TableRepository[Refund]):
    resource = "refund"

    async def by_credit_note(self, merchant_id: str, credit_note_id: str, *, lock: bool = False) -> Refund | None:
        t = refunds
        query = sa.select(t).where(t.c.merchant_id == merchant_id, t.c.credit_note_id == credit_note_id)
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return None if row is None else self._load(row)

    async def add_new(self, refund: Refund) -> bool:
        t = refunds
        stmt = pg.insert(t).values(**self._values(refund)).on_conflict_do_nothing().returning(t.c.id)
        inserted = (await self._conn.execute(stmt)).first() is not None
        if inserted:
            self._seen.track(refund)
        return inserted

    async def delete(self, refund: Refund) -> None:
        await self._conn.execute(refunds.delete().where(refunds.c.id == refund.id))

    async def pending(self, before: datetime, limit: int) -> list[Refund]:
        t = refunds
        query = sa.select(t).where(t.c.status == "pending", t.c.update_time < before).order_by(t.c.update_time).limit(limit)
        return [self._load(row) for row in (await self._conn.execute(query)).all()]


class WebhookLog:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def claim(self, processor: str, event_id: str, *, merchant_id: str, event_type: str, now: datetime) -> bool:
        t = processed_webhooks
        stmt = (
            pg.insert(t)
            .values(processor=processor, event_id=event_id, merchant_id=merchant_id, event_type=event_type, received_at=now)
            .on_conflict_do_nothing()
            .returning(t.c.event_id)
        )
        return (await self._conn.execute(stmt)).first() is not None


class SqlPaymentUnitOfWork(RepositoryUnitOfWork):
    """The payment service's unit of work over PostgreSQL (domain/ports): one
    libs/infra/db.UnitOfWork and the repositories on its connection. ``translate``
    renders a recorded event at commit (views.outbox_message)."""

    sessions: SessionRepository
    payments: PaymentRepository
    methods: MethodRepository
    attempts: AttemptRepository
    settings: SettingsRepository
    refunds: RefundRepository
    webhooks: WebhookLog

    def _bind(self, conn: AsyncConnection, seen: EventCollector) -> None:
        self.sessions = SessionRepository(conn, seen, payment_sessions, PaymentSession)
        self.payments = PaymentRepository(conn, seen, payments, Payment)
        self.methods = MethodRepository(conn, seen, payment_methods, PaymentMethod)
        self.attempts = AttemptRepository(conn, seen, charge_attempts, ChargeAttempt)
        self.settings = SettingsRepository(conn)
        self.refunds = RefundRepository(conn, seen, refunds, Refund)
        self.webhooks = WebhookLog(conn)


async def read_session(conn: AsyncConnection, session_id: str) -> PaymentSession | None:
    """A session as it is in this transaction (rendering a recorded event)."""
    row = (await conn.execute(sa.select(payment_sessions).where(payment_sessions.c.id == session_id))).first()
    return None if row is None else load_aggregate(PaymentSession, payment_sessions, row)


async def read_attempt(conn: AsyncConnection, attempt_id: str) -> ChargeAttempt | None:
    row = (await conn.execute(sa.select(charge_attempts).where(charge_attempts.c.id == attempt_id))).first()
    return None if row is None else load_aggregate(ChargeAttempt, charge_attempts, row)


async def read_method(conn: AsyncConnection, method_id: str) -> PaymentMethod | None:
    row = (await conn.execute(sa.select(payment_methods).where(payment_methods.c.id == method_id))).first()
    return None if row is None else load_aggregate(PaymentMethod, payment_methods, row)


__all__ = [
    "SqlPaymentUnitOfWork",
    "charge_attempts",
    "metadata",
    "payment_methods",
    "payment_sessions",
    "payment_settings",
    "payments",
    "processed_webhooks",
    "read_attempt",
    "read_method",
    "read_session",
    "refunds",
]
