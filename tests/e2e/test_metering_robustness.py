"""Metering under hostile or unlucky input: bad events are refused, good ones are never
held up by them, and nothing a client can send stops the aggregator."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from accrue.metering.v1 import metering_resources_pb2 as resources
from sqlalchemy.engine import make_url

from libs.infra import messaging
from libs.infra.runner import Mesh
from libs.testing.fixtures import MerchantClient
from libs.testing.metering import create_metric, meter_event, metered_total

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"source": "a\u0000b"}, "source", "INVALID_CHARACTER"),
        ({"data": {"tokens": 1, "note": "x\u0000y"}}, "data.note", "INVALID_CHARACTER"),
        ({"idempotencyKey": "k\u0000"}, "idempotencyKey", "INVALID_CHARACTER"),
        ({"data": {"tokens": 2**60}}, "data.tokens", "NUMBER_NOT_EXACT"),
    ],
)
def test_values_postgresql_or_a_double_cannot_hold_are_refused(
    merchant_a: MerchantClient, change: dict[str, Any], field: str, code: str
) -> None:
    metric = create_metric(merchant_a)
    body = {"type": metric["eventType"], "source": "t", "subject": "cus_r1", "data": {"tokens": 1}, **change}
    response = httpx.post(f"{merchant_a.base_url}/v0/events", json=body, headers=merchant_a.headers)
    assert response.status_code == 400, response.text
    assert (response.json()["code"], response.json()["details"]["field"]) == (code, field)


def test_deeply_nested_data_is_refused_and_does_not_hold_up_its_neighbours(merchant_a: MerchantClient) -> None:
    metric = create_metric(merchant_a)
    subject = f"cus_{uuid.uuid4().hex[:10]}"
    deep: dict[str, Any] = {"tokens": 1}
    for _ in range(150):
        deep = {"x": deep}

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=merchant_a.base_url, headers=merchant_a.headers, timeout=20) as client:
            bodies = [{"type": metric["eventType"], "source": "t", "subject": subject, "data": {"tokens": 1}} for _ in range(40)]
            bodies.insert(20, {"type": metric["eventType"], "source": "t", "subject": subject, "data": deep})
            responses = await asyncio.gather(*(client.post("/v0/events", json=b) for b in bodies))
        return [r.status_code for r in responses]

    statuses = asyncio.run(burst())
    assert statuses.count(202) == 40 and statuses[20] == 400
    assert metered_total(merchant_a, metric["id"], subject, "40") == "40"


def test_large_events_to_one_customer_are_split_across_stream_messages(merchant_a: MerchantClient) -> None:
    metric = create_metric(merchant_a)
    subject = f"cus_{uuid.uuid4().hex[:10]}"
    padding = "p" * 60_000  # data is at most 64 KiB; 20 of these still exceed one stream message

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=merchant_a.base_url, headers=merchant_a.headers, timeout=30) as client:
            body = {"type": metric["eventType"], "source": "t", "subject": subject, "data": {"tokens": 1, "pad": padding}}
            responses = await asyncio.gather(*(client.post("/v0/events", json=body) for _ in range(20)))
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [202] * 20
    assert metered_total(merchant_a, metric["id"], subject, "20") == "20"


def test_many_unknown_types_in_one_batch_do_not_stall_it(merchant_a: MerchantClient) -> None:
    """Each unknown type used to wait for the catalog on its own (40 types: past the
    gateway's 30 s deadline, a 504); now a call resolves all its types together."""
    metric = create_metric(merchant_a)
    subject = f"cus_{uuid.uuid4().hex[:10]}"
    events = [{"type": f"nobody.{i}.{uuid.uuid4().hex[:6]}", "source": "t", "subject": subject, "data": {}} for i in range(40)]
    events += [{"type": metric["eventType"], "source": "t", "subject": subject, "data": {"tokens": 2}} for _ in range(3)]
    response = httpx.post(
        f"{merchant_a.base_url}/accrue/v1/events:batchIngest", json={"events": events}, headers=merchant_a.headers, timeout=20
    )
    assert response.status_code == 202, response.text
    assert (response.json()["accepted"], response.json()["rejected"]) == (3, 40)
    assert metered_total(merchant_a, metric["id"], subject, "6") == "6"


def test_long_bad_input_is_still_a_400(merchant_a: MerchantClient) -> None:
    body = {"productId": "prod_x", "name": "T", "description": "t", "unit": "t", "aggregation": "X" * 4000, "eventType": "e"}
    response = httpx.post(f"{merchant_a.base_url}/v0/billableMetrics", json=body, headers=merchant_a.headers)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "INVALID_ENUM_VALUE"
    long_id = httpx.get(f"{merchant_a.base_url}/v0/products/{'p' * 20000}", headers=merchant_a.headers)
    assert long_id.status_code == 404


def test_nul_in_catalog_text_and_non_finite_tax_rate_are_400(merchant_a: MerchantClient) -> None:
    named = httpx.post(f"{merchant_a.base_url}/v0/products", json={"name": "a\u0000b", "description": "d"}, headers=merchant_a.headers)
    assert (named.status_code, named.json()["details"]["field"]) == (400, "name")
    product = httpx.post(f"{merchant_a.base_url}/v0/products", json={"name": "ok", "description": "d"}, headers=merchant_a.headers).json()
    for rate in ("NaN", "Infinity"):
        plan = httpx.post(
            f"{merchant_a.base_url}/v0/plans",
            json={"productId": product["id"], "name": "p", "currency": "USD", "defaultTaxRate": rate},
            headers=merchant_a.headers,
        )
        assert plan.status_code == 400, plan.text
        assert plan.json()["details"]["field"] == "defaultTaxRate"


def test_an_event_the_database_refuses_is_dead_lettered_and_the_stream_keeps_moving(mesh: Mesh, merchant_a: MerchantClient) -> None:
    """Validation keeps such events out; this one is put on the stream directly, as a bug
    upstream would, to show the aggregator's last line of defence."""
    metric = create_metric(merchant_a)
    subject = f"cus_{uuid.uuid4().hex[:10]}"
    now = datetime.now(UTC)
    batch = resources.MeterEventBatch()
    for i in range(5):
        data = {"tokens": 1, "note": "poison\u0000" if i == 2 else "fine"}
        batch.events.append(
            meter_event(merchant_a, metric["eventType"], subject, f"dl-{i}", data, time=now - timedelta(seconds=i), ingested_at=now)
        )

    async def publish() -> None:
        nc = await messaging.connect(mesh.nats_url, "test-dead-letter")
        await nc.jetstream().publish("accrue.meter.v1.events.0", batch.SerializeToString())
        await nc.close()

    asyncio.run(publish())
    assert metered_total(merchant_a, metric["id"], subject, "4") == "4"
    url = make_url(mesh.database_url("metering")).set(drivername="postgresql").render_as_string(hide_password=False)
    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT event_id FROM dead_letters WHERE consumer = 'metering-aggregator' AND merchant_id = %s",
                (merchant_a.merchant_id,),
            ).fetchall()
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [r[0] for r in rows] == ["dl-2"]
    # the stream kept moving: a later event is counted
    later = {"type": metric["eventType"], "source": "t", "subject": subject, "data": {"tokens": 10}}
    assert httpx.post(f"{merchant_a.base_url}/v0/events", json=later, headers=merchant_a.headers).status_code == 202
    assert metered_total(merchant_a, metric["id"], subject, "14") == "14"
