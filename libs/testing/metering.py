"""Metering through the gateway, for end-to-end tests: a SUM metric of ``$.tokens`` to
send events to, its total for a subject once the aggregator caught up, and a meter
event as the ingest path puts it on the stream (for tests that publish one directly)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
from accrue.metering.v1 import metering_resources_pb2 as resources

from libs.testing.fixtures import MerchantClient
from libs.testing.waiting import eventually

# a usage window holding every event a test sends
ALL_TIME = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}


def create_metric(client: MerchantClient) -> dict[str, Any]:
    """A product and a SUM metric of ``$.tokens`` on an event type of its own."""
    product = httpx.post(f"{client.base_url}/v0/products", json={"name": "R", "description": "r"}, headers=client.headers).json()
    body = {
        "productId": product["id"], "name": "T", "description": "t", "unit": "t", "aggregation": "SUM",
        "eventType": f"robust.{uuid.uuid4().hex[:8]}", "valueProperty": "$.tokens",
    }  # fmt: skip
    metric: dict[str, Any] = httpx.post(f"{client.base_url}/v0/billableMetrics", json=body, headers=client.headers).json()
    return metric


def metered_total(client: MerchantClient, metric_id: str, subject: str, expected: str, timeout: float = 10) -> str:
    """The metric's total for the subject (``totalValueDecimal``) once it is ``expected``,
    or as it is after ``timeout`` seconds."""

    def total() -> str:
        meter = httpx.get(
            f"{client.base_url}/v0/billableMetrics/{metric_id}/meter", params={**ALL_TIME, "subject": subject}, headers=client.headers
        )
        value: str = meter.json()["totalValueDecimal"]
        return value

    return eventually(total, expected, timeout)


def meter_event(
    client: MerchantClient,
    event_type: str,
    subject: str,
    idempotency_key: str,
    data: dict[str, Any],
    *,
    time: datetime,
    ingested_at: datetime,
) -> resources.MeterEvent:
    event = resources.MeterEvent(
        id=f"evt_{uuid.uuid4().hex[:12]}",
        merchant_id=client.merchant_id,
        type=event_type,
        source="t",
        subject=subject,
        idempotency_key=idempotency_key,
    )
    event.time.FromDatetime(time)
    event.ingest_time.FromDatetime(ingested_at)
    event.data.update(data)
    return event
