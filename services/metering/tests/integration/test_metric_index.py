"""MetricIndex against the real PostgreSQL, with a small fake of the catalog's listing:
unknown event types are asked of the catalog (read your writes) without waiting for an
event, refused types are remembered for a short interval, concurrent misses share
look-ups but never one that began before they arrived, and a catalog that fails makes
its types unconfirmed (not unknown)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from accrue.catalog.v1 import catalog_resources_pb2 as catalog_resources

from libs.infra.db import Database
from libs.infra.proto_time import to_timestamp
from services.metering import store
from services.metering.metrics import CATALOG_RETRY_SECONDS, NEGATIVE_TTL_SECONDS, CatalogClient, CatalogUnavailable, MetricIndex

pytestmark = pytest.mark.integration
M = "org_merchant_a"


class FakeCatalog:
    """The catalog's ListBillableMetrics, every page: what it holds when a look-up reads it."""

    def __init__(self) -> None:
        self.metrics: list[catalog_resources.BillableMetric] = []
        self.calls = 0
        self.failing = False
        self.gate: asyncio.Event | None = None  # when set, a look-up reads, then waits for it

    def create(self, event_type: str, merchant_id: str = M) -> catalog_resources.BillableMetric:
        metric = catalog_resources.BillableMetric(
            id=f"bm_{uuid.uuid4().hex[:12]}",
            merchant_id=merchant_id,
            event_type=event_type,
            aggregation="SUM",
            value_property="$.tokens",
            update_time=to_timestamp(datetime.now(UTC)),
        )
        self.metrics.append(metric)
        return metric

    async def __call__(self, merchant_id: str) -> Sequence[catalog_resources.BillableMetric]:
        self.calls += 1
        if self.failing:
            raise CatalogUnavailable("catalog down")
        snapshot = [m for m in self.metrics if m.merchant_id == merchant_id]
        await asyncio.sleep(0.01)  # a round trip
        if self.gate is not None:
            await self.gate.wait()
        return snapshot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_type_created_a_moment_ago_is_known_at_once_and_projected(db: Database) -> None:
    catalog = FakeCatalog()
    index = MetricIndex(db, catalog)
    assert (await index.known_types(M, {"tokens"})).known == set()  # loads the merchant: nothing yet
    metric = catalog.create("tokens")  # no catalog event has reached metering
    check = await index.known_types(M, {"tokens", "other"})
    assert check.known == {"tokens"} and check.unconfirmed == set()
    assert (await index.get(M, metric.id)).event_type == "tokens"  # usage queries know it too
    calls = catalog.calls
    assert (await index.known_types(M, {"tokens"})).known == {"tokens"}
    assert catalog.calls == calls  # known now: no look-up


async def test_a_refused_type_is_asked_once_per_interval(db: Database) -> None:
    catalog, clock = FakeCatalog(), Clock()
    index = MetricIndex(db, catalog, monotonic=clock)
    for _ in range(50):
        assert (await index.known_types(M, {"nobody.home"})).known == set()
    assert catalog.calls == 1
    clock.now += NEGATIVE_TTL_SECONDS + 0.01
    catalog.create("nobody.home")
    assert (await index.known_types(M, {"nobody.home"})).known == {"nobody.home"}
    assert catalog.calls == 2


async def test_a_call_asks_once_for_all_its_unknown_types(db: Database) -> None:
    catalog = FakeCatalog()
    catalog.create("b")
    index = MetricIndex(db, catalog)
    check = await index.known_types(M, {f"nobody.{i}" for i in range(200)} | {"b"})
    assert check.known == {"b"}
    assert catalog.calls == 1


async def test_missing_or_over_long_types_are_never_looked_up(db: Database) -> None:
    catalog = FakeCatalog()
    index = MetricIndex(db, catalog)
    assert (await index.known_types(M, {"", "t" * 256, "a\nb"})).known == set()
    assert catalog.calls == 0


async def test_concurrent_misses_share_look_ups(db: Database) -> None:
    catalog = FakeCatalog()
    index = MetricIndex(db, catalog)
    await index.known_types(M, set())  # the merchant is loaded
    checks = await asyncio.gather(*(index.known_types(M, {f"nobody.{i}"}) for i in range(100)))
    assert all(check.known == set() for check in checks)
    assert catalog.calls <= 2  # one under way, and one for everyone who arrived meanwhile


async def test_a_look_up_under_way_when_a_call_arrives_is_not_its_answer(db: Database) -> None:
    """The first look-up read the catalog before the metric existed; the call that comes
    after the metric's creation must not take that answer."""
    catalog = FakeCatalog()
    index = MetricIndex(db, catalog)
    await index.known_types(M, set())  # the merchant is loaded
    catalog.gate = asyncio.Event()
    early = asyncio.create_task(index.known_types(M, {"nobody.early"}))
    while catalog.calls == 0:
        await asyncio.sleep(0)
    catalog.create("created.meanwhile")
    late = asyncio.create_task(index.known_types(M, {"created.meanwhile"}))
    await asyncio.sleep(0.05)
    catalog.gate.set()
    assert (await early).known == set()
    assert (await late).known == {"created.meanwhile"}
    assert catalog.calls == 2


async def test_a_failing_catalog_leaves_its_types_unconfirmed_not_unknown(db: Database) -> None:
    catalog, clock = FakeCatalog(), Clock()
    catalog.create("known")
    index = MetricIndex(db, catalog, monotonic=clock)
    assert (await index.known_types(M, {"known"})).known == {"known"}
    catalog.failing = True
    check = await index.known_types(M, {"known", "maybe"})
    assert (check.known, check.unconfirmed) == ({"known"}, {"maybe"})
    calls = catalog.calls
    check = await index.known_types(M, {"maybe"})
    assert check.unconfirmed == {"maybe"} and catalog.calls == calls  # not asked again at once
    # what another replica stored from the catalog's events still counts meanwhile
    async with db.engine.begin() as conn:
        await conn.execute(
            store.metrics.insert().values(
                id="bm_projected", merchant_id=M, event_type="projected", aggregation="COUNT", group_by={}, updated_at=datetime.now(UTC)
            )
        )
    check = await index.known_types(M, {"projected", "maybe"})
    assert (check.known, check.unconfirmed) == ({"projected"}, {"maybe"})
    clock.now += CATALOG_RETRY_SECONDS + 0.01
    catalog.failing = False
    catalog.create("maybe")
    check = await index.known_types(M, {"maybe"})
    assert (check.known, check.unconfirmed) == ({"maybe"}, set())  # a failure is not remembered as "unknown"


async def test_another_merchants_metrics_are_not_this_ones(db: Database) -> None:
    catalog = FakeCatalog()
    catalog.create("theirs", merchant_id="org_merchant_b")
    index = MetricIndex(db, catalog)
    assert (await index.known_types(M, {"theirs"})).known == set()
    assert (await index.known_types("org_merchant_b", {"theirs"})).known == {"theirs"}


async def test_without_a_catalog_only_the_projection_counts(db: Database) -> None:
    index = MetricIndex(db)
    check = await index.known_types(M, {"tokens"})
    assert check.known == set() and check.unconfirmed == set()


async def test_an_unreachable_catalog_is_unavailable_not_a_hang() -> None:
    from libs.infra.embedded import free_port

    client = CatalogClient(f"127.0.0.1:{free_port()}", timeout=5.0)
    with pytest.raises(CatalogUnavailable):
        await asyncio.wait_for(client(M), 10)  # refused connections fail the call, they are not waited out
