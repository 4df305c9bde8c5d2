"""The aggregator's usage hint (core NATS ``accrue.metering.v1.usage_stored``,
``UsageStored``), against real PostgreSQL and NATS.

End to end: a metering host of this process (its aggregator inside) on a NATS server of
the test's own, so that its durable consumer meets no other metering. An ingested event
is announced, naming its merchant, subject and type, once its row is queryable; a
duplicate redelivered on the stream stores nothing, announces nothing and stops nothing.
On the store path itself: one commit, one hint, rows without a subject left out, and a
publish that fails never fails the store."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from accrue.metering.v1 import metering_resources_pb2 as resources
from accrue.metering.v1 import metering_service_pb2 as svc
from accrue.metering.v1 import metering_service_pb2_grpc
from google.protobuf import struct_pb2
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from libs.infra import messaging
from libs.infra.db import Database
from libs.infra.proto_time import to_timestamp
from libs.infra.runner import Mesh
from libs.infra.service import Host
from libs.testing.fixtures import StartHost
from libs.testing.meshes import own_mesh
from libs.testing.tokens import merchant_metadata
from services.metering import events, store
from services.metering.aggregator import Aggregator
from services.metering.app import DEFINITION

pytestmark = pytest.mark.integration
EVENT_TYPE = "hinted.tokens"
WAIT = 15.0


class Hints:
    """A core-NATS subscriber of the hint subject: every UsageStored, and whether the rows
    it names were queryable when it arrived (checked in the callback, before the next)."""

    def __init__(self, db: Database | None = None) -> None:
        self.received: asyncio.Queue[tuple[resources.UsageStored, dict[tuple[str, str], int]]] = asyncio.Queue()
        self._db = db

    async def on_message(self, msg: Msg) -> None:
        hint = resources.UsageStored.FromString(msg.data)
        counts: dict[tuple[str, str], int] = {}
        if self._db is not None:
            e = store.meter_events
            async with self._db.engine.connect() as conn:
                for s in hint.subjects:
                    query = sa.select(sa.func.count()).where(e.c.merchant_id == s.merchant_id, e.c.subject == s.subject)
                    counts[(s.merchant_id, s.subject)] = int((await conn.execute(query)).scalar_one())
        await self.received.put((hint, counts))

    async def next_for(self, merchant_id: str) -> tuple[resources.UsageStored, dict[tuple[str, str], int]]:
        """The next hint naming ``merchant_id`` (others' are skipped: the subject is shared)."""
        while True:
            hint, counts = await asyncio.wait_for(self.received.get(), WAIT)
            if any(s.merchant_id == merchant_id for s in hint.subjects):
                return hint, counts


def _named(hint: resources.UsageStored, merchant_id: str) -> dict[str, list[str]]:
    return {s.subject: list(s.event_types) for s in hint.subjects if s.merchant_id == merchant_id}


# --- through the service -------------------------------------------------------------------


@pytest.fixture
def own_nats(infra_mesh: Mesh, tmp_path: Path) -> Iterator[str]:
    mesh = own_mesh(infra_mesh, tmp_path, "hint")
    yield mesh.nats_url
    mesh.stop()


@pytest.fixture
async def nats_client(own_nats: str) -> AsyncIterator[NatsClient]:
    nc = await messaging.connect(own_nats, "test-usage-hint")
    yield nc
    await nc.close()


@pytest.fixture
async def metering(own_nats: str, start_host: StartHost) -> AsyncIterator[tuple[Host, str]]:
    """A metering host with its aggregator on the test's NATS, and a merchant whose metric
    of EVENT_TYPE it knows."""
    merchant_id = f"org_hint{uuid.uuid4().hex[:10]}"
    host = await start_host(DEFINITION, nats_url=own_nats, aggregator_enabled=True)
    assert host.runtime is not None
    async with host.runtime.db.engine.begin() as conn:
        await conn.execute(
            store.metrics.insert().values(
                id=f"bm_{uuid.uuid4().hex[:16]}",
                merchant_id=merchant_id,
                event_type=EVENT_TYPE,
                aggregation="SUM",
                value_property="$.tokens",
                group_by={},
                updated_at=datetime.now(UTC),
            )
        )
    yield host, merchant_id


def _event(subject: str, key: str) -> svc.IngestEventRequest:
    return svc.IngestEventRequest(
        type=EVENT_TYPE,
        source="tests",
        subject=subject,
        idempotency_key=key,
        data=struct_pb2.Struct(fields={"tokens": struct_pb2.Value(number_value=3)}),
    )


async def _stored_keys(db: Database, merchant_id: str) -> list[str]:
    e = store.meter_events
    async with db.engine.connect() as conn:
        rows = await conn.execute(sa.select(e.c.idempotency_key).where(e.c.merchant_id == merchant_id).order_by(e.c.idempotency_key))
        return [str(r[0]) for r in rows]


async def test_an_ingested_event_is_announced_once_queryable_and_a_redelivered_duplicate_breaks_nothing(
    metering: tuple[Host, str], nats_client: NatsClient
) -> None:
    host, merchant_id = metering
    assert host.runtime is not None
    db = host.runtime.db
    hints = Hints(db)
    subscription = await nats_client.subscribe(events.USAGE_STORED_SUBJECT, cb=hints.on_message)
    await nats_client.flush()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            stub = metering_service_pb2_grpc.MeteringServiceStub(channel)
            metadata = [merchant_metadata(merchant_id)]
            await stub.IngestEvent(_event("cus_hint_a", "k1"), metadata=metadata)

            hint, counts = await hints.next_for(merchant_id)
            assert _named(hint, merchant_id) == {"cus_hint_a": [EVENT_TYPE]}
            assert counts[(merchant_id, "cus_hint_a")] == 1, "the hint came before its row was queryable"
            assert hint.HasField("stored_at")

            # the stored event again on the meter stream, as a redelivery would bring it
            # (another message id, so that JetStream's duplicate window lets it through)
            duplicate = resources.MeterEvent(
                id="evt_dup", merchant_id=merchant_id, type=EVENT_TYPE, source="tests", subject="cus_hint_a", idempotency_key="k1"
            )
            duplicate.time.CopyFrom(to_timestamp(datetime.now(UTC)))
            duplicate.ingest_time.CopyFrom(to_timestamp(datetime.now(UTC)))
            await nats_client.jetstream().publish(
                events.partition_subject(0),
                resources.MeterEventBatch(events=[duplicate]).SerializeToString(),
                headers={messaging.MSG_ID_HEADER: f"redelivery-{uuid.uuid4().hex}"},
            )
            await stub.IngestEvent(_event("cus_hint_b", "k2"), metadata=metadata)

            # the aggregator goes on: the next hint of the merchant is the new event's
            # (the duplicate inserted nothing, so it named nobody)
            hint, counts = await hints.next_for(merchant_id)
            assert _named(hint, merchant_id) == {"cus_hint_b": [EVENT_TYPE]}
            assert counts[(merchant_id, "cus_hint_b")] == 1
            assert await _stored_keys(db, merchant_id) == ["k1", "k2"]
    finally:
        await subscription.unsubscribe()


# --- the store path ------------------------------------------------------------------------


def _with_data_inside(batch: list[resources.MeterEvent]) -> list[tuple[resources.MeterEvent, bytes]]:
    """Events as the aggregator stores them (events_of), each carrying its data itself."""
    return [(event, b"") for event in batch]


def _meter_event(
    merchant_id: str, key: str, *, subject: str = "", event_type: str = EVENT_TYPE, external: str | None = None
) -> resources.MeterEvent:
    now = to_timestamp(datetime.now(UTC))
    event = resources.MeterEvent(
        id=f"evt_{key}",
        merchant_id=merchant_id,
        type=event_type,
        source="tests",
        subject=subject,
        idempotency_key=key,
        time=now,
        ingest_time=now,
    )
    if external is not None:
        event.external_subject = external
    return event


async def test_one_commit_one_hint_of_its_inserted_rows_with_a_subject(db: Database, nc: NatsClient) -> None:
    merchant_id, other = f"org_h{uuid.uuid4().hex[:10]}", f"org_h{uuid.uuid4().hex[:10]}"
    hints = Hints()
    subscription = await nc.subscribe(events.USAGE_STORED_SUBJECT, cb=hints.on_message)
    await nc.flush()
    aggregator = Aggregator(db, nc.jetstream())
    try:
        await aggregator._store(
            _with_data_inside(
                [
                    _meter_event(merchant_id, "a1", subject="cus_1"),
                    _meter_event(merchant_id, "a2", subject="cus_1", event_type="other.type"),
                    _meter_event(merchant_id, "a3", subject="cus_1"),
                    _meter_event(merchant_id, "a4", subject="cus_2"),
                    _meter_event(other, "a1", subject="cus_1"),
                    # externalSubject of no known customer: stored without a subject, not named
                    _meter_event(merchant_id, "a5", external="acct-unknown"),
                ]
            )
        )
        hint, _ = await hints.next_for(merchant_id)
        assert [(s.merchant_id, s.subject, list(s.event_types)) for s in hint.subjects] == sorted(
            [
                (merchant_id, "cus_1", sorted([EVENT_TYPE, "other.type"])),
                (merchant_id, "cus_2", [EVENT_TYPE]),
                (other, "cus_1", [EVENT_TYPE]),
            ]
        )

        # stored again (a redelivered batch) and one new row: only the new one is named
        await aggregator._store(
            _with_data_inside([_meter_event(merchant_id, "a1", subject="cus_1"), _meter_event(merchant_id, "a6", subject="cus_3")])
        )
        hint, _ = await hints.next_for(merchant_id)
        assert _named(hint, merchant_id) == {"cus_3": [EVENT_TYPE]} and _named(hint, other) == {}
    finally:
        await subscription.unsubscribe()


async def test_a_failing_publish_never_fails_the_store(db: Database, infra_mesh: Mesh) -> None:
    merchant_id = f"org_h{uuid.uuid4().hex[:10]}"
    closed = await messaging.connect(infra_mesh.nats_url, "test-closed")
    js = closed.jetstream()
    await closed.close()  # every publish on it raises
    aggregator = Aggregator(db, js, nats=closed)
    await aggregator._store(_with_data_inside([_meter_event(merchant_id, "b1", subject="cus_1")]))
    assert await _stored_keys(db, merchant_id) == ["b1"]
    assert aggregator.stored == 1
