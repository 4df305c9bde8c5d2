"""query_totals (GetUsages' query: many readings in one query per metric) answers, for
every reading, exactly what query_usage answers for it alone: per aggregation, per
subject and window, with readings that match no event, and with a metric's eventFrom."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from libs.infra.db import Database
from services.metering import store
from services.metering.metrics import Metric
from services.metering.usage_query import Reading, UsageQuery, query_totals, query_usage

pytestmark = pytest.mark.integration

T0 = datetime(2027, 3, 1, tzinfo=UTC)
MERCHANT = "org_totals"


def _metric(metric_id: str, event_type: str, aggregation: str, *, event_from: datetime | None = None) -> Metric:
    return Metric(
        id=metric_id,
        merchant_id=MERCHANT,
        event_type=event_type,
        aggregation=aggregation,
        value_property="$.value",
        group_by={},
        event_from=event_from,
    )


async def _load(db: Database) -> None:
    rows = []
    for i in range(40):
        for event_type in ("a.tokens", "b.seconds"):
            rows.append(
                {
                    "merchant_id": MERCHANT,
                    "idempotency_key": f"{event_type}-{i}",
                    "id": f"evt_{event_type}_{i}",
                    "type": event_type,
                    "source": "tests",
                    "subject": f"cus_{i % 3}",
                    "time": T0 + timedelta(hours=7 * i),
                    "data": {"value": str(Decimal(i) / 8) if i % 5 else i},
                    "ingested_at": T0,
                }
            )
    # another merchant's events of the same type and subject are never counted
    rows.append({**rows[0], "merchant_id": "org_other", "idempotency_key": "x"})
    async with db.engine.begin() as conn:
        await conn.execute(store.meter_events.insert(), rows)


@pytest.mark.parametrize("aggregation", ["SUM", "COUNT", "MAX", "AVG", "LATEST", "UNIQUE_COUNT", "P50", "TIME_WEIGHTED_SUM"])
async def test_each_total_is_what_the_single_query_answers(db: Database, aggregation: str) -> None:
    await _load(db)
    metrics = [
        _metric("bm_a", "a.tokens", aggregation),
        _metric("bm_b", "b.seconds", "SUM", event_from=T0 + timedelta(days=3)),
    ]
    windows = [(T0, T0 + timedelta(days=5)), (T0 + timedelta(days=2), T0 + timedelta(days=9)), (T0 - timedelta(days=9), T0)]
    readings = [
        Reading(m, subject, start, end) for m in metrics for subject in ("cus_0", "cus_1", "cus_2", "cus_none") for start, end in windows
    ]
    async with db.engine.connect() as conn:
        totals = await query_totals(conn, readings)
        expected = [
            (await query_usage(conn, UsageQuery(metric=r.metric, start=r.start, end=r.end, subject=r.subject))).total for r in readings
        ]
    assert totals == expected
    assert any(t != 0 for t in totals) and any(t == 0 for t in totals)  # some match events, some none


async def test_no_readings_no_query(db: Database) -> None:
    async with db.engine.connect() as conn:
        assert await query_totals(conn, []) == []
