"""Meter-event bounds and refusal latency (issue 6, items 3 and 4), end to end.

* A refused event answers as fast as an accepted one and never holds up the good events
  coalesced with it; a metric created a moment ago takes events at once (read your
  writes), even when its catalog event never reaches metering.
* The bounds: a 35-day backdating window on ``timestamp``; ``subject``,
  ``externalSubject`` and ``source`` at most 255 characters; ``data`` at most 64 KiB
  encoded. The same on single, batched (REST) and streamed (gRPC) ingestion.
* ``subject`` wins over ``externalSubject``; a timestamp without a zone is UTC.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from accrue.catalog.v1 import catalog_service_pb2 as catalog
from accrue.catalog.v1 import catalog_service_pb2_grpc
from accrue.metering.v1 import metering_service_pb2 as svc
from accrue.metering.v1 import metering_service_pb2_grpc
from accrue.subscription.v1 import subscription_events_pb2 as ev
from accrue.subscription.v1 import subscription_service_pb2 as sub
from google.protobuf import json_format

from libs.infra import messaging
from libs.infra.runner import Mesh
from libs.testing.fixtures import MerchantClient
from libs.testing.meshes import own_mesh
from libs.testing.tokens import merchant_metadata
from services.subscription import events as subscription_events

pytestmark = pytest.mark.e2e
FAR = {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
# generous: the behaviour under test is "well under the 3 s a catalog lookup per refused
# event cost", on 2 cores shared with every service and 220 requests at once
FAST = 2.0


def _metric(client: MerchantClient, aggregation: str = "SUM") -> dict[str, Any]:
    product = httpx.post(f"{client.base_url}/v0/products", json={"name": "B", "description": "b"}, headers=client.headers)
    assert product.status_code == 201, product.text
    body: dict[str, Any] = {
        "productId": product.json()["id"], "name": "T", "description": "t", "unit": "t", "aggregation": aggregation,
        "eventType": f"bounds.{uuid.uuid4().hex[:10]}",
    }  # fmt: skip
    if aggregation == "SUM":
        body["valueProperty"] = "$.tokens"
    created = httpx.post(f"{client.base_url}/v0/billableMetrics", json=body, headers=client.headers)
    assert created.status_code == 201, created.text
    metric: dict[str, Any] = created.json()
    return metric


def _event(event_type: str, customer: str | None, **change: Any) -> dict[str, Any]:
    """An event of ``customer``; ``change`` may replace any field (subject too), None drops it."""
    body: dict[str, Any] = {"type": event_type, "source": "t", "subject": customer, "data": {"tokens": 1}}
    body.update(change)
    return {k: v for k, v in body.items() if v is not None}


def _total(client: MerchantClient, metric_id: str, subject: str, expected: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        meter = httpx.get(
            f"{client.base_url}/v0/billableMetrics/{metric_id}/meter", params={**FAR, "subject": subject}, headers=client.headers
        )
        assert meter.status_code == 200, meter.text
        value: str = meter.json()["totalValueDecimal"]
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def _subject() -> str:
    return f"cus_{uuid.uuid4().hex[:12]}"


# --- item 3: refusals are fast and hold nobody up ------------------------------------


async def _burst(client: MerchantClient, bodies: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any], float]]:
    """Every body POSTed at once, each on its own connection (the gateway coalesces them):
    status, body and seconds of each. Plain HTTP/1.1 over asyncio streams: httpx's pool
    alone takes seconds to run 220 concurrent requests, which would hide what is measured."""
    url = urlsplit(client.base_url)
    assert url.hostname is not None and url.port is not None
    connections = [await asyncio.open_connection(url.hostname, url.port) for _ in bodies]

    async def one(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        reader, writer = connection
        payload = json.dumps(body).encode()
        head = (
            f"POST /v0/events HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: {client.headers['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        started = time.monotonic()
        writer.write(head.encode() + payload)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        answer = json.loads(await reader.readexactly(length))
        return status, answer, time.monotonic() - started

    try:
        return await asyncio.gather(*(one(c, b) for c, b in zip(connections, bodies, strict=True)))
    finally:
        for _, writer in connections:
            writer.close()


@pytest.mark.parametrize(
    ("bad", "status", "code"),
    [
        ({"type": "nobody.{n}"}, 422, "UNKNOWN_EVENT_TYPE"),
        ({"type": None}, 400, "REQUIRED"),
        ({"type": "t" * 256}, 400, "INVALID_TYPE"),
    ],
    ids=["unknown", "missing", "too-long"],
)
def test_one_bad_event_among_30_good_delays_nobody(merchant_a: MerchantClient, bad: dict[str, Any], status: int, code: str) -> None:
    metric = _metric(merchant_a)
    subject = _subject()
    change = {k: (v.format(n=uuid.uuid4().hex) if isinstance(v, str) else v) for k, v in bad.items()}
    bodies = [_event(metric["eventType"], subject) for _ in range(30)]
    bodies.insert(15, _event(metric["eventType"], subject, **change))
    results = asyncio.run(_burst(merchant_a, bodies))
    bad_status, bad_body, _ = results.pop(15)
    assert (bad_status, bad_body["code"], bad_body["details"]["field"]) == (status, code, "type")
    assert [s for s, _, _ in results] == [202] * 30
    slowest = max(seconds for _, _, seconds in [*results, (bad_status, bad_body, 0.0)])
    assert slowest < FAST, f"slowest answer took {slowest:.2f} s"
    assert _total(merchant_a, metric["id"], subject, "30") == "30"


def test_200_bad_events_among_20_good_delay_nobody(merchant_a: MerchantClient) -> None:
    metric = _metric(merchant_a)
    subject = _subject()
    good = [_event(metric["eventType"], subject) for _ in range(20)]
    bad = [_event(f"nobody.{i}.{uuid.uuid4().hex[:8]}", subject) for i in range(200)]
    bodies = [*bad[:100], *good, *bad[100:]]
    results = asyncio.run(_burst(merchant_a, bodies))
    statuses = [s for s, _, _ in results]
    assert statuses[100:120] == [202] * 20
    assert statuses[:100] + statuses[120:] == [422] * 200
    assert {body["code"] for s, body, _ in results if s == 422} == {"UNKNOWN_EVENT_TYPE"}
    slowest = max(seconds for _, _, seconds in results)
    assert slowest < FAST, f"slowest answer took {slowest:.2f} s"
    assert _total(merchant_a, metric["id"], subject, "20") == "20"


def test_a_metric_created_a_moment_ago_takes_events_at_once(merchant_a: MerchantClient) -> None:
    for _ in range(5):
        metric = _metric(merchant_a)
        started = time.monotonic()
        response = httpx.post(f"{merchant_a.base_url}/v0/events", json=_event(metric["eventType"], _subject()), headers=merchant_a.headers)
        assert response.status_code == 202, response.text
        assert time.monotonic() - started < FAST
        # usage queries know the metric at once too
        meter = httpx.get(f"{merchant_a.base_url}/v0/billableMetrics/{metric['id']}/meter", params=FAR, headers=merchant_a.headers)
        assert meter.status_code == 200, meter.text


@pytest.fixture
def mesh_without_catalog_events(infra_mesh: Mesh, tmp_path: Path) -> Iterator[Mesh]:
    """Catalog and metering whose catalog never publishes its events (outbox relay off):
    metering can only learn a metric by asking the catalog."""
    mesh = own_mesh(infra_mesh, tmp_path, "ryw")
    env = mesh.service_env("catalog")
    env["ACCRUE_OUTBOX_RELAY_ENABLED"] = "false"
    mesh.spawn("catalog", "services.catalog.app", env)
    mesh.start_service("metering")
    for name in ("catalog", "metering"):
        mesh.wait_healthy(name)
    yield mesh
    mesh.stop()


def test_read_your_writes_does_not_depend_on_the_catalog_event(mesh_without_catalog_events: Mesh) -> None:
    mesh = mesh_without_catalog_events
    metadata = [merchant_metadata("org_ryw0000000001")]
    with (
        grpc.insecure_channel(f"127.0.0.1:{mesh.processes['catalog'].port}") as catalog_channel,
        grpc.insecure_channel(f"127.0.0.1:{mesh.processes['metering'].port}") as metering_channel,
    ):
        catalog_stub = catalog_service_pb2_grpc.CatalogServiceStub(catalog_channel)
        metering = metering_service_pb2_grpc.MeteringServiceStub(metering_channel)
        product = catalog_stub.CreateProduct(catalog.CreateProductRequest(name="P", description="d"), metadata=metadata)
        refused = svc.IngestEventRequest(type="ryw.nobody", source="t", subject="cus_1")
        refused.data.SetInParent()
        with pytest.raises(grpc.RpcError) as unknown:
            metering.IngestEvent(refused, metadata=metadata, timeout=10)
        assert unknown.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # UNKNOWN_EVENT_TYPE (422 over REST)
        assert "no billable metric" in str(unknown.value.details())

        def create(event_type: str) -> Any:
            request = catalog.CreateBillableMetricRequest(
                product_id=product.id, name="T", description="d", unit="t", aggregation="COUNT", event_type=event_type
            )
            return catalog_stub.CreateBillableMetric(request, metadata=metadata)

        def ingest(event_type: str) -> None:
            event = svc.IngestEventRequest(type=event_type, source="t", subject="cus_1")
            event.data.SetInParent()
            started = time.monotonic()
            accepted = metering.IngestEvent(event, metadata=metadata, timeout=10)
            assert accepted.id.startswith("evt_") and time.monotonic() - started < FAST

        # the catalog lists newest first, 100 a page: this one ends up on the second page
        oldest = create("ryw.oldest")
        for i in range(101):
            create(f"ryw.padding.{i}")
        ingest(oldest.event_type)
        for i in range(1, 4):
            metric = create(f"ryw.{i}")
            ingest(metric.event_type)
            meter = svc.GetMeterRequest(id=metric.id)
            meter.from_time.FromDatetime(datetime(2000, 1, 1))
            meter.to_time.FromDatetime(datetime(2100, 1, 1))
            assert metering.GetMeter(meter, metadata=metadata, timeout=10).billable_metric_id == metric.id


# --- item 4: bounds, the same on every path -----------------------------------------

BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"timestamp": "0001-01-01T00:00:00Z"}, "timestamp", "TIMESTAMP_TOO_OLD"),
    ({"timestamp": "1970-01-01T00:00:00Z"}, "timestamp", "TIMESTAMP_TOO_OLD"),
    ({"timestamp": "{36_days_ago}"}, "timestamp", "TIMESTAMP_TOO_OLD"),
    ({"timestamp": "{10_minutes_ahead}"}, "timestamp", "TIMESTAMP_IN_FUTURE"),
    ({"subject": "s" * 100_000}, "subject", "TOO_LONG"),
    ({"subject": "s" * 256}, "subject", "TOO_LONG"),
    ({"subject": None, "externalSubject": "x" * 256}, "externalSubject", "TOO_LONG"),
    ({"externalSubject": "x" * 100_000}, "externalSubject", "TOO_LONG"),
    ({"source": "s" * 256}, "source", "TOO_LONG"),
    ({"data": {"tokens": 1, "pad": "p" * 70_000}}, "data", "TOO_LARGE"),
    ({"data": {f"k{i}": i for i in range(10_000)}}, "data", "TOO_LARGE"),
]
BAD_IDS = [
    "year-1", "1970", "36-days-ago", "future", "subject-100k", "subject-256", "external-256", "external-100k", "source-256",
    "data-70k", "data-10k-keys",
]  # fmt: skip
AT_THE_LIMITS: list[dict[str, Any]] = [
    {"timestamp": "{34_days_ago}"},
    {"subject": "s" * 255},
    {"subject": None, "externalSubject": "x" * 255},
    {"source": "s" * 255},
    {"data": {"tokens": 1, "pad": "p" * 60_000}},
]


def _resolve(change: dict[str, Any]) -> dict[str, Any]:
    now = datetime.now(UTC)
    instants = {
        "{36_days_ago}": now - timedelta(days=36),
        "{34_days_ago}": now - timedelta(days=34),
        "{10_minutes_ahead}": now + timedelta(minutes=10),
    }
    return {k: (instants[v].isoformat() if isinstance(v, str) and v in instants else v) for k, v in change.items()}


@pytest.mark.parametrize(("change", "field", "code"), BAD, ids=BAD_IDS)
def test_an_event_past_a_bound_is_400_naming_the_field(merchant_a: MerchantClient, change: dict[str, Any], field: str, code: str) -> None:
    metric = _metric(merchant_a)
    subject = _subject()
    response = httpx.post(
        f"{merchant_a.base_url}/v0/events", json=_event(metric["eventType"], subject, **_resolve(change)), headers=merchant_a.headers
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert (body["code"], body["details"]["field"]) == (code, field)
    assert field in body["message"]
    assert _total(merchant_a, metric["id"], subject, "0", timeout=0.3) == "0"


def test_events_at_the_limits_are_accepted(merchant_a: MerchantClient) -> None:
    metric = _metric(merchant_a)
    subject = _subject()
    for change in AT_THE_LIMITS:
        body = _event(metric["eventType"], subject, **_resolve(change))
        response = httpx.post(f"{merchant_a.base_url}/v0/events", json=body, headers=merchant_a.headers)
        assert response.status_code == 202, (change.keys(), response.text)
    assert _total(merchant_a, metric["id"], subject, "3") == "3"  # the other two are not this subject's


def test_a_batch_applies_the_same_bounds_per_event(merchant_a: MerchantClient) -> None:
    metric = _metric(merchant_a)
    subject = _subject()
    events = [_event(metric["eventType"], subject, **_resolve(change)) for change, _, _ in BAD]
    events.append(_event(metric["eventType"], subject))
    response = httpx.post(
        f"{merchant_a.base_url}/accrue/v1/events:batchIngest", json={"events": events}, headers=merchant_a.headers, timeout=20
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (1, len(BAD))
    for receipt, (_, field, code) in zip(body["receipts"], BAD, strict=False):
        assert (receipt["status"], receipt["code"], receipt["field"], receipt["httpStatus"]) == ("rejected", code, field, 400)
    assert body["receipts"][-1]["status"] == "accepted"


def test_a_stream_applies_the_same_bounds_per_event(mesh: Mesh, merchant_a: MerchantClient) -> None:
    metric = _metric(merchant_a)
    subject = _subject()
    batch = svc.BatchIngestEventsRequest()
    for change, _, _ in BAD:
        json_format.ParseDict(_event(metric["eventType"], subject, **_resolve(change)), batch.events.add())
    json_format.ParseDict(_event(metric["eventType"], subject), batch.events.add())
    # out of Timestamp's range, which only a gRPC caller can send
    out_of_range = batch.events.add()
    json_format.ParseDict(_event(metric["eventType"], subject), out_of_range)
    out_of_range.timestamp.seconds = -(10**13)

    async def stream() -> svc.BatchIngestEventsResponse:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.processes['metering'].port}") as channel:
            call = metering_service_pb2_grpc.MeteringServiceStub(channel).StreamIngestEvents(
                metadata=[merchant_metadata(merchant_a.merchant_id)], timeout=20
            )
            await call.write(svc.StreamIngestEventsRequest(batch=batch))
            await call.done_writing()
            response = await call.read()
            assert isinstance(response, svc.StreamIngestEventsResponse)
            return response.receipts

    receipts = asyncio.run(stream())
    assert (receipts.accepted, receipts.rejected) == (1, len(BAD) + 1)
    for receipt, (_, field, code) in zip(receipts.receipts, BAD, strict=False):
        assert (receipt.status, receipt.code, receipt.field, receipt.http_status) == ("rejected", code, field, 400)
    assert receipts.receipts[len(BAD)].status == "accepted"
    last = receipts.receipts[-1]
    assert (last.status, last.code, last.field) == ("rejected", "INVALID_TIMESTAMP", "timestamp")


# --- item 4: what subject + externalSubject mean, and zone-less timestamps ----------


async def _publish_customer_created(mesh: Mesh, merchant_id: str, customer_id: str, external_id: str) -> None:
    """As the subscription service publishes it (see tests/integration/test_external_subjects.py)."""
    change = ev.CustomerChanged(
        kind=ev.CUSTOMER_CHANGE_KIND_CREATED,
        merchant_id=merchant_id,
        customer=sub.Customer(id=customer_id, merchant_id=merchant_id, external_id=external_id),
        sequence=time.time_ns(),
    )
    change.change_time.FromDatetime(datetime.now(UTC))
    nc = await messaging.connect(mesh.nats_url, "test-event-bounds")
    try:
        js = nc.jetstream()
        await messaging.ensure_stream(js, subscription_events.STREAM, subscription_events.STREAM_SUBJECTS)
        headers = {
            messaging.MSG_ID_HEADER: f"evt_{uuid.uuid4().hex}",
            messaging.MERCHANT_HEADER: merchant_id,
            messaging.EVENT_TYPE_HEADER: ev.CustomerChanged.DESCRIPTOR.full_name,
        }
        await js.publish(subscription_events.customer_subject(ev.CUSTOMER_CHANGE_KIND_CREATED), change.SerializeToString(), headers=headers)
    finally:
        await nc.close()


def test_subject_wins_over_external_subject(mesh: Mesh, merchant_a: MerchantClient) -> None:
    metric = _metric(merchant_a)
    named, other = _subject(), _subject()
    external = f"acct-{uuid.uuid4().hex[:10]}"
    url = f"{merchant_a.base_url}/v0/events"
    both = httpx.post(
        url, json=_event(metric["eventType"], named, externalSubject=external, data={"tokens": 5}), headers=merchant_a.headers
    )
    assert both.status_code == 202, both.text
    assert (both.json()["subject"], both.json()["externalSubject"]) == (named, external)  # both kept
    assert _total(merchant_a, metric["id"], named, "5") == "5"  # the subject's usage at once
    # the external subject then turns out to be another customer: the event stays the subject's
    only_external = httpx.post(
        url, json=_event(metric["eventType"], None, externalSubject=external, data={"tokens": 7}), headers=merchant_a.headers
    )
    assert only_external.status_code == 202, only_external.text
    asyncio.run(_publish_customer_created(mesh, merchant_a.merchant_id, other, external))
    assert _total(merchant_a, metric["id"], other, "7") == "7"  # the mapping has been applied
    assert _total(merchant_a, metric["id"], named, "5", timeout=0.5) == "5"
    listed = httpx.get(
        f"{merchant_a.base_url}/v0/billableMetrics/{metric['id']}/events",
        params={**FAR, "externalSubject": external},
        headers=merchant_a.headers,
    ).json()
    assert sorted((e["subject"], e["data"]["tokens"]) for e in listed["events"]) == sorted([(named, 5), (other, 7)])


def test_a_timestamp_without_a_zone_is_utc(merchant_a: MerchantClient) -> None:
    metric = _metric(merchant_a, aggregation="COUNT")
    subject = _subject()
    instant = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
    naive = instant.replace(tzinfo=None).isoformat()  # "YYYY-MM-DDTHH:MM:SS"
    response = httpx.post(
        f"{merchant_a.base_url}/v0/events", json=_event(metric["eventType"], subject, timestamp=naive), headers=merchant_a.headers
    )
    assert response.status_code == 202, response.text
    assert datetime.fromisoformat(response.json()["timestamp"].replace("Z", "+00:00")) == instant
    # the SDK sends naive datetimes the same way
    accepted = merchant_a.sdk.events.ingest(
        request={"type": metric["eventType"], "source": "t", "subject": subject, "data": {}, "timestamp": instant.replace(tzinfo=None)}
    )
    assert accepted.timestamp is not None and accepted.timestamp.replace(tzinfo=accepted.timestamp.tzinfo or UTC) == instant
    deadline = time.monotonic() + 15
    while True:
        listed = httpx.get(
            f"{merchant_a.base_url}/v0/billableMetrics/{metric['id']}/events",
            params={**FAR, "subject": subject},
            headers=merchant_a.headers,
        ).json()
        if listed["pagination"]["total"] == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    stored = [datetime.fromisoformat(e["time"].replace("Z", "+00:00")) for e in listed["events"]]
    assert stored == [instant, instant]
    # counted in the UTC hour it names, not in some local one
    window = {"from": instant.isoformat(), "to": (instant + timedelta(seconds=1)).isoformat(), "subject": subject}
    meter = httpx.get(f"{merchant_a.base_url}/v0/billableMetrics/{metric['id']}/meter", params=window, headers=merchant_a.headers)
    assert meter.json()["totalValueDecimal"] == "2"
