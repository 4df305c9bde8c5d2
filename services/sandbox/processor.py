"""The sandbox processor's use cases: tokenize, save a method, charge, find, refund, and the
events they send. Each mutation is one transaction; the HTTP app (http.py) only parses
requests and renders what these return.

Exactly one charge per idempotency key: requests carrying one key are serialised by an
advisory lock on it, and the table's unique (account, idempotency_key) constraint is the
guarantee; a request whose key has a charge answers that charge, whatever it asks, even
while the charge is processing. Refunds likewise, and the charge's row is locked while
its refunds are summed, so they never exceed it.

A charge on the slow card is committed ``processing`` with ``completes_at``; the request
that made it waits until then and completes it, and if that request is gone (the client
timed out, the process stopped) the deliveries worker completes it (``complete_due``),
so it leaves ``processing`` once, either way.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from libs.core.clock import Clock
from libs.core.ids import new_id
from services.sandbox import store, views
from services.sandbox.domain import cards, webhooks
from services.sandbox.domain.cards import CardDetails
from services.sandbox.settings import SandboxSettings
from services.sandbox.store import Row, charges, deliveries, events, payment_methods, refunds, tokens

# how long a claimed delivery is another sender's (then a crashed sender's claim lapses)
CLAIM_SECONDS = 30.0


class SandboxError(Exception):
    """A request the processor refuses: the HTTP status, its error code and the field."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    account: str
    idempotency_key: str
    amount: int
    currency: str
    token: str | None
    payment_method: str | None
    off_session: bool
    metadata: Mapping[str, str]
    webhook_url: str | None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery claimed for sending, with its event's body."""

    id: int
    event_id: str
    url: str
    payload: str
    attempts: int


@dataclass
class Sandbox:
    engine: AsyncEngine
    settings: SandboxSettings
    clock: Clock
    rng: random.Random = field(default_factory=random.Random)
    # set when new deliveries may be due (the worker sleeps on it)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    _completions: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def policy(self) -> webhooks.DeliveryPolicy:
        s = self.settings
        return webhooks.DeliveryPolicy(
            min_delay=s.sandbox_webhook_min_delay_ms / 1000,
            max_delay=max(s.sandbox_webhook_min_delay_ms, s.sandbox_webhook_max_delay_ms) / 1000,
            duplicate_rate=s.sandbox_webhook_duplicate_rate,
            reorder_rate=s.sandbox_webhook_reorder_rate,
            max_attempts=s.sandbox_webhook_max_attempts,
            first_retry_delay=s.sandbox_webhook_first_retry_seconds,
        )

    # --- tokens and saved methods ---------------------------------------------------

    async def tokenize(self, number: Any, exp_month: Any, exp_year: Any, cvc: Any) -> Row:
        now = self.clock.now()
        try:
            details = cards.read_card(number, exp_month, exp_year, cvc, now)
        except cards.CardError as err:
            raise SandboxError(400, err.code, err.message, err.param) from None
        row = {"id": new_id("tok"), **_card_values(details), "created_at": now, "used_at": None, "used_by": None}
        async with self.engine.begin() as conn:
            await conn.execute(sa.insert(tokens).values(**row))
        return row

    async def save_method(self, token_id: str, customer: str) -> Row:
        """A saved method from a token; saving the same token for the same customer again
        answers the same method (a retry), anything else that reuses a token is refused."""
        now = self.clock.now()
        async with self.engine.begin() as conn:
            await store.lock_key(conn, "token", "", token_id)
            existing = await store.one(conn, sa.select(payment_methods).where(payment_methods.c.token_id == token_id))
            if existing is not None:
                if existing["customer"] != customer:
                    raise SandboxError(400, "token_already_used", "the token was used already", "token")
                return existing
            method_id = new_id("pm")
            token = await store.use_token(conn, token_id, method_id, now)
            if token is None:
                raise _token_unusable(await _token_exists(conn, token_id))
            # saving verifies the card, as a real processor's setup does: a card that
            # declines (0002, 9995) is refused here; 0341 passes and declines later
            verified = cards.outcome(token["behaviour"])
            if token["behaviour"] != cards.Behaviour.DECLINE_AFTER_ATTACH.value and not verified.succeeded:
                code = verified.failure_code or "card_declined"
                raise SandboxError(402, code, verified.failure_message or "Your card was declined.", "token")
            row = {"id": method_id, "customer": customer, "token_id": token_id, **_card_of(token), "created_at": now}
            await conn.execute(sa.insert(payment_methods).values(**row))
        return row

    # --- charges --------------------------------------------------------------------

    async def charge(self, request: ChargeRequest) -> tuple[Row, bool]:
        """The charge of the request's key (made now, or the one it made before: then the
        second value is True). A slow card's charge answers once it has completed."""
        try:
            row, replayed = await self._create_charge(request)
        except _KeyTaken:
            found = await self.find_by_key(request.account, request.idempotency_key)
            assert found is not None
            _check_same_charge(found, request)
            return found, True
        if replayed or row["status"] != "processing":
            return row, replayed
        task = asyncio.create_task(self._complete_when_due(row["id"], row["completes_at"]))
        self._completions.add(task)
        task.add_done_callback(self._completions.discard)
        # shielded: a request that goes away (or is cancelled) leaves the completion running
        await asyncio.shield(task)
        completed = await self.get_charge(row["id"])
        assert completed is not None
        return completed, False

    async def _create_charge(self, request: ChargeRequest) -> tuple[Row, bool]:
        now = self.clock.now()
        async with self.engine.begin() as conn:
            await store.lock_key(conn, "charge", request.account, request.idempotency_key)
            existing = await store.charge_by_key(conn, request.account, request.idempotency_key)
            if existing is not None:
                _check_same_charge(existing, request)
                return existing, True
            charge_id = new_id("ch")
            if request.token is not None:
                card = await store.use_token(conn, request.token, charge_id, now)
                if card is None:
                    raise _token_unusable(await _token_exists(conn, request.token))
            else:
                card = await store.one(conn, sa.select(payment_methods).where(payment_methods.c.id == request.payment_method))
                if card is None:
                    raise SandboxError(404, "resource_missing", "there is no such payment method", "paymentMethod")
            result = cards.outcome(card["behaviour"])
            status = "processing" if result.slow else ("succeeded" if result.succeeded else "failed")
            row = {
                "id": charge_id,
                "account": request.account,
                "idempotency_key": request.idempotency_key,
                "status": status,
                "amount": request.amount,
                "currency": request.currency,
                "token_id": request.token,
                "payment_method_id": request.payment_method if request.token is None else None,
                "off_session": request.off_session,
                "metadata": dict(request.metadata),
                "webhook_url": request.webhook_url,
                **_card_of(card),
                "failure_code": result.failure_code,
                "decline_code": result.decline_code,
                "failure_message": result.failure_message,
                "amount_refunded": 0,
                "event_seq": 1,
                "created_at": now,
                "updated_at": now,
                "completes_at": now + timedelta(seconds=self.settings.sandbox_slow_seconds) if result.slow else None,
            }
            inserted = await store.one(
                conn,
                pg.insert(charges)
                .values(**row)
                .on_conflict_do_nothing(constraint="uq_charges_account_idempotency_key")
                .returning(charges.c.id),
            )
            if inserted is None:  # only if the lock was bypassed: roll the token's use back
                raise _KeyTaken
            await self._emit(conn, f"charge.{status}", views.charge(row), charge_id, 1, request.webhook_url, now)
        self.wake.set()
        return row, False

    async def _complete_when_due(self, charge_id: str, completes_at: datetime) -> None:
        await asyncio.sleep(max(0.0, (completes_at - self.clock.now()).total_seconds()))
        await self.complete(charge_id)

    async def complete(self, charge_id: str) -> bool:
        """A processing charge succeeds (once: False if it had already left processing)."""
        now = self.clock.now()
        async with self.engine.begin() as conn:
            row = await store.one(
                conn,
                sa.update(charges)
                .where(charges.c.id == charge_id, charges.c.status == "processing")
                .values(status="succeeded", event_seq=charges.c.event_seq + 1, updated_at=now, completes_at=None)
                .returning(*charges.c),
            )
            if row is None:
                return False
            older = await store.one(
                conn,
                sa.select(events.c.id).where(events.c.object_id == charge_id, events.c.type == "charge.processing"),
            )
            older_id = None if older is None else str(older["id"])
            await self._emit(
                conn, "charge.succeeded", views.charge(row), charge_id, row["event_seq"], row["webhook_url"], now, older=older_id
            )
        self.wake.set()
        return True

    async def complete_due(self) -> int:
        """Completes every slow charge past its time whose request did not (it went away)."""
        async with self.engine.connect() as conn:
            due = (
                await conn.execute(
                    sa.select(charges.c.id).where(charges.c.status == "processing", charges.c.completes_at <= self.clock.now()).limit(100)
                )
            ).scalars()
            ids = list(due)
        done = 0
        for charge_id in ids:
            done += await self.complete(charge_id)
        return done

    async def find_by_key(self, account: str, key: str) -> Row | None:
        async with self.engine.connect() as conn:
            return await store.charge_by_key(conn, account, key)

    async def get_charge(self, charge_id: str) -> Row | None:
        async with self.engine.connect() as conn:
            return await store.charge_by_id(conn, charge_id)

    # --- refunds --------------------------------------------------------------------

    async def refund(self, account: str, key: str, charge_id: str, amount: int | None) -> tuple[Row, bool]:
        """The refund of the key (made now, or before: True). A refund is of a succeeded
        charge, of at most what is left of it (all of it when ``amount`` is None)."""
        now = self.clock.now()
        async with self.engine.begin() as conn:
            await store.lock_key(conn, "refund", account, key)
            existing = await store.refund_by_key(conn, account, key)
            if existing is not None:
                return existing, True
            charge = await store.charge_by_id(conn, charge_id, for_update=True)
            if charge is None or charge["account"] != account:
                raise SandboxError(404, "resource_missing", "there is no such charge", "charge")
            if charge["status"] != "succeeded":
                raise SandboxError(400, "charge_not_refundable", f"a {charge['status']} charge cannot be refunded", "charge")
            left = charge["amount"] - charge["amount_refunded"]
            if left <= 0:
                raise SandboxError(400, "charge_already_refunded", "the charge has been refunded in full already", "charge")
            amount = left if amount is None else amount
            if amount > left:
                raise SandboxError(400, "amount_too_large", f"amount may be at most {left}, what is left of the charge", "amount")
            row = {
                "id": new_id("re"),
                "account": account,
                "idempotency_key": key,
                "charge_id": charge_id,
                "amount": amount,
                "currency": charge["currency"],
                "status": "succeeded",
                "event_seq": 1,
                "created_at": now,
            }
            await conn.execute(sa.insert(refunds).values(**row))
            await conn.execute(
                sa.update(charges)
                .where(charges.c.id == charge_id)
                .values(amount_refunded=charges.c.amount_refunded + amount, updated_at=now)
            )
            await self._emit(conn, "refund.succeeded", views.refund(row), row["id"], 1, charge["webhook_url"], now)
        self.wake.set()
        return row, False

    # --- events and deliveries ------------------------------------------------------

    async def _emit(
        self,
        conn: AsyncConnection,
        event_type: str,
        obj: dict[str, Any],
        object_id: str,
        sequence: int,
        url: str | None,
        now: datetime,
        older: str | None = None,
    ) -> None:
        """An event of ``object_id`` and its deliveries to ``url`` (none without one);
        ``older``: an earlier event of the object that may be delivered again after this one."""
        event_id = new_id("evt")
        planned, late = webhooks.plan(self.policy, self.rng, older_event_pending_reorder=older is not None)
        due = [(url, p.kind.value, now + timedelta(seconds=p.delay)) for p in planned] if url else []
        row = {
            "id": event_id,
            "type": event_type,
            "object_id": object_id,
            "sequence": sequence,
            "payload": views.event_body(event_id, event_type, now, sequence, obj),
            "created_at": now,
        }
        await store.insert_event(conn, row, due, now)
        if url and older is not None and late is not None:
            await conn.execute(
                sa.insert(deliveries).values(
                    event_id=older,
                    url=url,
                    kind=webhooks.DeliveryKind.LATE.value,
                    status="pending",
                    attempts=0,
                    due_at=now + timedelta(seconds=late),
                    created_at=now,
                )
            )

    async def claim_deliveries(self, limit: int) -> list[Claimed]:
        """Due deliveries, claimed for this sender (an attempt counted)."""
        now = self.clock.now()
        due = (
            sa.select(deliveries.c.id)
            .where(
                deliveries.c.status.in_(("pending", "sending")),
                deliveries.c.due_at <= now,
                sa.or_(deliveries.c.status == "pending", deliveries.c.claimed_until < now),
            )
            .order_by(deliveries.c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        async with self.engine.begin() as conn:
            rows = await store.all_rows(
                conn,
                sa.update(deliveries)
                .where(deliveries.c.id.in_(due), events.c.id == deliveries.c.event_id)
                .values(status="sending", attempts=deliveries.c.attempts + 1, claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
                .returning(deliveries.c.id, deliveries.c.event_id, deliveries.c.url, deliveries.c.attempts, events.c.payload),
            )
        return [Claimed(r["id"], r["event_id"], r["url"], r["payload"], r["attempts"]) for r in rows]

    async def seconds_until_due(self) -> float | None:
        """How long until the next delivery or slow charge falls due (None: nothing waits;
        0 or less: something is due now)."""
        pending = sa.select(
            sa.func.min(sa.case((deliveries.c.status == "pending", deliveries.c.due_at), else_=deliveries.c.claimed_until))
        ).where(deliveries.c.status.in_(("pending", "sending")))
        slow = sa.select(sa.func.min(charges.c.completes_at)).where(charges.c.status == "processing")
        async with self.engine.connect() as conn:
            when = (await conn.execute(sa.select(sa.func.least(pending.scalar_subquery(), slow.scalar_subquery())))).scalar()
        return None if when is None else (when - self.clock.now()).total_seconds()

    async def record_attempt(self, claimed: Claimed, status: int | None, error: str | None) -> None:
        """The answer of one attempt: delivered on a 2xx, else tried again later or, after
        the last attempt, failed."""
        now = self.clock.now()
        values: dict[str, Any] = {"last_status": status, "last_error": error, "claimed_until": None}
        if status is not None and 200 <= status < 300:
            values.update(status="delivered", delivered_at=now)
        else:
            delay = webhooks.retry_delay(self.policy, claimed.attempts)
            if delay is None:
                values.update(status="failed")
            else:
                values.update(status="pending", due_at=now + timedelta(seconds=delay))
        async with self.engine.begin() as conn:
            await conn.execute(sa.update(deliveries).where(deliveries.c.id == claimed.id).values(**values))

    async def redeliver(self, event_id: str) -> Row:
        """One more delivery of an event, now, to its object's URL (test-only)."""
        now = self.clock.now()
        async with self.engine.begin() as conn:
            event = await store.one(conn, sa.select(events).where(events.c.id == event_id))
            if event is None:
                raise SandboxError(404, "resource_missing", "there is no such event", "id")
            url = await _url_of(conn, event["object_id"])
            if url is None:
                raise SandboxError(400, "no_webhook_url", "the event's object has no webhook URL", "id")
            delivery = await store.one(
                conn,
                sa.insert(deliveries)
                .values(event_id=event_id, url=url, kind="manual", status="pending", attempts=0, due_at=now, created_at=now)
                .returning(*deliveries.c),
            )
            assert delivery is not None
        self.wake.set()
        return {**delivery, "type": event["type"], "object_id": event["object_id"], "sequence": event["sequence"]}

    # --- the test-only records ------------------------------------------------------

    async def all_charges(self, metadata_key: str | None = None, metadata_value: str | None = None) -> list[Row]:
        query = sa.select(charges).order_by(charges.c.created_at, charges.c.id)
        if metadata_key is not None:
            value = charges.c.metadata[metadata_key].astext
            query = query.where(value == metadata_value if metadata_value is not None else value.is_not(None))
        elif metadata_value is not None:
            raise SandboxError(400, "parameter_missing", "metadataValue needs metadataKey", "metadataKey")
        async with self.engine.connect() as conn:
            return await store.all_rows(conn, query)

    async def all_refunds(self, charge_id: str | None = None) -> list[Row]:
        query = sa.select(refunds).order_by(refunds.c.created_at, refunds.c.id)
        if charge_id is not None:
            query = query.where(refunds.c.charge_id == charge_id)
        async with self.engine.connect() as conn:
            return await store.all_rows(conn, query)

    async def all_deliveries(self, object_id: str | None = None) -> list[Row]:
        query = (
            sa.select(deliveries, events.c.type, events.c.object_id, events.c.sequence)
            .join(events, events.c.id == deliveries.c.event_id)
            .order_by(deliveries.c.id)
        )
        if object_id is not None:
            query = query.where(events.c.object_id == object_id)
        async with self.engine.connect() as conn:
            return await store.all_rows(conn, query)

    async def ready(self) -> None:
        """Raises unless the database answers."""
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        """On a stop: the slow charges this process is completing get a second to finish;
        the rest stay ``processing`` until a sandbox process's worker completes them."""
        if self._completions:
            _, pending = await asyncio.wait(list(self._completions), timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


class _KeyTaken(Exception):
    """The key's charge appeared under our feet (rolls the transaction back)."""


def _card_values(details: CardDetails) -> dict[str, Any]:
    return {
        "brand": details.brand,
        "last4": details.last4,
        "exp_month": details.exp_month,
        "exp_year": details.exp_year,
        "behaviour": details.behaviour.value,
    }


def _card_of(row: Row) -> dict[str, Any]:
    return {name: row[name] for name in ("brand", "last4", "exp_month", "exp_year", "behaviour")}


def _check_same_charge(existing: Row, request: ChargeRequest) -> None:
    """A key answers its charge only to the same request (as Stripe's keys): another amount,
    currency or source with a used key is refused (409), never answered with that charge."""
    same_source = (
        existing["token_id"] == request.token
        if request.token is not None
        else existing["token_id"] is None and existing["payment_method_id"] == request.payment_method
    )
    if existing["amount"] != request.amount or existing["currency"] != request.currency or not same_source:
        raise SandboxError(
            409,
            "idempotency_key_in_use",
            "this Idempotency-Key was used for another charge (a different amount, currency or source)",
            "Idempotency-Key",
        )


async def _token_exists(conn: AsyncConnection, token_id: str) -> bool:
    return await store.one(conn, sa.select(tokens.c.id).where(tokens.c.id == token_id)) is not None


def _token_unusable(exists: bool) -> SandboxError:
    if exists:
        return SandboxError(400, "token_already_used", "the token was used already: tokenize the card again", "token")
    return SandboxError(404, "resource_missing", "there is no such token", "token")


async def _url_of(conn: AsyncConnection, object_id: str) -> str | None:
    """The webhook URL of a charge, or of a refund's charge."""
    if object_id.startswith("re_"):
        found = await store.one(
            conn, sa.select(charges.c.webhook_url).join(refunds, refunds.c.charge_id == charges.c.id).where(refunds.c.id == object_id)
        )
    else:
        found = await store.one(conn, sa.select(charges.c.webhook_url).where(charges.c.id == object_id))
    return None if found is None else found["webhook_url"]
