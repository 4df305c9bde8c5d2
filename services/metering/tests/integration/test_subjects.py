"""External subjects against the real PostgreSQL: the subject map kept from customer events,
retroactive attribution, resolution of a batch, ordering, and the resolve/backfill race."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from accrue.metering.v1 import metering_resources_pb2 as resources
from accrue.subscription.v1 import subscription_events_pb2 as ev
from accrue.subscription.v1 import subscription_service_pb2 as sub
from google.protobuf import struct_pb2, timestamp_pb2

from libs.infra import migrations
from libs.infra.db import Database, create_engine
from libs.infra.messaging import EVENT_TYPE_HEADER, MERCHANT_HEADER, MSG_ID_HEADER, ReceivedEvent
from libs.testing.fixtures import Infra
from services.metering import store
from services.metering.aggregator import insert_events, row_of
from services.metering.subjects import CUSTOMER_DURABLE, on_customer_event, resolve_subjects
from services.subscription.events import customer_subject

pytestmark = pytest.mark.integration
M = "org_merchant_a"
OTHER = "org_merchant_b"
CREATED, UPDATED, DELETED = ev.CUSTOMER_CHANGE_KIND_CREATED, ev.CUSTOMER_CHANGE_KIND_UPDATED, ev.CUSTOMER_CHANGE_KIND_DELETED


def customer_event(
    kind: ev.CustomerChangeKind.ValueType,
    customer_id: str,
    external_id: str | None,
    sequence: int,
    *,
    previous: str | None = None,
    merchant_id: str = M,
    event_id: str | None = None,
) -> ReceivedEvent:
    customer = sub.Customer(id=customer_id, merchant_id=merchant_id)
    if external_id is not None:
        customer.external_id = external_id
    change = ev.CustomerChanged(kind=kind, merchant_id=merchant_id, customer=customer, sequence=sequence)
    change.change_time.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
    if previous is not None:
        change.previous_external_id = previous
    event_id = event_id or f"evt_{uuid.uuid4().hex}"
    return ReceivedEvent(
        event_id=event_id,
        subject=customer_subject(kind),
        event_type=ev.CustomerChanged.DESCRIPTOR.full_name,
        merchant_id=merchant_id,
        payload=change.SerializeToString(),
        headers={MSG_ID_HEADER: event_id, MERCHANT_HEADER: merchant_id, EVENT_TYPE_HEADER: ev.CustomerChanged.DESCRIPTOR.full_name},
    )


async def deliver(db: Database, event: ReceivedEvent) -> bool:
    """What EventConsumer does with a message: inbox claim + handler, one transaction."""
    async with db.uow() as uow:
        if not await uow.claim_inbox(CUSTOMER_DURABLE, event.event_id):
            return False
        await on_customer_event(event, uow)
        return True


def meter_row(key: str, *, external: str | None, subject: str = "", merchant_id: str = M) -> dict[str, Any]:
    now = timestamp_pb2.Timestamp()
    now.FromDatetime(datetime(2026, 1, 1, 12, tzinfo=UTC))
    event = resources.MeterEvent(
        id=f"evt_{key}",
        merchant_id=merchant_id,
        type="tokens",
        source="tests",
        subject=subject,
        time=now,
        idempotency_key=key,
        data=struct_pb2.Struct(),
        ingest_time=now,
    )
    if external is not None:
        event.external_subject = external
    return row_of(event)


async def store_batch(db: Database, rows: list[dict[str, Any]]) -> None:
    """What Aggregator._store does with a batch (once integrated): resolve, insert, commit."""
    async with db.engine.begin() as conn:
        await resolve_subjects(conn, rows)
        await insert_events(conn, rows)


async def subjects(db: Database, merchant_id: str = M) -> dict[str, str]:
    e = store.meter_events
    async with db.engine.connect() as conn:
        rows = await conn.execute(sa.select(e.c.idempotency_key, e.c.subject).where(e.c.merchant_id == merchant_id))
        return {r.idempotency_key: r.subject for r in rows}


async def mapping(db: Database, merchant_id: str = M) -> dict[str, tuple[str | None, int]]:
    t = store.subject_map
    async with db.engine.connect() as conn:
        rows = await conn.execute(sa.select(t).where(t.c.merchant_id == merchant_id))
        return {r.external_subject: (r.customer_id, r.sequence) for r in rows}


class StatementCounter:
    def __init__(self, db: Database) -> None:
        self.statements: list[str] = []
        self._engine = db.engine.sync_engine

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement)

    def __enter__(self) -> StatementCounter:
        sa.event.listen(self._engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self._engine, "before_cursor_execute", self._record)


async def test_events_stored_before_the_customer_exists_are_attributed_when_it_is_created(db: Database) -> None:
    await store_batch(
        db,
        [
            meter_row("a1", external="acme"),
            meter_row("a2", external="acme"),
            meter_row("b1", external="beta"),
            meter_row("s1", external="acme", subject="cus_explicit"),
            meter_row("o1", external="acme", merchant_id=OTHER),
        ],
    )
    assert await subjects(db) == {"a1": "", "a2": "", "b1": "", "s1": "cus_explicit"}

    assert await deliver(db, customer_event(CREATED, "cus_1", "acme", 1))

    assert await subjects(db) == {"a1": "cus_1", "a2": "cus_1", "b1": "", "s1": "cus_explicit"}
    assert await subjects(db, OTHER) == {"o1": ""}, "another merchant's external subject is its own"
    assert (await mapping(db))["acme"] == ("cus_1", 1)


async def test_resolve_subjects_fills_a_batch_with_one_statement(db: Database) -> None:
    await deliver(db, customer_event(CREATED, "cus_1", "acme", 1))
    await deliver(db, customer_event(CREATED, "cus_2", "beta", 2))
    await deliver(db, customer_event(CREATED, "cus_9", "acme", 3, merchant_id=OTHER))
    rows = [
        meter_row("a1", external="acme"),
        meter_row("a2", external="acme"),
        meter_row("b1", external="beta"),
        meter_row("u1", external="unknown"),
        meter_row("s1", external="beta", subject="cus_explicit"),
        meter_row("n1", external=None, subject="cus_plain"),
        meter_row("o1", external="acme", merchant_id=OTHER),
    ]
    async with db.engine.begin() as conn:
        with StatementCounter(db) as counter:
            await resolve_subjects(conn, rows)
    assert len(counter.statements) == 1
    assert [r["subject"] for r in rows] == ["cus_1", "cus_1", "cus_2", "", "cus_explicit", "cus_plain", "cus_9"]

    # the next time round the unknown subject has a placeholder row: still one statement
    again = [meter_row("u2", external="unknown"), meter_row("a3", external="acme")]
    async with db.engine.begin() as conn:
        with StatementCounter(db) as counter:
            await resolve_subjects(conn, again)
    assert len(counter.statements) == 1
    assert [r["subject"] for r in again] == ["", "cus_1"]

    resolved = [meter_row("x1", external=None, subject="cus_1"), meter_row("x2", external="acme", subject="cus_2")]
    async with db.engine.begin() as conn:
        with StatementCounter(db) as counter:
            await resolve_subjects(conn, resolved)
    assert counter.statements == [], "a batch with nothing to resolve costs no query"
    assert [r["subject"] for r in resolved] == ["cus_1", "cus_2"]


async def test_events_stored_after_the_mapping_is_known_are_stored_attributed(db: Database) -> None:
    await deliver(db, customer_event(CREATED, "cus_1", "acme", 1))
    await store_batch(db, [meter_row("a1", external="acme"), meter_row("z1", external="zeta")])
    assert await subjects(db) == {"a1": "cus_1", "z1": ""}
    await deliver(db, customer_event(CREATED, "cus_2", "zeta", 2))
    assert await subjects(db) == {"a1": "cus_1", "z1": "cus_2"}


async def test_an_external_id_change_moves_the_mapping_and_frees_the_old_id(db: Database) -> None:
    await deliver(db, customer_event(CREATED, "cus_1", "acme", 1))
    await store_batch(db, [meter_row("e1", external="acme")])

    await deliver(db, customer_event(UPDATED, "cus_1", "acme-2", 2, previous="acme"))
    await store_batch(db, [meter_row("e2", external="acme"), meter_row("e3", external="acme-2")])
    assert await subjects(db) == {"e1": "cus_1", "e2": "", "e3": "cus_1"}
    assert await mapping(db) == {"acme": (None, 2), "acme-2": ("cus_1", 2)}

    # another customer takes the freed id: the waiting event is theirs, older ones stay
    await deliver(db, customer_event(CREATED, "cus_2", "acme", 3))
    assert await subjects(db) == {"e1": "cus_1", "e2": "cus_2", "e3": "cus_1"}

    # clearing the external id (no current one, previous given) frees it too
    await deliver(db, customer_event(UPDATED, "cus_1", None, 4, previous="acme-2"))
    await store_batch(db, [meter_row("e4", external="acme-2")])
    assert (await subjects(db))["e4"] == ""
    assert (await mapping(db))["acme-2"] == (None, 4)


async def test_a_deleted_customer_no_longer_attributes_and_a_late_created_cannot_resurrect_it(db: Database) -> None:
    await deliver(db, customer_event(CREATED, "cus_1", "acme", 1))
    await store_batch(db, [meter_row("e1", external="acme")])
    await deliver(db, customer_event(DELETED, "cus_1", "acme", 2))
    await store_batch(db, [meter_row("e2", external="acme")])
    assert await subjects(db) == {"e1": "cus_1", "e2": ""}
    assert await mapping(db) == {"acme": (None, 2)}

    # the producer re-publishes the old creation under a new event id: older, so ignored
    assert await deliver(db, customer_event(CREATED, "cus_1", "acme", 1))
    assert await subjects(db) == {"e1": "cus_1", "e2": ""}
    assert await mapping(db) == {"acme": (None, 2)}


async def test_a_redelivered_event_id_is_handled_once(db: Database) -> None:
    created = customer_event(CREATED, "cus_1", "acme", 1)
    assert await deliver(db, created)
    await deliver(db, customer_event(UPDATED, "cus_1", "acme-2", 2, previous="acme"))
    await store_batch(db, [meter_row("e1", external="acme")])

    assert not await deliver(db, created), "the inbox recognises the redelivery"
    assert await mapping(db) == {"acme": (None, 2), "acme-2": ("cus_1", 2)}
    assert await subjects(db) == {"e1": ""}
    async with db.engine.connect() as conn:
        inbox = store.metadata.tables["inbox"]
        count = (await conn.execute(sa.select(sa.func.count()).select_from(inbox).where(inbox.c.event_id == created.event_id))).scalar()
    assert count == 1


async def test_out_of_order_created_and_updated_converge_to_the_newest(db: Database) -> None:
    await store_batch(db, [meter_row("e1", external="acme"), meter_row("e2", external="acme-2")])
    # the update (sequence 2) overtakes the creation (sequence 1)
    await deliver(db, customer_event(UPDATED, "cus_1", "acme-2", 2, previous="acme"))
    await deliver(db, customer_event(CREATED, "cus_1", "acme", 1))
    assert await mapping(db) == {"acme": (None, 2), "acme-2": ("cus_1", 2)}
    assert await subjects(db) == {"e1": "", "e2": "cus_1"}

    # customer 3 takes "shared" after customer 2 freed it; the freeing arrives last
    await deliver(db, customer_event(CREATED, "cus_2", "shared", 3))
    await deliver(db, customer_event(CREATED, "cus_3", "shared", 5))
    await deliver(db, customer_event(UPDATED, "cus_2", "mine", 4, previous="shared"))
    assert (await mapping(db))["shared"] == ("cus_3", 5)
    await store_batch(db, [meter_row("e3", external="shared")])
    assert (await subjects(db))["e3"] == "cus_3"

    # an update that does not change the external id, older than what is stored: ignored
    await deliver(db, customer_event(UPDATED, "cus_2", "shared", 3))
    assert (await mapping(db))["shared"] == ("cus_3", 5)


async def test_a_malformed_or_foreign_event_changes_nothing(db: Database) -> None:
    foreign = customer_event(CREATED, "cus_1", "acme", 1)
    foreign = ReceivedEvent(foreign.event_id, foreign.subject, foreign.event_type, OTHER, foreign.payload, foreign.headers)
    assert await deliver(db, foreign)
    assert await mapping(db) == {}
    with pytest.raises(ValueError, match="sequence"):
        await deliver(db, customer_event(CREATED, "cus_1", "acme", 0))
    assert await mapping(db) == {}


async def _blocked(task: asyncio.Task[Any]) -> bool:
    await asyncio.sleep(0.3)
    return not task.done()


async def _prior_state(db: Database, prior: str) -> list[dict[str, Any]]:
    """External subject "acme" with no mapping, a placeholder (an unattributed event) or a
    tombstone (a deleted customer); the batch of one event for it, not yet resolved."""
    if prior == "placeholder":
        await store_batch(db, [meter_row("p0", external="acme")])
    elif prior == "tombstone":
        await deliver(db, customer_event(CREATED, "cus_0", "acme", 1))
        await deliver(db, customer_event(DELETED, "cus_0", "acme", 2))
    return [meter_row("e1", external="acme")]


@pytest.mark.parametrize("prior", ["none", "placeholder", "tombstone"])
async def test_a_batch_resolving_first_makes_the_backfill_wait_and_see_its_events(db: Database, prior: str) -> None:
    rows = await _prior_state(db, prior)
    async with db.engine.begin() as conn:
        await resolve_subjects(conn, rows)
        assert rows[0]["subject"] == ""
        # the customer arrives while the batch is between resolve and insert
        handler = asyncio.create_task(deliver(db, customer_event(CREATED, "cus_1", "acme", 10)))
        assert await _blocked(handler), "the mapping change must wait for the batch holding the row"
        await insert_events(conn, rows)
    assert await asyncio.wait_for(handler, 10)
    assert (await subjects(db))["e1"] == "cus_1"


@pytest.mark.parametrize("prior", ["none", "placeholder", "tombstone"])
async def test_a_mapping_change_in_flight_makes_the_batch_wait_and_read_it(db: Database, prior: str) -> None:
    rows = await _prior_state(db, prior)
    async with db.uow() as uow:
        await on_customer_event(customer_event(CREATED, "cus_1", "acme", 10), uow)
        batch = asyncio.create_task(store_batch(db, rows))
        assert await _blocked(batch), "the batch must wait for the uncommitted mapping change"
    await asyncio.wait_for(batch, 10)
    assert rows[0]["subject"] == "cus_1"
    assert (await subjects(db))["e1"] == "cus_1"


@pytest.mark.parametrize("target", ["placeholder", "no row"])
async def test_a_mapping_committed_after_the_batch_snapshot_is_still_read(db: Database, target: str) -> None:
    """The batch's statement takes its snapshot, then waits on another row's lock while the
    customer event commits; the row it locks afterwards is read in its newest version."""
    await store_batch(db, [meter_row("p0", external="aaa")] + ([meter_row("p1", external="zzz")] if target == "placeholder" else []))
    rows = [meter_row("e1", external="aaa"), meter_row("e2", external="zzz")]
    t = store.subject_map
    async with db.engine.begin() as blocker:
        await blocker.execute(sa.select(t).where(t.c.merchant_id == M, t.c.external_subject == "aaa").with_for_update())
        batch = asyncio.create_task(store_batch(db, rows))
        assert await _blocked(batch), "the batch waits on the row 'aaa' held by the blocker"
        # meanwhile the customer of 'zzz' is created and its backfill runs: nothing to see yet
        assert await asyncio.wait_for(deliver(db, customer_event(CREATED, "cus_1", "zzz", 1)), 5)
    await asyncio.wait_for(batch, 10)
    assert [r["subject"] for r in rows] == ["", "cus_1"]
    assert await subjects(db) == {"p0": "", **({"p1": "cus_1"} if target == "placeholder" else {}), "e1": "", "e2": "cus_1"}


async def test_aggregator_batches_do_not_block_each_other_on_an_unmapped_subject(db: Database) -> None:
    await store_batch(db, [meter_row("p0", external="acme")])  # the placeholder exists
    async with db.engine.begin() as first:
        await resolve_subjects(first, [meter_row("e1", external="acme")])
        second = asyncio.create_task(store_batch(db, [meter_row("e2", external="acme")]))
        await asyncio.wait_for(second, 5)


async def test_migrations_reach_head_and_match_the_tables(infra: Infra) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    url = infra.new_database_url("subjects_migration")
    await asyncio.to_thread(migrations.upgrade, url, Path(store.__file__).parent / "migrations", store.metadata)
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), store.metadata))
            version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar()
    finally:
        await engine.dispose()
    from alembic.script import ScriptDirectory

    from libs.infra.migrations import alembic_config

    head = ScriptDirectory.from_config(alembic_config(url, Path(store.__file__).parent / "migrations", store.metadata)).get_current_head()
    assert version == head
    assert diff == []
