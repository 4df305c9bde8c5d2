"""The payment service's unit of work in memory (domain/ports.PaymentUnitOfWork), keeping
the database's unique rules that the use cases rely on (one attempt per key, one in
flight and one succeeded per payable, one open session per entity), so the use cases run
on it with the fake processor: fast tests of the flows, no servers."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from libs.core.domain import Aggregate, DomainEvent, EventCollector
from libs.core.errors import NotFound
from libs.core.paging import Page
from services.payment.domain.commands import PaymentFilters, SessionFilters
from services.payment.domain.model import (
    IN_FLIGHT,
    OPEN_SESSION_STATUSES,
    ChargeAttempt,
    CollectionSettings,
    Payment,
    PaymentMethod,
    PaymentSession,
    Refund,
)

A = TypeVar("A", bound=Aggregate)


@dataclass
class Memory:
    sessions: dict[str, PaymentSession] = field(default_factory=dict)
    payments: dict[str, Payment] = field(default_factory=dict)
    methods: dict[str, PaymentMethod] = field(default_factory=dict)
    attempts: dict[str, ChargeAttempt] = field(default_factory=dict)
    settings: dict[str, CollectionSettings] = field(default_factory=dict)
    refunds: dict[str, Refund] = field(default_factory=dict)
    webhooks: set[tuple[str, str]] = field(default_factory=set)
    events: list[DomainEvent] = field(default_factory=list)


class _Table:
    def __init__(self, rows: dict[str, Any], seen: EventCollector, resource: str) -> None:
        self._rows = rows
        self._seen = seen
        self._resource = resource

    def _load(self, found: A) -> A:
        return self._seen.track(copy.deepcopy(found))

    def _store(self, aggregate: Aggregate) -> None:
        self._seen.track(aggregate)
        stored = copy.deepcopy(aggregate)
        stored.take_events()
        self._rows[aggregate.id] = stored

    async def get(self, merchant_id: str, resource_id: str, *, field: str | None = None, lock: bool = False) -> Any:
        found = self._rows.get(resource_id)
        if found is None or found.merchant_id != merchant_id:
            raise NotFound(self._resource, resource_id, field=field)
        return self._load(found)

    async def add(self, aggregate: Any) -> None:
        self._store(aggregate)

    async def save(self, aggregate: Any) -> None:
        self._store(aggregate)

    def _mine(self, merchant_id: str) -> list[Any]:
        return sorted((r for r in self._rows.values() if r.merchant_id == merchant_id), key=lambda r: (r.create_time, r.id), reverse=True)


class Sessions(_Table):
    async def add_open(self, session: PaymentSession) -> bool:
        if await self.open_of_entity(session.merchant_id, session.entity_type, session.entity_id) is not None:
            return False
        self._store(session)
        return True

    async def open_of_entity(self, merchant_id: str, entity_type: str, entity_id: str, *, lock: bool = False) -> PaymentSession | None:
        for found in self._rows.values():
            key = (found.merchant_id, found.entity_type, found.entity_id, found.mode)
            if key == (merchant_id, entity_type, entity_id, "payment") and found.status in OPEN_SESSION_STATUSES:
                loaded: PaymentSession = self._load(found)
                return loaded
        return None

    async def open_of_payable(
        self, merchant_id: str, entity_id: str, *, lock: bool = False, skip_locked: bool = False
    ) -> list[PaymentSession]:
        return [
            self._load(s)
            for s in self._rows.values()
            if s.merchant_id == merchant_id and s.entity_id == entity_id and s.mode == "payment" and s.status in OPEN_SESSION_STATUSES
        ]

    async def list_page(self, merchant_id: str, filters: SessionFilters, page: Page) -> tuple[list[PaymentSession], int]:
        found = [s for s in self._mine(merchant_id) if s.mode == "payment"]
        return [self._load(s) for s in found[page.offset : page.offset + page.limit]], len(found)

    async def lapsed(self, now: datetime, limit: int) -> list[PaymentSession]:
        return [self._load(s) for s in self._rows.values() if s.status == "pending" and s.expires_at <= now][:limit]

    async def stuck(self, before: datetime, limit: int) -> list[PaymentSession]:
        return [self._load(s) for s in self._rows.values() if s.mode == "setup" and s.status == "processing" and s.update_time < before]


class Payments(_Table):
    async def by_key(self, merchant_id: str, key: str) -> Payment | None:
        for found in self._rows.values():
            if found.merchant_id == merchant_id and found.idempotency_key == key:
                loaded: Payment = self._load(found)
                return loaded
        return None

    async def list_page(self, merchant_id: str, filters: PaymentFilters, page: Page) -> tuple[list[Payment], int]:
        found = self._mine(merchant_id)
        return [self._load(p) for p in found[page.offset : page.offset + page.limit]], len(found)

    async def lapsed(self, now: datetime, limit: int) -> list[Payment]:
        return [self._load(p) for p in self._rows.values() if p.status == "pending" and p.expires_at <= now][:limit]


class Methods(_Table):
    async def of_customer(self, merchant_id: str, customer_id: str) -> list[PaymentMethod]:
        return [self._load(m) for m in self._mine(merchant_id) if m.customer_id == customer_id]

    async def delete(self, merchant_id: str, method_id: str) -> None:
        found = self._rows.get(method_id)
        if found is not None and found.merchant_id == merchant_id:
            del self._rows[method_id]


class Attempts(_Table):
    async def add_new(self, attempt: ChargeAttempt) -> bool:
        for found in self._rows.values():
            if found.merchant_id != attempt.merchant_id:
                continue
            same_payable = (found.payable_type, found.payable_id) == (attempt.payable_type, attempt.payable_id)
            if found.attempt_key == attempt.attempt_key or (same_payable and found.status in (*IN_FLIGHT, "succeeded")):
                return False
            if attempt.submit_nonce and (found.session_id, found.submit_nonce) == (attempt.session_id, attempt.submit_nonce):
                return False
        self._store(attempt)
        return True

    async def delete(self, attempt: ChargeAttempt) -> None:
        self._rows.pop(attempt.id, None)

    async def by_key(self, merchant_id: str, key: str, *, lock: bool = False) -> ChargeAttempt | None:
        for found in self._rows.values():
            if found.merchant_id == merchant_id and found.attempt_key == key:
                loaded: ChargeAttempt = self._load(found)
                return loaded
        return None

    async def by_nonce(self, merchant_id: str, session_id: str, nonce: str) -> ChargeAttempt | None:
        for found in self._rows.values():
            if (found.merchant_id, found.session_id, found.submit_nonce) == (merchant_id, session_id, nonce):
                loaded: ChargeAttempt = self._load(found)
                return loaded
        return None

    async def succeeded_of(self, merchant_id: str, payable_type: str, payable_id: str) -> ChargeAttempt | None:
        for found in self._rows.values():
            if (found.merchant_id, found.payable_type, found.payable_id, found.status) == (
                merchant_id,
                payable_type,
                payable_id,
                "succeeded",
            ):
                loaded: ChargeAttempt = self._load(found)
                return loaded
        return None

    async def failed_of_session(self, merchant_id: str, session_id: str, *, excluding: str | None = None) -> int:
        return sum(
            1
            for a in self._rows.values()
            if (a.merchant_id, a.session_id, a.status) == (merchant_id, session_id, "failed") and a.id != excluding
        )

    async def first_automatic_at(self, merchant_id: str, invoice_id: str) -> datetime | None:
        times = [
            a.first_attempt_at or a.effective_time or a.create_time
            for a in self._rows.values()
            if a.merchant_id == merchant_id and a.payable_id == invoice_id and a.trigger == "automatic"
        ]
        return min(times) if times else None

    async def unsettled(self, before: datetime, limit: int) -> list[ChargeAttempt]:
        return [self._load(a) for a in self._rows.values() if a.status in IN_FLIGHT and a.update_time < before][:limit]

    async def unreported(self, before: datetime, limit: int) -> list[ChargeAttempt]:
        return [self._load(a) for a in self._rows.values() if a.needs_report and a.decided_at is not None and a.decided_at < before][:limit]


class Settings:
    def __init__(self, rows: dict[str, CollectionSettings]) -> None:
        self._rows = rows

    async def get(self, merchant_id: str) -> CollectionSettings:
        return copy.deepcopy(self._rows.get(merchant_id) or CollectionSettings(merchant_id=merchant_id))

    async def save(self, settings: CollectionSettings) -> None:
        self._rows[settings.merchant_id] = copy.deepcopy(settings)


class Refunds(_Table):
    async def by_credit_note(self, merchant_id: str, credit_note_id: str, *, lock: bool = False) -> Refund | None:
        for found in self._rows.values():
            if (found.merchant_id, found.credit_note_id) == (merchant_id, credit_note_id):
                loaded: Refund = self._load(found)
                return loaded
        return None

    async def add_new(self, refund: Refund) -> bool:
        if await self.by_credit_note(refund.merchant_id, refund.credit_note_id) is not None:
            return False
        self._store(refund)
        return True

    async def delete(self, refund: Refund) -> None:
        self._rows.pop(refund.id, None)

    async def pending(self, before: datetime, limit: int) -> list[Refund]:
        return [self._load(r) for r in self._rows.values() if r.status == "pending" and r.update_time < before][:limit]


class Webhooks:
    def __init__(self, seen: set[tuple[str, str]]) -> None:
        self._seen = seen

    async def claim(self, processor: str, event_id: str, *, merchant_id: str, event_type: str, now: datetime) -> bool:
        if (processor, event_id) in self._seen:
            return False
        self._seen.add((processor, event_id))
        return True


class MemoryUnitOfWork:
    """One "transaction" over Memory; the events its aggregates recorded are kept at exit."""

    def __init__(self, memory: Memory) -> None:
        self._memory = memory
        self._collected = EventCollector()
        self.sessions = Sessions(memory.sessions, self._collected, "payment_session")
        self.payments = Payments(memory.payments, self._collected, "payment")
        self.methods = Methods(memory.methods, self._collected, "payment_method")
        self.attempts = Attempts(memory.attempts, self._collected, "charge_attempt")
        self.settings = Settings(memory.settings)
        self.refunds = Refunds(memory.refunds, self._collected, "refund")
        self.webhooks = Webhooks(memory.webhooks)

    async def __aenter__(self) -> MemoryUnitOfWork:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self._memory.events.extend(self._collected.collect_new_events())
