"""Post-commit listeners of libs/infra/db.py on the real PostgreSQL: a listener runs after
the commit (what it reads from another connection is there) and before the unit of work's
``async with`` ends, with the events that transaction wrote in order; no events or a
rollback call nothing; a failing listener is logged, not raised, and the others still run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from google.protobuf.wrappers_pb2 import StringValue

from libs.infra.db import Database, OutboxMessage, add_infra_tables, create_engine
from libs.testing.fixtures import Infra

pytestmark = pytest.mark.integration

metadata = sa.MetaData()
add_infra_tables(metadata)
things = sa.Table("things", metadata, sa.Column("id", sa.Text, primary_key=True))


@pytest.fixture
async def db(infra: Infra) -> AsyncIterator[Database]:
    engine = create_engine(infra.new_database_url("listeners"), pool_size=2)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    database = Database(engine, metadata)
    yield database
    await database.dispose()


async def _thing_ids(db: Database) -> list[str]:
    async with db.engine.connect() as conn:
        return [str(r[0]) for r in await conn.execute(sa.select(things.c.id).order_by(things.c.id))]


class Recorder:
    """A listener that records each call and what another connection sees at that moment."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.calls: list[list[tuple[str, str, str]]] = []
        self.visible: list[list[str]] = []

    async def __call__(self, written: Sequence[OutboxMessage]) -> None:
        self.calls.append([(m.subject, StringValue.FromString(m.event.SerializeToString()).value, m.merchant_id) for m in written])
        self.visible.append(await _thing_ids(self._db))


async def test_a_listener_runs_after_the_commit_and_before_the_unit_of_work_ends(db: Database) -> None:
    recorder = Recorder(db)
    db.add_commit_listener(recorder)
    now = datetime.now(UTC)
    async with db.uow() as uow:
        await uow.conn.execute(things.insert().values(id="t1"))
        await uow.record_event("test.thing.created", StringValue(value="t1"), merchant_id="org_a", now=now)
        await uow.record_event("test.thing.updated", StringValue(value="t1 again"), merchant_id="org_a", now=now)
        assert recorder.calls == []  # not before the commit
    # the `async with` has ended: the listener ran, once, with both events in order,
    # and the row was already committed (read on another connection)
    assert recorder.calls == [[("test.thing.created", "t1", "org_a"), ("test.thing.updated", "t1 again", "org_a")]]
    assert recorder.visible == [["t1"]]


async def test_no_events_or_a_rollback_call_no_listener(db: Database) -> None:
    recorder = Recorder(db)
    db.add_commit_listener(recorder)
    async with db.uow() as uow:  # a commit without outbox events
        await uow.conn.execute(things.insert().values(id="quiet"))
    with pytest.raises(RuntimeError, match="boom"):
        async with db.uow() as uow:
            await uow.conn.execute(things.insert().values(id="rolled-back"))
            await uow.record_event("test.thing.created", StringValue(value="x"), merchant_id="org_a", now=datetime.now(UTC))
            raise RuntimeError("boom")
    assert recorder.calls == []
    assert await _thing_ids(db) == ["quiet"]


async def test_a_failing_listener_is_swallowed_and_the_others_still_run(db: Database) -> None:
    failed: list[int] = []

    async def failing(written: Sequence[OutboxMessage]) -> None:
        failed.append(len(written))
        raise ConnectionError("the other service is down")

    recorder = Recorder(db)
    db.add_commit_listener(failing)
    db.add_commit_listener(recorder)
    db.add_commit_listener(recorder)  # the same listener twice runs once
    async with db.uow() as uow:
        await uow.conn.execute(things.insert().values(id="t2"))
        await uow.record_event("test.thing.created", StringValue(value="t2"), merchant_id="org_b", now=datetime.now(UTC))
    assert failed == [1]
    assert recorder.calls == [[("test.thing.created", "t2", "org_b")]]
    assert await _thing_ids(db) == ["t2"]
    # the outbox row is committed too: the stream still delivers the event
    async with db.engine.connect() as conn:
        outbox = db.metadata.tables["outbox"]
        assert (await conn.execute(sa.select(outbox.c.subject))).scalars().all() == ["test.thing.created"]
