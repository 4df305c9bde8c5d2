"""What the subscription service's use cases need from storage and from other services.

store.py implements the repositories over PostgreSQL, tests/fakes.py in memory. Every
query is scoped to the merchant and blind to deleted rows: another merchant's resource,
or a deleted one, is NotFound. A repository registers every aggregate it returns or adds
with the unit of work, which collects their events at commit.

The catalog (plans), metering (test-clock time) and the billing engine (engine.py) are
ports too, so the use cases run on fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from libs.core.paging import Page
from services.subscription.domain.model import Consumer, Customer, PlanTerms, Subscription, TestClock


@dataclass(frozen=True)
class CustomerFilters:
    name: str | None = None
    email: str | None = None
    external_id: str | None = None


@dataclass(frozen=True)
class SubscriptionFilters:
    customer_id: str | None = None
    consumer_id: str | None = None
    statuses: Sequence[str] = ()
    started_before: datetime | None = None


class ConsumerRepository(Protocol):
    async def get(self, merchant_id: str, consumer_id: str, *, field: str | None = None) -> Consumer: ...

    async def claim_email(self, merchant_id: str, email: str) -> Consumer | None:
        """The merchant's consumer with this email (case-insensitive), if any; until this
        unit of work ends no other one can take the email."""
        ...

    async def add(self, consumer: Consumer) -> None: ...

    async def by_ids(self, consumer_ids: Sequence[str]) -> dict[str, Consumer]: ...


class CustomerRepository(Protocol):
    async def get(self, merchant_id: str, customer_id: str, *, field: str | None = None, lock: bool = False) -> Customer: ...

    async def live_of_consumer(self, merchant_id: str, consumer_id: str) -> Customer | None:
        """The consumer's live customer, if any; until this unit of work ends no other one
        can create one for the consumer."""
        ...

    async def claim_external_id(self, merchant_id: str, external_id: str) -> Customer | None:
        """The live customer holding the external id, if any; until this unit of work ends
        no other one can take it."""
        ...

    async def add(self, customer: Customer) -> None: ...

    async def save(self, customer: Customer) -> None: ...

    async def list_page(self, merchant_id: str, filters: CustomerFilters, page: Page) -> tuple[list[Customer], int]: ...


class TestClockRepository(Protocol):
    async def get(self, merchant_id: str, clock_id: str, *, field: str | None = None, lock: bool = False) -> TestClock: ...

    async def add(self, clock: TestClock) -> None: ...

    async def save(self, clock: TestClock) -> None: ...

    async def list_page(self, merchant_id: str, page: Page) -> tuple[list[TestClock], int]: ...


class SubscriptionRepository(Protocol):
    async def get(self, merchant_id: str, subscription_id: str, *, field: str | None = None, lock: bool = False) -> Subscription: ...

    async def add(self, subscription: Subscription) -> None: ...

    async def save(self, subscription: Subscription) -> None: ...

    async def list_page(self, merchant_id: str, filters: SubscriptionFilters, page: Page) -> tuple[list[Subscription], int]: ...

    async def live_of_customer(self, customer_id: str) -> str | None:
        """The id of a pending_payment or active subscription of the customer, if any."""
        ...

    async def live_on_clock(self, clock_id: str) -> str | None: ...

    async def customers_on_clock(self, clock_id: str) -> list[str]: ...

    async def clock_conflict(self, customer_id: str, test_clock_id: str | None) -> str | None:
        """The id of a subscription that puts the customer on another clock (or on real
        time when ``test_clock_id`` is a clock), if any: a customer lives in one time."""
        ...


class SubscriptionUnitOfWork(Protocol):
    @property
    def consumers(self) -> ConsumerRepository: ...

    @property
    def customers(self) -> CustomerRepository: ...

    @property
    def test_clocks(self) -> TestClockRepository: ...

    @property
    def subscriptions(self) -> SubscriptionRepository: ...

    @property
    def session(self) -> Any:
        """The transaction the billing engine writes its due work in (libs/infra/db.UnitOfWork)."""
        ...


class PlanCatalog(Protocol):
    async def plan_terms(self, plan_id: str) -> PlanTerms:
        """The plan's default version and terms; NotFound (field planId) when the plan is
        not the merchant's or not live."""
        ...


class ClockSync(Protocol):
    async def sync_test_clock(self, clock: TestClock, customer_ids: Sequence[str], *, deleted: bool = False) -> None:
        """Tell metering the clock's time and its customers (events of the clock's present)."""
        ...


class Timeline(Protocol):
    """The billing engine (engine.py)."""

    async def schedule_new(self, session: Any, subscription: Subscription, now: datetime) -> None: ...

    async def schedule_termination(self, session: Any, subscription: Subscription, at: datetime) -> None: ...

    async def schedule_end(self, session: Any, subscription: Subscription, at: datetime | None) -> None: ...

    async def run_subscription(self, merchant_id: str, subscription_id: str, until: datetime) -> Sequence[Any] | None: ...

    async def advance_clock(self, merchant_id: str, clock_id: str, until: datetime) -> None: ...


@dataclass(frozen=True)
class Checkout:
    """Invoice 0's open checkout session, as invoicing knows it now."""

    session_id: str
    url: str


class Checkouts(Protocol):
    """Invoice 0's current checkout (hosted_link may have replaced the session the engine
    recorded at issue). None: no open checkout, or invoicing did not answer (the reader
    shows the recorded one)."""

    async def invoice_zero_checkout(self, invoice_id: str) -> Checkout | None: ...
