"""Meter events through the official SDK: ingest, then the exact usage comes back."""

from __future__ import annotations

import functools
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from paygentic_sdk import errors

from libs.testing.fixtures import MerchantClient
from libs.testing.waiting import eventually

pytestmark = pytest.mark.e2e


def _metric(client: MerchantClient, aggregation: str = "SUM", value_property: str | None = "$.tokens", **extra: Any) -> Any:
    sdk = client.sdk
    product = sdk.products.create(merchant_id=client.merchant_id, name="Metered", description="usage")
    event_type = f"ai.inference.{uuid.uuid4().hex[:8]}"
    kwargs: dict[str, Any] = dict(
        merchant_id=client.merchant_id, product_id=product.id, name="Tokens", description="tokens", unit="tokens",
        aggregation=aggregation, event_type=event_type, **extra,
    )  # fmt: skip
    if value_property is not None:
        kwargs["value_property"] = value_property
    return sdk.billable_metrics.create(**kwargs)


def _total(url: str, params: dict[str, str], headers: dict[str, str]) -> Any:
    return httpx.get(url, params=params, headers=headers).json()["totalValueDecimal"]


def _window() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    return now - timedelta(hours=1), now + timedelta(hours=1)


def test_ingest_then_meter_shows_the_exact_total(merchant_a: MerchantClient) -> None:
    sdk = merchant_a.sdk
    metric = _metric(merchant_a)
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    values = [1500, 250, 0.5, 12, 7.25]
    for i, tokens in enumerate(values):
        accepted = sdk.events.ingest(
            request={
                "type": metric.event_type,
                "source": "tests",
                "subject": customer,
                "data": {"tokens": tokens},
                "idempotencyKey": f"k{i}",
            }
        )
        assert accepted.id is not None and accepted.id.startswith("evt_")
    start, end = _window()

    def total() -> float:
        return float(sdk.billable_metrics.meter(id=metric.id, from_=start, to=end, subject=customer).total_value)

    assert eventually(total, 1769.75) == 1769.75
    raw = httpx.get(
        f"{merchant_a.base_url}/v0/billableMetrics/{metric.id}/meter",
        params={"from": start.isoformat(), "to": end.isoformat(), "subject": customer},
        headers=merchant_a.headers,
    ).json()
    assert raw["totalValueDecimal"] == "1769.75"
    assert raw["completeUntil"] is not None

    listed = sdk.billable_metrics.list_events(id=metric.id, from_=start, to=end, subject=customer)
    assert listed.pagination.total == len(values)
    assert sorted(e.idempotency_key for e in listed.events) == [f"k{i}" for i in range(len(values))]


def test_duplicates_count_once(merchant_a: MerchantClient) -> None:
    sdk = merchant_a.sdk
    metric = _metric(merchant_a)
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    body = {"type": metric.event_type, "source": "tests", "subject": customer, "data": {"tokens": 10}, "idempotencyKey": "same"}
    first = sdk.events.ingest(request=body)
    second = sdk.events.ingest(request=body)
    assert first.id == second.id
    sdk.events.ingest(request={**body, "idempotencyKey": "other"})
    start, end = _window()
    total = eventually(lambda: sdk.billable_metrics.meter(id=metric.id, from_=start, to=end, subject=customer).total_value, 20)
    assert total == 20
    time.sleep(0.5)
    assert sdk.billable_metrics.meter(id=metric.id, from_=start, to=end, subject=customer).total_value == 20


def test_unknown_event_type_is_422_and_stores_nothing(merchant_a: MerchantClient) -> None:
    with pytest.raises(errors.Error) as refused:
        merchant_a.sdk.events.ingest(request={"type": f"nobody.{uuid.uuid4().hex}", "source": "t", "subject": "cus_x", "data": {}})
    assert refused.value.status_code == 422
    assert refused.value.data.code == "UNKNOWN_EVENT_TYPE"


IN_TEN_MINUTES = "<ten minutes from now>"


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"subject": None}, "subject", "REQUIRED"),
        ({"source": ""}, "source", "REQUIRED"),
        # ten minutes ahead of when the test runs (not of when it was collected: the suite takes longer than that)
        ({"timestamp": IN_TEN_MINUTES}, "timestamp", "TIMESTAMP_IN_FUTURE"),
        ({"externalId": "not valid!"}, "externalId", "INVALID_EXTERNAL_ID"),
        ({"data": None}, "data", "REQUIRED"),
    ],
)
def test_bad_events_are_400_naming_the_field(merchant_a: MerchantClient, change: dict[str, Any], field: str, code: str) -> None:
    metric = _metric(merchant_a, aggregation="COUNT", value_property=None)
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    body: dict[str, Any] = {"type": metric.event_type, "source": "t", "subject": customer, "data": {"n": 1}}
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    if body.get("timestamp") is IN_TEN_MINUTES:
        body["timestamp"] = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    response = httpx.post(f"{merchant_a.base_url}/v0/events", json=body, headers=merchant_a.headers)
    assert response.status_code == 400, response.text
    assert (response.json()["code"], response.json()["details"]["field"]) == (code, field)
    start, end = _window()
    time.sleep(0.3)
    assert merchant_a.sdk.billable_metrics.meter(id=metric.id, from_=start, to=end).total_value == 0


def test_batch_ingest_returns_a_receipt_per_event(merchant_a: MerchantClient) -> None:
    metric = _metric(merchant_a)
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    events = [
        {"type": metric.event_type, "source": "t", "subject": customer, "data": {"tokens": 5}, "idempotencyKey": f"b{i}"} for i in range(10)
    ]
    events.append({"type": "nobody.home", "source": "t", "subject": customer, "data": {}})
    events.append(dict(events[0]))
    response = httpx.post(f"{merchant_a.base_url}/accrue/v1/events:batchIngest", json={"events": events}, headers=merchant_a.headers)
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (10, 1, 1)
    assert body["receipts"][10]["status"] == "rejected" and body["receipts"][10]["code"] == "UNKNOWN_EVENT_TYPE"
    assert body["receipts"][11]["status"] == "duplicate" and body["receipts"][11]["id"] == body["receipts"][0]["id"]
    start, end = _window()
    assert eventually(lambda: merchant_a.sdk.billable_metrics.meter(id=metric.id, from_=start, to=end).total_value, 50) == 50


def test_a_batch_checks_each_event_though_its_events_share_their_fields(merchant_a: MerchantClient) -> None:
    """Metering checks a call's shared fields (namespace, type, source, subjects) once per
    distinct combination: every event's own fields are still checked and kept, an event
    whose shared fields fail is refused alone, and an event without a key is never taken
    for a stored one while a keyed event of the same call still is."""
    metric = _metric(merchant_a)
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    url = f"{merchant_a.base_url}/accrue/v1/events:batchIngest"
    first = httpx.post(url, json={"events": [{"type": metric.event_type, "source": "t", "subject": customer, "data": {"tokens": 1}, "idempotencyKey": "kept"}]}, headers=merchant_a.headers)  # fmt: skip
    assert first.status_code == 202 and first.json()["accepted"] == 1
    now = datetime.now(UTC)
    meter = merchant_a.sdk.billable_metrics.meter
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    # a batch finds a key among the stored events: wait until "kept" is stored
    assert eventually(lambda: meter(id=metric.id, from_=start, to=end, subject=customer).total_value, 1) == 1
    base = {"type": metric.event_type, "source": "t", "subject": customer}
    events = [
        {**base, "data": {"tokens": 2}},
        {**base, "data": {"tokens": 3}, "timestamp": (now - timedelta(days=400)).isoformat()},  # too old
        {**base, "data": {"tokens": 4}, "externalId": "not valid!"},
        {**base, "data": {"tokens": 5}, "timestamp": (now - timedelta(minutes=30)).isoformat(), "externalId": "ext-5"},
        {**base, "source": "s" * 300, "data": {"tokens": 6}},  # too long a source, this event only
        {**base, "type": "nobody.home", "data": {"tokens": 7}},
        {**base, "data": {"tokens": 8}, "idempotencyKey": "kept"},  # stored by the first call
        {**base, "data": {"tokens": 9}},
    ]
    response = httpx.post(url, json={"events": events}, headers=merchant_a.headers)
    assert response.status_code == 202, response.text
    receipts = response.json()["receipts"]
    assert [r["status"] for r in receipts] == [
        "accepted",
        "rejected",
        "rejected",
        "accepted",
        "rejected",
        "rejected",
        "duplicate",
        "accepted",
    ]
    assert [r.get("code") for r in receipts if r["status"] == "rejected"] == [
        "TIMESTAMP_TOO_OLD", "INVALID_EXTERNAL_ID", "TOO_LONG", "UNKNOWN_EVENT_TYPE",
    ]  # fmt: skip
    assert len({receipts[i]["id"] for i in (0, 3, 7)}) == 3
    assert eventually(lambda: meter(id=metric.id, from_=start, to=end, subject=customer).total_value, 17) == 17  # 1 + 2 + 5 + 9
    listed = merchant_a.sdk.billable_metrics.list_events(id=metric.id, from_=start, to=end, subject=customer, limit=10)
    by_id = {e.id: e for e in listed.events}
    fifth = by_id[receipts[3]["id"]]
    assert fifth.external_id == "ext-5" and abs((fifth.time - (now - timedelta(minutes=30))).total_seconds()) < 1
    assert by_id[receipts[0]["id"]].external_id is None and by_id[receipts[7]["id"]].external_id is None


def test_aggregations_windows_and_groups(merchant_a: MerchantClient) -> None:
    sdk = merchant_a.sdk
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    expected = {"SUM": "60", "COUNT": "4", "MIN": "5", "MAX": "25", "AVG": "15", "LATEST": "20", "UNIQUE_COUNT": "4"}
    metrics = {agg: _metric(merchant_a, aggregation=agg, group_by={"model": "$.model"}) for agg in expected}
    event_type = metrics["SUM"].event_type
    for agg, metric in metrics.items():  # all metrics read one event type
        if agg != "SUM":
            sdk.billable_metrics.update(id=metric.id, event_type=event_type)
    samples = [(0, 10, "a"), (1, 5, "b"), (1, 25, "a"), (2, 20, "b")]  # (hour, tokens, model)
    for i, (hour, tokens, model) in enumerate(samples):
        sdk.events.ingest(
            request={
                "type": event_type, "source": "t", "subject": customer, "data": {"tokens": tokens if i != 1 else 5, "model": model},
                "timestamp": (base + timedelta(hours=hour, minutes=i)).isoformat(), "idempotencyKey": f"g{i}",
            }
        )  # fmt: skip
    start, end = base, base + timedelta(hours=4)
    for agg, metric in metrics.items():
        url = f"{merchant_a.base_url}/v0/billableMetrics/{metric.id}/meter"
        params = {"from": start.isoformat(), "to": end.isoformat(), "subject": customer}
        read = eventually(functools.partial(_total, url, params, merchant_a.headers), expected[agg])
        assert read == expected[agg], agg
    windows = sdk.billable_metrics.meter(id=metrics["SUM"].id, from_=start, to=end, subject=customer, window_size="HOUR")
    assert [w.value for w in windows.windowed_values] == [10, 30, 20]
    assert windows.windowed_values[1].window_start == base + timedelta(hours=1)
    groups = sdk.billable_metrics.meter(id=metrics["SUM"].id, from_=start, to=end, subject=customer, group_by="model")
    assert {g.group_by["model"]: g.value for g in groups.grouped_values} == {"a": 35, "b": 25}


def test_the_same_event_sent_concurrently_counts_once(merchant_a: MerchantClient) -> None:
    import asyncio

    metric = _metric(merchant_a)
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    body = {"type": metric.event_type, "source": "t", "subject": customer, "data": {"tokens": 7}, "idempotencyKey": "concurrent-1"}

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=merchant_a.base_url, headers=merchant_a.headers) as client:
            responses = await asyncio.gather(*(client.post("/v0/events", json=body) for _ in range(30)))
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [202] * 30
    start, end = _window()
    assert (
        eventually(lambda: merchant_a.sdk.billable_metrics.meter(id=metric.id, from_=start, to=end, subject=customer).total_value, 7) == 7
    )
    time.sleep(0.5)
    listed = merchant_a.sdk.billable_metrics.list_events(id=metric.id, from_=start, to=end, subject=customer)
    assert listed.pagination.total == 1
