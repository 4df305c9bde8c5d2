"""The transactional outbox under crashes: committed events are delivered exactly once."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import psycopg
import pytest
from accrue.catalog.v1 import catalog_service_pb2 as svc
from accrue.catalog.v1 import catalog_service_pb2_grpc
from sqlalchemy.engine import make_url

from libs.infra import messaging
from libs.infra.runner import Mesh
from libs.infra.service import Host
from libs.infra.settings import ServiceSettings
from libs.testing.events import CountingConsumer, consumer_database, messages_on
from libs.testing.fixtures import Infra
from libs.testing.tokens import merchant_metadata
from services.catalog.app import DEFINITION
from services.catalog.events import STREAM

pytestmark = pytest.mark.integration
SUBJECT = "accrue.catalog.v1.product.created"


def _outbox_rows(database_url: str) -> list[tuple[str, object]]:
    url = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT event_id, published_at FROM outbox ORDER BY seq")]


async def _create_product(port: int, merchant_id: str) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = catalog_service_pb2_grpc.CatalogServiceStub(channel)
        product = await stub.CreateProduct(
            svc.CreateProductRequest(name="Crash test", description="outbox"), metadata=[merchant_metadata(merchant_id)]
        )
    product_id: str = product.id
    return product_id


async def test_event_committed_before_a_sigkill_is_delivered_once_after_restart(infra_mesh: Mesh, infra: Infra) -> None:
    merchant_id = f"org_crash{uuid.uuid4().hex[:8]}"
    database_url = infra.new_database_url("crash_catalog")
    env = infra_mesh.service_env("catalog")
    env.update(
        ACCRUE_DATABASE_URL=database_url,
        ACCRUE_PORT_FILE=str(infra_mesh.state_dir / "ports" / "crash-catalog"),
        ACCRUE_OUTBOX_RELAY_ENABLED="false",  # the crash happens after commit, before any publish
    )
    process = infra_mesh.spawn("crash-catalog", "services.catalog.app", env)
    port = await asyncio.to_thread(infra_mesh.wait_port, process)
    product_id = await _create_product(port, merchant_id)

    rows = await asyncio.to_thread(_outbox_rows, database_url)
    assert len(rows) == 1 and rows[0][1] is None, "committed event must wait in the outbox, unpublished"
    event_id = rows[0][0]
    await asyncio.to_thread(infra_mesh.kill, "crash-catalog")

    nc = await messaging.connect(infra.nats_url, "test-outbox")
    consumer = CountingConsumer(
        await consumer_database(infra.new_database_url("crash_consumer")),
        nc,
        stream=STREAM,
        filter_subject=SUBJECT,
        accept=lambda event: event.merchant_id == merchant_id,
    )
    consumer.start()
    try:
        await asyncio.sleep(1.0)
        assert consumer.handled == [], "nothing may be published while the catalog is down"

        env["ACCRUE_OUTBOX_RELAY_ENABLED"] = "true"
        restarted = infra_mesh.spawn("crash-catalog", "services.catalog.app", env)
        await asyncio.to_thread(infra_mesh.wait_port, restarted)
        await asyncio.wait_for(consumer.seen.wait(), 20)
        await asyncio.sleep(1.5)  # room for a duplicate to show up, if there were one

        assert [e.event_id for e in consumer.handled] == [event_id]
        stored = [m for m in await messages_on(nc, STREAM, SUBJECT) if m.merchant_id == merchant_id]
        assert [m.event_id for m in stored] == [event_id]
        assert product_id.encode() in stored[0].payload
        assert all(published is not None for _, published in await asyncio.to_thread(_outbox_rows, database_url))
    finally:
        await consumer.stop()
        await nc.close()
        await asyncio.to_thread(infra_mesh.kill, "crash-catalog")


async def test_republish_after_a_crash_between_publish_and_mark_is_not_counted_twice(infra: Infra) -> None:
    """The relay publishes, then dies before marking the row: the row is sent again with the
    same Nats-Msg-Id; JetStream's duplicate window and the consumer's inbox both drop it."""
    merchant_id = f"org_dup{uuid.uuid4().hex[:8]}"
    database_url = infra.new_database_url("dup_catalog")
    host = Host(DEFINITION, ServiceSettings(database_url=database_url, nats_url=infra.nats_url, grpc_port=0))
    await host.start()
    nc = await messaging.connect(infra.nats_url, "test-dup")
    consumer = CountingConsumer(
        await consumer_database(infra.new_database_url("dup_consumer")),
        nc,
        stream=STREAM,
        filter_subject=SUBJECT,
        accept=lambda event: event.merchant_id == merchant_id,
    )
    consumer.start()
    try:
        await _create_product(host.port, merchant_id)
        await asyncio.wait_for(consumer.seen.wait(), 10)
        assert host.runtime is not None
        async with host.runtime.db.engine.begin() as conn:
            from sqlalchemy import text

            await conn.execute(text("UPDATE outbox SET published_at = NULL"))
        host.runtime.db.events_committed.set()
        for _ in range(100):
            if all(published is not None for _, published in await asyncio.to_thread(_outbox_rows, database_url)):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        assert len(consumer.handled) == 1
        stored = [m for m in await messages_on(nc, STREAM, SUBJECT) if m.merchant_id == merchant_id]
        assert len(stored) == 1, "JetStream must drop the re-publish inside its duplicate window"
    finally:
        await consumer.stop()
        await nc.close()
        await host.stop()
