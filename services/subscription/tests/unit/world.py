"""Shared setup of the subscription service's unit tests: fakes, a merchant, a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from services.subscription.domain import commands, use_cases
from services.subscription.domain.model import Customer
from services.subscription.tests.fakes import FakeCatalog, FakeMetering, FakeTimeline, FakeUnitOfWork

MERCHANT = "org_merchant_a"
OTHER = "org_merchant_b"
NOW = datetime(2026, 3, 15, 12, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
ADDRESS = {"country": "DE", "zip_code": "10115", "city": "Berlin"}


def consumer(email: str = "ada@example.com", name: str = "Ada Ltd") -> commands.ConsumerDetails:
    return commands.ConsumerDetails(name=name, email=email, address=ADDRESS)


@dataclass
class World:
    uow: FakeUnitOfWork = field(default_factory=FakeUnitOfWork)
    catalog: FakeCatalog = field(default_factory=FakeCatalog)
    metering: FakeMetering = field(default_factory=FakeMetering)
    timeline: FakeTimeline = field(default_factory=FakeTimeline)

    async def customer(self, email: str = "ada@example.com", *, merchant: str = MERCHANT, external_id: str | None = None) -> Customer:
        found, _ = await use_cases.create_customer(
            self.uow, merchant, NOW, commands.CreateCustomer(consumer(email), external_id=external_id)
        )
        self.uow.commit()
        return found

    def subscribe(self, customer_id: str | None, **extra: object) -> commands.CreateSubscription:
        values: dict[str, object] = {"name": "Pro", "plan_id": "plan_pro", "started_at": NOW, "customer_id": customer_id}
        values.update(extra)
        return commands.CreateSubscription(**values)  # type: ignore[arg-type]
