"""Accrue's aggregations beyond Paygentic's, through the gateway: nearest-rank percentiles
and TIME_WEIGHTED_SUM (value-hours), exact to the decimal string."""

from __future__ import annotations

import functools
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from libs.testing.fixtures import MerchantClient
from libs.testing.waiting import eventually

pytestmark = pytest.mark.e2e


def _product(client: MerchantClient) -> str:
    return str(client.sdk.products.create(merchant_id=client.merchant_id, name="Metered", description="usage").id)


def _metric(client: MerchantClient, product_id: str, aggregation: str, event_type: str, value_property: str = "$.value") -> str:
    """Created over plain HTTP: the SDK's enum does not know Accrue's extra aggregations."""
    body = {
        "merchantId": client.merchant_id,
        "productId": product_id,
        "name": aggregation,
        "description": f"{aggregation} of {value_property}",
        "unit": "GB",
        "aggregation": aggregation,
        "eventType": event_type,
        "valueProperty": value_property,
    }
    response = httpx.post(f"{client.base_url}/v0/billableMetrics", json=body, headers=client.headers)
    assert response.status_code in (200, 201), response.text
    created = response.json()
    assert created["aggregation"] == aggregation
    return str(created["id"])


def _ingest(client: MerchantClient, event_type: str, subject: str, at: datetime, value: Any, key: str) -> None:
    client.sdk.events.ingest(
        request={
            "type": event_type, "source": "tests", "subject": subject, "data": {"value": value},
            "timestamp": at.isoformat(), "idempotencyKey": key,
        }
    )  # fmt: skip


def _meter(client: MerchantClient, metric_id: str, start: datetime, end: datetime, **params: str) -> dict[str, Any]:
    response = httpx.get(
        f"{client.base_url}/v0/billableMetrics/{metric_id}/meter",
        params={"from": start.isoformat(), "to": end.isoformat(), **params},
        headers=client.headers,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _total(client: MerchantClient, metric_id: str, start: datetime, end: datetime, subject: str) -> Any:
    return _meter(client, metric_id, start, end, subject=subject)["totalValueDecimal"]


def _day() -> datetime:
    """Midnight UTC two days ago: every timestamp below is explicit and in the past."""
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)


def test_a_metric_accepts_the_new_aggregations_and_requires_a_value_property(merchant_a: MerchantClient) -> None:
    product_id = _product(merchant_a)
    for aggregation in ("P50", "P95", "P99", "TIME_WEIGHTED_SUM"):
        body = {
            "merchantId": merchant_a.merchant_id, "productId": product_id, "name": "m", "description": "", "unit": "GB",
            "aggregation": aggregation, "eventType": f"agg.{uuid.uuid4().hex[:8]}",
        }  # fmt: skip
        response = httpx.post(f"{merchant_a.base_url}/v0/billableMetrics", json=body, headers=merchant_a.headers)
        assert response.status_code == 400, response.text
        assert (response.json()["code"], response.json()["details"]["field"]) == ("REQUIRED", "valueProperty")
        metric_id = _metric(merchant_a, product_id, aggregation, f"agg.{uuid.uuid4().hex[:8]}")
        # the SDK's response enum is open: it reads the new values back
        assert merchant_a.sdk.billable_metrics.get(id=metric_id).aggregation == aggregation


def test_percentiles_are_the_nearest_rank_sample(merchant_a: MerchantClient) -> None:
    product_id = _product(merchant_a)
    event_type = f"latency.{uuid.uuid4().hex[:8]}"
    metrics = {agg: _metric(merchant_a, product_id, agg, event_type) for agg in ("P50", "P95", "P99")}
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    day = _day()
    # 20 samples 1.25, 2.25, ... 20.25 in shuffled order, as numbers and decimal strings,
    # plus junk that no aggregation reads
    values: list[Any] = [f"{i}.25" if i % 2 else i + 0.25 for i in range(1, 21)]
    random.Random(7).shuffle(values)
    for i, value in enumerate([*values, "n/a", None]):
        _ingest(merchant_a, event_type, customer, day + timedelta(minutes=i), value, f"p{i}")
    start, end = day, day + timedelta(hours=1)
    # nearest rank: ceil(p * 20) -> 10th, 19th, 20th smallest; never interpolated
    expected = {"P50": "10.25", "P95": "19.25", "P99": "20.25"}
    for agg, metric_id in metrics.items():
        read = eventually(functools.partial(_total, merchant_a, metric_id, start, end, customer), expected[agg])
        assert read == expected[agg], agg
    # all 22 events lie in the first hour: its window holds the same percentile
    windows = _meter(merchant_a, metrics["P95"], start, end, subject=customer, windowSize="HOUR")["windowedValues"]
    assert [w["valueDecimal"] for w in windows] == ["19.25"]


def test_time_weighted_sum_integrates_value_hours(merchant_a: MerchantClient) -> None:
    product_id = _product(merchant_a)
    event_type = f"storage.{uuid.uuid4().hex[:8]}"
    metric_id = _metric(merchant_a, product_id, "TIME_WEIGHTED_SUM", event_type, "$.value")
    alice, bob = f"cus_{uuid.uuid4().hex[:12]}", f"cus_{uuid.uuid4().hex[:12]}"
    day = _day()
    samples = [
        (alice, day - timedelta(hours=5), 7),  # superseded before the range
        (alice, day - timedelta(hours=1), 2),  # holds into the range from its start
        (alice, day + timedelta(minutes=30), "5"),
        (alice, day + timedelta(minutes=105), 1.5),
        (alice, day + timedelta(minutes=110), "n/a"),  # not a sample: interrupts nothing
        (bob, day, "4"),
        (bob, day + timedelta(hours=3), 1000),  # at the end of the range: outside it
    ]
    for i, (subject, at, value) in enumerate(samples):
        _ingest(merchant_a, event_type, subject, at, value, f"t{i}")
    start, end = day, day + timedelta(hours=3)

    # alice: 2 GB x 0.5 h + 5 GB x 1.25 h + 1.5 GB x 1.25 h = 9.125; bob: 4 GB x 3 h = 12
    read = eventually(lambda: _meter(merchant_a, metric_id, start, end)["totalValueDecimal"], "21.125")
    assert read == "21.125"
    assert _meter(merchant_a, metric_id, start, end, subject=alice)["totalValueDecimal"] == "9.125"

    # by HOUR: each window integrates its own slice, levels carried across the boundaries
    hourly = _meter(merchant_a, metric_id, start, end, windowSize="HOUR")
    assert hourly["totalValueDecimal"] == "21.125"
    windows = [(w["windowStart"], w["windowEnd"], w["valueDecimal"]) for w in hourly["windowedValues"]]
    iso = [(day + timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%SZ") for h in range(4)]
    assert windows == [
        (iso[0], iso[1], "7.5"),  # 2 x 0.5 + 5 x 0.5 + 4
        (iso[1], iso[2], "8.125"),  # 5 x 0.75 + 1.5 x 0.25 + 4
        (iso[2], iso[3], "5.5"),  # 1.5 + 4: no event in this hour, the levels still hold
    ]

    # grouped by subject
    grouped = _meter(merchant_a, metric_id, start, end, groupBy="subject")["groupedValues"]
    assert {g["groupBy"]["subject"]: g["valueDecimal"] for g in grouped} == {alice: "9.125", bob: "12"}

    # a range starting mid-level carries the level in; exact division to 20 places
    second = _meter(merchant_a, metric_id, day + timedelta(hours=2), day + timedelta(hours=2, seconds=1), subject=bob)
    assert second["totalValueDecimal"] == "0.00111111111111111111"  # 4 GB for 1 s = 4/3600 GB-hours
