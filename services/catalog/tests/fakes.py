"""In-memory repositories and unit of work for the catalog's use cases (domain/ports.py),
after cosmicpython's FakeRepository / FakeUnitOfWork: the same named queries over
dicts, so a use case runs without PostgreSQL. Like store.py, every repository registers
what it returns or adds in ``seen``; ``commit()`` takes the recorded events, as the
real unit of work does when it writes them to the outbox.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from libs.core.domain import DomainEvent, EventCollector
from libs.core.errors import NotFound
from libs.core.paging import Page
from services.catalog.domain.model import BillableMetric, CatalogAggregate, Feature, Fee, Plan, PlanVersion, Price, Product

A = TypeVar("A", bound=CatalogAggregate)


class FakeRepository(Generic[A]):
    def __init__(self, seen: EventCollector, resource: str) -> None:
        self._seen = seen
        self._resource = resource
        self.rows: dict[str, A] = {}

    def live(self) -> list[A]:
        return [a for a in self.rows.values() if a.delete_time is None]

    async def get(self, merchant_id: str, resource_id: str, *, field: str | None = None, lock: bool = False) -> A:
        found = self.rows.get(resource_id)
        if found is None or found.merchant_id != merchant_id or found.delete_time is not None:
            raise NotFound(self._resource, resource_id, field=field)
        return self._seen.track(found)

    async def add(self, aggregate: A) -> None:
        assert aggregate.id not in self.rows, f"{aggregate.id} added twice"
        self.rows[aggregate.id] = self._seen.track(aggregate)

    async def save(self, aggregate: A) -> None:
        assert aggregate.id in self.rows, f"{aggregate.id} saved before it was added"
        self.rows[aggregate.id] = self._seen.track(aggregate)

    async def list_page(self, merchant_id: str, filters: Mapping[str, str], page: Page) -> tuple[list[A], int]:
        matching = [
            a for a in self.live() if a.merchant_id == merchant_id and all(getattr(a, name) == value for name, value in filters.items())
        ]
        matching.sort(key=lambda a: (a.created_at, a.id), reverse=True)
        return [self._seen.track(a) for a in matching[page.offset : page.offset + page.limit]], len(matching)


class FakeFeatureRepository(FakeRepository[Feature]):
    async def claim_key(self, product_id: str, key: str) -> Feature | None:
        return next((f for f in self.live() if f.product_id == product_id and f.key == key), None)


class FakePriceRepository(FakeRepository[Price]):
    def __init__(self, uow: FakeCatalogUnitOfWork) -> None:
        super().__init__(uow.seen, "price")
        self._uow = uow

    async def live_price_using_feature(self, feature_id: str) -> str | None:
        return next((p.id for p in self.live() if p.feature_id == feature_id), None)

    async def live_price_of_fee(self, fee_id: str) -> str | None:
        return next((p.id for p in self.live() if p.fee_id == fee_id), None)

    async def is_price_in_live_plan(self, price_id: str) -> str | None:
        live_plans = {p.id for p in self._uow.plans.live()}
        for version in self._uow.plan_versions.rows.values():
            if version.status == "published" and version.plan_id in live_plans and any(ln.price_id == price_id for ln in version.lines):
                return version.plan_id
        return None

    async def release_feature_from_deleted(self, feature_id: str) -> None:
        for price in self.rows.values():
            if price.delete_time is not None and price.feature_id == feature_id:
                price.feature_id = price.price_feature_id = None

    async def product_of(self, price: Price) -> str:
        if price.billable_metric_id is not None:
            return self._uow.billable_metrics.rows[price.billable_metric_id].product_id
        assert price.fee_id is not None
        return self._uow.fees.rows[price.fee_id].product_id


class FakePlanVersionRepository:
    def __init__(self, seen: EventCollector) -> None:
        self._seen = seen
        self.rows: dict[str, PlanVersion] = {}

    async def get_by_number(self, plan: Plan, number: int, *, lock: bool = False) -> PlanVersion:
        for version in self.rows.values():
            if version.plan_id == plan.id and version.version_number == number:
                return self._seen.track(version)
        raise NotFound("plan_version", f"{plan.id}/versions/{number}", field="versionNumber")

    async def last_number(self, plan_id: str) -> int:
        return max((v.version_number for v in self.rows.values() if v.plan_id == plan_id), default=0)

    async def add(self, version: PlanVersion) -> None:
        assert (version.plan_id, version.version_number) not in {(v.plan_id, v.version_number) for v in self.rows.values()}
        self.rows[version.id] = self._seen.track(version)

    async def save(self, version: PlanVersion) -> None:
        self.rows[version.id] = self._seen.track(version)

    async def list_page(self, plan: Plan, page: Page) -> tuple[list[PlanVersion], int]:
        versions = sorted((v for v in self.rows.values() if v.plan_id == plan.id), key=lambda v: v.version_number, reverse=True)
        return versions[page.offset : page.offset + page.limit], len(versions)


class FakeCatalogUnitOfWork:
    """domain/ports.CatalogUnitOfWork in memory; ``commit()`` returns what would go to the outbox."""

    def __init__(self) -> None:
        self.seen = EventCollector()
        self.products: FakeRepository[Product] = FakeRepository(self.seen, "product")
        self.billable_metrics: FakeRepository[BillableMetric] = FakeRepository(self.seen, "billable_metric")
        self.features = FakeFeatureRepository(self.seen, "feature")
        self.fees: FakeRepository[Fee] = FakeRepository(self.seen, "fee")
        self.prices = FakePriceRepository(self)
        self.plans: FakeRepository[Plan] = FakeRepository(self.seen, "plan")
        self.plan_versions = FakePlanVersionRepository(self.seen)

    def commit(self) -> list[DomainEvent]:
        return list(self.seen.collect_new_events())
