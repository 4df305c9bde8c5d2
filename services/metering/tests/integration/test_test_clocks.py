"""Test clocks in metering, against real PostgreSQL and NATS: metering hosts in this
process on their real migrations, on a NATS server of the test's own (so that their
durable consumers and broadcasts meet no other metering), two of them on one database
where several processes matter.

An event of a customer on a clock is stamped and bounded in the clock's time, one off any
clock exactly as before; SyncTestClock and the TestClockChanged events are idempotent and
never move a clock backwards; another process's cache never refuses the clock's present;
the completeness watermark counts clock-stamped events accepted before it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from accrue.metering.v1 import metering_service_pb2 as svc
from accrue.metering.v1 import metering_service_pb2_grpc
from accrue.subscription.v1 import subscription_events_pb2 as ev
from accrue.subscription.v1 import subscription_service_pb2 as sub
from google.protobuf import struct_pb2
from nats.aio.client import Client as NatsClient

from libs.core.clock import FakeClock
from libs.infra import messaging
from libs.infra.db import Database
from libs.infra.proto_time import from_timestamp, to_timestamp
from libs.infra.runner import Mesh
from libs.infra.service import Host
from libs.testing.fixtures import StartHost
from libs.testing.meshes import own_mesh
from libs.testing.tokens import merchant_metadata
from libs.testing.waiting import eventually_async
from services.metering import store
from services.metering.app import DEFINITION
from services.metering.test_clocks import ClockChange, ClockIndex, ClockListener, record
from services.subscription import events as subscription_events

pytestmark = pytest.mark.integration
MERCHANT = "org_clocks00000001"
METADATA = [merchant_metadata(MERCHANT)]
EVENT_TYPE = "clocked.tokens"
METRIC_ID = "bm_clocked0000000001"
# the hosts' own clock: fixed, so "now" in an answer is exact (the watermark test uses real time)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MISSING = datetime.min.replace(tzinfo=UTC)


@pytest.fixture
def own_nats(infra_mesh: Mesh, tmp_path: Path) -> Iterator[str]:
    mesh = own_mesh(infra_mesh, tmp_path, "clocks")
    yield mesh.nats_url
    mesh.stop()


@pytest.fixture
async def nats_client(own_nats: str) -> AsyncIterator[NatsClient]:
    nc = await messaging.connect(own_nats, "test-clocks")
    js = nc.jetstream()
    await messaging.ensure_stream(js, subscription_events.STREAM, subscription_events.STREAM_SUBJECTS)
    yield nc
    await nc.close()


StartMetering = Callable[..., Awaitable[Host]]


@pytest.fixture
def start(own_nats: str, start_host: StartHost) -> StartMetering:
    """``await start(clock=..., database_url=...)``: a metering host on the test's NATS
    (stopped before that NATS server is)."""

    async def start_metering(*, clock: FakeClock | None = None, database_url: str | None = None) -> Host:
        return await _metering(start_host, own_nats, clock=clock, database_url=database_url)

    return start_metering


async def _metering(start_host: StartHost, nats_url: str, *, clock: FakeClock | None = None, database_url: str | None = None) -> Host:
    extra: dict[str, Any] = {"database_url": database_url} if database_url else {}
    host = await start_host(DEFINITION, clock=clock, nats_url=nats_url, **extra)
    assert host.runtime is not None
    m = store.metrics
    async with host.runtime.db.engine.begin() as conn:
        exists = (await conn.execute(sa.select(m.c.id).where(m.c.id == METRIC_ID))).first()
        if exists is None:
            await conn.execute(
                m.insert().values(
                    id=METRIC_ID,
                    merchant_id=MERCHANT,
                    event_type=EVENT_TYPE,
                    aggregation="SUM",
                    value_property="$.tokens",
                    group_by={},
                    updated_at=NOW,
                )
            )
    return host


def _stub(host: Host) -> tuple[grpc.aio.Channel, metering_service_pb2_grpc.MeteringServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{host.port}")
    return channel, metering_service_pb2_grpc.MeteringServiceStub(channel)


Metering = tuple[Host, metering_service_pb2_grpc.MeteringServiceStub]


@pytest.fixture
async def metering(start: StartMetering) -> AsyncIterator[Metering]:
    host = await start(clock=FakeClock(NOW))
    channel, stub = _stub(host)
    yield host, stub
    await channel.close()


def _event(
    subject: str | None = None, *, at: datetime | None = None, key: str | None = None, external: str | None = None
) -> svc.IngestEventRequest:
    request = svc.IngestEventRequest(
        type=EVENT_TYPE, source="tests", data=struct_pb2.Struct(fields={"tokens": struct_pb2.Value(number_value=1)})
    )
    if subject is not None:
        request.subject = subject
    if external is not None:
        request.external_subject = external
    if at is not None:
        request.timestamp.CopyFrom(to_timestamp(at))
    request.idempotency_key = key or uuid.uuid4().hex
    return request


async def _sync(
    stub: metering_service_pb2_grpc.MeteringServiceStub,
    clock_id: str,
    when: datetime,
    customers: list[str] | None = None,
    *,
    deleted: bool = False,
) -> datetime:
    answer = await stub.SyncTestClock(
        svc.SyncTestClockRequest(test_clock_id=clock_id, current_time=to_timestamp(when), customer_ids=customers or [], deleted=deleted),
        metadata=METADATA,
    )
    return from_timestamp(answer.current_time)


async def _batch(stub: metering_service_pb2_grpc.MeteringServiceStub, events: list[svc.IngestEventRequest]) -> list[svc.EventReceipt]:
    answer = await stub.BatchIngestEvents(svc.BatchIngestEventsRequest(events=events, include_events=True), metadata=METADATA)
    return list(answer.receipts)


def _ids() -> tuple[str, str]:
    return f"tc_{uuid.uuid4().hex[:16]}", f"cus_{uuid.uuid4().hex[:12]}"


async def _clock_row(host: Host, clock_id: str) -> tuple[datetime, bool]:
    """The clock's row (time, deleted); (MISSING, False) when there is none."""
    assert host.runtime is not None
    k = store.test_clocks
    async with host.runtime.db.engine.connect() as conn:
        row = (await conn.execute(sa.select(k.c.clock_time, k.c.deleted).where(k.c.merchant_id == MERCHANT, k.c.id == clock_id))).first()
    return (MISSING, False) if row is None else (row.clock_time, row.deleted)


async def _customers_of(host: Host, clock_id: str) -> list[str]:
    assert host.runtime is not None
    c = store.test_clock_customers
    async with host.runtime.db.engine.connect() as conn:
        rows = await conn.execute(sa.select(c.c.customer_id).where(c.c.merchant_id == MERCHANT, c.c.test_clock_id == clock_id))
        return sorted(r.customer_id for r in rows)


async def _publish(nc: NatsClient, subject: str, message: Any, merchant_id: str = MERCHANT) -> None:
    """As the subscription service's outbox relay publishes: on its stream, with its headers."""
    event_id = f"evt_{uuid.uuid4().hex}"
    headers = {
        messaging.MSG_ID_HEADER: event_id,
        messaging.MERCHANT_HEADER: merchant_id,
        messaging.EVENT_TYPE_HEADER: message.DESCRIPTOR.full_name,
    }
    await nc.jetstream().publish(subject, message.SerializeToString(), headers=headers)


def _clock_changed(clock_id: str, when: datetime, customers: list[str], *, deleted: bool = False) -> ev.TestClockChanged:
    clock = sub.TestClock(id=clock_id, merchant_id=MERCHANT, current_time=to_timestamp(when))
    if deleted:
        clock.delete_time.CopyFrom(to_timestamp(when))
    return ev.TestClockChanged(merchant_id=MERCHANT, test_clock=clock, customer_ids=customers)


# --- stamping and bounds ------------------------------------------------------------------


async def test_an_event_without_timestamp_of_a_clock_customer_gets_the_clock_time(metering: Metering, nats_client: NatsClient) -> None:
    _, stub = metering
    clock_id, customer = _ids()
    clock_time = NOW - timedelta(days=100, hours=3)
    assert await _sync(stub, clock_id, clock_time, [customer]) == clock_time

    single = await stub.IngestEvent(_event(customer), metadata=METADATA)
    assert from_timestamp(single.timestamp) == clock_time
    (batched,) = await _batch(stub, [_event(customer)])
    assert batched.status == "accepted"
    assert from_timestamp(batched.event.timestamp) == clock_time

    # by externalSubject: the customer it names is on the clock (the mapping arrives as the
    # subscription service publishes it)
    external = f"acct-{uuid.uuid4().hex[:8]}"
    created = ev.CustomerChanged(
        kind=ev.CUSTOMER_CHANGE_KIND_CREATED,
        merchant_id=MERCHANT,
        customer=sub.Customer(id=customer, merchant_id=MERCHANT, external_id=external),
        sequence=1,
    )
    await _publish(nats_client, subscription_events.customer_subject(ev.CUSTOMER_CHANGE_KIND_CREATED), created)

    async def stamped_by_external() -> datetime:
        answer = await stub.IngestEvent(_event(external=external), metadata=METADATA)
        return from_timestamp(answer.timestamp)

    assert await eventually_async(stamped_by_external, clock_time) == clock_time


async def test_a_clock_months_in_the_past_takes_its_present_and_refuses_around_it(metering: Metering) -> None:
    _, stub = metering
    clock_id, customer = _ids()
    present = NOW - timedelta(days=150)
    await _sync(stub, clock_id, present, [customer])
    offsets = {
        "present": timedelta(0),
        "34 days back": -timedelta(days=34),
        "35 days back": -timedelta(days=35),
        "4 minutes ahead": timedelta(minutes=4),
        "5 minutes ahead": timedelta(minutes=5),
        "35 days and a second back": -timedelta(days=35, seconds=1),
        "5 minutes and a second ahead": timedelta(minutes=5, seconds=1),
        "months ahead (the wall clock's now)": NOW - present,
    }
    receipts = await _batch(stub, [_event(customer, at=present + offset) for offset in offsets.values()])
    outcome = {name: (r.status, r.code) for name, r in zip(offsets, receipts, strict=True)}
    assert outcome == {
        "present": ("accepted", ""),
        "34 days back": ("accepted", ""),
        "35 days back": ("accepted", ""),
        "4 minutes ahead": ("accepted", ""),
        "5 minutes ahead": ("accepted", ""),
        "35 days and a second back": ("rejected", "TIMESTAMP_TOO_OLD"),
        "5 minutes and a second ahead": ("rejected", "TIMESTAMP_IN_FUTURE"),
        "months ahead (the wall clock's now)": ("rejected", "TIMESTAMP_IN_FUTURE"),
    }
    assert f"test clock {clock_id} time" in receipts[5].message
    assert receipts[5].field == "timestamp" and receipts[5].http_status == 400

    # the clock moves a month: its new present is taken, what is now too old is refused
    moved = present + timedelta(days=40)
    await _sync(stub, clock_id, moved, [customer])
    new_present, old_present = await _batch(stub, [_event(customer, at=moved), _event(customer, at=present)])
    assert (new_present.status, old_present.status, old_present.code) == ("accepted", "rejected", "TIMESTAMP_TOO_OLD")


async def test_a_customer_off_any_clock_is_judged_by_the_server_clock_as_before(metering: Metering) -> None:
    _, stub = metering
    clock_id, on_clock = _ids()
    await _sync(stub, clock_id, NOW - timedelta(days=200), [on_clock])  # the merchant has a clock customer
    off_clock = f"cus_{uuid.uuid4().hex[:12]}"
    receipts = await _batch(
        stub,
        [
            _event(off_clock),
            _event(off_clock, at=NOW - timedelta(days=35)),
            _event(off_clock, at=NOW - timedelta(days=35, seconds=1)),
            _event(off_clock, at=NOW + timedelta(minutes=5, seconds=1)),
            _event(off_clock, at=NOW - timedelta(days=200)),  # the other customer's clock present
            _event(external=f"unmapped-{uuid.uuid4().hex[:6]}"),
        ],
    )
    assert [(r.status, r.code) for r in receipts] == [
        ("accepted", ""),
        ("accepted", ""),
        ("rejected", "TIMESTAMP_TOO_OLD"),
        ("rejected", "TIMESTAMP_IN_FUTURE"),
        ("rejected", "TIMESTAMP_TOO_OLD"),
        ("accepted", ""),
    ]
    assert from_timestamp(receipts[0].event.timestamp) == NOW
    assert from_timestamp(receipts[5].event.timestamp) == NOW
    assert "server time" in receipts[2].message


# --- SyncTestClock --------------------------------------------------------------------------


async def test_sync_is_idempotent_never_moves_time_backwards_and_a_deleted_clock_releases(metering: Metering) -> None:
    host, stub = metering
    clock_id, customer = _ids()
    later = NOW - timedelta(days=100)
    earlier = NOW - timedelta(days=110)
    assert await _sync(stub, clock_id, later, [customer]) == later
    assert await _sync(stub, clock_id, later, [customer]) == later
    assert await _sync(stub, clock_id, earlier, [customer]) == later  # ignored: answers the time held
    assert await _clock_row(host, clock_id) == (later, False)
    assert await _customers_of(host, clock_id) == [customer]
    (stamped,) = await _batch(stub, [_event(customer)])
    assert from_timestamp(stamped.event.timestamp) == later
    (older_present,) = await _batch(stub, [_event(customer, at=later - timedelta(days=36))])
    assert older_present.code == "TIMESTAMP_TOO_OLD"  # judged against `later`, not `earlier`

    # a second customer joins; the first stays
    other = f"cus_{uuid.uuid4().hex[:12]}"
    await _sync(stub, clock_id, later, [other])
    assert await _customers_of(host, clock_id) == sorted([customer, other])

    # deleted: its customers return to real time, and no late message brings the clock back
    assert await _sync(stub, clock_id, later, deleted=True) == later
    assert await _sync(stub, clock_id, later + timedelta(days=1), [customer]) == later + timedelta(days=1)
    assert await _clock_row(host, clock_id) == (later + timedelta(days=1), True)
    assert await _customers_of(host, clock_id) == []
    real_time, clock_present = await _batch(stub, [_event(customer), _event(other, at=later)])
    assert from_timestamp(real_time.event.timestamp) == NOW
    assert (clock_present.status, clock_present.code) == ("rejected", "TIMESTAMP_TOO_OLD")


async def test_sync_refuses_what_is_not_a_clock_change(metering: Metering) -> None:
    _, stub = metering
    with pytest.raises(grpc.aio.AioRpcError) as missing_time:
        await stub.SyncTestClock(svc.SyncTestClockRequest(test_clock_id="tc_x"), metadata=METADATA)
    assert missing_time.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as empty_customer:
        await stub.SyncTestClock(
            svc.SyncTestClockRequest(test_clock_id="tc_x", current_time=to_timestamp(NOW), customer_ids=[""]), metadata=METADATA
        )
    assert empty_customer.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_same_key_counts_once_for_a_clock_customer(metering: Metering) -> None:
    _, stub = metering
    clock_id, customer = _ids()
    present = NOW - timedelta(days=60)
    await _sync(stub, clock_id, present, [customer])
    key = uuid.uuid4().hex
    first, again = await _batch(stub, [_event(customer, key=key), _event(customer, key=key)])
    assert (first.status, again.status) == ("accepted", "duplicate")

    async def total() -> str:
        usage = await stub.GetMeter(
            svc.GetMeterRequest(
                id=METRIC_ID,
                subject=customer,
                from_time=to_timestamp(present - timedelta(days=1)),
                to_time=to_timestamp(present + timedelta(days=1)),
            ),
            metadata=METADATA,
        )
        return str(usage.total_value_decimal)

    assert await eventually_async(total, "1") == "1"
    # once stored, a later batch's receipt says so (before that, the aggregator's unique
    # key drops it: either way it counts once)
    (later,) = await _batch(stub, [_event(customer, key=key)])
    assert later.status == "duplicate"
    assert first.id == again.id == later.id
    await asyncio.sleep(0.3)  # a redelivery or a second insert would show by now
    assert await total() == "1"


# --- the subscription stream ----------------------------------------------------------------


async def test_test_clock_events_are_consumed_idempotently_and_in_any_order(metering: Metering, nats_client: NatsClient) -> None:
    host, stub = metering
    clock_id, customer = _ids()
    present = NOW - timedelta(days=90)
    created = f"{subscription_events.SUBJECT_PREFIX}.test_clock.created"
    advanced = f"{subscription_events.SUBJECT_PREFIX}.test_clock.advanced"
    deleted = f"{subscription_events.SUBJECT_PREFIX}.test_clock.deleted"
    await _publish(nats_client, created, _clock_changed(clock_id, present, [customer]))

    async def stamp() -> datetime:
        (receipt,) = await _batch(stub, [_event(customer)])
        return from_timestamp(receipt.event.timestamp)

    assert await eventually_async(stamp, present) == present
    assert await eventually_async(lambda: _clock_row(host, clock_id), (present, False)) == (present, False)

    # advanced twice over (two event ids), then a late, older one: the time stays the newest
    moved = present + timedelta(days=31)
    for _ in range(2):
        await _publish(nats_client, advanced, _clock_changed(clock_id, moved, [customer]))
    await _publish(nats_client, advanced, _clock_changed(clock_id, present + timedelta(days=1), [customer]))
    assert await eventually_async(stamp, moved) == moved
    assert await eventually_async(lambda: _clock_row(host, clock_id), (moved, False)) == (moved, False)
    await asyncio.sleep(0.3)
    assert await _clock_row(host, clock_id) == (moved, False)
    assert await stamp() == moved

    # deleted, then a late "advanced": released for good
    await _publish(nats_client, deleted, _clock_changed(clock_id, moved, [customer], deleted=True))
    await _publish(nats_client, advanced, _clock_changed(clock_id, moved + timedelta(days=1), [customer]))
    assert await eventually_async(lambda: _clock_row(host, clock_id), (moved + timedelta(days=1), True)) == (
        moved + timedelta(days=1),
        True,
    )
    assert await _customers_of(host, clock_id) == []
    assert await eventually_async(stamp, NOW) == NOW


# --- several metering processes -------------------------------------------------------------


async def test_another_process_never_refuses_the_clock_present_even_without_its_broadcasts(
    start: StartMetering, metering: Metering
) -> None:
    first, first_stub = metering
    assert first.runtime is not None
    second = await start(clock=FakeClock(NOW), database_url=first.runtime.settings.database_url)
    channel, second_stub = _stub(second)
    try:
        clock_id, customer = _ids()
        present = NOW - timedelta(days=120)
        await _sync(first_stub, clock_id, present, [customer])
        # the second process hears nothing more: its listener stops, its cache stays as it is
        (warm,) = await _batch(second_stub, [_event(customer, at=present)])
        assert warm.status == "accepted"
        listeners = [w for w in second._workers if isinstance(w, ClockListener)]
        assert len(listeners) == 1
        listeners[0].stop()
        await asyncio.sleep(0.2)

        # the clock moves two months through the first process, and a new customer joins it
        moved = present + timedelta(days=61)
        newcomer = f"cus_{uuid.uuid4().hex[:12]}"
        await _sync(first_stub, clock_id, moved, [customer, newcomer])
        assert second.runtime is not None
        index = second.runtime.extras["clocks"]
        assert isinstance(index, ClockIndex)
        cached = await index.current(MERCHANT)
        assert cached is not None and cached.clocks[clock_id].time == present  # stale, as intended here

        # the second process takes the new present, stamps with it, and refuses the old one
        at_present, stamped, newcomer_present, too_old = await _batch(
            second_stub,
            [_event(customer, at=moved + timedelta(minutes=3)), _event(customer), _event(newcomer, at=moved), _event(customer, at=present)],
        )
        assert (at_present.status, stamped.status, newcomer_present.status) == ("accepted", "accepted", "accepted")
        assert from_timestamp(stamped.event.timestamp) == moved
        assert (too_old.status, too_old.code) == ("rejected", "TIMESTAMP_TOO_OLD")

        # deleted through the first process: the second stamps in real time again
        await _sync(first_stub, clock_id, moved, deleted=True)
        (released,) = await _batch(second_stub, [_event(customer, at=NOW)])
        assert released.status == "accepted"
    finally:
        await channel.close()


async def test_a_sync_reaches_the_other_process_cache_by_broadcast(start: StartMetering, metering: Metering) -> None:
    first, first_stub = metering
    assert first.runtime is not None
    second = await start(clock=FakeClock(NOW), database_url=first.runtime.settings.database_url)
    assert second.runtime is not None
    index = second.runtime.extras["clocks"]
    assert isinstance(index, ClockIndex)
    clock_id, customer = _ids()
    present = NOW - timedelta(days=30)
    await _sync(first_stub, clock_id, present, [customer])
    assert await index.current(MERCHANT) is not None  # loaded once from the database
    moved = present + timedelta(days=3)
    await _sync(first_stub, clock_id, moved, [customer])

    async def cached_time() -> datetime:
        entry = await index.current(MERCHANT)  # within its TTL: no read of the database
        return MISSING if entry is None else entry.clocks[clock_id].time

    assert await eventually_async(cached_time, moved, timeout=1.5) == moved  # the TTL (2 s) would be later


# --- completeness -------------------------------------------------------------------------


async def test_complete_until_counts_every_clock_stamped_event_accepted_before_it(start: StartMetering) -> None:
    host = await start()  # the system clock: the watermark is wall time
    channel, stub = _stub(host)
    try:
        clock_id, customer = _ids()
        present = datetime.now(UTC) - timedelta(days=75)
        await _sync(stub, clock_id, present, [customer])
        receipts = await _batch(stub, [_event(customer) for _ in range(5)])
        assert {r.status for r in receipts} == {"accepted"}
        accepted_by = datetime.now(UTC)  # every event above was answered before this instant
        window = svc.GetMeterRequest(
            id=METRIC_ID,
            subject=customer,
            from_time=to_timestamp(present - timedelta(hours=1)),
            to_time=to_timestamp(present + timedelta(hours=1)),
        )

        async def complete() -> bool:
            usage = await stub.GetMeter(window, metadata=METADATA)
            return usage.HasField("complete_until") and from_timestamp(usage.complete_until) >= accepted_by

        assert await eventually_async(complete, True, timeout=15.0)
        usage = await stub.GetMeter(window, metadata=METADATA)
        assert usage.total_value_decimal == "5"  # invoicing's reading of the clock's window, complete
    finally:
        await channel.close()


# --- the cache against the tables ---------------------------------------------------------


async def test_a_read_of_the_tables_never_undoes_a_change_heard_before_they_have_it(db: Database) -> None:
    index = ClockIndex(db)
    clock_id, customer = _ids()
    present = NOW - timedelta(days=45)
    # heard (a TestClockChanged as published) before the durable consumer stored it
    index.apply(ClockChange(MERCHANT, clock_id, present, (customer,)))
    entry = await index.current(MERCHANT)
    assert entry is not None
    clock = entry.clock_of(customer, None)
    assert clock is not None and clock.time == present
    # the tables catch up, then another process deletes the clock: a read of the
    # customer releases it, and the change heard earlier does not bring it back
    async with db.engine.begin() as conn:
        await record(conn, ClockChange(MERCHANT, clock_id, present, (customer,)), NOW)
        await record(conn, ClockChange(MERCHANT, clock_id, present, deleted=True), NOW)
    assert await index.reread(MERCHANT, [customer], []) is None


async def test_a_reread_finds_a_customer_by_the_external_subject_naming_it(db: Database) -> None:
    index = ClockIndex(db)
    clock_id, customer = _ids()
    present = NOW - timedelta(days=45)
    assert await index.current(MERCHANT) is None
    async with db.engine.begin() as conn:
        await record(conn, ClockChange(MERCHANT, clock_id, present, (customer,)), NOW)
        await conn.execute(
            store.subject_map.insert().values(
                merchant_id=MERCHANT, external_subject="acct-9", customer_id=customer, sequence=3, updated_at=NOW
            )
        )
    entry = await index.reread(MERCHANT, [], ["acct-9"])
    assert entry is not None
    clock = entry.clock_of("", "acct-9")
    assert clock is not None and (clock.id, clock.time) == (clock_id, present)
