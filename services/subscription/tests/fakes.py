"""In-memory repositories, unit of work and ports for the subscription service's use cases
(domain/ports.py), after cosmicpython's fakes: the same named queries over dicts, so a
use case runs without PostgreSQL, the catalog, metering or the billing engine. Like
store.py, every repository registers what it returns or adds in ``seen``; ``commit()``
takes the recorded events, as the real unit of work does when it writes the outbox."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from libs.core.domain import DomainEvent, EventCollector
from libs.core.errors import NotFound
from libs.core.paging import Page
from services.subscription.domain.model import Consumer, Customer, PlanTerms, Subscription, TestClock
from services.subscription.domain.ports import CustomerFilters, SubscriptionFilters
from services.subscription.domain.rules import LIVE_STATUSES

A = TypeVar("A", Consumer, Customer, TestClock, Subscription)


class FakeRepository(Generic[A]):
    def __init__(self, seen: EventCollector, resource: str) -> None:
        self._seen = seen
        self._resource = resource
        self.rows: dict[str, A] = {}

    def live(self, merchant_id: str | None = None) -> list[A]:
        return [
            a
            for a in self.rows.values()
            if getattr(a, "delete_time", None) is None and (merchant_id is None or a.merchant_id == merchant_id)
        ]

    async def get(self, merchant_id: str, resource_id: str, *, field: str | None = None, lock: bool = False) -> A:
        found = self.rows.get(resource_id)
        if found is None or found.merchant_id != merchant_id or getattr(found, "delete_time", None) is not None:
            raise NotFound(self._resource, resource_id, field=field)
        return self._seen.track(found)

    async def add(self, aggregate: A) -> None:
        assert aggregate.id not in self.rows, f"{aggregate.id} added twice"
        self.rows[aggregate.id] = self._seen.track(aggregate)

    async def save(self, aggregate: A) -> None:
        assert aggregate.id in self.rows, f"{aggregate.id} saved before it was added"
        self.rows[aggregate.id] = self._seen.track(aggregate)

    def _page(self, found: list[A], page: Page) -> tuple[list[A], int]:
        found.sort(key=lambda a: (a.create_time, a.id), reverse=True)
        return [self._seen.track(a) for a in found[page.offset : page.offset + page.limit]], len(found)


class FakeConsumers(FakeRepository[Consumer]):
    async def claim_email(self, merchant_id: str, email: str) -> Consumer | None:
        wanted = email.strip().lower()
        return next((c for c in self.live(merchant_id) if c.email_normalized == wanted), None)

    async def by_ids(self, consumer_ids: Sequence[str]) -> dict[str, Consumer]:
        return {i: self.rows[i] for i in consumer_ids if i in self.rows}


class FakeCustomers(FakeRepository[Customer]):
    def __init__(self, uow: FakeUnitOfWork) -> None:
        super().__init__(uow.seen, "customer")
        self._uow = uow

    async def live_of_consumer(self, merchant_id: str, consumer_id: str) -> Customer | None:
        return next((c for c in self.live(merchant_id) if c.consumer_id == consumer_id), None)

    async def claim_external_id(self, merchant_id: str, external_id: str) -> Customer | None:
        return next((c for c in self.live(merchant_id) if c.external_id == external_id), None)

    async def list_page(self, merchant_id: str, filters: CustomerFilters, page: Page) -> tuple[list[Customer], int]:
        def matches(c: Customer) -> bool:
            consumer = self._uow.consumers.rows[c.consumer_id]
            return (
                (filters.external_id is None or c.external_id == filters.external_id)
                and (filters.name is None or filters.name.lower() in consumer.name.lower())
                and (filters.email is None or filters.email.lower() in consumer.email.lower())
            )

        return self._page([c for c in self.live(merchant_id) if matches(c)], page)


class FakeTestClocks(FakeRepository[TestClock]):
    __test__ = False

    async def list_page(self, merchant_id: str, page: Page) -> tuple[list[TestClock], int]:
        return self._page(self.live(merchant_id), page)


class FakeSubscriptions(FakeRepository[Subscription]):
    def __init__(self, uow: FakeUnitOfWork) -> None:
        super().__init__(uow.seen, "subscription")
        self._uow = uow

    async def list_page(self, merchant_id: str, filters: SubscriptionFilters, page: Page) -> tuple[list[Subscription], int]:
        def matches(s: Subscription) -> bool:
            customer = self._uow.customers.rows[s.customer_id]
            return (
                (filters.customer_id is None or s.customer_id == filters.customer_id)
                and (filters.consumer_id is None or customer.consumer_id == filters.consumer_id)
                and (not filters.statuses or s.status in filters.statuses)
                and (filters.started_before is None or s.started_at <= filters.started_before)
            )

        return self._page([s for s in self.live(merchant_id) if matches(s)], page)

    async def live_of_customer(self, customer_id: str) -> str | None:
        return next((s.id for s in self.rows.values() if s.customer_id == customer_id and s.status in LIVE_STATUSES), None)

    async def live_on_clock(self, clock_id: str) -> str | None:
        return next((s.id for s in self.rows.values() if s.test_clock_id == clock_id and s.status in LIVE_STATUSES), None)

    async def customers_on_clock(self, clock_id: str) -> list[str]:
        return sorted({s.customer_id for s in self.rows.values() if s.test_clock_id == clock_id})

    async def clock_conflict(self, customer_id: str, test_clock_id: str | None) -> str | None:
        clocks = self._uow.test_clocks.rows
        for s in self.rows.values():
            if s.customer_id != customer_id or s.test_clock_id == test_clock_id:
                continue
            on_live_clock = s.test_clock_id is not None and clocks[s.test_clock_id].delete_time is None
            if s.status in LIVE_STATUSES or on_live_clock:
                return s.id
        return None


class FakeUnitOfWork:
    """domain/ports.SubscriptionUnitOfWork in memory; ``commit()`` returns what would go to the outbox."""

    def __init__(self) -> None:
        self.seen = EventCollector()
        self.consumers = FakeConsumers(self.seen, "consumer")
        self.customers = FakeCustomers(self)
        self.test_clocks = FakeTestClocks(self.seen, "test_clock")
        self.subscriptions = FakeSubscriptions(self)

    @property
    def session(self) -> FakeUnitOfWork:
        return self

    def commit(self) -> list[DomainEvent]:
        return list(self.seen.collect_new_events())


PLAN = PlanTerms(
    plan_id="plan_pro",
    plan_version_id="pv_pro_2",
    version_number=2,
    currency="USD",
    billing_cadence="P1M",
    billing_anchor=None,
    tax_behavior="exclusive",
    default_tax_rate="13",
    renewal_reminder_enabled=True,
    renewal_reminder_days=3,
)


@dataclass
class FakeCatalog:
    """PlanCatalog: the merchant's plans by id (another merchant's plan is simply absent)."""

    plans: dict[str, PlanTerms] = field(default_factory=lambda: {PLAN.plan_id: PLAN})

    async def plan_terms(self, plan_id: str) -> PlanTerms:
        if plan_id not in self.plans:
            raise NotFound("plan", plan_id, field="planId")
        return self.plans[plan_id]


@dataclass
class FakeMetering:
    """ClockSync: what metering was told, in order."""

    told: list[tuple[str, datetime, list[str], bool]] = field(default_factory=list)
    # shared with a FakeTimeline: the order of calls across the two
    journal: list[str] = field(default_factory=list)

    async def sync_test_clock(self, clock: TestClock, customer_ids: Sequence[str], *, deleted: bool = False) -> None:
        self.journal.append("metering")
        self.told.append((clock.id, clock.current_time, list(customer_ids), deleted))


@dataclass
class FakeTimeline:
    """Timeline: the calls the use cases made, in order."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    journal: list[str] = field(default_factory=list)

    async def schedule_new(self, session: Any, subscription: Subscription, now: datetime) -> None:
        self.calls.append(("schedule_new", subscription.id, now))

    async def schedule_termination(self, session: Any, subscription: Subscription, at: datetime) -> None:
        self.calls.append(("schedule_termination", subscription.id, at))

    async def schedule_end(self, session: Any, subscription: Subscription, at: datetime | None) -> None:
        self.calls.append(("schedule_end", subscription.id, at))

    async def run_subscription(self, merchant_id: str, subscription_id: str, until: datetime) -> list[Any]:
        self.calls.append(("run_subscription", subscription_id, until))
        return []

    async def advance_clock(self, merchant_id: str, clock_id: str, until: datetime) -> None:
        self.journal.append("engine")
        self.calls.append(("advance_clock", clock_id, until))
