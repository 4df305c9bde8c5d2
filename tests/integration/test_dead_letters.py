"""Delivery limit and dead letters of the shared consumers, against real NATS and
PostgreSQL: a poison event is dead-lettered after the limit while the consumer keeps
going, a replay after the fix runs it once, a consumer waits for its producer's stream,
the batch form dead-letters only the failing part, and metering's migration moves its
old dead letters into the shared table."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from accrue.metering.v1 import metering_resources_pb2 as resources
from alembic import command
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy.engine import make_url

from libs.infra import dead_letters, messaging, migrations
from libs.infra.db import Database, UnitOfWork
from libs.testing.events import consumer_database
from libs.testing.fixtures import Infra
from libs.testing.waiting import eventually_async
from services.metering import store as metering_store

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stream:
    name: str
    prefix: str
    js: JetStreamContext

    def subject(self, leaf: str) -> str:
        return f"{self.prefix}.{leaf}"

    async def create(self) -> None:
        await messaging.ensure_stream(self.js, self.name, [f"{self.prefix}.>"])

    def spec(self, durable: str, *, max_deliver: int = messaging.DEFAULT_MAX_DELIVER) -> messaging.PullSpec:
        """A consumer of every subject of the stream, retrying fast."""
        return messaging.PullSpec(
            stream=self.name, durable=durable, filter_subject=self.subject(">"), max_deliver=max_deliver, retry_delay=0.05
        )

    async def publish(self, event_id: str, payload: bytes, leaf: str = "thing") -> None:
        await self.js.publish(self.subject(leaf), payload, headers={messaging.MSG_ID_HEADER: event_id})


@pytest.fixture
def stream(nc: NatsClient) -> Stream:
    tag = uuid.uuid4().hex[:10]
    return Stream(f"TEST_DL_{tag}", f"test.dl.{tag}", nc.jetstream())


@pytest.fixture
async def db(infra: Infra) -> AsyncIterator[Database]:
    database = await consumer_database(infra.new_database_url("dead_letters"))
    yield database
    await database.dispose()


async def _eventually(check: Callable[[], Awaitable[bool]]) -> None:
    assert await eventually_async(check, True, timeout=15.0), "condition not reached in time"


async def _add_letter(db: Database, *, consumer: str, event_id: str, subject: str, payload: bytes, error: str) -> None:
    """A dead letter written directly, as a consumer would have."""
    t = db.metadata.tables["dead_letters"]
    async with db.engine.begin() as conn:
        await conn.execute(
            t.insert().values(
                consumer=consumer,
                event_id=event_id,
                subject=subject,
                event_type="",
                merchant_id="",
                payload=payload,
                headers={},
                error=error,
                failed_at=datetime.now(UTC),
            )
        )


async def _letters(db: Database) -> list[dead_letters.DeadLetter]:
    return await dead_letters.list_dead_letters(db, include_replayed=True)


class Running:
    """A consumer's run() as a task, stopped (and awaited) at the end."""

    def __init__(self, consumer: messaging.EventConsumer | messaging.BatchConsumer) -> None:
        self.consumer = consumer
        self.task = asyncio.create_task(consumer.run())

    async def stop(self) -> None:
        self.consumer.stop()
        await asyncio.wait_for(self.task, 5)


class FlakyHandler:
    """Fails on payload b"poison" while broken; counts every call per event."""

    def __init__(self) -> None:
        self.broken = True
        self.calls: Counter[str] = Counter()
        self.handled: list[str] = []

    async def __call__(self, event: messaging.ReceivedEvent, uow: UnitOfWork) -> None:
        self.calls[event.event_id] += 1
        if self.broken and event.payload == b"poison":
            raise ValueError("cannot digest poison")
        self.handled.append(event.event_id)


async def test_a_poison_event_is_dead_lettered_after_the_limit_and_the_consumer_keeps_consuming(db: Database, stream: Stream) -> None:
    await stream.create()
    handler = FlakyHandler()
    consumer = messaging.EventConsumer(db, stream.js, stream.spec("test-dl", max_deliver=3), handler=handler)
    running = Running(consumer)
    try:
        await stream.publish("evt_poison", b"poison")
        await stream.publish("evt_next", b"fine")

        async def dead_lettered() -> bool:
            return len(await _letters(db)) == 1

        await _eventually(dead_lettered)
        assert "evt_next" in handler.handled  # not held up behind the poison event
        assert handler.calls["evt_poison"] == 3
        (letter,) = await _letters(db)
        assert (letter.consumer, letter.event.event_id, letter.event.subject) == ("test-dl", "evt_poison", stream.subject("thing"))
        assert letter.event.payload == b"poison"
        assert letter.event.headers[messaging.MSG_ID_HEADER] == "evt_poison"
        assert "cannot digest poison" in letter.error and letter.replayed_at is None

        await stream.publish("evt_after", b"fine")

        async def after_handled() -> bool:
            return "evt_after" in handler.handled

        await _eventually(after_handled)
        await asyncio.sleep(0.5)  # room for a redelivery, if the poison event were not terminated
        assert handler.calls["evt_poison"] == 3
        info = await consumer.consumer_info()
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
    finally:
        await running.stop()


async def test_a_replay_after_the_fix_handles_the_event_once(db: Database, stream: Stream) -> None:
    await stream.create()
    handler = FlakyHandler()
    consumer = messaging.EventConsumer(db, stream.js, stream.spec("test-replay", max_deliver=2), handler=handler)
    running = Running(consumer)
    try:
        await stream.publish("evt_poison", b"poison")
        await stream.publish("evt_fine", b"fine")

        async def settled() -> bool:
            return len(await _letters(db)) == 1 and "evt_fine" in handler.handled

        await _eventually(settled)
    finally:
        await running.stop()
    (letter,) = await _letters(db)
    # a second letter of an event that got through meanwhile: its replay must be a no-op
    await _add_letter(
        db, consumer="test-replay", event_id="evt_fine", subject=stream.subject("thing"), payload=b"fine", error="an old failure"
    )

    still_broken = await dead_letters.replay(db, [consumer], ids=[letter.id])
    assert [(o.id, o.status) for o in still_broken] == [(letter.id, "failed")]
    assert "cannot digest poison" in (still_broken[0].error or "")
    assert [d.id for d in await dead_letters.list_dead_letters(db)] == [letter.id, letter.id + 1]

    handler.broken = False
    outcomes = await dead_letters.replay(db, [consumer])
    assert [o.status for o in outcomes] == ["replayed", "replayed"]
    assert handler.handled.count("evt_poison") == 1
    assert handler.handled.count("evt_fine") == 1  # the inbox claim made its replay a no-op
    assert await dead_letters.list_dead_letters(db) == []
    assert all(d.replayed_at is not None for d in await _letters(db))
    assert await dead_letters.replay(db, [consumer]) == []
    assert handler.handled.count("evt_poison") == 1


async def test_a_letter_of_a_consumer_the_service_does_not_run_is_reported_not_dropped(db: Database, stream: Stream) -> None:
    consumer = messaging.EventConsumer(db, stream.js, stream.spec("someone-else"), handler=FlakyHandler())
    await _add_letter(db, consumer="gone", event_id="e", subject="s", payload=b"", error="x")
    assert [o.status for o in await dead_letters.replay(db, [consumer])] == ["no_consumer"]
    assert len(await dead_letters.list_dead_letters(db)) == 1


async def test_a_consumer_started_before_its_stream_waits_for_it_then_consumes(db: Database, stream: Stream) -> None:
    handler = FlakyHandler()
    consumer = messaging.EventConsumer(db, stream.js, stream.spec("test-early"), handler=handler)
    running = Running(consumer)
    try:
        await asyncio.sleep(0.5)
        assert not running.task.done(), "the consumer must wait for the stream, not fail"
        await stream.create()
        await stream.publish("evt_1", b"fine")

        async def handled() -> bool:
            return handler.handled == ["evt_1"]

        await _eventually(handled)
    finally:
        await running.stop()


async def test_a_consumer_waiting_for_its_stream_stops_promptly(db: Database, stream: Stream) -> None:
    consumer = messaging.EventConsumer(db, stream.js, stream.spec("test-wait"), handler=FlakyHandler())
    running = Running(consumer)
    await asyncio.sleep(0.3)
    await running.stop()  # within 5 s, or wait_for raises


class BatchStore:
    """A batch handler storing comma-separated parts: all of a batch or nothing, and a
    part stored again is a no-op (as the aggregator's ON CONFLICT DO NOTHING)."""

    def __init__(self) -> None:
        self.stored: set[str] = set()
        self.refused = {"poison"}  # permanent: the data is refused
        self.flaky = {"flaky"}  # transient: fails every time, but as if the database were down

    async def __call__(self, messages: Sequence[messaging.ReceivedEvent]) -> None:
        parts = [p for m in messages for p in m.payload.decode().split(",")]
        if self.refused & set(parts):
            raise ValueError("refused part")
        if self.flaky & set(parts):
            raise ConnectionError("flaky part")
        self.stored.update(parts)

    @staticmethod
    def split(message: messaging.ReceivedEvent) -> list[messaging.ReceivedEvent]:
        return [
            messaging.ReceivedEvent(f"{message.event_id}:{i}", message.subject, "part", "", part.encode(), message.headers)
            for i, part in enumerate(message.payload.decode().split(","))
        ]


async def test_the_batch_consumer_dead_letters_only_the_failing_parts_and_replays_them(db: Database, stream: Stream) -> None:
    await stream.create()
    handler = BatchStore()
    consumer = messaging.BatchConsumer(
        db, stream.js, stream.spec("test-batch", max_deliver=3), handler=handler, split=BatchStore.split, permanent_errors=(ValueError,)
    )
    for event_id, payload in [("m1", b"a,b"), ("m2", b"c,poison,d"), ("m3", b"e,flaky,f"), ("m4", b"g")]:
        await stream.publish(event_id, payload)
    running = Running(consumer)
    try:

        async def settled() -> bool:
            return len(await _letters(db)) == 2 and handler.stored == set("abcdefg")

        await _eventually(settled)
        info = await consumer.consumer_info()
        assert (info.num_pending, info.num_ack_pending) == (0, 0)
    finally:
        await running.stop()
    letters = await _letters(db)
    assert sorted((d.event.event_id, d.event.payload) for d in letters) == [("m2:1", b"poison"), ("m3:1", b"flaky")]
    by_payload = {d.event.payload: d for d in letters}
    assert "refused part" in by_payload[b"poison"].error and "flaky part" in by_payload[b"flaky"].error

    handler.refused.clear()
    handler.flaky.clear()
    assert [o.status for o in await dead_letters.replay(db, [consumer])] == ["replayed", "replayed"]
    assert handler.stored == set("abcdefg") | {"poison", "flaky"}


async def test_metering_migration_moves_the_aggregator_dead_letters_into_the_shared_table(infra: Infra) -> None:
    url = infra.new_database_url("metering_dl")
    cfg = migrations.alembic_config(url, ROOT / "services" / "metering" / "migrations", metering_store.metadata)
    await asyncio.to_thread(command.upgrade, cfg, "0003")
    event = resources.MeterEvent(id="evt_x", merchant_id="org_m", idempotency_key="k-1", type="t", source="s", subject="cus_1")
    event.data.update({"note": "x" * 300})  # longer than 127 bytes: a two-byte length
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain) as conn:
        conn.execute(
            "INSERT INTO meter_dead_letters (merchant_id, idempotency_key, event, error, created_at) VALUES "
            "(%s, %s, %s, 'DataError', now()), ('', '', %s, 'DecodeError', now())",
            ("org_m", "k-1", event.SerializeToString(), b"\xffnot a batch"),
        )
    await asyncio.to_thread(command.upgrade, cfg, "head")
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT consumer, event_id, merchant_id, payload, error FROM dead_letters ORDER BY id")).all()
        assert not conn.execute(sa.text("SELECT to_regclass('meter_dead_letters') IS NOT NULL")).scalar()
    assert [(r.consumer, r.event_id, r.merchant_id, r.error) for r in rows] == [
        ("metering-aggregator", "k-1", "org_m", "DataError"),
        ("metering-aggregator", "", "", "DecodeError"),
    ]
    assert list(resources.MeterEventBatch.FromString(rows[0].payload).events) == [event]
    assert bytes(rows[1].payload) == b"\xffnot a batch"

    await asyncio.to_thread(command.downgrade, cfg, "0003")
    with engine.connect() as conn:
        back = conn.execute(sa.text("SELECT idempotency_key, event FROM meter_dead_letters ORDER BY id")).all()
    engine.dispose()
    assert [(r.idempotency_key, bytes(r.event)) for r in back] == [("k-1", event.SerializeToString()), ("", b"\xffnot a batch")]
