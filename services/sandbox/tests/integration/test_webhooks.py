"""The sandbox's webhooks: signed in the Standard Webhooks format so that the adapter's
``parse_webhook`` verifies them (and refuses a tampered, foreign or stale one), delivered
late, twice and out of order when asked, numbered per object, retried on a non-2xx; and a
slow charge whose process stopped is completed by the next one, once."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook

from services.payment.processors.base import ChargeSource, ChargeStatus, InvalidWebhook, ProcessorTimeout, WebhookEvent
from services.payment.processors.sandbox import SandboxProcessor
from services.sandbox.tests.integration.conftest import WEBHOOK_SECRET, Receiver, Sandbox, StartSandbox, eventually

pytestmark = pytest.mark.integration

MERCHANT = "org_webhooks"


async def _charge(adapter: SandboxProcessor, key: str, token: str, webhook_url: str) -> str:
    charge = await adapter.charge(
        merchant_id=MERCHANT,
        idempotency_key=key,
        amount_minor=2500,
        currency="EUR",
        source=ChargeSource(token=token),
        off_session=False,
        metadata={"key": key},
        webhook_url=webhook_url,
    )
    return charge.ref


def _events(adapter: SandboxProcessor, receiver: Receiver) -> list[WebhookEvent]:
    return [adapter.parse_webhook(headers, body) for headers, body in receiver.received]


async def test_every_event_verifies_with_the_adapter_and_a_bad_one_is_refused(sandbox: Sandbox, receiver: Receiver) -> None:
    adapter = sandbox.adapter()
    paid = await _charge(adapter, "inv_w:auto:0", await sandbox.token(), receiver.url)
    failed = await _charge(adapter, "inv_w:auto:1", await sandbox.token("4000000000009995"), receiver.url)
    refund = await adapter.refund(merchant_id=MERCHANT, idempotency_key="crn_w", charge_ref=paid, amount_minor=2500)
    await receiver.wait_for(3)
    await asyncio.sleep(0.3)  # nothing more comes: no duplicates asked for
    events = _events(adapter, receiver)
    assert len(events) == 3
    by_type = {event.type: event for event in events}
    assert set(by_type) == {"charge.succeeded", "charge.failed", "refund.succeeded"}
    succeeded = by_type["charge.succeeded"]
    assert succeeded.charge is not None and succeeded.charge.ref == paid and succeeded.charge.status is ChargeStatus.SUCCEEDED
    assert succeeded.sequence == 1 and succeeded.refund is None
    assert (succeeded.charge.amount_minor, succeeded.charge.currency, succeeded.charge.idempotency_key) == (2500, "EUR", "inv_w:auto:0")
    declined = by_type["charge.failed"].charge
    assert declined is not None and declined.ref == failed and declined.failure_code == "insufficient_funds"
    refunded = by_type["refund.succeeded"].refund
    assert refunded is not None and refunded.ref == refund.ref and refunded.charge_ref == paid and refunded.amount_minor == 2500
    for headers, _ in receiver.received:
        assert headers["webhook-id"].startswith("evt_") and headers["content-type"] == "application/json"

    headers, body = receiver.received[0]
    with pytest.raises(InvalidWebhook):  # a changed body
        adapter.parse_webhook(headers, body.replace(b"2500", b"2501"))
    with pytest.raises(InvalidWebhook):  # another sender's secret
        sandbox.adapter(webhook_secret="whsec_" + base64.b64encode(b"someone else entirely").decode()).parse_webhook(headers, body)
    with pytest.raises(InvalidWebhook):  # no signature
        adapter.parse_webhook({k: v for k, v in headers.items() if k != "webhook-signature"}, body)
    with pytest.raises(InvalidWebhook):  # garbage in the signature header
        adapter.parse_webhook({**headers, "webhook-signature": "v1"}, body)
    stale = datetime.now(UTC) - timedelta(minutes=10)  # signed correctly, but replayed much later
    resigned = Webhook(WEBHOOK_SECRET).sign(headers["webhook-id"], stale, body.decode())
    with pytest.raises(InvalidWebhook):
        adapter.parse_webhook({**headers, "webhook-timestamp": str(int(stale.timestamp())), "webhook-signature": resigned}, body)
    # a correctly signed body that is no sandbox event
    now = datetime.now(UTC)
    not_event = b'{"hello": "world"}'
    signed = Webhook(WEBHOOK_SECRET).sign("evt_x", now, not_event.decode())
    with pytest.raises(InvalidWebhook):
        adapter.parse_webhook(
            {"webhook-id": "evt_x", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signed}, not_event
        )
    # the signature is what the format says: HMAC-SHA256 over "id.timestamp.body" with the decoded secret
    key = base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))
    expected = hmac.new(key, f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{body.decode()}".encode(), hashlib.sha256).digest()
    assert f"v1,{base64.b64encode(expected).decode()}" in headers["webhook-signature"].split(" ")
    await adapter.aclose()


async def test_duplicates_and_out_of_order_deliveries_happen_and_sequence_orders_them(
    start_sandbox: StartSandbox, receiver: Receiver
) -> None:
    sandbox = await start_sandbox(sandbox_webhook_duplicate_rate=1.0, sandbox_webhook_reorder_rate=1.0, sandbox_slow_seconds=0.5)
    adapter = sandbox.adapter()
    slow = await _charge(adapter, "inv_slow_w:auto:0", await sandbox.token("4000000000006975"), receiver.url)
    # processing and succeeded, each twice, and processing once more after succeeded
    await receiver.wait_for(5)
    await asyncio.sleep(0.3)
    events = _events(adapter, receiver)
    assert all(event.charge is not None and event.charge.ref == slow for event in events)
    assert sorted(event.type for event in events) == ["charge.processing"] * 3 + ["charge.succeeded"] * 2
    sequences = {event.type: event.sequence for event in events}
    assert sequences == {"charge.processing": 1, "charge.succeeded": 2}
    ids = [headers["webhook-id"] for headers, _ in receiver.received]
    assert len(set(ids)) == 2  # duplicates are the same event (same id), as Standard Webhooks receivers dedupe
    order = [event.type for event in events]
    assert order[-1] == "charge.processing"  # the older state arrived last
    assert order.index("charge.succeeded") < len(order) - 1

    async def all_delivered() -> bool:
        return all(d["status"] == "delivered" for d in await sandbox.records("webhooks", objectId=slow))

    await eventually(all_delivered, what="every delivery recorded")
    deliveries = await sandbox.records("webhooks", objectId=slow)
    assert sorted(d["kind"] for d in deliveries) == ["duplicate", "duplicate", "first", "first", "late"]
    assert all(d["attempts"] == 1 for d in deliveries)
    await adapter.aclose()


async def test_a_delivery_that_gets_no_2xx_is_retried_until_it_does(sandbox: Sandbox, receiver: Receiver) -> None:
    receiver.fail_first = 2
    adapter = sandbox.adapter()
    paid = await _charge(adapter, "inv_retry:auto:0", await sandbox.token(), receiver.url)
    await receiver.wait_for(1)
    assert receiver.answered == [500, 500, 200]

    async def recorded() -> bool:
        return [d["status"] for d in await sandbox.records("webhooks", objectId=paid)] == ["delivered"]

    await eventually(recorded, what="the delivery recorded as delivered")
    (delivery,) = await sandbox.records("webhooks", objectId=paid)
    assert (delivery["status"], delivery["attempts"], delivery["lastStatus"]) == ("delivered", 3, 200)
    (event,) = _events(adapter, receiver)  # each attempt is signed afresh and verifies
    assert event.type == "charge.succeeded"
    # the test-only redeliver sends the same event once more
    again = await sandbox.client.post(f"/v1/_sandbox/events/{delivery['eventId']}/redeliver")
    assert again.status_code == 202 and again.json()["kind"] == "manual"
    await receiver.wait_for(2)
    assert receiver.received[1][0]["webhook-id"] == delivery["eventId"]
    await adapter.aclose()


async def test_a_delivery_to_a_receiver_that_never_answers_2xx_gives_up(start_sandbox: StartSandbox, receiver: Receiver) -> None:
    sandbox = await start_sandbox(sandbox_webhook_max_attempts=3)
    receiver.fail_first = 100
    adapter = sandbox.adapter()
    paid = await _charge(adapter, "inv_gone:auto:0", await sandbox.token(), receiver.url)

    async def failed() -> bool:
        return [d["status"] for d in await sandbox.records("webhooks", objectId=paid)] == ["failed"]

    await eventually(failed, what="the delivery giving up")
    assert receiver.answered == [500, 500, 500]
    await adapter.aclose()


async def test_a_slow_charge_whose_process_stopped_is_completed_by_the_next_one_once(
    start_sandbox: StartSandbox, receiver: Receiver
) -> None:
    first = await start_sandbox(sandbox_slow_seconds=6)
    adapter = first.adapter(timeout=0.3)
    token = await first.token("4000000000006975")
    with pytest.raises(ProcessorTimeout):
        await _charge(adapter, "inv_crash:auto:0", token, receiver.url)
    await adapter.aclose()
    await first.host.stop()  # its request and its completion are gone with it
    engine = sa.create_engine(first.database_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM charges")).scalars().all() == ["processing"]
    started = time.monotonic()
    second = await start_sandbox(database_url=first.database_url, sandbox_slow_seconds=6)
    later = second.adapter()

    async def succeeded() -> bool:
        found = await later.find_charge(merchant_id=MERCHANT, idempotency_key="inv_crash:auto:0")
        return found is not None and found.status is ChargeStatus.SUCCEEDED

    await eventually(succeeded, timeout=10, what="the restarted sandbox completing the charge")
    assert time.monotonic() - started < 10
    await receiver.wait_for(2)
    await asyncio.sleep(0.3)
    assert sorted(event.type for event in _events(later, receiver)) == ["charge.processing", "charge.succeeded"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events WHERE type = 'charge.succeeded'")).scalar() == 1
    engine.dispose()
    await later.aclose()
