"""What the catalog's use cases need from storage: repositories with named queries, and
a unit of work holding them. store.py implements these over PostgreSQL;
tests/fakes.py in memory. A repository registers every aggregate it returns or adds
with the unit of work, which collects their events at commit (cosmicpython's ``seen``).

Every query is scoped to the merchant and sees live resources only: another merchant's
row, or a deleted one, is NotFound.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from libs.core.paging import Page
from services.catalog.domain.model import BillableMetric, CatalogAggregate, Feature, Fee, Plan, PlanVersion, Price, Product

A = TypeVar("A", bound=CatalogAggregate)


class Repository(Protocol[A]):
    async def get(self, merchant_id: str, resource_id: str, *, field: str | None = None, lock: bool = False) -> A:
        """The live resource, or NotFound naming ``field`` (the request field that named it)."""
        ...

    async def add(self, aggregate: A) -> None: ...

    async def save(self, aggregate: A) -> None: ...

    async def list_page(self, merchant_id: str, filters: Mapping[str, str], page: Page) -> tuple[list[A], int]:
        """Live resources whose attributes equal ``filters``, newest first, and how many match."""
        ...


class FeatureRepository(Repository[Feature], Protocol):
    async def claim_key(self, product_id: str, key: str) -> Feature | None:
        """The live feature holding ``key`` in the product, if any; until this unit of
        work ends, no other one can take the key."""
        ...


class PriceRepository(Repository[Price], Protocol):
    async def live_price_using_feature(self, feature_id: str) -> str | None: ...

    async def live_price_of_fee(self, fee_id: str) -> str | None: ...

    async def is_price_in_live_plan(self, price_id: str) -> str | None:
        """The id of a live plan with a published version listing the price, if any."""
        ...

    async def release_feature_from_deleted(self, feature_id: str) -> None:
        """Deleted prices are history and bill nothing: they let go of a deleted feature."""
        ...

    async def product_of(self, price: Price) -> str:
        """The product of the price's billable metric or fee."""
        ...


class PlanVersionRepository(Protocol):
    async def get_by_number(self, plan: Plan, number: int, *, lock: bool = False) -> PlanVersion: ...

    async def last_number(self, plan_id: str) -> int: ...

    async def add(self, version: PlanVersion) -> None: ...

    async def save(self, version: PlanVersion) -> None: ...

    async def list_page(self, plan: Plan, page: Page) -> tuple[list[PlanVersion], int]:
        """The plan's versions, newest number first."""
        ...


class CatalogUnitOfWork(Protocol):
    """One transaction over the catalog's repositories."""

    @property
    def products(self) -> Repository[Product]: ...

    @property
    def billable_metrics(self) -> Repository[BillableMetric]: ...

    @property
    def features(self) -> FeatureRepository: ...

    @property
    def fees(self) -> Repository[Fee]: ...

    @property
    def prices(self) -> PriceRepository: ...

    @property
    def plans(self) -> Repository[Plan]: ...

    @property
    def plan_versions(self) -> PlanVersionRepository: ...
