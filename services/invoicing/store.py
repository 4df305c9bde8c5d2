"""The invoicing service's own database: its tables and the repositories over them
(domain/ports.py). Every table is declared here and created by a migration in
migrations/versions (tests/integration/test_migrations.py checks that the two agree).

Money is integer atomic units in ``numeric(38,0)``; exact (unrounded) amounts and
quantities in plain ``numeric``. Every query is scoped by merchant_id.

* invoices: one per (subscription, sequence number) of a timeline (purpose subscription),
  the database's unique key: the engine's steps may race or repeat, the row exists once.
  An ad-hoc invoice (purpose grant_purchase) is one per (merchant, purpose, reference);
  the timeline's queries never see it.
* invoice_lines: the lines of an issued invoice, with their provenance (JSON).
* billed_periods: what each issued invoice billed per price and window: the in-advance
  rows are what a termination credits, every row what a late-usage correction subtracts.
* customer_carry: per (merchant, customer, currency) the exact cumulative total E and the
  billed cumulative total B of the rounding carry (DESIGN section 7).
* credit_notes: the part of a final invoice below zero (kind balance), and refunds of
  PAID invoices (kind refund, ISSUED or VOIDED; at most one ISSUED per invoice, a partial
  unique index).
* charge_outcomes: every charge outcome the payment service reported, by attempt key
  (RecordChargeOutcome is idempotent by it).
* invoice_counters: per merchant the last invoice number given; locked by the issuing
  transaction (an upsert), so numbers are gapless.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.core.domain import EventCollector
from libs.core.errors import NotFound
from libs.core.paging import Page
from libs.infra.db import add_infra_tables
from libs.infra.repository import RepositoryUnitOfWork
from services.invoicing.domain.calculation import Billed, Carry, Line, Window
from services.invoicing.domain.commands import InvoiceFilters
from services.invoicing.domain.model import CreditNote, Invoice, InvoiceLine, window_json, window_of
from services.invoicing.domain.ports import ReceivedOutcome

metadata = sa.MetaData()
add_infra_tables(metadata)

TS = sa.DateTime(timezone=True)
ATOMIC = sa.Numeric(38, 0)
EXACT = sa.Numeric()

invoices = sa.Table(
    "invoices",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("sequence_number", sa.BigInteger, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("billing_anchor", TS),
    sa.Column("billing_cadence", sa.Text, nullable=False),
    sa.Column("terms", pg.JSONB, nullable=False),
    sa.Column("composition", pg.JSONB, nullable=False),
    sa.Column("grace_period_end", TS, nullable=False),
    sa.Column("period_start", TS, nullable=False),
    sa.Column("period_end", TS, nullable=False),
    sa.Column("test_clock_id", sa.Text),
    sa.Column("auto_approve", sa.Boolean, nullable=False),
    sa.Column("subtotal", ATOMIC, nullable=False),
    sa.Column("total_tax", ATOMIC, nullable=False),
    sa.Column("grand_total", ATOMIC, nullable=False),
    sa.Column("paid_amount", ATOMIC, nullable=False),
    sa.Column("item_count", sa.Integer, nullable=False),
    sa.Column("invoice_number", sa.Text),
    sa.Column("issued_at", TS),
    sa.Column("due_at", TS),
    sa.Column("paid_at", TS),
    sa.Column("payment_reason", sa.Text),
    sa.Column("failure_reason", sa.Text),
    sa.Column("opened_at", TS, nullable=False),
    sa.Column("metadata", pg.JSONB, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("reference", sa.Text),
    sa.Column("payment_session_id", sa.Text),
    sa.Column("payment_url", sa.Text),
    sa.Column("retry_attempts", sa.Integer, nullable=False),
    sa.Column("paid_by_attempt_key", sa.Text),
    sa.UniqueConstraint("merchant_id", "invoice_number", name="uq_invoices_merchant_number"),
    sa.UniqueConstraint("merchant_id", "purpose", "reference", name="uq_invoices_merchant_purpose_reference"),
    sa.Index("ix_invoices_merchant_created", "merchant_id", "created_at"),
    sa.Index("ix_invoices_merchant_customer", "merchant_id", "customer_id"),
    sa.Index(
        "uq_invoices_subscription_sequence",
        "subscription_id",
        "sequence_number",
        unique=True,
        postgresql_where=sa.text("purpose = 'subscription'"),
    ),
)
# the timeline's invoices (the engine's steps): the partial unique index's predicate, as
# literal SQL so that ON CONFLICT can infer that index
TIMELINE = sa.text("purpose = 'subscription'")

invoice_lines = sa.Table(
    "invoice_lines",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("invoice_id", sa.Text, sa.ForeignKey("invoices.id"), nullable=False),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("price_id", sa.Text),
    sa.Column("source_id", sa.Text),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("payment_term", sa.Text),
    sa.Column("window", pg.JSONB),
    sa.Column("quantity", EXACT, nullable=False),
    sa.Column("unit_price", EXACT, nullable=False),
    sa.Column("exact_amount", EXACT, nullable=False),
    sa.Column("amount", ATOMIC, nullable=False),
    sa.Column("tax_rate", EXACT, nullable=False),
    sa.Column("tax", ATOMIC, nullable=False),
    sa.Column("total", ATOMIC, nullable=False),
    sa.Column("corrects", pg.JSONB),
    sa.Column("provenance", pg.JSONB, nullable=False),
    sa.Column("metric_name", sa.Text, nullable=False),
    sa.Column("metric_unit", sa.Text, nullable=False),
    sa.Column("metric_description", sa.Text, nullable=False),
    sa.UniqueConstraint("invoice_id", "position", name="uq_invoice_lines_position"),
)

billed_periods = sa.Table(
    "billed_periods",
    metadata,
    sa.Column("invoice_id", sa.Text, sa.ForeignKey("invoices.id"), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("subscription_id", sa.Text, nullable=False),
    sa.Column("price_id", sa.Text, nullable=False),
    sa.Column("window_start", TS, nullable=False),
    sa.Column("window_end", TS, nullable=False),
    sa.Column("period_start", TS, nullable=False),
    sa.Column("period_end", TS, nullable=False),
    sa.Column("period_index", sa.BigInteger, nullable=False),
    sa.Column("quantity", EXACT, nullable=False),
    sa.Column("exact_amount", EXACT, nullable=False),
    sa.Column("tax_rate", EXACT),
    sa.Index("ix_billed_periods_subscription_end", "subscription_id", "window_end"),
)

customer_carry = sa.Table(
    "customer_carry",
    metadata,
    sa.Column("merchant_id", sa.Text, primary_key=True),
    sa.Column("customer_id", sa.Text, primary_key=True),
    sa.Column("currency", sa.Text, primary_key=True),
    sa.Column("exact_total", EXACT, nullable=False),
    sa.Column("billed_total", ATOMIC, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

credit_notes = sa.Table(
    "credit_notes",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("invoice_id", sa.Text, sa.ForeignKey("invoices.id"), nullable=False),
    sa.Column("customer_id", sa.Text, nullable=False),
    sa.Column("currency", sa.Text, nullable=False),
    sa.Column("amount", ATOMIC, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("tax_amount", ATOMIC, nullable=False),
    sa.Column("carry_amount", ATOMIC, nullable=False),
    sa.Column("refunded", sa.Boolean, nullable=False),
    sa.Column("provider_refund_ref", sa.Text),
    sa.Column("voided_at", TS),
    sa.Column("void_reason", sa.Text),
    sa.Index("ix_credit_notes_invoice", "invoice_id"),
    sa.Index(
        "uq_credit_notes_issued_refund",
        "invoice_id",
        unique=True,
        postgresql_where=sa.text("kind = 'refund' AND status = 'ISSUED'"),
    ),
)

charge_outcomes = sa.Table(
    "charge_outcomes",
    metadata,
    sa.Column("attempt_key", sa.Text, primary_key=True),
    sa.Column("merchant_id", sa.Text, nullable=False),
    sa.Column("invoice_id", sa.Text, sa.ForeignKey("invoices.id"), nullable=False),
    # one row per (attempt, outcome): a failure the processor later turns into a success
    # (an attempt first thought never sent) is recorded too; a repeat of either is not
    sa.Column("status", sa.Text, primary_key=True),
    sa.Column("amount", ATOMIC),
    sa.Column("provider_payment_ref", sa.Text),
    sa.Column("failure_code", sa.Text),
    sa.Column("payment_session_id", sa.Text),
    sa.Column("effective_time", TS),
    sa.Column("received_at", TS, nullable=False),
    sa.Index("ix_charge_outcomes_invoice", "invoice_id"),
)

invoice_counters = sa.Table(
    "invoice_counters",
    metadata,
    sa.Column("merchant_id", sa.Text, primary_key=True),
    sa.Column("last_number", sa.BigInteger, nullable=False),
)

_MONEY_COLUMNS = ("subtotal", "total_tax", "grand_total", "paid_amount")
_NOTE_MONEY = ("amount", "tax_amount", "carry_amount")


def _invoice(row: sa.Row[Any]) -> Invoice:
    values = dict(row._mapping)
    for name in _MONEY_COLUMNS:
        values[name] = int(values[name])
    return Invoice(**values)


def _invoice_values(invoice: Invoice) -> dict[str, Any]:
    return {column.name: getattr(invoice, column.name) for column in invoices.c}


class InvoiceRepository:
    def __init__(self, conn: AsyncConnection, seen: EventCollector) -> None:
        self._conn = conn
        self._seen = seen
        # each invoice as this unit of work last wrote it (a copy): what its recorded
        # events render at commit, without reading the row again (views.py)
        self.written: dict[str, Invoice] = {}

    def _wrote(self, invoice: Invoice) -> None:
        self.written[invoice.id] = dataclasses.replace(invoice)

    def _load(self, row: sa.Row[Any]) -> Invoice:
        return self._seen.track(_invoice(row))

    async def get(self, merchant_id: str, invoice_id: str, *, lock: bool = False, field: str = "id") -> Invoice:
        """The merchant's invoice; NotFound naming ``field`` (the request field that held the id)."""
        query = sa.select(invoices).where(invoices.c.id == invoice_id, invoices.c.merchant_id == merchant_id)
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        if row is None:
            raise NotFound("invoice", invoice_id, field=field)
        return self._load(row)

    async def by_sequence(self, merchant_id: str, subscription_id: str, sequence_number: int, *, lock: bool = False) -> Invoice | None:
        t = invoices
        query = sa.select(t).where(
            t.c.merchant_id == merchant_id,
            t.c.subscription_id == subscription_id,
            t.c.sequence_number == sequence_number,
            t.c.purpose == "subscription",
        )
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return None if row is None else self._load(row)

    async def add_if_absent(self, invoice: Invoice) -> tuple[Invoice, bool]:
        # a racing twin blocks on the unique index until the first commits, then inserts nothing
        inserted = (
            await self._conn.execute(
                pg.insert(invoices)
                .values(**_invoice_values(invoice))
                .on_conflict_do_nothing(index_elements=[invoices.c.subscription_id, invoices.c.sequence_number], index_where=TIMELINE)
                .returning(invoices.c.id)
            )
        ).first()
        if inserted is not None:
            self._wrote(invoice)
            return self._seen.track(invoice), True
        found = await self.by_sequence(invoice.merchant_id, invoice.subscription_id, invoice.sequence_number)
        if found is None:  # the subscription id is another merchant's: never the case for real ids
            raise NotFound("subscription", invoice.subscription_id, field="terms.subscriptionId")
        return found, False

    async def by_reference(self, merchant_id: str, purpose: str, reference: str) -> Invoice | None:
        t = invoices
        query = sa.select(t).where(t.c.merchant_id == merchant_id, t.c.purpose == purpose, t.c.reference == reference)
        row = (await self._conn.execute(query)).first()
        return None if row is None else self._load(row)

    async def add_ad_hoc_if_absent(self, invoice: Invoice) -> tuple[Invoice, bool]:
        assert invoice.reference is not None, "an ad-hoc invoice has a reference"
        # a racing twin blocks on the unique key until the first commits, then inserts nothing
        t = invoices
        inserted = (
            await self._conn.execute(
                pg.insert(t)
                .values(**_invoice_values(invoice))
                .on_conflict_do_nothing(index_elements=[t.c.merchant_id, t.c.purpose, t.c.reference])
                .returning(t.c.id)
            )
        ).first()
        if inserted is not None:
            self._wrote(invoice)
            return self._seen.track(invoice), True
        found = await self.by_reference(invoice.merchant_id, invoice.purpose, invoice.reference)
        assert found is not None, "the conflicting row is committed"
        return found, False

    async def by_sequences(
        self, merchant_id: str, keys: Sequence[tuple[str, int]], *, lock: bool = False
    ) -> dict[tuple[str, int], Invoice]:
        """The merchant's invoices of those (subscription, sequence number) pairs (locked in id order)."""
        if not keys:
            return {}
        t = invoices
        pairs = sa.tuple_(t.c.subscription_id, t.c.sequence_number).in_([(sub, int(k)) for sub, k in keys])
        query = sa.select(t).where(t.c.merchant_id == merchant_id, pairs, t.c.purpose == "subscription").order_by(t.c.id)
        if lock:
            query = query.with_for_update()
        found = [self._load(row) for row in (await self._conn.execute(query)).all()]
        return {(i.subscription_id, i.sequence_number): i for i in found}

    async def add_many_if_absent(self, batch: Sequence[Invoice]) -> dict[tuple[str, int], Invoice]:
        """add_if_absent of many invoices (distinct keys) in one statement: for each key the
        one stored (the given one if none existed). A key missing from the answer belongs
        to another merchant's subscription."""
        if not batch:
            return {}
        # executemany (SQLAlchemy's insertmanyvalues): one cached statement whatever the size
        inserted = {
            (row.subscription_id, int(row.sequence_number))
            for row in await self._conn.execute(
                pg.insert(invoices)
                .on_conflict_do_nothing(index_elements=[invoices.c.subscription_id, invoices.c.sequence_number], index_where=TIMELINE)
                .returning(invoices.c.subscription_id, invoices.c.sequence_number),
                [_invoice_values(i) for i in batch],
            )
        }
        out: dict[tuple[str, int], Invoice] = {}
        others: list[tuple[str, int]] = []
        for invoice in batch:
            key = (invoice.subscription_id, invoice.sequence_number)
            if key in inserted:
                self._wrote(invoice)
                out[key] = self._seen.track(invoice)
            else:
                others.append(key)
        out.update(await self.by_sequences(batch[0].merchant_id, others))
        return out

    async def save_many(self, batch: Sequence[Invoice]) -> None:
        if not batch:
            return
        rows = []
        for invoice in batch:
            values = _invoice_values(invoice)
            values["_id"] = values.pop("id")
            rows.append(values)
            self._seen.track(invoice)
            self._wrote(invoice)
        columns: dict[str, Any] = {c.name: sa.bindparam(c.name) for c in invoices.c if c.name != "id"}
        await self._conn.execute(invoices.update().where(invoices.c.id == sa.bindparam("_id")).values(**columns), rows)

    async def of_subscriptions(self, merchant_id: str, subscription_ids: Sequence[str]) -> dict[str, list[Invoice]]:
        """Every invoice of each subscription, by sequence number."""
        out: dict[str, list[Invoice]] = {s: [] for s in subscription_ids}
        if not subscription_ids:
            return out
        t = invoices
        query = (
            sa.select(t)
            .where(t.c.merchant_id == merchant_id, t.c.subscription_id.in_(list(subscription_ids)), t.c.purpose == "subscription")
            .order_by(t.c.subscription_id, t.c.sequence_number)
        )
        for row in (await self._conn.execute(query)).all():
            out[row.subscription_id].append(self._load(row))
        return out

    async def save(self, invoice: Invoice) -> None:
        values = _invoice_values(invoice)
        del values["id"]
        await self._conn.execute(invoices.update().where(invoices.c.id == invoice.id).values(**values))
        self._seen.track(invoice)
        self._wrote(invoice)

    async def list_page(self, merchant_id: str, filters: InvoiceFilters, page: Page) -> tuple[list[Invoice], int]:
        t = invoices
        conditions = [t.c.merchant_id == merchant_id]
        if filters.status is not None:
            conditions.append(t.c.status == filters.status)
        if filters.subscription_id is not None:
            conditions.append(t.c.subscription_id == filters.subscription_id)
        if filters.customer_id is not None:
            conditions.append(t.c.customer_id == filters.customer_id)
        where = sa.and_(*conditions)
        total = (await self._conn.execute(sa.select(sa.func.count()).select_from(t).where(where))).scalar_one()
        query = (
            sa.select(t)
            .where(where)
            .order_by(t.c.created_at.desc(), t.c.sequence_number.desc(), t.c.id.desc())
            .limit(page.limit)
            .offset(page.offset)
        )
        rows = (await self._conn.execute(query)).all()
        return [self._load(row) for row in rows], int(total)

    async def of_subscription(self, merchant_id: str, subscription_id: str) -> list[Invoice]:
        t = invoices
        query = (
            sa.select(t)
            .where(t.c.merchant_id == merchant_id, t.c.subscription_id == subscription_id, t.c.purpose == "subscription")
            .order_by(t.c.sequence_number)
        )
        return [self._load(row) for row in (await self._conn.execute(query)).all()]


def _line_row(stored: InvoiceLine, merchant_id: str) -> dict[str, Any]:
    line = stored.line
    return {
        "id": stored.id,
        "invoice_id": stored.invoice_id,
        "merchant_id": merchant_id,
        "position": stored.position,
        "kind": line.kind,
        "price_id": line.price_id,
        "source_id": line.source_id,
        "event_type": line.event_type,
        "display_name": line.display_name,
        "payment_term": line.payment_term,
        "window": None if line.window is None else window_json(line.window),
        "quantity": line.quantity,
        "unit_price": line.unit_price,
        "exact_amount": line.exact_amount,
        "amount": line.amount,
        "tax_rate": line.tax_rate,
        "tax": line.tax,
        "total": line.total,
        "corrects": None if line.corrects is None else window_json(line.corrects),
        "provenance": line.provenance,
        "metric_name": stored.metric_name,
        "metric_unit": stored.metric_unit,
        "metric_description": stored.metric_description,
    }


def _line(row: sa.Row[Any]) -> InvoiceLine:
    v = row._mapping
    line = Line(
        kind=v["kind"],
        price_id=v["price_id"],
        source_id=v["source_id"],
        event_type=v["event_type"],
        display_name=v["display_name"],
        payment_term=v["payment_term"],
        window=None if v["window"] is None else window_of(v["window"]),
        quantity=Decimal(v["quantity"]),
        unit_price=Decimal(v["unit_price"]),
        exact_amount=Decimal(v["exact_amount"]),
        amount=int(v["amount"]),
        tax_rate=Decimal(v["tax_rate"]),
        tax=int(v["tax"]),
        total=int(v["total"]),
        corrects=None if v["corrects"] is None else window_of(v["corrects"]),
        provenance=v["provenance"],
    )
    return InvoiceLine(
        id=v["id"],
        invoice_id=v["invoice_id"],
        position=v["position"],
        line=line,
        metric_name=v["metric_name"],
        metric_unit=v["metric_unit"],
        metric_description=v["metric_description"],
    )


class LineRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add_all(self, merchant_id: str, lines: Sequence[InvoiceLine]) -> None:
        if not lines:
            return
        await self._conn.execute(invoice_lines.insert(), [_line_row(line, merchant_id) for line in lines])

    async def of_invoices(self, invoice_ids: Sequence[str]) -> dict[str, list[InvoiceLine]]:
        out: dict[str, list[InvoiceLine]] = {invoice_id: [] for invoice_id in invoice_ids}
        if not invoice_ids:
            return out
        t = invoice_lines
        rows = await self._conn.execute(sa.select(t).where(t.c.invoice_id.in_(list(invoice_ids))).order_by(t.c.invoice_id, t.c.position))
        for row in rows:
            out[row.invoice_id].append(_line(row))
        return out


class BilledRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add_all(self, merchant_id: str, subscription_id: str, billed: Sequence[Billed]) -> None:
        if not billed:
            return
        await self._conn.execute(
            billed_periods.insert(),
            [
                {
                    "invoice_id": b.invoice_id,
                    "position": position,
                    "merchant_id": merchant_id,
                    "subscription_id": subscription_id,
                    "price_id": b.price_id,
                    "window_start": b.window.start,
                    "window_end": b.window.end,
                    "period_start": b.window.period_start,
                    "period_end": b.window.period_end,
                    "period_index": b.window.period_index,
                    "quantity": b.quantity,
                    "exact_amount": b.exact_amount,
                    "tax_rate": b.tax_rate,
                }
                for position, b in enumerate(billed)
            ],
        )

    async def add_many(self, merchant_id: str, billed: Sequence[tuple[str, Sequence[Billed]]]) -> None:
        """add_all of many subscriptions' rows in one statement."""
        rows = [
            _billed_row(merchant_id, subscription_id, position, b)
            for subscription_id, of_one in billed
            for position, b in enumerate(of_one)
        ]
        if rows:
            await self._conn.execute(billed_periods.insert(), rows)

    async def of_subscriptions(
        self, merchant_id: str, subscription_ids: Sequence[str], *, window_end_after: datetime
    ) -> dict[str, list[Billed]]:
        """of_subscription of many subscriptions (one horizon: the earliest wanted; filter on)."""
        out: dict[str, list[Billed]] = {s: [] for s in subscription_ids}
        if not subscription_ids:
            return out
        t = billed_periods
        rows = await self._conn.execute(
            sa.select(t)
            .where(t.c.merchant_id == merchant_id, t.c.subscription_id.in_(list(subscription_ids)), t.c.window_end > window_end_after)
            .order_by(t.c.window_start, t.c.invoice_id, t.c.position)
        )
        for row in rows:
            out[row.subscription_id].append(_billed(row))
        return out

    async def of_subscription(self, merchant_id: str, subscription_id: str, *, window_end_after: datetime) -> list[Billed]:
        t = billed_periods
        rows = await self._conn.execute(
            sa.select(t)
            .where(t.c.merchant_id == merchant_id, t.c.subscription_id == subscription_id, t.c.window_end > window_end_after)
            .order_by(t.c.window_start, t.c.invoice_id, t.c.position)
        )
        return [_billed(row) for row in rows]


def _billed_row(merchant_id: str, subscription_id: str, position: int, b: Billed) -> dict[str, Any]:
    return {
        "invoice_id": b.invoice_id,
        "position": position,
        "merchant_id": merchant_id,
        "subscription_id": subscription_id,
        "price_id": b.price_id,
        "window_start": b.window.start,
        "window_end": b.window.end,
        "period_start": b.window.period_start,
        "period_end": b.window.period_end,
        "period_index": b.window.period_index,
        "quantity": b.quantity,
        "exact_amount": b.exact_amount,
        "tax_rate": b.tax_rate,
    }


def _billed(row: Any) -> Billed:
    return Billed(
        price_id=row.price_id,
        window=Window(
            start=row.window_start,
            end=row.window_end,
            period_start=row.period_start,
            period_end=row.period_end,
            period_index=int(row.period_index),
        ),
        quantity=Decimal(row.quantity),
        exact_amount=Decimal(row.exact_amount),
        invoice_id=row.invoice_id,
        tax_rate=None if row.tax_rate is None else Decimal(row.tax_rate),
    )


class CarryRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    def _where(self, merchant_id: str, customer_id: str, currency: str) -> list[sa.ColumnElement[bool]]:
        t = customer_carry
        return [t.c.merchant_id == merchant_id, t.c.customer_id == customer_id, t.c.currency == currency]

    async def _read(self, merchant_id: str, customer_id: str, currency: str, *, lock: bool) -> Carry:
        t = customer_carry
        query = sa.select(t.c.exact_total, t.c.billed_total).where(*self._where(merchant_id, customer_id, currency))
        if lock:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return Carry(Decimal(0), 0) if row is None else Carry(Decimal(row.exact_total), int(row.billed_total))

    async def lock(self, merchant_id: str, customer_id: str, currency: str) -> Carry:
        await self._conn.execute(
            pg.insert(customer_carry)
            .values(
                merchant_id=merchant_id,
                customer_id=customer_id,
                currency=currency,
                exact_total=0,
                billed_total=0,
                updated_at=sa.func.now(),
            )
            .on_conflict_do_nothing()
        )
        return await self._read(merchant_id, customer_id, currency, lock=True)

    async def lock_many(self, merchant_id: str, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Carry]:
        """lock of many (customer, currency) rows, in key order."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        t = customer_carry
        await self._conn.execute(
            pg.insert(t).values(updated_at=sa.func.now()).on_conflict_do_nothing(),
            [{"merchant_id": merchant_id, "customer_id": c, "currency": cur, "exact_total": 0, "billed_total": 0} for c, cur in wanted],
        )
        query = (
            sa.select(t.c.customer_id, t.c.currency, t.c.exact_total, t.c.billed_total)
            .where(t.c.merchant_id == merchant_id, sa.tuple_(t.c.customer_id, t.c.currency).in_(wanted))
            .order_by(t.c.customer_id, t.c.currency)
            .with_for_update()
        )
        return {(r.customer_id, r.currency): Carry(Decimal(r.exact_total), int(r.billed_total)) for r in await self._conn.execute(query)}

    async def save_many(self, merchant_id: str, carries: dict[tuple[str, str], Carry], now: datetime) -> None:
        if not carries:
            return
        t = customer_carry
        await self._conn.execute(
            t.update()
            .where(t.c.merchant_id == merchant_id, t.c.customer_id == sa.bindparam("_customer"), t.c.currency == sa.bindparam("_currency"))
            .values(exact_total=sa.bindparam("_exact"), billed_total=sa.bindparam("_billed"), updated_at=now),
            [
                {"_customer": c, "_currency": cur, "_exact": carry.exact_total, "_billed": carry.billed_total}
                for (c, cur), carry in carries.items()
            ],
        )

    async def peek(self, merchant_id: str, customer_id: str, currency: str) -> Carry:
        return await self._read(merchant_id, customer_id, currency, lock=False)

    async def save(self, merchant_id: str, customer_id: str, currency: str, carry: Carry, now: datetime) -> None:
        await self._conn.execute(
            customer_carry.update()
            .where(*self._where(merchant_id, customer_id, currency))
            .values(exact_total=carry.exact_total, billed_total=carry.billed_total, updated_at=now)
        )


def _note_values(note: CreditNote) -> dict[str, Any]:
    return {column.name: getattr(note, column.name) for column in credit_notes.c}


def _note(row: sa.Row[Any]) -> CreditNote:
    values = dict(row._mapping)
    for name in _NOTE_MONEY:
        values[name] = int(values[name])
    return CreditNote(**values)


class CreditNoteRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(self, note: CreditNote) -> None:
        await self._conn.execute(credit_notes.insert().values(**_note_values(note)))

    async def save(self, note: CreditNote) -> None:
        values = _note_values(note)
        del values["id"]
        await self._conn.execute(credit_notes.update().where(credit_notes.c.id == note.id).values(**values))

    async def of_invoice(self, invoice_id: str) -> list[CreditNote]:
        t = credit_notes
        rows = await self._conn.execute(sa.select(t).where(t.c.invoice_id == invoice_id).order_by(t.c.created_at, t.c.id))
        return [_note(r) for r in rows]


class OutcomeRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add_if_absent(self, outcome: ReceivedOutcome) -> bool:
        inserted = (
            await self._conn.execute(
                pg.insert(charge_outcomes)
                .values(**dataclasses.asdict(outcome))
                .on_conflict_do_nothing(index_elements=[charge_outcomes.c.attempt_key, charge_outcomes.c.status])
                .returning(charge_outcomes.c.attempt_key)
            )
        ).first()
        return inserted is not None

    async def succeeded_charge_of(self, invoice_id: str) -> str | None:
        """The processor's charge that paid the invoice ("" when a success named none),
        or None when no charge succeeded for it."""
        t = charge_outcomes
        row = (
            await self._conn.execute(
                sa.select(t.c.provider_payment_ref)
                .where(t.c.invoice_id == invoice_id, t.c.status == "succeeded")
                .order_by(t.c.received_at)
                .limit(1)
            )
        ).first()
        return None if row is None else (row.provider_payment_ref or "")


class Numbering:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def next_number(self, merchant_id: str) -> int:
        t = invoice_counters
        # the upsert locks the merchant's row until this transaction ends: a concurrent
        # issue waits, then counts on from the committed number (or from ours, rolled back)
        stmt = (
            pg.insert(t)
            .values(merchant_id=merchant_id, last_number=1)
            .on_conflict_do_update(index_elements=[t.c.merchant_id], set_={"last_number": t.c.last_number + 1})
            .returning(t.c.last_number)
        )
        return int((await self._conn.execute(stmt)).scalar_one())

    async def next_numbers(self, merchant_id: str, count: int) -> list[int]:
        """The merchant's next ``count`` invoice numbers, consecutive, from one update of its
        counter row (locked until the unit of work ends, as ``next_number``)."""
        if count <= 0:
            return []
        t = invoice_counters
        stmt = (
            pg.insert(t)
            .values(merchant_id=merchant_id, last_number=count)
            .on_conflict_do_update(index_elements=[t.c.merchant_id], set_={"last_number": t.c.last_number + count})
            .returning(t.c.last_number)
        )
        last = int((await self._conn.execute(stmt)).scalar_one())
        return list(range(last - count + 1, last + 1))


class SqlInvoicingUnitOfWork(RepositoryUnitOfWork):
    """domain/ports.InvoicingUnitOfWork over PostgreSQL: one libs/infra/db.UnitOfWork and
    the repositories on its connection. ``translate`` renders a recorded event (views.py)."""

    invoices: InvoiceRepository
    lines: LineRepository
    billed: BilledRepository
    carry: CarryRepository
    credit_notes: CreditNoteRepository
    outcomes: OutcomeRepository
    numbering: Numbering

    def _bind(self, conn: AsyncConnection, seen: EventCollector) -> None:
        self.invoices = InvoiceRepository(conn, seen)
        self.lines = LineRepository(conn)
        self.billed = BilledRepository(conn)
        self.carry = CarryRepository(conn)
        self.credit_notes = CreditNoteRepository(conn)
        self.outcomes = OutcomeRepository(conn)
        self.numbering = Numbering(conn)
