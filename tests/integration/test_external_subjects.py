"""externalSubject end to end: events sent under the merchant's own customer key are
attributed retroactively once a customer with that external id exists (paygentic-api.md
§3.7), and later ones at once. The customer arrives as the subscription service would
publish it: a CustomerChanged on ACCRUE_SUBSCRIPTION with the outbox relay's headers."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from accrue.subscription.v1 import subscription_events_pb2 as ev
from accrue.subscription.v1 import subscription_service_pb2 as sub

from libs.infra import messaging
from libs.infra.runner import Mesh
from libs.testing.fixtures import MerchantClient
from libs.testing.waiting import eventually_async
from services.subscription import events as subscription_events

pytestmark = pytest.mark.integration


def _metric(client: MerchantClient) -> Any:
    sdk = client.sdk
    product = sdk.products.create(merchant_id=client.merchant_id, name="Metered", description="usage")
    return sdk.billable_metrics.create(
        merchant_id=client.merchant_id,
        product_id=product.id,
        name="Tokens",
        description="tokens",
        unit="tokens",
        aggregation="SUM",
        event_type=f"ai.inference.{uuid.uuid4().hex[:8]}",
        value_property="$.tokens",
    )


async def _publish_customer_created(mesh: Mesh, merchant_id: str, customer_id: str, external_id: str) -> None:
    change = ev.CustomerChanged(
        kind=ev.CUSTOMER_CHANGE_KIND_CREATED,
        merchant_id=merchant_id,
        customer=sub.Customer(id=customer_id, merchant_id=merchant_id, external_id=external_id),
        sequence=time.time_ns(),
    )
    change.change_time.FromDatetime(datetime.now(UTC))
    event_id = f"evt_{uuid.uuid4().hex}"
    nc = await messaging.connect(mesh.nats_url, "test-external-subjects")
    try:
        js = nc.jetstream()
        await messaging.ensure_stream(js, subscription_events.STREAM, subscription_events.STREAM_SUBJECTS)
        headers = {
            messaging.MSG_ID_HEADER: event_id,
            messaging.MERCHANT_HEADER: merchant_id,
            messaging.EVENT_TYPE_HEADER: ev.CustomerChanged.DESCRIPTOR.full_name,
        }
        await js.publish(subscription_events.customer_subject(ev.CUSTOMER_CHANGE_KIND_CREATED), change.SerializeToString(), headers=headers)
    finally:
        await nc.close()


async def test_events_sent_by_external_subject_count_for_the_customer_once_it_exists(mesh: Mesh, merchant_a: MerchantClient) -> None:
    metric = await asyncio.to_thread(_metric, merchant_a)
    external_id = f"acct-{uuid.uuid4().hex[:10]}"
    customer_id = f"cus_{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC)
    window = {"from": (now - timedelta(hours=1)).isoformat(), "to": (now + timedelta(hours=1)).isoformat()}
    meter_url = f"/v0/billableMetrics/{metric.id}/meter"
    events_url = f"/v0/billableMetrics/{metric.id}/events"

    async with httpx.AsyncClient(base_url=merchant_a.base_url, headers=merchant_a.headers, timeout=10) as http:

        async def ingest(key: str, tokens: float, external_subject: str) -> None:
            body = {
                "type": metric.event_type,
                "source": "tests",
                "externalSubject": external_subject,
                "data": {"tokens": tokens},
                "idempotencyKey": key,
            }
            response = await http.post("/v0/events", json=body)
            assert response.status_code == 202, response.text

        async def stored(external_subject: str) -> int:
            response = await http.get(events_url, params={**window, "externalSubject": external_subject})
            assert response.status_code == 200, response.text
            return int(response.json()["pagination"]["total"])

        async def total_for_customer() -> str:
            response = await http.get(meter_url, params={**window, "subject": customer_id})
            assert response.status_code == 200, response.text
            return str(response.json()["totalValueDecimal"])

        async def listed_for_customer() -> list[str]:
            response = await http.get(events_url, params={**window, "subject": customer_id, "limit": 100})
            assert response.status_code == 200, response.text
            return sorted(e["idempotencyKey"] for e in response.json()["events"])

        # before the customer exists: stored, but nobody's usage
        for i, tokens in enumerate([1500, 250, 0.5]):
            await ingest(f"early-{i}", tokens, external_id)
        await ingest("someone-else", 1000, f"other-{uuid.uuid4().hex[:8]}")
        assert await eventually_async(lambda: stored(external_id), 3, timeout=20.0) == 3
        assert await total_for_customer() == "0"

        # the customer appears: the stored events become theirs, retroactively
        await _publish_customer_created(mesh, merchant_a.merchant_id, customer_id, external_id)
        assert await eventually_async(total_for_customer, "1750.5", timeout=20.0) == "1750.5"
        assert await listed_for_customer() == ["early-0", "early-1", "early-2"]

        # later events under the same external subject are attributed as they are stored
        await ingest("late-0", 12.25, external_id)
        assert await eventually_async(total_for_customer, "1762.75", timeout=20.0) == "1762.75"
        assert await listed_for_customer() == ["early-0", "early-1", "early-2", "late-0"]
        # the event of another external subject stayed out of it
        listed = (await http.get(events_url, params={**window, "subject": customer_id, "limit": 100})).json()
        assert {e["externalSubject"] for e in listed["events"]} == {external_id}
        assert all(e["subject"] == customer_id for e in listed["events"])
